"""`python -m app.runner`: serve while the model loads; exit with one JSON line if it cannot."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import llama_cpp
import uvicorn

from app.runner.api import build_app
from app.runner.cache import StateCache
from app.runner.disk_cache import DiskStates, log
from app.runner.draft import Drafter
from app.runner.engine import Engine
from app.runner.model import LoadError, Model
from app.runner.options import RunnerOptions, parse_args
from app.runner.state import RunnerState


def main(argv: Sequence[str] | None = None) -> int:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash inside llama.cpp leaves no core file behind
    options = parse_args(argv)
    state = RunnerState(options)
    config = uvicorn.Config(
        build_app(state), host=options.host, port=options.port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    failure: list[LoadError] = []

    def load() -> None:
        try:
            model = Model(options, lambda p: setattr(state, "progress", p))
            engine = Engine(model, state_cache(options), drafter(options, model))
            engine.start()
            state.model, state.engine = model, engine
        except LoadError as e:
            failure.append(e)
            server.should_exit = True
        except Exception as e:  # noqa: BLE001 - any load failure must end in the one-line report
            failure.append(LoadError("error", f"{type(e).__name__}: {e}"))
            server.should_exit = True

    threading.Thread(target=load, name="load", daemon=True).start()
    # uvicorn raises a SIGTERM or SIGINT again once it has shut down; with a handler that only
    # notes it, the slots' states are still kept below instead of lost with the process.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    if parent := os.environ.get("LOAM_RUNNER_PARENT"):
        threading.Thread(target=_exit_with_parent, args=(int(parent),), name="parent", daemon=True).start()
    server.run()
    if failure:
        print(json.dumps({"error": str(failure[0]), "kind": failure[0].kind}), file=sys.stderr, flush=True)
        return 1
    if not server.started:
        print(json.dumps({"error": f"cannot listen on {options.host}:{options.port}", "kind": "port"}), file=sys.stderr)
        return 1
    if state.engine:
        state.engine.stop()
    return 0


def drafter(options: RunnerOptions, model: Model) -> Drafter | None:
    """The --model-draft model, loaded with the model's context and slots; LoadError if it cannot pair."""
    if options.model_draft is None:
        return None
    draft = Model(replace(options, model=options.model_draft, lora=[], embedding=False))
    try:
        return Drafter(draft, model)
    except LoadError:
        draft.close()
        raise


def state_cache(options: RunnerOptions) -> StateCache:
    """The RAM cache of displaced conversations, with a disk tier when --cache-disk names a folder."""
    disk = None
    if options.cache_disk is not None and options.cache_disk_mib > 0:
        model = options.cache_key
        if not model:
            st = options.model.stat()
            model = f"{options.model.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        k, v = options.kv_cache_type, options.kv_cache_type_v or options.kv_cache_type
        kv_types = k if v == k else f"{k}/{v}"  # states saved with one type for both keep their key
        key = {
            "model": model,
            "llama_cpp": llama_cpp.__version__,
            "kv_cache_type": kv_types,
            "flash_attn": options.flash_attn,
            "lora": ",".join(str(p.resolve()) for p in options.lora),
        }
        try:
            disk = DiskStates(options.cache_disk, options.cache_disk_mib << 20, key)
        except OSError as e:
            log(f"no disk cache: {e}")
    return StateCache(options.cache_ram_mib << 20, disk)


def _exit_with_parent(parent: int) -> None:
    """A runner started by `loam serve` must not outlive it, however the server ended.

    On Linux the kernel sends SIGKILL the moment the parent dies (PR_SET_PDEATHSIG);
    polling the parent pid every 0.2 s covers other systems and a parent that died
    before the request was made.
    """
    _ask_kernel_for_death_signal()
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)


def _ask_kernel_for_death_signal() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) where the C library has it; nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 is PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
