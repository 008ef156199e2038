"""The hardware plan: device discovery on canned tool output, the memory estimate against what llama.cpp
allocates, and GPU layer placement on simulated inventories."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import httpx
import pytest

from app.hardware import (
    GPU,
    GPU_RESERVE,
    Inventory,
    MemoryEstimate,
    Plan,
    allocated_context,
    detect,
    estimate,
    fallback,
    llama_backends,
    parse_nvidia_smi,
    parse_rocm_smi,
    plan,
)
from app.store.blobs import BlobStore
from app.store.gguf_info import read_header
from tests.conftest import SMOLLM2_SHA256
from tests.ggufmaker import write_tiny_llama
from tests.runner_process import RunnerProcess

MIB, GIB = 1 << 20, 1 << 30


def logged(n: int) -> int:
    """Bytes as llama.cpp's "%.2f MiB" log line and the runner's /props report them."""
    return round(float(f"{n / MIB:.2f}") * MIB)


def inventory(*free_gib: float, backend: str = "cuda") -> Inventory:
    gpus = tuple(GPU(i, "NVIDIA Test", backend, int(f * GIB) + GIB, int(f * GIB)) for i, f in enumerate(free_gib))
    return Inventory((backend,) if gpus else (), gpus, 64 * GIB, 60 * GIB)


def synthetic(
    n_layers: int = 32, layer: int = 200 * MIB, kv: int = 32 * MIB, output: int = 500 * MIB
) -> MemoryEstimate:
    return MemoryEstimate(
        n_layers=n_layers,
        layer_bytes=(layer,) * n_layers,
        input_bytes=500 * MIB,
        output_bytes=output,
        kv_bytes_per_layer=kv,
        compute_bytes=300 * MIB,
        n_ctx=4096,
    )


# -- placement on simulated inventories ---------------------------------------------------------------------------


def test_one_gpu_that_fits_takes_everything() -> None:
    est = synthetic()
    p = plan(est, inventory(24))
    assert p.n_gpu_layers == 33 and p.tensor_split == () and p.main_gpu == 0
    assert p.gpu_bytes == (est.total,)
    assert p.cpu_bytes == est.input_bytes
    assert p.processor() == "100% GPU"
    assert p.runner_args() == ["--n-gpu-layers", "33", "--main-gpu", "0"]


def test_one_gpu_too_small_offloads_as_many_layers_as_fit() -> None:
    est = synthetic()
    p = plan(est, inventory(4))
    room = 4 * GIB - GPU_RESERVE
    # 4096 - 512 reserve - 300 compute = 3284 MiB: 14 layers of 232 MiB (weights + KV).
    assert p.n_gpu_layers == 14
    assert p.gpu_bytes[0] <= room < p.gpu_bytes[0] + 232 * MIB
    assert p.tensor_split == ()
    assert p.cpu_bytes == 500 * MIB + 18 * 232 * MIB + 500 * MIB + 300 * MIB
    assert p.processor() == "61%/39% CPU/GPU"
    assert p.runner_args() == ["--n-gpu-layers", "14", "--main-gpu", "0"]


def test_a_draft_model_is_placed_with_the_model() -> None:
    """A pair that fits one GPU only without its draft goes partly to the CPU instead of failing to load."""
    est = synthetic()
    draft = synthetic(n_layers=16, layer=100 * MIB, kv=16 * MIB, output=250 * MIB)
    both = est.with_draft(draft)
    assert both.total == est.total + draft.total + draft.input_bytes
    assert plan(est, inventory(9)).n_gpu_layers == 33
    partial = plan(both, inventory(9))
    assert 0 < partial.n_gpu_layers < 33
    assert partial.gpu_bytes[0] <= 9 * GIB - GPU_RESERVE
    assert plan(both, inventory(12)).n_gpu_layers == 33
    on_cpu = plan(both, inventory())
    assert on_cpu.cpu_bytes == plan(est, inventory()).cpu_bytes + draft.total + draft.input_bytes


def test_eight_gpus_share_a_model_too_big_for_one() -> None:
    est = synthetic(n_layers=80, layer=2 * GIB, kv=256 * MIB, output=2 * GIB)
    inv = inventory(*[40] * 8)
    assert est.total > 40 * GIB
    p = plan(est, inv)
    assert p.n_gpu_layers == 81 and p.processor() == "100% GPU"
    assert len(p.tensor_split) == 8 and all(f > 0 for f in p.tensor_split)
    assert sum(p.tensor_split) == pytest.approx(1.0)
    assert max(p.tensor_split) - min(p.tensor_split) <= 1.5 / 81
    for used, gpu in zip(p.gpu_bytes, inv.gpus, strict=True):
        assert 0 < used <= gpu.free - GPU_RESERVE
    split = p.runner_args()[p.runner_args().index("--tensor-split") + 1]
    assert sum(int(c) for c in split.split(",")) == 81
    assert "--main-gpu" not in p.runner_args()
    # 33 items over 8 GPUs with room to spare: still all eight, bytes within one item of each other.
    small = plan(synthetic(), inventory(*[3] * 8))
    assert small.n_gpu_layers == 33 and len(small.tensor_split) == 8 and all(f > 0 for f in small.tensor_split)
    assert max(small.gpu_bytes) - min(small.gpu_bytes) <= 500 * MIB


def test_eight_unequal_gpus_split_in_proportion_to_their_room() -> None:
    est = synthetic(n_layers=80, layer=GIB, kv=128 * MIB, output=GIB)
    free = [6, 6, 12, 12, 24, 24, 48, 48]
    inv = inventory(*free)
    p = plan(est, inv)
    assert p.n_gpu_layers == 81
    assert sum(p.tensor_split) == pytest.approx(1.0)
    room = [f * GIB - GPU_RESERVE - est.compute_bytes for f in free]
    for fraction, r in zip(p.tensor_split, room, strict=True):
        assert fraction == pytest.approx(r / sum(room), abs=1.5 / 81)
    assert p.tensor_split[0] < p.tensor_split[2] < p.tensor_split[4] < p.tensor_split[6]
    for used, gpu in zip(p.gpu_bytes, inv.gpus, strict=True):
        assert used <= gpu.free - GPU_RESERVE
    assert p.main_gpu in (6, 7)


def test_spread_that_fits_only_partly_leaves_the_rest_on_the_cpu() -> None:
    est = synthetic(n_layers=80, layer=GIB, kv=128 * MIB, output=GIB)
    p = plan(est, inventory(20, 20))
    assert 0 < p.n_gpu_layers <= 80 and len(p.tensor_split) == 2
    assert all(0 < used <= 20 * GIB - GPU_RESERVE for used in p.gpu_bytes)
    assert re.fullmatch(r"(\d+)%/(\d+)% CPU/GPU", p.processor())
    one_more = plan(est, inventory(20, 20), num_gpu=p.n_gpu_layers + 1)
    assert any(used > 20 * GIB - GPU_RESERVE for used in one_more.gpu_bytes)


def test_no_gpu_means_the_cpu() -> None:
    est = synthetic()
    for inv in (inventory(), Inventory((), (GPU(0, "NVIDIA Test", "cuda", 80 * GIB, 80 * GIB),), 64 * GIB, 60 * GIB)):
        p = plan(est, inv)
        assert p.n_gpu_layers == 0 and p.processor() == "100% CPU"
        assert p.runner_args() == ["--n-gpu-layers", "0"]
        assert p.cpu_bytes == est.weights + est.kv_bytes + est.compute_bytes
        assert sum(p.gpu_bytes) == 0


def test_num_gpu_is_obeyed() -> None:
    est = synthetic()
    assert plan(est, inventory(80), num_gpu=0).processor() == "100% CPU"
    assert plan(est, inventory(80), num_gpu=5).n_gpu_layers == 5
    assert plan(est, inventory(80), num_gpu=500).n_gpu_layers == 33
    assert plan(est, inventory(80), num_gpu=-1).n_gpu_layers == 33
    forced = plan(est, inventory(2), num_gpu=33)  # asked for, though it will not fit
    assert forced.n_gpu_layers == 33 and forced.gpu_bytes[0] > 2 * GIB


def test_one_gpu_among_several_gets_a_one_hot_split() -> None:
    est = synthetic()
    p = plan(est, inventory(4, 30, 10))
    assert p.tensor_split == () and p.main_gpu == 1 and p.gpu_bytes[0] == p.gpu_bytes[2] == 0
    assert p.runner_args() == ["--n-gpu-layers", "33", "--main-gpu", "1", "--tensor-split", "0,1,0"]


def test_fallback_halves_then_goes_to_the_cpu_then_gives_up() -> None:
    est, inv = synthetic(), inventory(24)
    layers = []
    current: Plan | None = plan(est, inv)
    while current is not None:
        layers.append(current.n_gpu_layers)
        current = fallback(current, est, inv)
        assert len(layers) < 10
    assert layers == [33, 16, 8, 4, 0]


def test_processor_rounds_like_ollama_ps() -> None:
    assert Plan(10, 0, (), (52,), 48, 32).processor() == "48%/52% CPU/GPU"
    assert Plan(10, 0, (), (999,), 1, 32).processor() == "1%/99% CPU/GPU"
    assert Plan(33, 0, (), (900,), 100, 32).processor() == "100% GPU"
    assert Plan(0, 0, (), (0,), 100, 32).processor() == "100% CPU"
    assert Plan(4, 0, (0.25, 0.75), (10, 30), 0, 32).runner_args() == ["--n-gpu-layers", "4", "--tensor-split", "1,3"]


# -- the estimate against llama.cpp's own allocations --------------------------------------------------------------


def test_context_padding_matches_llama_cpp() -> None:
    cases = {(128, 1): 256, (300, 2): 512, (100, 3): 768, (513, 2): 1024, (2048, 2): 2048, (4096, 1): 4096}
    assert {k: allocated_context(*k) for k in cases} == cases


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("hardware") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Heads of 64 dimensions: a quantized KV cache needs whole 32-element blocks per head."""
    return write_tiny_llama(tmp_path_factory.mktemp("hardware") / "tiny64.gguf", n_embd=128, n_head=2)


@pytest.fixture(scope="module")
def smollm2(smollm2_store: Path) -> Path:
    return BlobStore(smollm2_store).path("sha256:" + SMOLLM2_SHA256)


def allocated(model: Path, ctx: int, parallel: int, cache_type: str = "f16", *extra: str) -> dict:
    args = ["--ctx-size", str(ctx), "--parallel", str(parallel), "--threads", "2", "--kv-cache-type", cache_type]
    args += extra
    with RunnerProcess(model, *args) as runner:
        props = httpx.get(runner.url + "/props").json()
    assert props["n_ctx"] == allocated_context(ctx, parallel)
    return props["memory"]


@pytest.mark.parametrize(
    ("ctx", "parallel", "cache_type"), [(128, 1, "f16"), (300, 2, "f16"), (513, 2, "f16"), (100, 3, "f32")]
)
def test_kv_cache_estimate_is_what_llama_cpp_allocates(tiny: Path, ctx: int, parallel: int, cache_type: str) -> None:
    est = estimate(tiny, ctx, parallel, cache_type)
    memory = allocated(tiny, ctx, parallel, cache_type)
    assert logged(est.kv_bytes) == memory["kv_cache"]
    assert est.weights == pytest.approx(memory["model"], rel=0.02)


@pytest.mark.parametrize(("ctx", "parallel", "cache_type"), [(256, 1, "q8_0"), (1000, 4, "q4_0")])
def test_quantized_kv_cache_estimate(tiny64: Path, ctx: int, parallel: int, cache_type: str) -> None:
    est = estimate(tiny64, ctx, parallel, cache_type)
    assert logged(est.kv_bytes) == allocated(tiny64, ctx, parallel, cache_type)["kv_cache"]


def test_compute_estimate_covers_attention_scores(tiny: Path) -> None:
    """Without flash attention the scores of 512 tokens x 1024 dominate; with it they are not materialized."""
    est = estimate(tiny, 1024, 1)
    measured = allocated(tiny, 1024, 1, "f16", "--flash-attn", "off")["compute"]
    assert measured <= est.compute_bytes <= 1.5 * measured
    flash = estimate(tiny, 1024, 1, flash_attn=True).compute_bytes
    measured_flash = allocated(tiny, 1024, 1)["compute"]  # the runner's default: llama.cpp's rule, on for the CPU
    assert measured_flash <= flash <= 1.5 * measured_flash
    assert est.compute_bytes > flash  # not knowing, the estimate stays on the safe side


def test_smollm2_estimate_matches_llama_cpp(smollm2: Path) -> None:
    est = estimate(smollm2, 2048, 2)
    memory = allocated(smollm2, 2048, 2)
    assert est.kv_bytes == memory["kv_cache"] == 47185920  # 2048 x 30 layers x (192 + 192) x 2 bytes
    assert est.weights == pytest.approx(memory["model"], rel=0.01)
    assert memory["compute"] <= est.compute_bytes <= 1.25 * memory["compute"]
    # Tied embeddings: the output layer is token_embd, one mapping on the CPU, a second copy on a GPU.
    embd = next(t.n_bytes for t in read_header(smollm2).tensors if t.name == "token_embd.weight")
    assert est.output_shared and est.output_bytes >= embd and est.input_bytes >= embd
    assert est.n_layers == len(est.layer_bytes) == 30


def test_estimate_of_a_quantized_cache_for_smollm2(smollm2: Path) -> None:
    assert logged(estimate(smollm2, 4096, 1, "q8_0").kv_bytes) == allocated(smollm2, 4096, 1, "q8_0")["kv_cache"]


def test_estimate_rejects_what_it_cannot_use(tmp_path: Path, tiny: Path) -> None:
    from app.errors import BadModelFile

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(BadModelFile):
        estimate(junk, 1024)
    with pytest.raises(ValueError, match="KV cache type"):
        estimate(tiny, 1024, kv_cache_type="q3_k")


# -- discovery ---------------------------------------------------------------------------------------------------

NVIDIA_SMI = """0, NVIDIA H100 80GB HBM3, 81559, 80935
1, NVIDIA GeForce RTX 4090, 24564, 1200
2, NVIDIA A100-SXM4-40GB, [N/A], [N/A]
"""

ROCM_SMI = """{"card0": {"VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "10960896",
  "Card Series": "AMD Instinct MI210"},
 "card1": {"VRAM Total Memory (B)": "17163091968", "VRAM Total Used Memory (B)": "17000000000"},
 "card2": {"VRAM Total Memory (B)": "N/A"},
 "system": {"Driver version": "6.7.0"}}"""


def test_parse_nvidia_smi() -> None:
    gpus = parse_nvidia_smi(NVIDIA_SMI)
    assert gpus == [
        GPU(0, "NVIDIA H100 80GB HBM3", "cuda", 81559 * MIB, 80935 * MIB),
        GPU(1, "NVIDIA GeForce RTX 4090", "cuda", 24564 * MIB, 1200 * MIB),
    ]
    assert parse_nvidia_smi("0, Odd, Name, With Commas, 100, 50") == [
        GPU(0, "Odd, Name, With Commas", "cuda", 100 * MIB, 50 * MIB)
    ]
    for junk in ("", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", "a, b, c, d"):
        assert parse_nvidia_smi(junk) == []


def test_parse_rocm_smi() -> None:
    assert parse_rocm_smi(ROCM_SMI) == [
        GPU(0, "AMD Instinct MI210", "rocm", 68702699520, 68702699520 - 10960896),
        GPU(1, "AMD GPU", "rocm", 17163091968, 17163091968 - 17000000000),
    ]
    for junk in ("", "ERROR: no GPUs", "[1, 2]", '{"card0": "x"}'):
        assert parse_rocm_smi(junk) == []


def test_detect_on_this_machine() -> None:
    import llama_cpp

    from app.hardware.devices import _registry_names

    assert "CPU" in (_registry_names(llama_cpp) or [])  # the registry is reachable through the bindings
    backends = llama_backends()
    assert bool(backends) == bool(llama_cpp.llama_supports_gpu_offload())
    inv = detect()
    assert inv.backends == backends and all(g.backend in backends for g in inv.gpus)
    assert 256 * MIB < inv.ram_total < 1 << 50
    assert 0 < inv.ram_free <= inv.ram_total
    if not backends:  # a CPU build, as on the machines the tests usually run on
        assert inv.gpus == ()
        assert re.fullmatch(r"CPU, \d+\.\d GiB RAM free", inv.describe())


def fake_tool(directory: Path, name: str, output: str, status: int = 0) -> None:
    script = directory / name
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_detect_reads_the_vendor_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path, "nvidia-smi", NVIDIA_SMI)
    fake_tool(tmp_path, "rocm-smi", "rocm-smi: fatal", status=2)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    inv = detect(backends=("cuda", "rocm"))
    assert [(g.index, g.backend) for g in inv.gpus] == [(0, "cuda"), (1, "cuda")]
    assert inv.describe().startswith("CUDA: 1 x NVIDIA H100 80GB HBM3 (79.0 GiB free), 1 x NVIDIA GeForce RTX 4090")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert detect(backends=("cuda",)).gpus == (GPU(0, "NVIDIA GeForce RTX 4090", "cuda", 24564 * MIB, 1200 * MIB),)
    assert [g.backend for g in detect(backends=("vulkan",)).gpus] == ["vulkan", "vulkan"]
    assert detect(backends=()).gpus == ()
    assert detect(backends=("rocm",)).describe().startswith("CPU (ROCm build, no GPU found)")
