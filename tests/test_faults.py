"""Runner faults against a real `loam serve`: a wedged runner, a deleted model, a killed server.

A SIGSTOP stands in for a runner wedged inside llama.cpp, which cannot be produced on demand.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from tests.conftest import run_loam
from tests.server_process import ServerProcess

TIMEOUT = 3


@pytest.fixture
def models(tiny_gguf: Path, tmp_path: Path) -> Path:
    """A store of its own holding `tiny` and `other`, two names for the random-weight model."""
    root = tmp_path / "models"
    store = Store(root)
    for name in ("tiny", "other"):
        modelfile = parse(f"FROM {tiny_gguf}\nPARAMETER num_ctx 256\n")
        create(store, Catalog({}, "tiny"), ModelName.parse(name), modelfile, folder=root)
    return root


@pytest.fixture
def server(models: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(models, tmp_path / "home", LOAM_RUNNER_TIMEOUT=str(TIMEOUT)) as s:
        yield s


def generate(server: ServerProcess, model: str = "tiny", **options: object) -> httpx.Response:
    body = {"model": model, "prompt": "a", "stream": False, "options": {"num_predict": 4, **options}}
    return httpx.post(server.url + "/api/generate", json=body, timeout=120)


def gone(pid: int, seconds: float = 10.0) -> float | None:
    """Seconds until the process is gone (or a zombie), polling; None if it is still there."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return time.monotonic() - started
        if state == "Z":
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def kill_quietly(pid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return


def test_a_wedged_runner_fails_the_request_and_reloads(server: ServerProcess) -> None:
    assert generate(server).status_code == 200
    [pid] = server.runner_pids()
    time.sleep(TIMEOUT + 1)  # idle longer than the timeout: an idle runner is left alone
    assert generate(server).status_code == 200
    assert server.runner_pids() == [pid]
    os.kill(pid, signal.SIGSTOP)
    try:
        wedged = generate(server)
        assert wedged.status_code == 500
        assert wedged.json() == {"error": f"runner made no progress for {TIMEOUT} s; it was stopped and will reload"}
        assert gone(pid) is not None
        again = generate(server)
        assert again.status_code == 200 and again.json()["done"]
        assert again.json()["load_duration"] > 0
        assert server.runner_pids() and pid not in server.runner_pids()
    finally:
        kill_quietly(pid)


def test_a_wedged_runner_mid_stream_ends_the_stream_with_the_error(server: ServerProcess) -> None:
    assert generate(server).status_code == 200
    [pid] = server.runner_pids()
    # ignore_eos: the random model must not end its answer before the runner is stopped
    options = {"num_predict": 100000, "temperature": 1, "ignore_eos": True}
    body = {"model": "tiny", "prompt": "a", "options": options}
    try:
        with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next(lines)
            os.kill(pid, signal.SIGSTOP)
            last = [line for line in lines if line][-1]
        assert "runner made no progress" in last and '"error"' in last
        assert gone(pid) is not None
    finally:
        kill_quietly(pid)
    assert generate(server).status_code == 200


def test_deleting_a_loaded_model_unloads_it_at_once(server: ServerProcess) -> None:
    assert generate(server, "tiny").status_code == 200
    assert generate(server, "other").status_code == 200
    loaded = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
    assert set(loaded) == {"tiny:latest", "other:latest"}
    before = set(server.runner_pids())
    r = httpx.request("DELETE", server.url + "/api/delete", json={"model": "tiny"})
    assert r.status_code == 200
    names = {m["name"] for m in httpx.get(server.url + "/api/ps").json()["models"]}
    assert names == {"other:latest"}  # the keep-alive (5 minutes) did not keep it
    after = set(server.runner_pids())
    assert len(after) == 1 and after < before
    for pid in before - after:
        assert gone(pid) is not None
    assert generate(server, "other").status_code == 200


def test_runners_exit_soon_after_their_server_is_killed(server: ServerProcess) -> None:
    assert generate(server).status_code == 200
    [pid] = server.runner_pids()
    killed = time.monotonic()
    server.proc.kill()
    server.proc.wait()
    try:
        assert gone(pid) is not None
    finally:
        kill_quietly(pid)
    print(f"\nrunner gone {time.monotonic() - killed:.3f} s after its server's SIGKILL")


def test_loam_rm_with_a_server_running_unloads_the_model(server: ServerProcess, models: Path) -> None:
    assert generate(server).status_code == 200
    [pid] = server.runner_pids()
    env = {k: v for k, v in server.env.items() if k.startswith(("LOAM_", "XDG_"))}
    removed = run_loam("rm", "tiny", env={**os.environ, **env})
    assert removed.returncode == 0, removed.stderr
    assert gone(pid) is not None
    assert httpx.get(server.url + "/api/ps").json()["models"] == []
    assert not (models / "manifests/registry.ollama.ai/library/tiny/latest").exists()
    assert (models / "manifests/registry.ollama.ai/library/other/latest").is_file()
