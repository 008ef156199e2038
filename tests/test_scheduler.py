"""The scheduler's load path with faults the real hardware here cannot produce: a GPU that runs out of memory."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from app.errors import ConfigError
from app.hardware import GPU, Inventory
from app.server.options import LoadOptions
from app.server.scheduler import LoadRequest, Scheduler, Settings, stream_interval_from_env

#: Stands in for a CUDA llama-server: out of memory with any GPU layer, else loam's runner on the CPU.
FAKE_LLAMA_SERVER = """#!{python}
import os, sys
args = sys.argv[1:]
layers = int(args[args.index("--n-gpu-layers") + 1]) if "--n-gpu-layers" in args else 0
with open({attempts!r}, "a") as f:
    f.write(f"{{layers}}\\n")
if layers > 0:
    print("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 900.00 MiB on device 0: cudaMalloc failed: "
          "out of memory", file=sys.stderr)
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "app.runner", *args])
"""


def test_an_out_of_memory_load_retries_with_fewer_layers_then_the_cpu(
    tiny_gguf: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = tmp_path / "attempts"
    fake = tmp_path / "llama-server"
    fake.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable, attempts=str(attempts)))
    fake.chmod(0o755)
    gpu = GPU(index=0, name="Fake GPU", backend="cuda", total=8 << 30, free=8 << 30)
    inventory = Inventory(backends=("cuda",), gpus=(gpu,), ram_total=16 << 30, ram_free=16 << 30)
    settings = Settings(llama_server=fake, log_dir=tmp_path / "logs")

    async def load() -> tuple[int, str]:
        # loam's llama.cpp has no CUDA here, so the configured llama-server is the runner.
        scheduler = Scheduler(settings, lambda: inventory, has_gpu_backend=False)
        request = LoadRequest("tiny", "sha256:" + "0" * 64, tiny_gguf, LoadOptions(num_ctx=256))
        loaded = await scheduler.acquire(request, 60)
        try:
            return loaded.plan.n_gpu_layers, loaded.runner.argv[0]
        finally:
            scheduler.release(loaded)
            await scheduler.shutdown()

    with caplog.at_level(logging.WARNING, logger="loam.server"):
        layers, program = asyncio.run(load())
    tried = [int(n) for n in attempts.read_text().split()]
    assert program == str(fake)
    assert layers == 0 and tried[-1] == 0 and tried[0] > 0
    assert tried == sorted(tried, reverse=True) and len(set(tried)) == len(tried)  # fewer each time
    assert sum("retrying with" in r.message for r in caplog.records) == len(tried) - 1


def test_unloading_a_deleted_model_does_not_wait_for_its_requests(tiny_gguf: Path, tmp_path: Path) -> None:
    inventory = Inventory(backends=(), gpus=(), ram_total=16 << 30, ram_free=16 << 30)
    digest = "sha256:" + "1" * 64

    async def scenario() -> tuple[bool, bool, bool, bool, bool]:
        scheduler = Scheduler(Settings(log_dir=tmp_path / "logs"), lambda: inventory, has_gpu_backend=False)
        request = LoadRequest("tiny", digest, tiny_gguf, LoadOptions(num_ctx=256))
        idle = await scheduler.acquire(request, 300)
        scheduler.release(idle)
        by_digest = await scheduler.unload_model(digest)  # idle: stopped at once
        idle_stopped = not idle.runner.alive and "tiny" not in scheduler.loaded
        busy = await scheduler.acquire(request, 300)
        by_name = await scheduler.unload_model("tiny")  # in use: returns at once, stops after the request
        still_serving = busy.runner.alive
        scheduler.release(busy)
        for _ in range(200):
            if not busy.runner.alive:
                break
            await asyncio.sleep(0.05)
        stopped_after = not busy.runner.alive and "tiny" not in scheduler.loaded
        await scheduler.shutdown()
        return by_digest and by_name, idle_stopped, still_serving, stopped_after, await scheduler.unload_model("x")

    matched, idle_stopped, still_serving, stopped_after, unknown = asyncio.run(scenario())
    assert matched and idle_stopped and still_serving and stopped_after and not unknown


SLOW_TO_STOP = """#!/usr/bin/env python3
import signal, sys, time
# Stands for a runner writing its slots' states at SIGTERM: it takes a while, then exits by itself.
signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), sys.exit(0)))
time.sleep(60)
"""


@pytest.mark.parametrize(("grace", "killed"), [(6.0, False), (0.3, True)])
def test_a_runner_gets_its_grace_to_stop_before_a_kill(
    tmp_path: Path, tiny_gguf: Path, grace: float, killed: bool
) -> None:
    from app.server.runners import Runner, RunnerCommand

    script = tmp_path / "slow-runner"
    script.write_text(SLOW_TO_STOP)
    script.chmod(0o755)
    runner = Runner(RunnerCommand(script), tiny_gguf, [], tmp_path, stop_grace=grace)

    async def stop() -> None:
        await asyncio.sleep(0.5)  # the script has set its handler
        await runner.stop()

    asyncio.run(stop())
    assert (runner.proc.returncode == -9) is killed, runner.proc.returncode


def test_the_stop_grace_covers_writing_the_disk_cache() -> None:
    from app.server.runners import STOP_GRACE, stop_grace

    assert stop_grace(0) == STOP_GRACE == 5.0
    assert stop_grace(4 * 10**9) == 25.0  # LOAM_CACHE_DISK's default at 200 MB/s
    assert stop_grace(10**15) == 60.0


def test_a_runner_slow_to_stop_does_not_hold_up_other_models(tiny_gguf: Path, tmp_path: Path) -> None:
    """Unloading waits for the runner, but not under the lock every other request takes."""
    from app.hardware.estimate import estimate
    from app.hardware.placement import plan
    from app.server.runners import Runner, RunnerCommand
    from app.server.scheduler import Loaded

    inventory = Inventory(backends=(), gpus=(), ram_total=16 << 30, ram_free=16 << 30)
    script = tmp_path / "slow-runner"
    script.write_text(SLOW_TO_STOP)
    script.chmod(0o755)

    async def scenario() -> tuple[bool, bool, bool]:
        scheduler = Scheduler(Settings(log_dir=tmp_path / "logs"), lambda: inventory, has_gpu_backend=False)
        slow = LoadRequest("slow", "sha256:" + "2" * 64, tiny_gguf, LoadOptions(num_ctx=256))
        est = estimate(tiny_gguf, 256)
        runner = Runner(RunnerCommand(script), tiny_gguf, [], tmp_path, stop_grace=6.0)
        scheduler.loaded["slow"] = Loaded(slow, runner, plan(est, inventory), est, 0.0, 256)
        await asyncio.sleep(0.5)  # the script has set its handler
        unloading = asyncio.create_task(scheduler.unload("slow"))
        await asyncio.sleep(0.1)
        async with scheduler._cond:  # what every acquire takes first: free while the runner still writes
            still_stopping = runner.alive and not unloading.done()
        unloaded = await unloading
        return still_stopping, unloaded, runner.alive

    still_stopping, unloaded, alive = asyncio.run(scenario())
    assert still_stopping and unloaded and not alive


@pytest.mark.skipif(
    not os.environ.get("LLAMA_CPP_BIN_DIR"),
    reason="set LLAMA_CPP_BIN_DIR to llama.cpp's build/bin (docs/benchmarks.md)",
)
def test_a_stock_llama_server_serves_as_the_runner(smollm2_store: Path, tmp_path: Path) -> None:
    """The flags loam gives a runner start a real llama-server, and its server-sent events stream through."""
    from tests.conftest import SMOLLM2_SHA256

    model = smollm2_store / "blobs" / f"sha256-{SMOLLM2_SHA256}"
    binary = Path(os.environ["LLAMA_CPP_BIN_DIR"]) / "llama-server"
    gpu = GPU(index=0, name="Fake GPU", backend="cuda", total=8 << 30, free=8 << 30)  # a CPU build ignores layers
    inventory = Inventory(backends=("cuda",), gpus=(gpu,), ram_total=16 << 30, ram_free=16 << 30)
    settings = Settings(llama_server=binary, log_dir=tmp_path / "logs")

    async def ask() -> tuple[str, list[dict]]:
        scheduler = Scheduler(settings, lambda: inventory, has_gpu_backend=False)
        loaded = await scheduler.acquire(LoadRequest("smol", "sha256:" + SMOLLM2_SHA256, model, LoadOptions()), 60)
        try:
            body = {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}
            return loaded.runner.argv[0], [chunk async for chunk in loaded.runner.complete(body)]
        finally:
            scheduler.release(loaded)
            await scheduler.shutdown()

    program, chunks = asyncio.run(ask())
    assert program == str(binary)
    assert chunks[-1]["stop"] and chunks[-1]["timings"]["predicted_n"] == 8
    assert "Paris" in "".join(c.get("content", "") for c in chunks)


def test_stream_interval_gathers_on_small_machines_and_takes_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOAM_STREAM_INTERVAL", raising=False)
    assert stream_interval_from_env(2) == stream_interval_from_env(4) == 0.05
    assert stream_interval_from_env(8) == 0.0
    monkeypatch.setenv("LOAM_STREAM_INTERVAL", "0")
    assert stream_interval_from_env(2) == 0.0
    monkeypatch.setenv("LOAM_STREAM_INTERVAL", "0.2")
    assert stream_interval_from_env(64) == 0.2 == Settings().stream_interval
    for bad in ("soon", "-1", "nan", "inf", "2"):
        monkeypatch.setenv("LOAM_STREAM_INTERVAL", bad)
        with pytest.raises(ConfigError, match="LOAM_STREAM_INTERVAL: .* is not a number of seconds from 0 to 1"):
            stream_interval_from_env()
