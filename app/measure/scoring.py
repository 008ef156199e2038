"""Models for scoring: resolve them, load them with the server's scheduler in this process, and call /score.

`loam eval` needs no server: it drives the same `Scheduler` that `loam serve`
uses as a library, so runners are placed on the hardware and fall back on
memory errors exactly as they are for chat. Each model gets `parallel` slots
of `ctx` tokens and llama-perplexity's batch of 2048, so the runner packs
`parallel` windows into each llama_decode as llama-perplexity packs its
sequences.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app import config
from app.errors import LoamError, ModelNotFound

#: llama-perplexity's default -b: the most tokens one llama_decode takes.
N_BATCH = 2048


class ScoringError(LoamError):
    """A runner refused or failed a scoring request."""


@dataclass(frozen=True)
class Target:
    """A model to measure: what the scheduler needs to load it, and what results are stored under."""

    name: str
    digest: str
    path: Path
    adapters: tuple[Path, ...] = ()


def path_digest(path: Path) -> str:
    """A .gguf file's key: sha256 of its resolved path, size and mtime (hashing gigabytes each run would be slow)."""
    st = path.stat()
    key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def resolve(text: str, store: Any = None) -> Target:
    """A store name or a .gguf path; ModelNotFound as one line otherwise."""
    candidate = Path(text).expanduser()
    if text.endswith(".gguf") or candidate.is_file():
        if not candidate.is_file():
            raise ModelNotFound(f"{text}: no such model file")
        return Target(str(candidate), path_digest(candidate), candidate.resolve())
    from app.server.generate import resolve as resolve_name
    from app.store.store import Store

    found = resolve_name(store or Store.default(), text)
    return Target(found.name, found.digest, found.path, found.adapters)


def slots_for(ctx: int) -> int:
    """llama-perplexity's n_seq: as many windows of `ctx` as one batch of N_BATCH holds, at least one."""
    return max(1, N_BATCH // ctx)


@dataclass
class Scored:
    """One /score answer: per-window token log-probabilities, or full distributions."""

    logprobs: list[np.ndarray]  # per window, len(tokens) - from
    n_vocab: int
    tokens_evaluated: int
    dist: np.ndarray | None = None  # (rows, n_vocab) float32 log-probabilities when asked for


@dataclass
class Models:
    """The scheduler in this process, and the models loaded through it (held until `close`)."""

    ctx: int
    threads: int = 0
    num_gpu: int = -1
    max_loaded: int = 1
    parallel: int = field(init=False)
    _held: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        from app.hardware import detect, llama_backends
        from app.server.scheduler import Scheduler, Settings

        self.parallel = slots_for(self.ctx)
        settings = Settings(
            max_loaded=max(1, self.max_loaded),
            parallel=self.parallel,
            keep_alive=math.inf,
            log_dir=config.paths().logs,
            runner_timeout=0,  # a long scoring request answers only at its end
        )
        config.private_dir(settings.log_dir)
        self.scheduler = Scheduler(settings, detect, has_gpu_backend=bool(llama_backends()))
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0))

    def _request(self, target: Target) -> Any:
        from app.server.options import LoadOptions
        from app.server.scheduler import LoadRequest

        options = LoadOptions(
            num_ctx=self.ctx, num_batch=N_BATCH, num_gpu=self.num_gpu, num_thread=self.threads, parallel=self.parallel
        )
        return LoadRequest(target.name, target.digest, target.path, options, target.adapters)

    def fit_together(self, targets: Sequence[Target]) -> bool:
        """Whether every target's estimated memory fits in free RAM and GPU memory at once."""
        from app.hardware import detect, estimate

        try:
            need = 0
            for t in dict.fromkeys(targets):
                est = estimate(t.path, self.ctx * self.parallel, self.parallel, "f16", N_BATCH)
                need += est.weights + est.kv_bytes + est.compute_bytes
        except LoamError:
            return False
        inv = detect()
        return need <= inv.ram_free + sum(g.free for g in inv.gpus)

    def holds(self, target: Target) -> bool:
        """Whether `target` is loaded and held already."""
        return target.name in self._held

    async def load(self, target: Target, on_wait: Callable[[float], None] = lambda s: None) -> Any:
        """The loaded model (a scheduler `Loaded`), loading it if needed; `on_wait` gets the seconds waited so far."""
        if target.name in self._held:
            return self._held[target.name]
        started = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(self.scheduler.acquire(self._request(target), math.inf))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                on_wait(asyncio.get_running_loop().time() - started)
        except BaseException:
            task.cancel()  # Ctrl+C while loading: stop the load, not only the wait for it
            raise
        loaded = task.result()
        self._held[target.name] = loaded
        return loaded

    async def unload(self, target: Target) -> None:
        """Release a model and stop its runner now, making room for the next."""
        loaded = self._held.pop(target.name, None)
        if loaded is not None:
            self.scheduler.release(loaded)
            await self.scheduler.unload(target.name)

    async def close(self) -> None:
        for loaded in self._held.values():
            self.scheduler.release(loaded)
        self._held.clear()
        await self.scheduler.shutdown()
        await self.client.aclose()

    # -- runner calls ------------------------------------------------------------------------------

    async def _post(self, loaded: Any, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            r = await self.client.post(loaded.runner.url + path, json=body)
        except httpx.TransportError as e:
            if not loaded.runner.alive:
                raise ScoringError(f"{loaded.name}: {loaded.runner.failure()}") from None
            raise ScoringError(f"{loaded.name}: lost the runner ({e})") from None
        if r.status_code != 200:
            try:
                error = r.json().get("error", r.text)
                message = error.get("message", error) if isinstance(error, dict) else error
            except ValueError:
                message = r.text.strip() or f"status {r.status_code}"
            if r.status_code == 404:
                message = "this runner has no /score; it is older than loam eval"
            raise ScoringError(f"{loaded.name}: {path} failed: {message}")
        return r

    async def tokenize(self, loaded: Any, text: str) -> list[int]:
        """Tokens as llama-perplexity makes them: special tokens added (BOS), special text not parsed."""
        r = await self._post(loaded, "/tokenize", {"content": text, "add_special": True, "parse_special": False})
        return [int(t) for t in r.json()["tokens"]]

    async def bos(self, loaded: Any) -> int | None:
        """The BOS token when the model adds one (what tokenizing nothing with special tokens yields), else None."""
        tokens = await self.tokenize(loaded, "")
        return tokens[0] if tokens else None

    async def score(
        self, loaded: Any, windows: Sequence[tuple[Sequence[int], int]], distribution: bool = False
    ) -> Scored:
        """Score (tokens, from) windows: log p(tokens[j] | tokens[:j]) for j >= from, or full distributions."""
        body = {
            "windows": [{"tokens": list(tokens), "from": start} for tokens, start in windows],
            "top_k": 0,
            "distribution": distribution,
        }
        r = await self._post(loaded, "/score", body)
        if not distribution:
            data = r.json()
            logprobs = [np.asarray(w["logprobs"], dtype=np.float64) for w in data["windows"]]
            return Scored(logprobs, int(data["n_vocab"]), int(data.get("tokens_evaluated", 0)))
        rows, vocab = int(r.headers.get("X-Score-Rows", -1)), int(r.headers.get("X-Score-Vocab", -1))
        want = sum(len(tokens) - start for tokens, start in windows)
        if rows != want or vocab <= 0 or len(r.content) != rows * vocab * 4:
            raise ScoringError(
                f"{loaded.name}: /score sent {len(r.content)} bytes for {rows} x {vocab}, not {want} rows"
            )
        dist = np.frombuffer(r.content, dtype="<f4").reshape(rows, vocab)
        return Scored([], vocab, sum(len(t) for t, _ in windows), dist)
