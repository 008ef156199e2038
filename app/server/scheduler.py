"""The scheduler: which models are loaded, for how long, and on what hardware.

Models load on demand, one load at a time. A loaded model stays for its
keep-alive after its last request, then its runner is stopped. Before a load,
idle runners are evicted while the count limit is reached or the new model's
plan does not fit in free memory. A model whose load options changed is
reloaded once its requests finish. A load that fails for memory is retried
with the hardware plan's fallback (fewer GPU layers, then the CPU).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.config import few_cores
from app.errors import ConfigError, LoamError
from app.hardware import Inventory, MemoryEstimate, Plan, estimate, fallback, plan
from app.server.options import LoadOptions
from app.server.runners import Runner, RunnerCommand, RunnerError, stop_grace

log = logging.getLogger("loam.server")


class QueueFull(LoamError):
    """More requests are waiting than the server accepts (HTTP 503)."""


def seconds_from_env(name: str, default: float, most: float = math.inf) -> float:
    """Seconds from environment variable `name`, 0 to `most`; ConfigError for anything else."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 <= seconds <= most):
        within = "" if math.isinf(most) else f" from 0 to {most:g}"
        raise ConfigError(f"{name}: {text!r} is not a number of seconds{within}")
    return seconds


def runner_timeout_from_env() -> float:
    """LOAM_RUNNER_TIMEOUT: seconds a runner may send nothing on an active request (0 turns the watchdog off)."""
    return seconds_from_env("LOAM_RUNNER_TIMEOUT", 60.0)


def stream_interval_from_env(cores: int | None = None) -> float:
    """LOAM_STREAM_INTERVAL: seconds a streamed answer's tokens gather in the runner to be sent as one chunk.

    On a machine of few cores (app.config.few_cores), every chunk wakes the runner's sender,
    the server and its client, each time taking a core from the model's
    threads: chunks a twentieth of a second apart cost the server a third of
    its CPU per token. An answer's first and last tokens are never held.
    """
    return seconds_from_env("LOAM_STREAM_INTERVAL", 0.05 if few_cores(cores) else 0.0, most=1.0)


@dataclass(frozen=True)
class Settings:
    """Server limits, from the environment and config.toml."""

    max_loaded: int = 3
    max_queue: int = 512
    parallel: int = 1
    keep_alive: float = 300.0
    kv_cache_type: str = "f16"
    llama_server: Path | None = None  # config.toml [runner] llama_server: used when loam's runner cannot drive the GPUs
    log_dir: Path = Path(".")
    runner_timeout: float = field(default_factory=runner_timeout_from_env)  # the no-progress watchdog; 0 is off
    stream_interval: float = field(default_factory=stream_interval_from_env)  # streamed tokens gather this long
    state_dir: Path | None = None  # where loam's runners keep conversation states past RAM (None: nowhere)
    state_dir_bytes: int = 0  # LOAM_CACHE_DISK: what that folder may hold in all


@dataclass(frozen=True)
class LoadRequest:
    """A model to have loaded: what the route resolved from the store."""

    name: str
    digest: str
    model: Path
    options: LoadOptions
    adapters: tuple[Path, ...] = ()
    draft: Path | None = None  # the DRAFT model's GGUF; options.draft_num_predict is how many tokens it proposes


@dataclass(eq=False)
class Loaded:
    """A loaded model: its runner, its plan, and who is using it."""

    request: LoadRequest
    runner: Runner
    plan: Plan
    estimate: MemoryEstimate
    load_seconds: float
    context_length: int
    refs: int = 0
    keep_alive: float = 300.0
    expires_at: float = math.inf  # time.time() when it unloads; inf while in use or kept forever
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = field(default_factory=time.perf_counter)  # when the load finished
    timer: asyncio.TimerHandle | None = None
    unload_when_idle: bool = False  # its model was deleted while requests were using it

    @property
    def name(self) -> str:
        return self.request.name


def load_mode_args(use_mmap: bool | None, use_mlock: bool) -> list[str]:
    """llama-server's --load-mode (which loam's runner takes too) for Ollama's use_mmap and use_mlock;
    nothing when both are left to the runner. mlock without a say on mapping locks the mapped file, as before."""
    if use_mmap is None and not use_mlock:
        return []
    mode = "none" if use_mmap is False else "mmap"
    if use_mlock:
        mode = "mlock" if use_mmap is False else "mmap+mlock"
    return ["--load-mode", mode]


class Scheduler:
    """Loads, shares, expires and evicts runners; all calls on the server's event loop."""

    def __init__(self, settings: Settings, inventory: Callable[[], Inventory], has_gpu_backend: bool) -> None:
        self.settings = settings
        self._inventory = inventory
        self._has_gpu_backend = has_gpu_backend
        self.loaded: dict[str, Loaded] = {}
        self._stopping: set[asyncio.Task[None]] = set()  # runners told to stop, still writing their states
        self._cond = asyncio.Condition()
        self.in_flight = 0

    # -- requests --------------------------------------------------------

    async def acquire(self, req: LoadRequest, keep_alive: float) -> Loaded:
        """The loaded model for `req`, loading it if needed; the caller must `release` it."""
        if self.in_flight >= self.settings.max_queue:
            raise QueueFull("server busy, please try again: maximum pending requests exceeded")
        self.in_flight += 1
        try:
            async with self._cond:
                loaded = await self._get_or_load(req)
                loaded.refs += 1
                loaded.keep_alive = keep_alive
                loaded.unload_when_idle = False  # resolved again from the store, so it exists again
                loaded.expires_at = math.inf
                if loaded.timer:
                    loaded.timer.cancel()
                    loaded.timer = None
                return loaded
        except BaseException:
            self.in_flight -= 1
            raise

    def release(self, loaded: Loaded) -> None:
        """A request is done with `loaded`; start its keep-alive when nobody else uses it."""
        self.in_flight -= 1
        loaded.refs -= 1
        loaded.last_used = time.monotonic()
        if loaded.refs == 0:
            if not loaded.runner.alive:
                self._forget(loaded)
            elif loaded.keep_alive <= 0 or loaded.unload_when_idle:
                asyncio.get_running_loop().create_task(self._expire(loaded))
            elif math.isfinite(loaded.keep_alive):
                loaded.expires_at = time.time() + loaded.keep_alive
                loaded.timer = asyncio.get_running_loop().call_later(
                    loaded.keep_alive, lambda: asyncio.get_running_loop().create_task(self._expire(loaded))
                )
        asyncio.get_running_loop().create_task(self._notify())

    def runner_failed(self, loaded: Loaded) -> None:
        """A request saw the runner die: drop it so the next request loads the model again."""
        if not loaded.runner.alive:
            self._forget(loaded)

    async def unload(self, name: str) -> bool:
        """Unload a model now (waiting for its requests to end, then its runner); False if it was not loaded."""
        stopping = None
        async with self._cond:
            loaded = self.loaded.get(name)
            if loaded is None:
                return False
            await self._cond.wait_for(lambda: loaded.refs == 0)
            if self.loaded.get(name) is loaded:
                stopping = self._stop(loaded)
        if stopping is not None:
            await stopping  # outside the lock: other models' requests go on meanwhile
        return True

    async def unload_model(self, name_or_digest: str) -> bool:
        """A model is being deleted: stop its runners now, without waiting; False if none was loaded.

        Idle runners stop at once. One still answering requests stops as soon
        as its last request ends, and the caller does not wait for that.
        """
        matches = [m for m in self.loaded.values() if name_or_digest in (m.name, m.request.digest)]
        stopping = []
        for loaded in matches:
            if loaded.refs > 0:
                loaded.unload_when_idle = True
                continue
            async with self._cond:
                if loaded.refs == 0 and self.loaded.get(loaded.name) is loaded:
                    stopping.append(self._stop(loaded))
                else:
                    loaded.unload_when_idle = True
        await asyncio.gather(*stopping)  # outside the lock: other models' requests go on meanwhile
        return bool(matches)

    async def shutdown(self) -> None:
        async with self._cond:
            for loaded in list(self.loaded.values()):
                self._stop(loaded)
        await asyncio.gather(*self._stopping)  # together: each may be writing its states

    def kill_all(self) -> None:
        """Last resort at interpreter exit: no runner outlives the server."""
        for loaded in self.loaded.values():
            loaded.runner.kill_now()

    # -- loading ---------------------------------------------------------

    async def _get_or_load(self, req: LoadRequest) -> Loaded:
        while True:
            loaded = self.loaded.get(req.name)
            if loaded is None:
                break
            if not loaded.runner.alive:
                self._forget(loaded)
                break
            if loaded.request == req:
                return loaded
            # Load options or the model itself changed: reload once its requests end.
            old = loaded
            await self._cond.wait_for(lambda old=old: old.refs == 0 or self.loaded.get(req.name) is not old)
            if self.loaded.get(req.name) is loaded:
                await self._stop(loaded)  # its memory must be free before the reload is planned
        return await self._load(req)

    async def _load(self, req: LoadRequest) -> Loaded:
        started = time.perf_counter()
        opts = req.options
        shape = (opts.num_ctx * opts.parallel, opts.parallel, self.settings.kv_cache_type, opts.num_batch)
        est = await asyncio.to_thread(estimate, req.model, *shape)
        if req.draft is not None:  # loaded in the same runner, with the same context and slots
            est = est.with_draft(await asyncio.to_thread(estimate, req.draft, *shape))
        current, inventory = await self._make_room(est, opts.num_gpu)
        while True:
            runner = self._start(req, current, inventory)
            try:
                await runner.wait_ready()
                break
            except RunnerError as e:
                await runner.stop()
                inventory = await asyncio.to_thread(self._inventory)
                retry = fallback(current, est, inventory) if e.kind == "oom" else None
                if retry is None:
                    raise
                log.warning(
                    "%s: %s; retrying with %d GPU layers (%s)", req.name, e, retry.n_gpu_layers, retry.processor()
                )
                current = retry
            except BaseException:
                await runner.stop()
                raise
        props = await runner.props()
        n_ctx = int(props.get("default_generation_settings", {}).get("n_ctx") or opts.num_ctx)
        loaded = Loaded(req, runner, current, est, time.perf_counter() - started, n_ctx)
        self.loaded[req.name] = loaded
        log.info("loaded %s in %.2fs: %s, context %d", req.name, loaded.load_seconds, current.processor(), n_ctx)
        return loaded

    async def _make_room(self, est: MemoryEstimate, num_gpu: int) -> tuple[Plan, Inventory]:
        """Evict idle runners, least recently used first, until the model fits or none is left."""
        if self._stopping:
            await asyncio.gather(*self._stopping)  # runners on their way out still hold their memory
        while True:
            inventory = await asyncio.to_thread(self._inventory)
            chosen = plan(est, inventory, None if num_gpu < 0 else num_gpu)
            full = len(self.loaded) >= self.settings.max_loaded
            if not full and self._fits(est, chosen, inventory, num_gpu):
                return chosen, inventory
            idle = [m for m in self.loaded.values() if m.refs == 0]
            if not idle:
                if full:
                    await self._cond.wait()  # a request ends, then look again
                    continue
                return chosen, inventory  # nothing to evict: load as planned, and the fallback copes
            victim = min(idle, key=lambda m: m.last_used)
            log.info("evicting %s to make room", victim.name)
            await self._stop(victim)

    def _fits(self, est: MemoryEstimate, chosen: Plan, inventory: Inventory, num_gpu: int) -> bool:
        if chosen.cpu_bytes > inventory.ram_free:
            return False
        if num_gpu < 0 and inventory.gpus and self.loaded:
            # Would all of it go to the GPUs if the others were gone? Then make them go.
            return chosen.n_gpu_layers > est.n_layers
        return True

    def _start(self, req: LoadRequest, chosen: Plan, inventory: Inventory) -> Runner:
        opts = req.options
        command = self._command(inventory)
        args = [
            "--ctx-size", str(opts.num_ctx * opts.parallel), "--parallel", str(opts.parallel),
            "--batch-size", str(opts.num_batch), *chosen.runner_args(),
        ]  # fmt: skip
        if opts.num_thread:
            args += ["--threads", str(opts.num_thread)]
        args += load_mode_args(opts.use_mmap, opts.use_mlock)
        if self.settings.kv_cache_type != "f16":
            args += ["--cache-type-k", self.settings.kv_cache_type, "--cache-type-v", self.settings.kv_cache_type]
        for adapter in req.adapters:
            args += ["--lora", str(adapter)]
        if req.draft is not None:  # llama-server takes the same two flags
            args += ["--model-draft", str(req.draft), "--draft-max", str(opts.draft_num_predict)]
        args.append("--context-shift")  # a long answer drops old tokens and goes on, as Ollama's does
        if command.llama_server is None:
            # loam's runner serves completions and embeddings from one context, and cuts a prompt too long for it
            args += ["--embedding", "--pooling", "mean", "--truncate-prompts"]
            if self.settings.state_dir is not None and self.settings.state_dir_bytes >> 20 > 0:
                args += ["--cache-disk", str(self.settings.state_dir), "--cache-key", req.model.name]  # sha256-...
                args += ["--cache-disk-size", str(self.settings.state_dir_bytes >> 20)]
        disk = self.settings.state_dir_bytes if command.llama_server is None and self.settings.state_dir else 0
        return Runner(
            command, req.model, args, self.settings.log_dir, self.settings.runner_timeout, stop_grace(disk),
            stream_interval=self.settings.stream_interval,
        )  # fmt: skip

    def _command(self, inventory: Inventory) -> RunnerCommand:
        """llama-server when one is configured and the GPUs need a backend loam's llama.cpp lacks."""
        server = self.settings.llama_server
        if server and not self._has_gpu_backend and inventory.gpus:
            return RunnerCommand(server)
        return RunnerCommand(None)

    # -- unloading -------------------------------------------------------

    async def _expire(self, loaded: Loaded) -> None:
        async with self._cond:
            if loaded.refs == 0 and self.loaded.get(loaded.name) is loaded:
                self._stop(loaded)

    def _stop(self, loaded: Loaded) -> asyncio.Task[None]:
        """Forget a runner and stop it in a task of its own, which a caller awaits when it needs the memory.

        A runner keeping a disk cache may take a while to write its states
        (runners.stop_grace); waiting for that under the lock would hold up every
        other model's requests.
        """
        self._forget(loaded)
        task = asyncio.create_task(self._end(loaded))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        self._cond.notify_all()
        return task

    async def _end(self, loaded: Loaded) -> None:
        await loaded.runner.stop()
        log.info("unloaded %s", loaded.name)

    def _forget(self, loaded: Loaded) -> None:
        if loaded.timer:
            loaded.timer.cancel()
        if self.loaded.get(loaded.name) is loaded:
            del self.loaded[loaded.name]

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()
