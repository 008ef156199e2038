"""Where a model's layers go: one GPU when it fits, else spread over the GPUs, else partly or wholly on the CPU.

llama.cpp offloads the last `n_gpu_layers` repeating blocks (and, when that
number exceeds the block count, the output layer too), each with its KV cache.
With several GPUs, --tensor-split hands consecutive runs of those layers to
the GPUs in device order; a plan chooses the runs so that each GPU's share,
plus its compute buffer, fits in its free memory less GPU_RESERVE.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.hardware.devices import Inventory
from app.hardware.estimate import MemoryEstimate

#: Bytes kept free on each GPU (driver, display, other programs, estimate error).
GPU_RESERVE = 512 << 20


@dataclass(frozen=True)
class Plan:
    """How to load a model: llama-server's offload flags and the bytes each device will hold."""

    n_gpu_layers: int  # 0 = CPU only; n_layers + 1 = everything including the output layer
    main_gpu: int
    tensor_split: tuple[float, ...]  # () when at most one GPU is used; else a fraction per inventory GPU
    gpu_bytes: tuple[int, ...]  # estimated bytes on each inventory GPU
    cpu_bytes: int  # estimated bytes in system RAM
    n_layers: int = 0  # the model's repeating blocks, so a full offload reads "100% GPU"

    @property
    def size(self) -> int:
        """Everything the model will take, in RAM and on the GPUs."""
        return self.cpu_bytes + sum(self.gpu_bytes)

    @property
    def full_offload(self) -> bool:
        """Every layer and the output on GPUs (only the input embeddings stay in RAM)."""
        return self.n_layers > 0 and self.n_gpu_layers > self.n_layers

    def processor(self) -> str:
        """Where the model runs, by bytes, as Ollama's ps says it: "100% GPU", "48%/52% CPU/GPU", "100% CPU"."""
        gpu = sum(self.gpu_bytes)
        if self.n_gpu_layers <= 0 or gpu <= 0:
            return "100% CPU"
        if self.full_offload or self.cpu_bytes <= 0:
            return "100% GPU"
        cpu_pct = min(99, max(1, round(100 * self.cpu_bytes / self.size)))
        return f"{cpu_pct}%/{100 - cpu_pct}% CPU/GPU"

    def runner_args(self) -> list[str]:
        """llama-server's flags for this plan.

        One GPU among several gets a one-hot --tensor-split as well as
        --main-gpu: in llama.cpp's default layer split mode --main-gpu alone
        does not keep layers off the other GPUs. A split is written as layer
        counts, which llama.cpp turns into exactly these runs.
        """
        args = ["--n-gpu-layers", str(self.n_gpu_layers)]
        if self.n_gpu_layers <= 0:
            return args
        if self.tensor_split:
            return [*args, "--tensor-split", _split_arg(self.tensor_split, self.n_gpu_layers)]
        args += ["--main-gpu", str(self.main_gpu)]
        used = [i for i, b in enumerate(self.gpu_bytes) if b > 0]
        if len(self.gpu_bytes) > 1 and len(used) == 1:
            args += ["--tensor-split", ",".join("1" if i == used[0] else "0" for i in range(len(self.gpu_bytes)))]
        return args


def _split_arg(fractions: tuple[float, ...], n: int) -> str:
    counts = [f * n for f in fractions]
    if all(abs(c - round(c)) < 1e-6 for c in counts):
        return ",".join(str(round(c)) for c in counts)
    return ",".join(f"{f:.6g}" for f in fractions)


def plan(est: MemoryEstimate, inv: Inventory, num_gpu: int | None = None) -> Plan:
    """Place a model on the inventory.

    `num_gpu` is Ollama's option: None or negative chooses, 0 keeps the model
    on the CPU, N offloads N layers (at most n_layers + 1) even if they may
    not fit. Chosen: the whole model on the one GPU with the most free memory
    if it fits there, else as many layers as fit spread over all GPUs in
    proportion to what each can hold, else the CPU.
    """
    gpus = inv.gpus if inv.backends else ()
    if not gpus or num_gpu == 0 or est.n_layers <= 0:
        return _cpu_plan(est, len(inv.gpus))
    full = est.n_layers + 1
    avail = [max(0, g.free - GPU_RESERVE) for g in gpus]
    best = max(range(len(gpus)), key=lambda i: (avail[i], -i))
    if num_gpu is not None and num_gpu > 0:
        k = min(num_gpu, full)
        items = _items(est, k)
        if sum(items) + est.compute_bytes <= avail[best]:
            return _single(est, inv, best, k)
        counts = _spread(items, avail, est.compute_bytes) or _proportional(items, avail, est.compute_bytes)
        return _build(est, inv, k, counts)
    if est.total <= avail[best]:
        return _single(est, inv, best, full)
    for k in range(full, 0, -1):
        counts = _spread(_items(est, k), avail, est.compute_bytes)
        if counts is not None:
            return _build(est, inv, k, counts)
    return _cpu_plan(est, len(inv.gpus))


def fallback(current: Plan, est: MemoryEstimate, inv: Inventory) -> Plan | None:
    """The next plan after a load failed for memory: half the GPU layers, then the CPU, then None.

    Halving stops once it would go below an eighth of the layers, so a model
    gets at most a few retries before it lands on the CPU.
    """
    if current.n_gpu_layers <= 0:
        return None
    half = min(current.n_gpu_layers, est.n_layers + 1) // 2
    if half < max(1, (est.n_layers + 1) // 8):
        return plan(est, inv, num_gpu=0)
    return plan(est, inv, num_gpu=half)


def _items(est: MemoryEstimate, k: int) -> list[int]:
    """Bytes of the k offloaded items in llama.cpp's order: the last k blocks with their KV, then the output."""
    n = est.n_layers
    layers = [est.layer_bytes[i] + est.kv_bytes_per_layer for i in range(max(0, n - k), n)]
    return layers + [est.output_bytes] if k > n else layers


def _spread(items: list[int], avail: list[int], compute: int) -> list[int] | None:
    """Layer counts per GPU that fit, in proportion to each GPU's room where possible; None if none fit.

    First the proportional cut (each GPU's share of the bytes matches its share
    of the room); if a GPU overflows there, the most even greedy packing that
    fits, found by scaling every GPU's room by the same factor.
    """
    room = [max(0, a - compute) for a in avail]
    counts = _proportional(items, avail, compute)
    if _fits(items, counts, room):
        return counts
    if _greedy(items, room) is None:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if _greedy(items, [int(r * mid) for r in room]) is None:
            lo = mid
        else:
            hi = mid
    return _greedy(items, [int(r * hi) for r in room])


def _proportional(items: list[int], avail: list[int], compute: int) -> list[int]:
    """Cut the items into consecutive runs whose bytes follow each GPU's room (item midpoints decide)."""
    room = [max(0, a - compute) for a in avail]
    if sum(room) <= 0:
        room = [max(1, a) for a in avail]
    total, whole = sum(items), sum(room)
    bounds, acc = [], 0
    for r in room:
        acc += r
        bounds.append(total * acc / whole)
    counts = [0] * len(room)
    done, g = 0, 0
    for size in items:
        mid = done + size / 2
        while g < len(room) - 1 and mid >= bounds[g]:
            g += 1
        counts[g] += 1
        done += size
    return counts


def _greedy(items: list[int], room: list[int]) -> list[int] | None:
    """Fill the GPUs in order, each up to its room; None if the items do not all fit."""
    counts, used, g = [0] * len(room), 0, 0
    for size in items:
        while g < len(room) and used + size > room[g]:
            g, used = g + 1, 0
        if g == len(room):
            return None
        counts[g] += 1
        used += size
    return counts


def _fits(items: list[int], counts: list[int], room: list[int]) -> bool:
    return all(b <= r for b, r, c in zip(_run_bytes(items, counts), room, counts, strict=True) if c)


def _run_bytes(items: list[int], counts: list[int]) -> list[int]:
    out, start = [], 0
    for c in counts:
        out.append(sum(items[start : start + c]))
        start += c
    return out


def _single(est: MemoryEstimate, inv: Inventory, pos: int, k: int) -> Plan:
    counts = [0] * len(inv.gpus)
    counts[pos] = k
    return _build(est, inv, k, counts)


def _build(est: MemoryEstimate, inv: Inventory, k: int, counts: list[int]) -> Plan:
    """The plan for k offloaded items cut into `counts` runs over the inventory's GPUs."""
    items = _items(est, k)
    gpu_bytes = tuple(b + est.compute_bytes if c else 0 for b, c in zip(_run_bytes(items, counts), counts, strict=True))
    used = [i for i, c in enumerate(counts) if c]
    main = max(used, key=lambda i: (counts[i], -i))
    split = tuple(c / k for c in counts) if len(used) > 1 else ()
    n = est.n_layers
    on_cpu = est.input_bytes + sum(est.layer_bytes[: max(0, n - k)]) + est.kv_bytes_per_layer * max(0, n - k)
    if k <= n:  # the output layer, and so the logits and most of the compute, stay on the CPU
        on_cpu += (0 if est.output_shared else est.output_bytes) + est.compute_bytes
    return Plan(k, inv.gpus[main].index, split, gpu_bytes, on_cpu, n)


def _cpu_plan(est: MemoryEstimate, n_gpus: int) -> Plan:
    return Plan(0, 0, (), (0,) * n_gpus, est.weights + est.kv_bytes + est.compute_bytes, est.n_layers)
