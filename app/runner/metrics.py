"""The runner's /metrics: llama-server's Prometheus counters and gauges, then loam's own.

The engine counts as it decodes; `render` writes the text at a scrape and
starts the throughput gauges' window over, as llama-server does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.runner.engine import Engine


@dataclass
class Throughput:
    """Tokens and seconds since the last scrape."""

    tokens: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Metrics:
    """Counters the decode loop updates; only it writes them."""

    prompt_tokens: int = 0  # evaluated, not taken from the cache
    prompt_tokens_cached: int = 0
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0
    n_decode: int = 0
    n_busy_slots: int = 0  # summed over decodes
    n_tokens_max: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0
    draft_steps: int = 0
    scored_tokens: int = 0
    prompt_window: Throughput = field(default_factory=Throughput)
    predicted_window: Throughput = field(default_factory=Throughput)


def _lines(kind: str, items: list[tuple[str, float, str]]) -> str:
    return "".join(f"# HELP {n} {h}\n# TYPE {n} {kind}\n{n} {_number(v)}\n" for n, v, h in items)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(engine: Engine) -> str:
    """The Prometheus text of a scrape; the throughput windows start again after it."""
    m = engine.metrics
    counters = [
        ("llamacpp:prompt_tokens_total", m.prompt_tokens, "Number of prompt tokens processed, excluding cached tokens"),
        (
            "llamacpp:prompt_tokens_cached_total",
            m.prompt_tokens_cached,
            "Number of prompt tokens reused from the cache",
        ),
        ("llamacpp:prompt_seconds_total", m.prompt_seconds, "Total time spent processing prompts"),
        ("llamacpp:tokens_predicted_total", m.predicted_tokens, "Number of generation tokens processed"),
        ("llamacpp:tokens_predicted_seconds_total", m.predicted_seconds, "Total time spent generating tokens"),
        ("llamacpp:n_decode_total", m.n_decode, "Total number of llama_decode() calls"),
        ("llamacpp:n_tokens_max", m.n_tokens_max, "Largest observed sequence length (prompt + generation)"),
        ("llamacpp:spec_decode_num_draft_tokens_total", m.draft_tokens, "Speculative: Total draft tokens generated"),
        (
            "llamacpp:spec_decode_num_accepted_tokens_total",
            m.draft_accepted,
            "Speculative: Total draft tokens accepted",
        ),
        ("llamacpp:spec_decode_num_drafts_total", m.draft_steps, "Speculative: Total verification steps"),
    ]
    gauges = [
        ("llamacpp:prompt_tokens_seconds", m.prompt_window.per_second(), "Average prompt throughput in tokens/s"),
        ("llamacpp:predicted_tokens_seconds", m.predicted_window.per_second(), "Average generation tokens/s"),
        ("llamacpp:requests_processing", sum(s.busy for s in engine.slots), "Number of requests processing"),
        ("llamacpp:requests_deferred", engine.queued, "Number of requests deferred"),
        ("llamacpp:n_busy_slots_per_decode", m.n_busy_slots / max(m.n_decode, 1), "Average busy slots per decode"),
    ]  # fmt: skip
    m.prompt_window, m.predicted_window = Throughput(), Throughput()
    cache = engine.cache
    loam_gauges = [
        ("loam:state_cache_bytes", cache.bytes, "bytes of saved conversation states"),
        ("loam:state_cache_entries", len(cache), "saved conversation states"),
    ]
    loam_counters = [
        ("loam:state_cache_hits_total", cache.hits, "saved states restored into a slot"),
        ("loam:scored_tokens_total", m.scored_tokens, "tokens evaluated for /score"),
        ("loam:draft_tokens_total", m.draft_tokens, "tokens drafted (lookup or draft model)"),
        ("loam:draft_accepted_total", m.draft_accepted, "drafted tokens the model agreed with"),
    ]
    if disk := cache.disk:
        loam_gauges += [
            ("loam:disk_cache_bytes", disk.bytes, "bytes of this model's states on disk"),
            ("loam:disk_cache_entries", len(disk.entries), "this model's states on disk"),
        ]
        loam_counters += [
            ("loam:disk_cache_hits_total", disk.hits, "states restored from disk"),
            ("loam:disk_cache_writes_total", disk.writes, "states written to disk"),
        ]
    return (
        _lines("counter", counters)
        + _lines("gauge", gauges)
        + _lines("gauge", loam_gauges)
        + _lines("counter", loam_counters)
    )
