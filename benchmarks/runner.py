"""The runner against llama-server of the same llama.cpp, side by side in one run.

    python -m benchmarks.runner --model PATH --llama-server PATH [--threads 2] [--rounds 3]

Both servers are started with the same flags (context, slots, threads) and get
the same requests, rounds interleaved and their order alternating, so drift in
the machine's speed hits both alike. Measured, as a client sees it:

  generation, 1 stream     tok/s from the first token to the last (128 tokens, end tokens ignored)
  TTFT, 1 stream           request sent to first token, a 20-word prompt (median of 3 a round)
  aggregate, 4 streams     all tokens / wall time, 4 concurrent requests on 4 slots
  mean TTFT, 4 at once     4 requests of ~200 unique prompt tokens sent together, 4 slots

Prints the median of each, the ratio of the medians, and the median of the
rounds' own ratios (each round's two sides ran back to back, so that one is
the less hurt by the machine's speed drifting over the run). loam's runner runs as shipped: prompt-lookup
drafting is on (it rarely fires on these prompts); `--no-draft` turns it off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.runner_process import RunnerProcess

SHORT = "Tell me a long story about a lighthouse keeper who finds a message in a bottle on the shore one day"
TOPICS = ("bread", "the sea", "mountains", "clocks", "trains", "bees", "glass", "paper")


def long_prompt(i: int, salt: int) -> str:
    """About 200 tokens, unique per request and round, so no server can serve it from its cache."""
    words = " ".join(f"{TOPICS[(i + k) % len(TOPICS)]}{salt}x{k}" for k in range(60))
    return f"Request {salt}-{i}. Summarize these notes about {TOPICS[i % len(TOPICS)]}: {words}."


def stream(url: str, prompt: str, n_predict: int) -> tuple[float, float, int]:
    """One streamed greedy completion: (seconds to first token, seconds from first to last, tokens)."""
    body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "ignore_eos": True}
    body |= {"cache_prompt": False, "stream": True}
    start = time.perf_counter()
    first = last = 0.0
    count = 0
    headers = {"Accept": "text/event-stream"}
    with httpx.stream("POST", url + "/completion", json=body, headers=headers, timeout=None) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("content") or chunk.get("tokens"):
                last = time.perf_counter()
                first = first or last
                count += len(chunk.get("tokens") or [0])
            if chunk.get("stop"):
                break
    return first - start, last - first, count


def together(n: int, fn: Callable[[int], tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """`fn(i)` for i in range(n), all at once; their results."""
    out: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * n

    def one(i: int) -> None:
        out[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def measure_single(url: str, salt: int) -> dict[str, float]:
    """One round on one slot: the median first-token time of three short prompts, then a generation."""
    ttft = statistics.median(stream(url, f"{salt}.{k} {SHORT}", 8)[0] for k in range(3))
    _, gen, count = stream(url, f"{salt + 1}. {SHORT}", 128)
    return {"gen": (count - 1) / gen, "ttft": ttft}


def measure_four(url: str, salt: int) -> dict[str, float]:
    start = time.perf_counter()
    results = together(4, lambda i: stream(url, f"{salt}-{i}. {SHORT}", 128))
    aggregate = sum(r[2] for r in results) / (time.perf_counter() - start)
    firsts = together(4, lambda i: stream(url, long_prompt(i, salt), 4))
    return {"agg4": aggregate, "ttft4": statistics.mean(r[0] for r in firsts)}


FIGURES = (
    ("gen", "generation, 1 stream", "tok/s", True),
    ("ttft", "time to first token, 1 stream", "ms", False),
    ("agg4", "aggregate generation, 4 streams", "tok/s", True),
    ("ttft4", "mean time to first token, 4 at once", "ms", False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--llama-server", type=Path, required=True, help="llama-server built from the same llama.cpp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-draft", action="store_true", help="run loam's runner with --draft-max 0")
    parser.add_argument("--only", choices=("1", "4"), help="measure only with 1 slot or only with 4")
    args = parser.parse_args()
    threads = ("--threads", str(args.threads))
    loam_extra = ("--draft-max", "0") if args.no_draft else ()
    results: dict[str, dict[str, list[float]]] = {"loam": {}, "llama-server": {}}
    for slots, ctx, measure in ((1, 2048, measure_single), (4, 8192, measure_four)):
        if args.only and args.only != str(slots):
            continue
        flags = ("--ctx-size", str(ctx), "--parallel", str(slots), *threads)
        with (
            RunnerProcess(args.model, *flags, *loam_extra) as loam,
            RunnerProcess(args.model, *flags, executable=args.llama_server) as server,
        ):
            sides = [("loam", loam.url), ("llama-server", server.url)]
            for rnd in range(args.rounds):
                for label, url in sides if rnd % 2 == 0 else sides[::-1]:
                    for key, value in measure(url, 1000 * rnd + 7).items():
                        results[label].setdefault(key, []).append(value)
    print(f"{'':<38}{'loam':>12}{'llama-server':>14}{'ratio':>9}{'paired':>9}")
    for key, name, unit, higher in FIGURES:
        if key not in results["loam"]:
            continue
        mine, theirs_all = results["loam"][key], results["llama-server"][key]
        ours, theirs = statistics.median(mine), statistics.median(theirs_all)
        paired = statistics.median(a / b for a, b in zip(mine, theirs_all, strict=True))
        scale = 1000 if unit == "ms" else 1
        better = "higher is better" if higher else "lower is better"
        print(
            f"{name:<38}{ours * scale:>8.1f} {unit:<5}{theirs * scale:>8.1f} {unit:<5}"
            f"{ours / theirs:>6.2f}x{paired:>8.2f}x  ({better})"
        )


if __name__ == "__main__":
    main()
