"""Quantize a GGUF model with llama.cpp, in a child process.

llama.cpp aborts the whole process on some bad inputs, so the work runs in
`python -m app.store.quantize`; the parent turns its per-tensor log lines into
progress events and any failure into a QuantizeError.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from app.errors import QuantizeError
from app.store.gguf_info import read_header
from app.store.progress import Meter, ProgressFn

#: Types a model can be quantized to, best quality first, as llama.cpp names them.
QUANT_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
    "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "Q2_K",
    "TQ2_0", "TQ1_0",
)  # fmt: skip
#: Types llama.cpp makes only with an importance matrix, which loam does not compute.
NEEDS_IMATRIX = ("IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "Q2_K_S")
#: File types that hold unquantized weights; anything else is a requantization.
UNQUANTIZED = ("F32", "F16", "BF16")

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


def quant_type(text: str) -> str:
    """The canonical name of a quantization type given in any case, or QuantizeError."""
    name = text.strip().upper()
    if name in QUANT_TYPES:
        return name
    if name in NEEDS_IMATRIX:
        raise QuantizeError(f"{name} needs an importance matrix, which loam cannot make; try IQ4_XS or Q3_K_S")
    raise QuantizeError(f"unknown quantization type {text!r}; choose one of {', '.join(QUANT_TYPES)}")


def quantize(
    source: Path, target: Path, qtype: str, progress: ProgressFn, *, status: str, allow_requantize: bool = False
) -> None:
    """Write `source` quantized to `qtype` at `target`, reporting bytes of source tensors done."""
    sizes = {t.name: t.n_bytes for t in read_header(source).tensors}
    meter = Meter(progress, status, None, sum(sizes.values()))
    cmd = [sys.executable, "-m", "app.store.quantize", str(source), str(target), qtype]
    if allow_requantize:
        cmd.append("--allow-requantize")
    env = {**os.environ, "PYTHONPATH": _import_root() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env)
    tail: collections.deque[str] = collections.deque(maxlen=8)
    done = 0
    current: str | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _TENSOR_LINE.match(line)
            if m:
                done += sizes.get(current, 0) if current else 0
                current = m.group(3)
                meter.update(done)
            elif line.strip():
                tail.append(line.strip())
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0:
        target.unlink(missing_ok=True)
        raise QuantizeError(_failure(rc, qtype, tail))
    meter.update(meter.total or 0, force=True)


def _failure(rc: int, qtype: str, tail: collections.deque[str]) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"quantizing to {qtype} crashed ({name}); the store is unchanged"
    reason = next((line for line in reversed(tail) if "error" in line.lower() or "failed" in line.lower()), None)
    reason = (reason or (tail[-1] if tail else f"exit status {rc}")).split("failed to quantize: ")[-1]
    return f"quantizing to {qtype} failed: {reason}; the store is unchanged"


def _import_root() -> str:
    """The directory holding the `app` package, so the child imports this same copy."""
    return str(Path(__file__).resolve().parents[2])


def _child(argv: list[str]) -> int:
    """Run one llama_model_quantize call, logging llama.cpp's lines to stdout."""
    import ctypes

    import llama_cpp

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    source, target, qtype = argv[:3]

    @llama_cpp.llama_log_callback
    def log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        sys.stdout.write(text.decode("utf-8", "replace"))
        sys.stdout.flush()

    llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if qtype == "F32" else f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.allow_requantize = "--allow-requantize" in argv
    rc = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    return 1 if rc else 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
