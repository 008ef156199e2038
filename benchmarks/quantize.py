"""`loam create --quantize` against llama.cpp's quantizer called directly, in the same run.

    python -m benchmarks.quantize [--layers 8] [--type Q4_K_M] [--runs 3]

Writes an F16 llama with random weights, then times, alternately:
  direct   llama_model_quantize in this process (the baseline: the work itself)
  create   loam's create(): child process, log parsing for progress, hashing,
           GGUF check and rename into the store, manifest
Prints seconds for each and the ratio create/direct: what loam's safety costs.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import tempfile
import time
from pathlib import Path

from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from tests.ggufmaker import write_tiny_llama


def direct(source: Path, target: Path, qtype: str) -> float:
    import llama_cpp

    @llama_cpp.llama_log_callback
    def quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        pass

    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    start = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    elapsed = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")
    target.unlink()
    return elapsed


def through_loam(source: Path, qtype: str, run: int) -> float:
    with tempfile.TemporaryDirectory(prefix="loam-bench-store-") as tmp:
        store = Store(Path(tmp))
        start = time.perf_counter()
        create(
            store,
            Catalog({}, ""),
            ModelName.parse(f"bench{run}"),
            parse(f"FROM {source}\n"),
            folder=source.parent,
            quantize_to=qtype,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--type", default="Q4_K_M")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loam-bench-model-") as tmp:
        source = write_tiny_llama(
            Path(tmp) / "f16.gguf", n_embd=1024, n_head=16, n_ff=2816, n_layer=args.layers, dtype="f16"
        )
        size_mb = source.stat().st_size / 1e6
        print(f"F16 model: {size_mb:.0f} MB, {args.layers} layers, to {args.type}, {args.runs} runs each")
        direct_s, loam_s = [], []
        for run in range(args.runs):
            direct_s.append(direct(source, Path(tmp) / "out.gguf", args.type))
            loam_s.append(through_loam(source, args.type, run))
        d, c = statistics.median(direct_s), statistics.median(loam_s)
        print(f"direct  median {d:.2f} s  ({', '.join(f'{x:.2f}' for x in direct_s)})  {size_mb / d:.0f} MB/s")
        print(f"create  median {c:.2f} s  ({', '.join(f'{x:.2f}' for x in loam_s)})  {size_mb / c:.0f} MB/s")
        print(f"create/direct {c / d:.2f}x")


if __name__ == "__main__":
    main()
