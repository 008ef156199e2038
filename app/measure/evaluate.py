"""`loam eval MODEL [MODEL...]`: perplexity, KL divergence from a base model, multiple-choice accuracy.

Every model is measured on the same text, windows and tasks, with
llama-perplexity's method (see perplexity.py and choices.py for the exact
rules). Models load through the server's scheduler in this process; scoring
is the runner's POST /score, several windows per llama_decode. The table (or
--json) goes to stdout; load lines and a progress bar with ETA to stderr.
Ctrl+C prints what was measured so far (unsaved) and exits 130.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from app.display import human_duration
from app.errors import LoamError
from app.measure import choices as mc
from app.measure.perplexity import Divergence, Perplexity, first_scored, token_logprobs, windows
from app.measure.scoring import Models, Scored, Target, resolve

DEPTH = 2  # scoring requests in flight per model: the runner never waits for the next one
CHOICE_GROUP_TOKENS = 4096  # tokens of multiple-choice sequences per /score request
MAX_TEXT = 256 << 20


class EvalError(LoamError):
    """A bad eval argument or input file."""


@dataclass
class Row:
    """What was measured for one model."""

    target: Target
    is_base: bool = False
    ppl: Perplexity | None = None
    kld: Divergence | None = None
    acc: mc.Accuracy | None = None
    windows: int = 0
    tokens: int = 0  # evaluated for perplexity / KLD (whole windows, as llama-perplexity counts them)
    seconds: float = 0.0
    mc_tokens: int = 0  # evaluated for multiple choice
    mc_seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kld is not None and self.kld.count:
            out |= self.kld.figures()
        if self.ppl is not None and self.ppl.count:
            out["ppl"], out["ppl_err"], out["tokens_scored"] = self.ppl.ppl, self.ppl.error, self.ppl.count
        if out:
            out["windows"] = self.windows
        if self.acc is not None and self.acc.done:
            out |= {
                "accuracy": self.acc.accuracy,
                "accuracy_err": self.acc.stderr,
                "chance": self.acc.chance,
                "tasks": self.acc.done,
            }
        if self.seconds > 0 and self.tokens:
            out["tokens_per_second"] = self.tokens / self.seconds
            out["tokens_evaluated"] = self.tokens
        if self.mc_seconds > 0 and self.mc_tokens:
            out["choices_tokens_per_second"] = self.mc_tokens / self.mc_seconds
        return {k: v for k, v in out.items() if not (isinstance(v, float) and not math.isfinite(v))}


class Progress:
    """One line on stderr: a bar, tokens done of total, the rate and the ETA; redrawn in place on a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.label, self.total, self.done, self.started, self.drawn = "", 0, 0, 0.0, 0.0

    def say(self, line: str) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        self.stream.flush()

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.started = label, max(1, total), 0, time.perf_counter()
        self.draw(force=True)

    def advance(self, tokens: int) -> None:
        self.done += tokens
        self.draw()

    def draw(self, force: bool = False) -> None:
        """On a terminal, redraw at most 5 times a second; in a log, a line on the first step and every 10 s."""
        now = time.perf_counter()
        if self.tty:
            if not force and now - self.drawn < 0.2 and self.done < self.total:
                return
        elif not self.done or self.done >= self.total or (self.drawn > self.started and now - self.drawn < 10):
            return
        self.drawn = now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        eta = f"ETA {human_duration((self.total - self.done) / rate)}" if rate else "ETA -"
        if not self.tty:
            self.say(f"{self.label}: {self.done}/{self.total} tokens, {rate:.0f} tok/s, {eta}")
            return
        filled = int(24 * min(1.0, self.done / self.total))
        bar = "█" * filled + "░" * (24 - filled)
        self.stream.write(f"\r\033[K{self.label} {bar} {self.done}/{self.total} tokens  {rate:.0f} tok/s  {eta}")
        self.stream.flush()

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        self.say(f"{self.label}: {self.done} tokens in {human_duration(elapsed)} ({rate:.0f} tok/s)")


# -- inputs ----------------------------------------------------------------------------------------


@dataclass
class Inputs:
    text: str | None = None
    tasks: list[mc.Task] = field(default_factory=list)


def _inputs(args: argparse.Namespace) -> Inputs:
    if not (args.perplexity or args.choices):
        raise EvalError("nothing to measure: give --perplexity FILE (and --kld BASE) and/or --choices FILE")
    if args.kld and not args.perplexity:
        raise EvalError("--kld BASE compares models over a text: give it with --perplexity FILE")
    if args.ctx < 16:
        raise EvalError(f"--ctx {args.ctx} is too small: use at least 16 tokens (llama-perplexity's default is 512)")
    if args.chunks < 0 or args.tasks < 0 or args.threads < 0:
        raise EvalError("--chunks, --tasks and --threads cannot be negative")
    out = Inputs()
    if args.perplexity:
        path = Path(args.perplexity).expanduser()
        try:
            if path.stat().st_size > MAX_TEXT:
                raise EvalError(f"{path}: larger than {MAX_TEXT >> 20} MiB; cut it down")
            out.text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise EvalError(f"cannot read {path}: {e.strerror or e}") from None
        if not out.text.strip():
            raise EvalError(f"{path} is empty: give a text to compute perplexity on")
    if args.choices:
        path = Path(args.choices).expanduser()
        out.tasks = mc.select(mc.read(path), args.tasks)
        for i, task in enumerate(out.tasks):
            mc.check(task, f"{path}: task {i + 1}")
    return out


# -- measuring -------------------------------------------------------------------------------------


async def _pipeline(calls: Sequence[Callable[[], Awaitable[Any]]], handle: Callable[[Any], None]) -> None:
    """Run the calls DEPTH at a time in order, handing each result on as it lands."""
    pending: deque[asyncio.Future[Any]] = deque()
    try:
        for call in calls:
            pending.append(asyncio.ensure_future(call()))
            if len(pending) >= DEPTH:
                handle(await pending.popleft())
        while pending:
            handle(await pending.popleft())
    finally:
        for f in pending:
            f.cancel()


class Evaluation:
    """One `loam eval` run: its models, the figures so far, and the steps that fill them."""

    def __init__(self, args: argparse.Namespace, inputs: Inputs, targets: list[Target], base: Target | None) -> None:
        self.args, self.inputs, self.targets, self.base = args, inputs, targets, base
        self.progress = Progress()
        everything = ([base] if base else []) + targets
        self.models = Models(args.ctx, args.threads, args.num_gpu, max_loaded=len({t.name for t in everything}))
        self.rows = ([Row(base, is_base=True)] if base else []) + [Row(t) for t in targets]
        self.interrupted = False

    async def _load(self, target: Target) -> Any:
        if self.models.holds(target):
            return await self.models.load(target)
        said = [False]

        def waiting(seconds: float) -> None:
            if self.progress.tty:
                self.progress.stream.write(f"\r\033[Kloading {target.name} {seconds:.0f}s")
                self.progress.stream.flush()
            elif not said[0]:
                said[0] = True
                self.progress.say(f"loading {target.name}")

        loaded = await self.models.load(target, waiting)
        self.progress.say(
            f"loaded {target.name} in {loaded.load_seconds:.1f}s: {loaded.plan.processor()}, "
            f"{self.models.parallel} x {loaded.context_length} tokens"
        )
        return loaded

    async def run(self) -> None:
        try:
            if self.base:
                await self._divergence()
                return
            for row in self.rows:
                loaded = await self._load(row.target)
                if self.inputs.text is not None:
                    await self._perplexity(row, loaded)
                if self.inputs.tasks:
                    await self._choices(row, loaded)
                await self.models.unload(row.target)
        finally:
            await self.models.close()

    async def _windows(self, loaded: Any) -> list[list[int]]:
        assert self.inputs.text is not None
        tokens = await self.models.tokenize(loaded, self.inputs.text)
        wins = windows(tokens, self.args.ctx, self.args.chunks, await self.models.bos(loaded))
        if not wins:
            raise EvalError(
                f"{self.args.perplexity}: {len(tokens)} tokens for {loaded.name}, fewer than one window of "
                f"--ctx {self.args.ctx}; give a longer text or a smaller --ctx"
            )
        return wins

    async def _perplexity(self, row: Row, loaded: Any) -> None:
        wins = await self._windows(loaded)
        start, n = first_scored(self.args.ctx), self.models.parallel
        row.ppl = Perplexity()
        groups = [wins[i : i + n] for i in range(0, len(wins), n)]
        self.progress.start(f"{row.target.name} perplexity", len(wins) * self.args.ctx)
        began = time.perf_counter()

        def handle(scored: Scored) -> None:
            assert row.ppl is not None
            for logprobs in scored.logprobs:
                row.ppl.add(logprobs)
            row.windows += len(scored.logprobs)
            row.tokens += len(scored.logprobs) * self.args.ctx
            row.seconds = time.perf_counter() - began
            self.progress.advance(len(scored.logprobs) * self.args.ctx)

        calls = [lambda g=g: self.models.score(loaded, [(w, start) for w in g]) for g in groups]
        await _pipeline(calls, handle)
        self.progress.finish()

    async def _divergence(self) -> None:
        """Each window group scored once on the base, then on every model; with too little memory, pair by pair."""
        assert self.base is not None
        base_row, rows = self.rows[0], self.rows[1:]
        together = self.models.fit_together([self.base, *self.targets])
        base = await self._load(self.base)
        wins = await self._windows(base)
        start, n, ctx = first_scored(self.args.ctx), self.models.parallel, self.args.ctx
        groups = [wins[i : i + n] for i in range(0, len(wins), n)]
        base_row.ppl = Perplexity()
        batches = [rows] if together else [[row] for row in rows]
        for i, batch in enumerate(batches):
            loaded = [await self._load(row.target) for row in batch]
            for row, model in zip(batch, loaded, strict=True):
                if model.context_length < ctx:
                    raise EvalError(f"{row.target.name} loaded with {model.context_length} tokens a slot, not {ctx}")
                row.kld = Divergence()
            passes = (1 if i == 0 else 0) + len(batch)
            self.progress.start(
                f"KLD {', '.join(r.target.name for r in batch)} vs {self.base.name}", passes * len(wins) * ctx
            )
            for group in groups:
                request = [(w, start) for w in group]
                t0 = time.perf_counter()
                ref = await self.models.score(base, request, distribution=True)
                assert ref.dist is not None
                targets = np.concatenate([np.asarray(w[start:], dtype=np.int64) for w in group])
                if i == 0:
                    base_row.seconds += time.perf_counter() - t0
                    base_row.tokens += len(group) * ctx
                    base_row.windows += len(group)
                    base_row.ppl.add(token_logprobs(ref.dist, targets))
                    self.progress.advance(len(group) * ctx)
                for row, model in zip(batch, loaded, strict=True):
                    t0 = time.perf_counter()
                    got = await self.models.score(model, request, distribution=True)
                    assert got.dist is not None and row.kld is not None
                    if got.n_vocab != ref.n_vocab:
                        raise EvalError(
                            f"{row.target.name} has {got.n_vocab} tokens in its vocabulary and {self.base.name} "
                            f"{ref.n_vocab}: KL divergence compares models that share a tokenizer"
                        )
                    row.kld.add(ref.dist, got.dist, targets)
                    row.seconds += time.perf_counter() - t0
                    row.tokens += len(group) * ctx
                    row.windows += len(group)
                    self.progress.advance(len(group) * ctx)
                    del got
                del ref
            self.progress.finish()
            for row in batch:
                if self.inputs.tasks:
                    await self._choices(row, await self._load(row.target))
                if row.target != self.base:
                    await self.models.unload(row.target)

    async def _choices(self, row: Row, loaded: Any) -> None:
        tasks = self.inputs.tasks
        limit = asyncio.Semaphore(8)

        async def tokenize(text: str) -> list[int]:
            async with limit:
                return await self.models.tokenize(loaded, text)

        self.progress.say(f"{row.target.name}: tokenizing {len(tasks)} tasks")
        seqs = await asyncio.gather(*(tokenize(text) for task in tasks for text in mc.texts(task)))
        prepared, at = [], 0
        for i, task in enumerate(tasks):
            p = mc.prepare(seqs[at : at + len(task.choices)])
            at += len(task.choices)
            longest = max(len(s) for s in p.sequences)
            if longest > loaded.context_length:
                raise EvalError(
                    f"{self.args.choices}: task {i + 1} needs {longest} tokens, more than --ctx {loaded.context_length}"
                )
            prepared.append(p)
        groups: list[list[int]] = [[]]
        size = 0
        for i, p in enumerate(prepared):
            if groups[-1] and size + p.tokens > CHOICE_GROUP_TOKENS:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += p.tokens
        row.acc = mc.Accuracy()
        self.progress.start(f"{row.target.name} multiple choice", sum(p.tokens for p in prepared))
        began = time.perf_counter()

        def call(group: list[int]) -> Callable[[], Awaitable[tuple[list[int], Scored]]]:
            async def go() -> tuple[list[int], Scored]:
                request = [(s, prepared[i].prefix) for i in group for s in prepared[i].sequences]
                return group, await self.models.score(loaded, request)

            return go

        def handle(result: tuple[list[int], Scored]) -> None:
            group, scored = result
            assert row.acc is not None
            at = tokens = 0
            for i in group:
                k = len(prepared[i].sequences)
                row.acc.add(tasks[i], mc.choose(scored.logprobs[at : at + k]))
                at += k
                tokens += prepared[i].tokens
            row.mc_tokens += tokens
            row.mc_seconds = time.perf_counter() - began
            self.progress.advance(tokens)

        await _pipeline([call(g) for g in groups], handle)
        self.progress.finish()


# -- output ----------------------------------------------------------------------------------------


def _pm(value: Any, err: Any, digits: int, unit: str = "") -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if isinstance(err, (int, float)) and err > 0:
        return f"{value:.{digits}f} ± {err:.{digits}f}{unit}"
    return f"{value:.{digits}f}{unit}"


def table(rows: list[Row], base: Target | None) -> str:
    """The results, one line per model; only the columns something was measured for."""
    from app.display import table as layout

    columns: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
        ("PPL", lambda f: _pm(f.get("ppl"), f.get("ppl_err"), 4), "ppl"),
        ("KLD", lambda f: _pm(f.get("kld_mean"), f.get("kld_err"), 5), "kld_mean"),
        ("MEDIAN", lambda f: _pm(f.get("kld_median"), None, 5), "kld_median"),
        ("P99", lambda f: _pm(f.get("kld_p99"), None, 5), "kld_p99"),
        ("MAX", lambda f: _pm(f.get("kld_max"), None, 4), "kld_max"),
        ("SAME TOP", lambda f: _pm(f.get("same_top"), f.get("same_top_err"), 2, "%"), "same_top"),
        ("PPL RATIO", lambda f: _pm(f.get("ppl_ratio"), f.get("ppl_ratio_err"), 4), "ppl_ratio"),
        ("ACCURACY", lambda f: _pm(f.get("accuracy"), f.get("accuracy_err"), 2, "%"), "accuracy"),
        ("CHANCE", lambda f: _pm(f.get("chance"), None, 2, "%"), "chance"),
        ("TOK/S", lambda f: _pm(f.get("tokens_per_second", f.get("choices_tokens_per_second")), None, 0), "tok/s"),
    ]
    figures = [r.figures() for r in rows]
    for f in figures:
        if "tokens_per_second" in f or "choices_tokens_per_second" in f:
            f["tok/s"] = True
    used = [c for c in columns if any(c[2] in f for f in figures)]
    lines = [["MODEL", *(c[0] for c in used)]]
    for row, f in zip(rows, figures, strict=True):
        name = row.target.name + (" (base)" if row.is_base else "")
        lines.append([name, *(c[1](f) for c in used)])
    return layout(lines, gap=3)


def _settings(args: argparse.Namespace, evaluation: Evaluation, base: Target | None) -> dict[str, Any]:
    out: dict[str, Any] = {"parallel": evaluation.models.parallel, "batch": 2048}
    if args.perplexity:
        out |= {"text": Path(args.perplexity).name, "ctx": args.ctx, "chunks": args.chunks}
    if base:
        out["base"] = base.name
    if args.choices:
        out |= {"choices": Path(args.choices).name, "tasks": len(evaluation.inputs.tasks)}
    if args.threads:
        out["threads"] = args.threads
    if args.num_gpu >= 0:
        out["num_gpu"] = args.num_gpu
    return out


def run(args: argparse.Namespace) -> int:
    """The `loam eval` command; 130 after Ctrl+C, with what was measured printed."""
    inputs = _inputs(args)
    base = resolve(args.kld) if args.kld else None
    targets = [resolve(m) for m in args.models]
    evaluation = Evaluation(args, inputs, targets, base)

    async def main() -> None:
        work = asyncio.ensure_future(evaluation.run())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, work.cancel)
        try:
            await work
        except asyncio.CancelledError:
            evaluation.interrupted = True
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    asyncio.run(main())
    if evaluation.interrupted:
        evaluation.progress.say("interrupted: the figures below cover what was measured before Ctrl+C")
    settings = _settings(args, evaluation, base)
    if args.json:
        models = [
            {"name": r.target.name, "digest": r.target.digest, "base": r.is_base, "figures": r.figures()}
            for r in evaluation.rows
        ]
        out = {"models": models, "settings": settings, "interrupted": evaluation.interrupted}
        print(json.dumps(out, indent=2))
    else:
        print(table(evaluation.rows, base))
    if not evaluation.interrupted and not args.no_save:
        from app.measure import results

        for row in evaluation.rows:
            figures = row.figures()
            if figures:
                results.record("eval", row.target.digest, row.target.name, figures, settings)
    return 130 if evaluation.interrupted else 0
