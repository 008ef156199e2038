"""The hardware plan: which backend and GPUs llama.cpp can use, how much memory a model needs, where its layers go."""

from app.hardware.devices import GPU, Inventory, detect, llama_backends, parse_nvidia_smi, parse_rocm_smi, system_ram
from app.hardware.estimate import MemoryEstimate, allocated_context, estimate
from app.hardware.placement import GPU_RESERVE, Plan, fallback, plan

__all__ = [
    "GPU",
    "GPU_RESERVE",
    "Inventory",
    "MemoryEstimate",
    "Plan",
    "allocated_context",
    "detect",
    "estimate",
    "fallback",
    "llama_backends",
    "parse_nvidia_smi",
    "parse_rocm_smi",
    "plan",
    "system_ram",
]
