"""`loam serve`: build the ASGI app from the store, the hardware and the settings, and run it with uvicorn."""

from __future__ import annotations

import atexit
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from app import config
from app.durations import parse_keep_alive
from app.errors import ConfigError
from app.hardware import detect, llama_backends
from app.server import anthropic_api, ollama_api, openai_api, responses_api
from app.server.generate import Generator
from app.server.guard import Guard
from app.server.guard import settings_from_env as guard_settings
from app.server.scheduler import Scheduler, Settings
from app.server.state import ServerState
from app.store.catalog import Catalog
from app.store.store import Store

log = logging.getLogger("loam.server")


def settings_from_env(cfg: dict[str, Any]) -> Settings:
    """Limits from LOAM_* variables, then config.toml's [server] and [runner] tables."""
    server = cfg.get("server", {}) if isinstance(cfg.get("server"), dict) else {}
    runner = cfg.get("runner", {}) if isinstance(cfg.get("runner"), dict) else {}

    def number(env: str, key: str, default: int) -> int:
        raw = os.environ.get(env) or server.get(key)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{env}={raw!r} is not a whole number") from None
        if value < 1:
            raise ConfigError(f"{env}={raw!r} must be at least 1")
        return value

    try:
        keep_alive = parse_keep_alive(config.keep_alive())
    except ValueError as e:
        raise ConfigError(f"LOAM_KEEP_ALIVE: {e}") from None
    llama_server = runner.get("llama_server")
    return Settings(
        max_loaded=number("LOAM_MAX_LOADED_MODELS", "max_loaded_models", 3),
        max_queue=number("LOAM_MAX_QUEUE", "max_queue", 512),
        parallel=number("LOAM_NUM_PARALLEL", "num_parallel", 1),
        keep_alive=keep_alive,
        kv_cache_type=os.environ.get("LOAM_KV_CACHE_TYPE") or server.get("kv_cache_type") or "f16",
        llama_server=Path(llama_server).expanduser() if isinstance(llama_server, str) and llama_server else None,
        log_dir=config.paths().logs,
        state_dir=config.paths().cache / "states",
        state_dir_bytes=config.cache_disk_bytes(),
    )


def build_app(state: ServerState, bind_host: str = "127.0.0.1") -> Guard:
    """The routes behind the browser guard; bind_host decides whether Host headers are checked (loopback only)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await state.scheduler.shutdown()

    app = Starlette(
        routes=ollama_api.routes(state)
        + openai_api.routes(state)
        + responses_api.routes(state)
        + anthropic_api.routes(state),
        lifespan=lifespan,
    )
    return Guard(app, guard_settings(bind_host))


def new_state(settings: Settings) -> ServerState:
    backends = llama_backends()
    scheduler = Scheduler(settings, detect, has_gpu_backend=bool(backends))
    atexit.register(scheduler.kill_all)
    return ServerState(
        store=Store.default(),
        catalog=Catalog.load(config.paths().user_catalog),
        settings=settings,
        scheduler=scheduler,
        generator=Generator(scheduler, settings.parallel),
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _allow_remote(cfg: dict[str, Any]) -> bool:
    """config.toml's `[server] allow_remote`: a real boolean, since the string "false" would read as true."""
    server = cfg.get("server")
    value = server.get("allow_remote", False) if isinstance(server, dict) else False
    if not isinstance(value, bool):
        raise ConfigError(
            f"config.toml: [server] allow_remote = {value!r} must be true or false, without quotes; fix the file"
        )
    return value


def _bound(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, bound here so a busy port is one clear line, not uvicorn's log and exit 3."""
    name = host.strip("[]")
    family = socket.AF_INET6 if ":" in name else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((name, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{host}:{port} is in use, perhaps by another loam serve; stop it or set LOAM_HOST to another port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; check LOAM_HOST") from None
    sock.set_inheritable(False)
    return sock


def serve(allow_remote: bool = False) -> int:
    """Run the server in the foreground until Ctrl+C; its runners stop with it."""
    address = config.host()
    host, port = address.rsplit(":", 1)
    cfg = config.load_config()
    allow_remote = allow_remote or _allow_remote(cfg)
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"LOAM_HOST={address} would accept connections from other machines; "
            "pass --allow-remote (or set [server] allow_remote = true in config.toml) if you mean it"
        )
    sock = _bound(host, int(port))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per runner call is noise
    settings = settings_from_env(cfg)
    state = new_state(settings)
    log.info("loam serve on http://%s (store %s)", address, state.store.root)
    log.info("hardware: %s", detect().describe())
    if not is_loopback(host):
        log.warning("listening on %s: reachable from other machines, with no authentication", address)
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(state, host),
            host=host.strip("[]"),
            port=int(port),
            timeout_graceful_shutdown=3,  # open streams get 3 s, then the runners are stopped regardless
            log_level="warning",
            access_log=False,
        )  # fmt: skip
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its shutdown; for `loam serve` it is the way to stop
        pass
    return 0 if server.started else 1
