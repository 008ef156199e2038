"""Which backends the installed llama.cpp can drive, which GPUs it can use, and how much memory is free.

GPU memory is read with the vendors' tools (nvidia-smi or NVML, rocm-smi) and
on macOS from sysctl, never through llama.cpp itself: asking a CUDA or HIP
backend for free memory opens a device context in the asking process, and the
server would then hold hundreds of MiB on every GPU for its whole life.
Every probe is bounded in time; a missing or failing tool means no GPUs of
that kind, never an exception.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20
#: Seconds any external probe may take.
PROBE_TIMEOUT = 5.0
#: Share of unified memory Metal lets a process keep resident (its recommendedMaxWorkingSetSize is about this).
METAL_SHARE = 2 / 3
#: ggml backend registry names -> loam's backend names (ggml's HIP build registers as "ROCm").
_BACKEND_NAMES = {"cuda": "cuda", "metal": "metal", "mtl": "metal", "vulkan": "vulkan", "rocm": "rocm", "hip": "rocm"}
_GPU_BACKENDS = ("cuda", "rocm", "metal", "vulkan")


@dataclass(frozen=True)
class GPU:
    """One GPU as the backend numbers it, with its memory in bytes."""

    index: int  # device index as the backend numbers it (what --main-gpu takes)
    name: str
    backend: str  # "cuda" | "rocm" | "metal" | "vulkan"
    total: int
    free: int


@dataclass(frozen=True)
class Inventory:
    """What a model can be placed on: the GPU backends, their GPUs, and system RAM."""

    backends: tuple[str, ...]  # GPU backends the installed llama.cpp can drive; "cpu" is implied
    gpus: tuple[GPU, ...]  # only GPUs usable by one of `backends`
    ram_total: int
    ram_free: int

    def describe(self) -> str:
        """One line for the server's start-up log: the GPUs by backend and name, and free RAM."""
        ram = f"{self.ram_free / GIB:.1f} GiB RAM free"
        if not self.gpus:
            if self.backends:
                return f"CPU ({'/'.join(_label(b) for b in self.backends)} build, no GPU found), {ram}"
            return f"CPU, {ram}"
        parts = []
        for backend in dict.fromkeys(g.backend for g in self.gpus):
            groups: dict[str, list[GPU]] = {}
            for g in self.gpus:
                if g.backend == backend:
                    groups.setdefault(g.name, []).append(g)
            names = ", ".join(
                f"{len(gs)} x {name} ({sum(g.free for g in gs) / GIB:.1f} GiB free)" for name, gs in groups.items()
            )
            parts.append(f"{_label(backend)}: {names}")
        return "; ".join(parts) + f"; {ram}"


def _label(backend: str) -> str:
    return {"cuda": "CUDA", "rocm": "ROCm", "metal": "Metal", "vulkan": "Vulkan"}.get(backend, backend)


def llama_backends() -> tuple[str, ...]:
    """The GPU backends compiled into (or loadable by) the installed llama.cpp; () for a CPU-only build.

    Reads ggml's backend registry through the library llama-cpp-python loaded.
    Where the registry is not reachable but the build says it can offload, the
    backend is unknown: Metal on macOS, else every GPU kind (detect() then keeps
    whichever GPUs it finds).
    """
    try:
        import llama_cpp
    except Exception:  # a broken install is a CPU-only one for planning
        return ()
    names = _registry_names(llama_cpp)
    if names is not None:
        found = [_BACKEND_NAMES[n.lower()] for n in names if n.lower() in _BACKEND_NAMES]
        return tuple(dict.fromkeys(found))
    try:
        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        offload = False
    if not offload:
        return ()
    return ("metal",) if sys.platform == "darwin" else ("cuda", "rocm", "vulkan")


def _registry_names(llama_cpp: object) -> list[str] | None:
    """ggml_backend_reg_name of every registered backend, or None where the bindings do not reach them."""
    lib = getattr(getattr(llama_cpp, "llama_cpp", None), "_lib", None)
    try:
        count, get, name = lib.ggml_backend_reg_count, lib.ggml_backend_reg_get, lib.ggml_backend_reg_name  # type: ignore[union-attr]
    except AttributeError:
        return None
    count.restype, count.argtypes = ctypes.c_size_t, []
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    name.restype, name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    try:
        return [(name(get(i)) or b"").decode("utf-8", "replace") for i in range(count())]
    except (OSError, ValueError):
        return None


def detect(backends: tuple[str, ...] | None = None) -> Inventory:
    """Discover the GPUs the installed llama.cpp can use and the system RAM.

    `backends` defaults to llama_backends(). NVIDIA GPUs serve CUDA, else
    Vulkan; AMD GPUs serve ROCm, else Vulkan; the Apple GPU serves Metal.
    """
    backends = llama_backends() if backends is None else backends
    ram_total, ram_free = system_ram()
    gpus: list[GPU] = []
    if "cuda" in backends or "vulkan" in backends:
        nvidia = _visible(nvidia_gpus(), "CUDA_VISIBLE_DEVICES") if "cuda" in backends else nvidia_gpus()
        gpus += [replace(g, backend="cuda" if "cuda" in backends else "vulkan") for g in nvidia]
    if "rocm" in backends or "vulkan" in backends:
        amd = rocm_gpus()
        if "rocm" in backends:
            amd = _visible(_visible(amd, "ROCR_VISIBLE_DEVICES"), "HIP_VISIBLE_DEVICES")
        gpus += [replace(g, backend="rocm" if "rocm" in backends else "vulkan") for g in amd]
    if "metal" in backends and sys.platform == "darwin":
        share = int(ram_total * METAL_SHARE)
        gpus.append(GPU(0, _sysctl("machdep.cpu.brand_string") or "Apple GPU", "metal", share, share))
    if "vulkan" in backends:  # Vulkan numbers all its devices in one list
        vulkan = [g for g in gpus if g.backend == "vulkan"]
        gpus = [g for g in gpus if g.backend != "vulkan"] + [replace(g, index=i) for i, g in enumerate(vulkan)]
    return Inventory(tuple(backends), tuple(gpus), ram_total, ram_free)


def _visible(gpus: list[GPU], variable: str) -> list[GPU]:
    """The GPUs a *_VISIBLE_DEVICES list of indexes leaves, numbered as the runtime will number them.

    A list of UUIDs or MIG names is left alone: the tools' output does not say which is which.
    """
    value = os.environ.get(variable)
    if value is None:
        return gpus
    by_index = {g.index: g for g in gpus}
    try:
        wanted = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        return gpus
    kept = []
    for i in wanted:
        if i not in by_index:
            break  # the runtimes stop at the first invalid entry
        kept.append(by_index[i])
    return [replace(g, index=n) for n, g in enumerate(kept)]


def _run(*argv: str) -> str | None:
    """A tool's stdout, or None if it is missing, fails, or takes longer than PROBE_TIMEOUT."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_gpus() -> list[GPU]:
    """NVIDIA GPUs by NVML when pynvml is importable, else by nvidia-smi; [] when neither answers."""
    gpus = _nvml_gpus()
    if gpus is not None:
        return gpus
    text = _run("nvidia-smi", "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits")
    return parse_nvidia_smi(text or "")


def _nvml_gpus() -> list[GPU] | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except Exception:  # not installed, or a broken install
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
            gpus.append(GPU(i, text, "cuda", int(mem.total), int(mem.free)))
        return gpus
    except Exception:  # NVML errors are its own exception classes
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def parse_nvidia_smi(text: str) -> list[GPU]:
    """GPUs from `nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`.

    Memory comes in MiB. Lines that do not parse ("[N/A]" memory, error text) are skipped.
    """
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4:
            continue
        try:
            index, total, free = int(fields[0]), int(float(fields[-2])), int(float(fields[-1]))
        except ValueError:
            continue
        name = ", ".join(fields[1:-2]).strip()
        if total <= 0 or free < 0 or not name:
            continue
        gpus.append(GPU(index, name, "cuda", total * MIB, min(free, total) * MIB))
    return gpus


def rocm_gpus() -> list[GPU]:
    """AMD GPUs by rocm-smi; [] when it is missing or fails."""
    text = _run("rocm-smi", "--showmeminfo", "vram", "--showproductname", "--json")
    if text is None:  # older rocm-smi may refuse the combination
        text = _run("rocm-smi", "--showmeminfo", "vram", "--json")
    return parse_rocm_smi(text or "")


_CARD = re.compile(r"card(\d+)$", re.I)


def parse_rocm_smi(text: str) -> list[GPU]:
    """GPUs from `rocm-smi --showmeminfo vram [--showproductname] --json`: {"card0": {"VRAM Total Memory (B)": ...}}.

    Byte counts may be strings. Cards without both memory figures are skipped;
    malformed JSON gives [].
    """
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    gpus = []
    for key, card in data.items():
        m = _CARD.match(str(key))
        if not m or not isinstance(card, dict):
            continue
        fields = {str(k).lower(): v for k, v in card.items()}
        try:
            total = int(fields["vram total memory (b)"])
            used = int(fields["vram total used memory (b)"])
        except (KeyError, TypeError, ValueError):
            continue
        if total <= 0:
            continue
        name = next((str(fields[k]) for k in ("card series", "card model", "device name") if fields.get(k)), "")
        gpus.append(GPU(int(m.group(1)), name or "AMD GPU", "rocm", total, max(0, total - used)))
    return sorted(gpus, key=lambda g: g.index)


def cgroup_free(
    cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Bytes this process's cgroup may still take under its memory limit (v2 memory.max, or v1's
    memory.limit_in_bytes); None where it has no limit or the kernel does not say."""
    for line in (_read_text(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2's one hierarchy
            folder, files = cgroup_root / path.strip().lstrip("/"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            folder, files = cgroup_root / "memory" / path.strip().lstrip("/"), (
                "memory.limit_in_bytes", "memory.usage_in_bytes")  # fmt: skip
        else:
            continue
        limit, used = (_read_text(folder / name) or "" for name in files)
        if limit.strip().isdigit() and used.strip().isdigit() and int(limit) < 1 << 60:  # v1's "no limit" is near 2**63
            return max(0, int(limit) - int(used))
    return None


def system_ram() -> tuple[int, int]:
    """(total, available) bytes of RAM: /proc/meminfo on Linux, sysctl/vm_stat on macOS, else sysconf."""
    meminfo = _read_text(Path("/proc/meminfo"))
    if meminfo:
        kb = {}
        for line in meminfo.splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                kb[name] = int(parts[0]) * 1024
        if "MemTotal" in kb:
            return kb["MemTotal"], kb.get("MemAvailable", kb.get("MemFree", kb["MemTotal"]))
    if sys.platform == "darwin":
        total = int(_sysctl("hw.memsize") or 0)
        if total:
            return total, _vm_stat_available() or total
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        try:
            free = page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            free = total
        return total, free
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    out = _run("sysctl", "-n", name)
    return out.strip() if out and out.strip() else None


def _vm_stat_available() -> int | None:
    """Free + inactive + speculative pages from macOS's vm_stat, in bytes."""
    out = _run("vm_stat")
    if not out:
        return None
    page = re.search(r"page size of (\d+) bytes", out)
    counts = dict(re.findall(r"Pages (free|inactive|speculative):\s+(\d+)", out))
    if not page or not counts:
        return None
    return int(page.group(1)) * sum(int(v) for v in counts.values())
