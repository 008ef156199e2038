"""`python -m app.runner`: serve while the model loads; exit with one JSON line if it cannot."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from app.runner import hugepages

if __name__ == "__main__":  # before llama.cpp allocates anything: its large buffers then take huge pages
    hugepages.restart_with_tunable()

import llama_cpp  # noqa: E402
import uvicorn  # noqa: E402

from app.runner.api import build_app  # noqa: E402
from app.runner.cache import StateCache  # noqa: E402
from app.runner.disk_cache import DiskStates, log  # noqa: E402
from app.runner.draft import Drafter  # noqa: E402
from app.runner.engine import Engine  # noqa: E402
from app.runner.model import LoadError, Model  # noqa: E402
from app.runner.options import RunnerOptions, parse_args  # noqa: E402
from app.runner.state import RunnerState  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash inside llama.cpp leaves no core file behind
    options = parse_args(argv)
    state = RunnerState(options)
    hosts = [h.strip() for h in options.host.split(",") if h.strip()] or ["127.0.0.1"]
    config = uvicorn.Config(
        build_app(state),
        host=hosts[0],
        port=options.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # h11 writes header names as given, as llama-server does (Process-Start-Time-Unix); httptools lower-cases
        # them. Streamed tokens gather on small machines (LOAM_STREAM_INTERVAL), so its writer saves little here.
        http="h11",
        timeout_graceful_shutdown=3,  # an abandoned stream must not hold the exit past a stop's grace
    )
    server = uvicorn.Server(config)
    try:
        sockets = _listen(hosts, options.port) if len(hosts) > 1 else None
    except OSError as e:
        print(
            json.dumps({"error": f"cannot listen on {options.host}:{options.port}: {e}", "kind": "port"}),
            file=sys.stderr,
        )
        return 1
    failure: list[LoadError] = []

    def load() -> None:
        try:
            model = Model(options, lambda p: setattr(state, "progress", p))
            engine = Engine(model, state_cache(options), drafter(options, model))
            engine.start()
            state.model, state.engine = model, engine
            huge = hugepages.huge_bytes() >> 20
            print(f"model loaded ({'read into memory' if model.load_mode == 'none' else model.load_mode}, "
                  f"{huge} MiB in huge pages)", file=sys.stderr, flush=True)  # fmt: skip
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
    server.run(sockets=sockets)
    if failure:
        print(json.dumps({"error": str(failure[0]), "kind": failure[0].kind}), file=sys.stderr, flush=True)
        return 1
    if not server.started:
        print(json.dumps({"error": f"cannot listen on {options.host}:{options.port}", "kind": "port"}), file=sys.stderr)
        return 1
    if state.engine:
        state.engine.stop()
    return 0


def _listen(hosts: list[str], port: int) -> list[socket.socket]:
    """One listening socket per address of llama-server's comma-separated --host (IPv6 ones v6-only)."""
    sockets = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
        sockets.append(sock)
    return sockets


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
