"""Pull throughput from a loopback registry, hashing included, against baselines
measured in the same run.

    python -m benchmarks.pull [--size-mb 512] [--runs 3]

The registry runs in a child process (tests/fake_registry.py) so it does not
share this process's GIL. Baselines over the same bytes and the same server:
  raw      one httpx stream read and thrown away (no disk, no hash)
  sha256   hashlib over the bytes in memory
Prints MB/s for each and the ratio of pull to each baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.store.catalog import Catalog
from app.store.pull import pull
from app.store.store import Store
from tests.ggufmaker import write_tiny_llama


def measure_pull(host: str, size: int) -> float:
    with tempfile.TemporaryDirectory(prefix="loam-bench-") as tmp:
        store = Store(Path(tmp))
        start = time.perf_counter()
        pull(store, Catalog({}, ""), f"{host}/library/bench:latest", insecure=True)
        return size / (time.perf_counter() - start) / 1e6


def measure_raw(host: str, digest: str, size: int) -> float:
    with httpx.Client() as client:
        start = time.perf_counter()
        with client.stream("GET", f"http://{host}/v2/library/bench/blobs/{digest}") as response:
            for _ in response.iter_raw():
                pass
        return size / (time.perf_counter() - start) / 1e6


def measure_hash(data: bytes) -> float:
    start = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return len(data) / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loam-bench-model-") as tmp:
        model = write_tiny_llama(Path(tmp) / "bench.gguf", padding_bytes=args.size_mb << 20)
        data = model.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_registry", str(model)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            host = server.stdout.readline().strip()
            results: dict[str, list[float]] = {"pull": [], "raw": [], "sha256": []}
            for _ in range(args.runs):
                results["raw"].append(measure_raw(host, digest, len(data)))
                results["sha256"].append(measure_hash(data))
                results["pull"].append(measure_pull(host, len(data)))
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"blob: {len(data) / 1e6:.0f} MB, {args.runs} runs, medians")
    for key in ("pull", "raw", "sha256"):
        print(f"  {key:<7} {med[key]:8.0f} MB/s   (runs: {', '.join(f'{x:.0f}' for x in results[key])})")
    print(f"  pull/raw    {med['pull'] / med['raw']:.2f}x")
    print(f"  pull/sha256 {med['pull'] / med['sha256']:.2f}x")


if __name__ == "__main__":
    main()
