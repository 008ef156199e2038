"""The runner's speed against llama-cpp-python's `Llama` in-process (and llama-server, given its path).

    python -m benchmarks.runner --model PATH [--threads 2] [--runs 3] [--llama-server PATH]

Same model, same threads, greedy decoding of the same tokens (end-of-generation
tokens banned so every run makes --tokens tokens). Measured:
  prompt tok/s     a ~200-token prompt, evaluated from scratch
  decode tok/s     one stream, from its first token to its last
  aggregate tok/s  N concurrent streams on a --parallel 8 runner: all tokens / wall time
Prints medians and ratios: prompt and decode against Llama (measured interleaved
with the runner), aggregates against one stream measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.runner_process import RunnerProcess

STREAMS = (1, 2, 4, 8)
PROMPT = (
    "The history of bread begins in the Neolithic era, when people first ground grains into flour and "
    "mixed it with water. Over thousands of years, bakers in Egypt, Greece and Rome refined the craft: "
    "they learned to use wild yeasts, built ovens of clay and stone, and traded recipes along the roads "
    "of their empires. In medieval Europe, guilds controlled who could bake and sell bread, and the price "
    "of a loaf was fixed by law in many towns. The industrial revolution brought roller mills, which made "
    "white flour cheap, and later factories that baked sliced bread by the million. Today, small bakeries "
    "are returning to slow fermentation, and many people bake sourdough at home. Tell the story again, "
    "in your own words, with more detail about each period:"
)


class Baseline:
    """llama-cpp-python's Llama in this process, generating greedily."""

    def __init__(self, model: Path, threads: int) -> None:
        import llama_cpp
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.bias = {t: -float("inf") for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        self.n_prompt = len(self.llm.tokenize(PROMPT.encode(), special=True))

    def measure(self, n_tokens: int) -> tuple[float, float]:
        """(prompt tok/s, decode tok/s), timed like the runner's timings: to the first token, then on."""
        self.llm.reset()
        start = time.perf_counter()
        first = last = 0.0
        count = 0
        for _ in self.llm.create_completion(
            PROMPT, max_tokens=n_tokens, temperature=0, stream=True, logit_bias=self.bias
        ):
            last = time.perf_counter()
            first = first or last
            count += 1
        return self.n_prompt / (first - start), (count - 1) / (last - first)


class BaselineProcess:
    """The baseline in a child process of its own, as the runner is: two ggml thread pools in one
    process spin against each other and slow both several-fold, so neither may share this one."""

    def __init__(self, model: Path, threads: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.runner", "--baseline-worker", "--model", str(model),
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def measure(self, n_tokens: int) -> tuple[float, float]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{n_tokens}\n")
        self.proc.stdin.flush()
        prompt, decode = json.loads(self.proc.stdout.readline())
        return prompt, decode

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def baseline_worker(model: Path, threads: int) -> None:
    base = Baseline(model, threads)
    for line in sys.stdin:
        print(json.dumps(base.measure(int(line))), flush=True)


def runner_single(url: str, n_tokens: int) -> tuple[float, float]:
    body = {"prompt": PROMPT, "n_predict": n_tokens, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    t = httpx.post(url + "/completion", json=body, timeout=None).json()["timings"]
    return t["prompt_per_second"], t["predicted_per_second"]


def aggregate(url: str, streams: int, n_tokens: int) -> float:
    """Tokens per second over `streams` concurrent greedy completions of short prompts."""
    counts = [0] * streams

    def one(i: int) -> None:
        body = {"prompt": f"Story number {i}: once upon a time", "n_predict": n_tokens, "temperature": 0}
        body |= {"ignore_eos": True, "cache_prompt": False}
        counts[i] = httpx.post(url + "/completion", json=body, timeout=None).json()["tokens_predicted"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--llama-server", type=Path, help="a llama-server binary to measure as well")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.model, args.threads)
        return
    flags = ("--ctx-size", "2048", "--parallel", "1", "--threads", str(args.threads))  # as the baseline's
    batched = ("--ctx-size", "8192", "--parallel", "8", "--threads", str(args.threads))

    base = BaselineProcess(args.model, args.threads)
    servers = [("loam runner", None)] + ([("llama-server", args.llama_server)] if args.llama_server else [])
    for label, binary in servers:
        with RunnerProcess(args.model, *flags, executable=binary) as runner:
            # Interleaved, so drift in the machine's speed hits both sides alike.
            pairs = [(base.measure(args.tokens), runner_single(runner.url, args.tokens)) for _ in range(args.runs)]
            bp, bd = (statistics.median(p[0][i] for p in pairs) for i in (0, 1))
            rp, rd = (statistics.median(p[1][i] for p in pairs) for i in (0, 1))
            print(f"Llama in-process   prompt {bp:7.1f} tok/s   decode {bd:6.1f} tok/s")
            print(f"{label:<18} prompt {rp:7.1f} tok/s ({rp / bp:.2f}x)   decode {rd:6.1f} tok/s ({rd / bd:.2f}x)")
        with RunnerProcess(args.model, *batched, executable=binary) as runner:
            # Each run measures every stream count in turn; ratios are taken within a run.
            runs = [{n: aggregate(runner.url, n, args.tokens) for n in STREAMS} for _ in range(args.runs)]
            for n in STREAMS:
                agg = statistics.median(run[n] for run in runs)
                ratio = statistics.median(run[n] / run[1] for run in runs)
                print(f"{label:<18} {n} streams: {agg:6.1f} tok/s aggregate ({ratio:.2f}x of 1 stream)")
    base.close()


if __name__ == "__main__":
    main()
