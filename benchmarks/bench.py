"""`loam bench` through loam's server against the same load on llama-server, rounds interleaved.

    python -m benchmarks.bench --model smollm2:135m --bin-dir DIR [--concurrency 1,2,4]
        [--prompt-tokens 256] [--gen 64] [--requests 8] [--rounds 2]

DIR holds llama-server (built from the llama.cpp tree vendored in
llama-cpp-python's sdist, see docs/benchmarks.md). The model is served by
`loam serve` (started or reused as `loam ask` does, LOAM_HOST) with a slot
per client, and by llama-server with `-np` the highest level and the same
context per slot. Each round measures loam, then llama-server, so the
machine's drift hits both. Prints, per level, the median aggregate tok/s and
TTFT p50 of each and the ratios loam / llama-server, and each side's
aggregate at the highest level over that at one stream.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.runner_process import free_port


def bench(args: argparse.Namespace, *target: str) -> dict[int, dict[str, float]]:
    """One `loam bench --json` run; the figures of each level by concurrency."""
    cmd = [sys.executable, "-m", "app", "bench", *target, "--concurrency", args.concurrency, "--json", "--no-save"]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--gen", str(args.gen), "--requests", str(args.requests)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    [model] = json.loads(out)["models"]
    return {level["concurrency"]: level for level in model["levels"]}


def start_llama_server(args: argparse.Namespace, model: Path, slots: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    ctx = (args.prompt_tokens + args.gen + max(64, args.prompt_tokens // 8)) * slots
    cmd = [str(args.bin_dir / "llama-server"), "-m", str(model), "--port", str(port), "-np", str(slots)]
    cmd += ["-c", str(ctx), "-t", str(args.threads or os.cpu_count() or 2)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("llama-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--bin-dir", type=Path, default=Path(os.environ.get("LLAMA_CPP_BIN_DIR", ".")))
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    from app.measure.scoring import resolve

    levels = [int(c) for c in args.concurrency.split(",")]
    runs: dict[str, list[dict[int, dict[str, float]]]] = {"loam": [], "llama-server": []}
    proc, url = start_llama_server(args, resolve(args.model).path, max(levels))
    try:
        for i in range(args.rounds):
            runs["loam"].append(bench(args, args.model))
            runs["llama-server"].append(bench(args, "--target", url, "--api", "llama-server"))
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        proc.kill()

    def median(side: str, level: int, key: str) -> float:
        return statistics.median(r[level][key] or 0.0 for r in runs[side])

    print(f"{args.model}, {args.prompt_tokens} prompt tokens, {args.gen} generated, {args.requests} requests a level")
    print(f"{'streams':>7}  {'loam tok/s':>10}  {'llama-server':>12}  {'ratio':>5}  {'loam TTFT':>9}  {'l-s TTFT':>8}")
    for level in levels:
        ours, theirs = median("loam", level, "aggregate_tps"), median("llama-server", level, "aggregate_tps")
        ttft_ours, ttft_theirs = median("loam", level, "ttft_p50_ms"), median("llama-server", level, "ttft_p50_ms")
        print(
            f"{level:>7}  {ours:>10.1f}  {theirs:>12.1f}  {ours / theirs:>5.2f}  "
            f"{ttft_ours:>7.0f}ms  {ttft_theirs:>6.0f}ms"
        )
    top = max(levels)
    for side in runs:
        scale = statistics.median(r[top]["aggregate_tps"] / r[1]["aggregate_tps"] for r in runs[side])
        print(f"{side}: aggregate at {top} streams / at 1 stream = {scale:.2f}x (median of per-round ratios)")


if __name__ == "__main__":
    main()
