"""`loam bench MODEL...`: closed-loop load tests through loam's server, or any Ollama, OpenAI or llama-server.

For each model and each `--concurrency` level it runs that many clients at
once (see app/measure/loadgen.py) and reports time to first token, inter-token
latency, per-stream and aggregate generation speed, and prompt speed. Through
loam the model is loaded with as many slots as the highest level, so no client
ever waits for a slot. The table goes to stdout (or JSON, or CSV); progress and
the chart go to stderr. Results through loam are remembered per model digest
(app/measure/results.py) for `loam show` and the chat's model picker.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from app.errors import LoamError
from app.measure import loadgen
from app.measure.loadgen import APIS, Api, Level, ProtocolError, Sample, figures, make_prompt

MAX_LEVEL = 64  # the most slots a model can be loaded with (num_parallel's limit)
WARMUP_GEN = 32  # tokens a warmup request generates at most: it loads and warms, it measures nothing

COLUMNS = (  # (JSON key, table heading)
    ("concurrency", "STREAMS"),
    ("slots", "SLOTS"),
    ("requests", "REQS"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p95_ms", "TTFT p95 ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p95_ms", "ITL p95 ms"),
    ("stream_tps", "STREAM tok/s"),
    ("aggregate_tps", "AGGREGATE tok/s"),
    ("prompt_tps", "PROMPT tok/s"),
    ("errors", "ERRORS"),
)


@dataclass(frozen=True)
class Settings:
    """The checked arguments of one `loam bench`."""

    models: tuple[str, ...]
    levels: tuple[int, ...]
    prompt_tokens: int
    gen: int
    requests: int  # per level; 0: two per client
    time_limit: float
    warmup: int
    target: str | None  # a base URL, or None for loam's own server
    api: str

    def total(self, concurrency: int) -> int:
        """Requests in a level: --requests, else two per client; never fewer than one per client, nor than 2."""
        return max(self.requests or 2 * concurrency, concurrency, 2)

    def num_ctx(self, context_length: int | None) -> int:
        """Context per slot: the prompt and the generation, with room for the prompt's calibration error."""
        need = self.prompt_tokens + self.gen + max(64, self.prompt_tokens // 8)
        return min(need, context_length) if context_length else need


@dataclass
class ModelRun:
    """One model's measurement: where it was served, its slots, its level figures, the level under way."""

    model: str
    url: str
    api: str
    slots: int | None = None
    digest: str | None = None  # loam's manifest digest, for the results store
    options: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0  # the calibrated estimate; the figures carry the measured mean
    levels: list[dict[str, Any]] = field(default_factory=list)
    current: Level | None = None
    complete: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "url": self.url,
            "api": self.api,
            "slots": self.slots,
            "complete": self.complete,
            "levels": self.levels,
        }


# -- arguments -----------------------------------------------------------------------------------------------------


def parse_levels(text: str) -> tuple[int, ...]:
    """`1,2,4,8` as sorted distinct levels; a bad one is a one-line error."""
    levels = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= MAX_LEVEL:
            raise LoamError(
                f"--concurrency {text!r}: {part!r} is not a number of clients from 1 to {MAX_LEVEL}; write e.g. 1,2,4,8"
            )
        levels.add(int(part))
    return tuple(sorted(levels))


def target_url(text: str) -> str:
    """A base URL from what a user types: `host:port`, `http://host:port/`, or an OpenAI base ending in /v1."""
    url = text.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise LoamError(f"--target {text!r} is not an http:// URL; write e.g. http://127.0.0.1:8080")
    return url.removesuffix("/v1")


def settings_of(args: argparse.Namespace) -> Settings:
    """The arguments checked, each mistake one line naming the flag."""
    checks = (
        (args.prompt_tokens < 8, f"--prompt-tokens {args.prompt_tokens}: give at least 8 tokens"),
        (args.gen < 1, f"--gen {args.gen}: generate at least 1 token per request"),
        (args.requests < 0, f"--requests {args.requests}: give a positive number (0: two per client)"),
        (not args.time_limit > 0, f"--time-limit {args.time_limit}: give a positive number of seconds"),
        (args.warmup < 0, f"--warmup {args.warmup}: give 0 or more requests"),
        (args.json and args.csv, "--json and --csv: choose one"),
        (args.api and not args.target, f"--api {args.api} needs --target URL: loam's own server speaks ollama"),
    )
    for bad, message in checks:
        if bad:
            raise LoamError(message)
    api = args.api or "ollama"
    if args.target and api != "llama-server" and not args.models:
        raise LoamError(f"--target with --api {api}: name the MODEL to measure, as that server calls it")
    if not args.target and not args.models:
        raise LoamError("name the models to measure, e.g. loam bench smollm2:135m")
    return Settings(
        models=tuple(dict.fromkeys(args.models)) or ("",),
        levels=parse_levels(args.concurrency),
        prompt_tokens=args.prompt_tokens,
        gen=args.gen,
        requests=args.requests,
        time_limit=args.time_limit,
        warmup=args.warmup,
        target=target_url(args.target) if args.target else None,
        api=api,
    )


# -- preparing a model ---------------------------------------------------------------------------------------------


def _get(url: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    try:
        if body is None:
            return httpx.get(url + path, timeout=30)
        return httpx.post(url + path, json=body, timeout=30)
    except httpx.TimeoutException:
        raise LoamError(f"the server at {url} did not answer within 30 s; is it overloaded?") from None
    except httpx.HTTPError:
        raise LoamError(f"no server answers at {url}; is it running?") from None


def _json_of(response: httpx.Response) -> dict[str, Any]:
    """A 200 answer's JSON object; {} for anything else: a server of another kind then fails later, in words."""
    try:
        data = response.json() if response.status_code == 200 else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _context_length(shown: dict[str, Any]) -> int | None:
    info = shown.get("model_info") or shown.get("modelinfo") or {}
    values = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)]
    return values[0] if values else None


def prepare_loam(settings: Settings) -> list[ModelRun]:
    """Each model checked in loam's store (starting `loam serve` as `loam ask` does), with its load options."""
    from app.client import ensure_server
    from app.errors import InvalidName
    from app.store.names import ModelName

    url = "http://" + ensure_server()
    served = {m.get("name"): m for m in _json_of(_get(url, "/api/tags")).get("models", []) if isinstance(m, dict)}
    runs = []
    for text in settings.models:
        try:
            name = ModelName.parse(text).display
        except InvalidName:
            raise LoamError(f"{text!r} is not a model name; see `loam list`") from None
        if name not in served:
            raise LoamError(f"model {text!r} is not in the store; pull it with `loam pull {text}` (see `loam list`)")
        context = _context_length(_json_of(_get(url, "/api/show", {"model": name})))
        if context and settings.prompt_tokens + settings.gen + 8 > context:
            raise LoamError(f"{name} holds {context} tokens of context: --prompt-tokens plus --gen must fit in it")
        digest = "sha256:" + str(served[name].get("digest") or "").removeprefix("sha256:")
        slots = max(settings.levels)
        # stream_interval 0: each token is a chunk of its own, so ITL is the time between tokens
        options = {"num_parallel": slots, "num_ctx": settings.num_ctx(context), "stream_interval": 0}
        runs.append(ModelRun(text, url, "ollama", slots, digest, options))  # named as the user wrote it
    return runs


def prepare_target(settings: Settings) -> list[ModelRun]:
    """Each model on another server, checked there where its API can say; llama-server's slots from /props."""
    url, api = settings.target or "", settings.api
    runs = []
    for model in settings.models:
        run = ModelRun(model, url, api)
        if api == "llama-server":
            data = _json_of(_get(url, "/props"))
            run.slots = data.get("total_slots") if isinstance(data.get("total_slots"), int) else None
            slot_ctx = (data.get("default_generation_settings") or {}).get("n_ctx")
            if isinstance(slot_ctx, int) and slot_ctx < settings.prompt_tokens + settings.gen + 8:
                raise LoamError(
                    f"{url}'s slots hold {slot_ctx} tokens, too few for --prompt-tokens plus --gen; "
                    "start it with a larger -c"
                )
            run.model = model or Path(str(data.get("model_path") or "llama-server")).name
        elif api == "ollama":
            shown = _get(url, "/api/show", {"model": model})
            if shown.status_code == 404:
                raise LoamError(f"{url} has no model {model!r}; see its /api/tags")
            context = _context_length(_json_of(shown))
            run.options = {"num_ctx": settings.num_ctx(context), "num_parallel": max(settings.levels)}
        else:
            listed = _json_of(_get(url, "/v1/models")).get("data")
            ids = [m.get("id") for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
            if ids and model not in ids:
                raise LoamError(f"{url} does not serve {model!r}; it serves {', '.join(map(str, ids[:8]))}")
        runs.append(run)
    return runs


# -- measuring -----------------------------------------------------------------------------------------------------


class Progress:
    """Level, requests done and elapsed time on stderr: one line kept fresh on a terminal, a line per step otherwise."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.tty = err.isatty()
        self.shown = False

    def note(self, text: str) -> None:
        self.clear()
        self.err.write(text + "\n")
        self.err.flush()

    def live(self, text: str) -> None:
        if self.tty:
            self.err.write("\r\x1b[2K" + text)
            self.err.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\x1b[2K")
            self.shown = False


async def measure(run: ModelRun, settings: Settings, progress: Progress) -> None:
    """Calibrate the prompt, warm up, then run every level, appending each level's figures to `run.levels`."""
    api: Api = APIS[run.api]()
    rng = random.Random()
    limits = httpx.Limits(max_connections=max(settings.levels) + 4, max_keepalive_connections=max(settings.levels) + 4)
    async with httpx.AsyncClient(base_url=run.url, timeout=loadgen.TIMEOUT, limits=limits) as http:
        progress.live(f"{run.model}: loading and measuring the prompt length")
        try:
            target = settings.prompt_tokens
            units, run.prompt_tokens = await loadgen.calibrate(http, api, run.model, target, run.options, rng)
        except ProtocolError as e:
            raise LoamError(f"{run.model} at {run.url}: {e}") from None
        except httpx.HTTPError as e:
            raise LoamError(f"{run.model} at {run.url}: {type(e).__name__} {e}".rstrip()) from None
        for i in range(settings.warmup):
            progress.live(f"{run.model}: warmup {i + 1}/{settings.warmup}")
            sample = Sample(time.perf_counter())
            gen = min(settings.gen, WARMUP_GEN)
            await loadgen.send(http, api, run.model, make_prompt(units, rng), gen, run.options, sample)
            if sample.error:
                raise LoamError(f"{run.model} at {run.url}: the warmup request failed: {sample.error}")
        for concurrency in settings.levels:
            streams = f"{concurrency} stream" + ("s" if concurrency > 1 else "")
            level = run.current = Level(concurrency, settings.total(concurrency))
            measuring = asyncio.create_task(
                loadgen.run_level(
                    http,
                    api,
                    run.model,
                    lambda: make_prompt(units, rng),
                    settings.gen,
                    run.options,
                    level,
                    settings.time_limit,
                    run.prompt_tokens,
                )  # fmt: skip
            )
            while not measuring.done():
                elapsed = time.perf_counter() - level.started if level.started else 0.0
                progress.live(f"{run.model}: {streams}, {level.done}/{level.total} done, {elapsed:.0f}s")
                await asyncio.wait({measuring}, timeout=0.5)
            measuring.result()
            row = figures(level, run.slots)
            run.levels.append(row)
            run.current = None
            cut = f", {row['cut']} cut at the time limit" if row["cut"] else ""
            done = f"{row['requests']}/{level.total} requests in {level.wall:.1f}s"
            progress.note(f"{run.model}: {streams}, {done}{cut}")
            if level.errors:
                failed = f"{len(level.errors)} requests at {streams} failed"
                progress.note(f"{run.model}: {failed}; first: {level.errors[0].error}")
    run.complete = True


def _partial(run: ModelRun) -> None:
    """After Ctrl+C: the level under way, when it finished any request, joins the table marked partial."""
    level, run.current = run.current, None
    if level is not None and level.done:
        if not level.wall:
            level.wall = time.perf_counter() - level.started
        run.levels.append(figures(level, run.slots) | {"partial": True})


# -- output --------------------------------------------------------------------------------------------------------


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if key.endswith("_ms") and value >= 100 else f"{value:.1f}"
    return str(value)


def table(runs: list[ModelRun], settings: Settings) -> str:
    """One row per model and level, aligned; a line above each model's rows says how it was measured."""
    heads = ["MODEL"] + [head for _, head in COLUMNS]
    rows: list[list[str]] = []
    for run in runs:
        for row in run.levels:
            level = _cell("concurrency", row["concurrency"]) + ("*" if row.get("partial") else "")
            cells = [run.model, level] + [_cell(k, row.get(k)) for k, _ in COLUMNS[1:]]
            cells[2] = cells[2] if row.get("slots") is not None else "?"
            rows.append(cells)
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    lines = [_describe(run, settings) for run in runs]
    lines += ["", fmt(heads), *map(fmt, rows)]
    if any(row.get("partial") for run in runs for row in run.levels):
        lines.append("* interrupted: figures of the requests that finished before Ctrl+C")
    lines += _notes(runs, settings)
    return "\n".join(lines) + "\n"


def _describe(run: ModelRun, settings: Settings) -> str:
    where = "loam" if run.url and settings.target is None else f"{run.api} at {run.url}"
    slots = f"{run.slots} slots" if run.slots else "slots unknown"
    prompt = [r["prompt_tokens"] for r in run.levels if r.get("prompt_tokens")]
    measured = f" (measured {round(sum(prompt) / len(prompt))})" if prompt else ""
    return (
        f"{run.model} through {where}: {slots}, prompts of {settings.prompt_tokens} tokens{measured}, "
        f"{settings.gen} generated per request"
    )


def _notes(runs: list[ModelRun], settings: Settings) -> list[str]:
    short = [r for run in runs for r in run.levels if r.get("gen_tokens") and r["gen_tokens"] < settings.gen - 0.5]
    if not short:
        return []
    least = min(r["gen_tokens"] for r in short)
    return [
        f"note: some requests stopped early (as few as {least:.1f} tokens on average of {settings.gen}); "
        "the server was asked to ignore end-of-text but did not, so figures use the tokens actually generated"
    ]


def csv_text(runs: list[ModelRun]) -> str:
    out = io.StringIO()
    keys = [k for k, _ in COLUMNS] + ["cut", "prompt_tokens", "gen_tokens", "wall_s", "partial"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "api", "url", *keys])
    for run in runs:
        for row in run.levels:
            writer.writerow([run.model, run.api, run.url, *("" if row.get(k) is None else row.get(k) for k in keys)])
    return out.getvalue()


def json_text(runs: list[ModelRun], settings: Settings, interrupted: bool) -> str:
    head = {
        "prompt_tokens": settings.prompt_tokens,
        "gen": settings.gen,
        "concurrency": list(settings.levels),
        "requests": settings.requests,
        "time_limit": settings.time_limit,
        "warmup": settings.warmup,
        "target": settings.target,
        "api": settings.api if settings.target else "loam",
    }
    return json.dumps({"settings": head, "models": [r.as_json() for r in runs], "interrupted": interrupted}, indent=2)


def remember(run: ModelRun, settings: Settings) -> None:
    """Store a finished run through loam under the model's digest; `loam show` reads gen_tps_1 and the best level."""
    from app.measure import results

    levels = [r for r in run.levels if not r.get("partial")]
    best = max((r for r in levels if r.get("aggregate_tps")), key=lambda r: r["aggregate_tps"], default=None)
    if not run.digest or best is None:
        return
    figures: dict[str, Any] = {"best_aggregate_tps": best["aggregate_tps"], "best_concurrency": best["concurrency"]}
    first = levels[0]
    if first["concurrency"] == 1 and first.get("stream_tps"):
        figures["gen_tps_1"] = first["stream_tps"]
        figures["prompt_tps_1"] = first.get("prompt_tps")
        figures["ttft_p50_ms_1"] = first.get("ttft_p50_ms")
    figures["levels"] = levels
    used = {"prompt_tokens": settings.prompt_tokens, "gen": settings.gen, "concurrency": list(settings.levels)}
    results.record("bench", run.digest, run.model, figures, used | {"slots": run.slots, "requests": settings.requests})


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`loam bench`: measure every model at every level, print the results; 130 after Ctrl+C with what was measured."""
    out, err = out or sys.stdout, err or sys.stderr
    settings = settings_of(args)
    runs = prepare_target(settings) if settings.target else prepare_loam(settings)
    progress = Progress(err)

    async def measure_all() -> None:
        for model_run in runs:
            await measure(model_run, settings, progress)

    interrupted, failure = False, None
    try:
        asyncio.run(measure_all())
    except KeyboardInterrupt:
        interrupted = True
    except LoamError as e:
        failure = e
    for model_run in runs:
        _partial(model_run)
    progress.clear()
    if failure is not None and not any(r.levels for r in runs):
        raise failure
    _print(runs, settings, out, err, args, interrupted)  # after a failure too: what was measured before it
    if failure is not None:
        raise failure
    if not args.no_save and settings.target is None:
        for model_run in runs:
            if model_run.complete:
                remember(model_run, settings)
    return 130 if interrupted else 0


def _print(
    runs: list[ModelRun], settings: Settings, out: TextIO, err: TextIO, args: argparse.Namespace, interrupted: bool
) -> None:
    shown = [r for r in runs if r.levels]
    if args.json:
        out.write(json_text(shown, settings, interrupted) + "\n")
    elif args.csv:
        out.write(csv_text(shown))
    elif shown:
        out.write(table(shown, settings))
    out.flush()
    if interrupted:
        err.write("interrupted: printed what was measured so far\n")
    if shown and err.isatty() and not args.no_chart:
        from app.measure.chart import render

        chart = render([(r.model, r.levels) for r in shown])
        if chart:
            err.write("\n" + chart + "\n")
    err.flush()
