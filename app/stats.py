"""The timing figures of one answer and how loam prints them, shared by `ask` and the TUI.

The figures are the server's own (Ollama's final-chunk fields, in nanoseconds);
nothing here re-times anything. `verbose_lines` prints them exactly as
`ollama run --verbose` does, so scripts that parse Ollama's output parse loam's.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
    "draft_count",
    "draft_accepted_count",
    "prompt_cache_count",
)


class Stats(NamedTuple):
    """One answer's figures: durations in nanoseconds, counts in tokens.

    A NamedTuple, not a dataclass: `loam ask` imports it, and the dataclasses
    module (with inspect) is a tenth of ask's start-up.
    """

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    draft_count: int = 0  # loam's: tokens drafted and verified (0 from other servers)
    draft_accepted_count: int = 0
    prompt_cache_count: int = 0  # loam's: prompt tokens served from the slot's cache, not evaluated

    @classmethod
    def from_response(cls, final: dict[str, Any]) -> Stats:
        """The figures of a final `done` chunk; absent or malformed ones count as 0."""
        values = {}
        for name in FIELDS:
            value = final.get(name, 0)
            values[name] = int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
        return cls(**values)

    @property
    def prompt_eval_rate(self) -> float:
        """Prompt tokens evaluated per second (0 when none were)."""
        return rate(self.prompt_eval_count, self.prompt_eval_duration)

    @property
    def eval_rate(self) -> float:
        """Generated tokens per second (0 when none were)."""
        return rate(self.eval_count, self.eval_duration)

    def to_dict(self) -> dict[str, int]:
        return self._asdict()


def rate(count: int, duration_ns: int) -> float:
    return count / (duration_ns / 1e9) if duration_ns > 0 else 0.0


def go_duration(ns: int) -> str:
    """A duration as Go's time.Duration prints it (Ollama's format): 1.5s, 12.345ms, 417µs, 2m3.5s."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{_fraction(rest, 1_000_000_000)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _fraction(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    digits = len(str(unit)) - 1
    tail = f"{part:0{digits}d}".rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


def verbose_lines(stats: Stats) -> list[str]:
    """The eight lines `ollama run --verbose` prints after an answer, and a ninth when drafts were verified."""
    return [
        f"total duration:       {go_duration(stats.total_duration)}",
        f"load duration:        {go_duration(stats.load_duration)}",
        f"prompt eval count:    {stats.prompt_eval_count} token(s)",
        f"prompt eval duration: {go_duration(stats.prompt_eval_duration)}",
        f"prompt eval rate:     {stats.prompt_eval_rate:.2f} tokens/s",
        f"eval count:           {stats.eval_count} token(s)",
        f"eval duration:        {go_duration(stats.eval_duration)}",
        f"eval rate:            {stats.eval_rate:.2f} tokens/s",
    ] + ([draft_line(stats)] if stats.draft_count else [])


def draft_line(stats: Stats) -> str:
    """How speculative decoding fared: `drafted N, accepted M`."""
    return f"speculative:          drafted {stats.draft_count}, accepted {stats.draft_accepted_count}"


def short_duration(ns: int) -> str:
    """A compact duration for narrow panels: 840 ms, 1.24 s, 2m05s."""
    seconds = ns / 1e9
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f} µs"
    if seconds < 60:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class LiveRate:
    """An estimate of the eval rate while an answer streams: streamed pieces per second since the first.

    The server sends about one piece per token; the final chunk's figure replaces
    this estimate when the answer ends.
    """

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self.clock = clock
        self.first: float | None = None
        self.last: float | None = None
        self.pieces = 0

    def piece(self) -> None:
        now = self.clock()
        if self.first is None:
            self.first = now
        else:
            self.pieces += 1
        self.last = now

    @property
    def rate(self) -> float:
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return self.pieces / (self.last - self.first)
