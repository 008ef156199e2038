"""What `loam serve` and `loam ask` add on top of the runner, against llama-server, in one run.

    python -m benchmarks.server --models STORE --model smollm2:135m --llama-server PATH [--rounds 3]

Three servers of the same model file, with the flags `loam serve` gives its
runner (4096 context, 1 slot, 2 threads): loam's runner alone, llama-server,
and `loam serve` (which starts its own runner). Each streams the same greedy
256-token answer (end tokens ignored), rounds interleaved; the client times
from the first streamed token to the last. Then a warm `loam ask --verbose`
(model loaded, 8 tokens) is timed from spawn to exit, and the server's own
total duration is subtracted: what remains is ask's start-up, its HTTP round
trip and its printing. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.runner_process import REPO, RunnerProcess
from tests.server_process import ServerProcess

PROMPT = "Tell me a long story about a lighthouse keeper who finds a message in a bottle"
N_TOKENS = 256
_GO = re.compile(r"(\d+(?:\.\d+)?)(h|ms|µs|us|ns|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


def go_seconds(text: str) -> float:
    """Seconds in a Go duration as `--verbose` prints it: 1.5s, 12.3ms, 2m3.5s."""
    return sum(float(n) * _UNIT[u] for n, u in _GO.findall(text))


def rate(url: str, path: str, body: dict, lines_of: str) -> float:
    """Tokens per second from the first streamed piece to the last."""
    first = last = 0.0
    count = 0
    with httpx.stream("POST", url + path, json=body, timeout=None) as r:
        for line in r.iter_lines():
            data = line[6:] if line.startswith("data: ") else line
            if not data.strip().startswith("{"):
                continue
            chunk = json.loads(data)
            if chunk.get(lines_of):
                last = time.perf_counter()
                first = first or last
                count += 1
            if chunk.get("stop") or chunk.get("done"):
                break
    return (count - 1) / (last - first)


def completion_rate(url: str, salt: int) -> float:
    body = {"prompt": f"{salt}. {PROMPT}", "n_predict": N_TOKENS, "temperature": 0, "ignore_eos": True}
    return rate(url, "/completion", body | {"stream": True}, "content")


def serve_rate(url: str, model: str, salt: int) -> float:
    options = {"num_predict": N_TOKENS, "temperature": 0, "ignore_eos": True, "num_thread": 2}
    body = {"model": model, "prompt": f"{salt}. {PROMPT}", "raw": True, "stream": True, "options": options}
    return rate(url, "/api/generate", body, "response")


def ask_overhead(server: ServerProcess, model: str) -> float:
    """Wall time of a warm `loam ask` minus the total duration the server reported for it."""
    argv = [sys.executable, "-m", "app", "ask", "-m", model, "--verbose", "-o", "num_predict=8", "-o", "num_thread=2"]
    start = time.perf_counter()
    done = subprocess.run([*argv, "Hi"], cwd=REPO, env=server.env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    total = next(line for line in done.stderr.splitlines() if line.startswith("total duration:"))
    return wall - go_seconds(total.split(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="a model store holding --model")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"runner": [], "llama-server": [], "loam serve": []}
    overheads: list[float] = []
    with tempfile.TemporaryDirectory() as home, ServerProcess(args.models, Path(home)) as serve:
        serve_rate(serve.url, args.model, -1)  # loads the model; its runner's flags are the ones used below
        found = re.search(r"--model (\S+)", _runner_argv(serve))
        assert found, "loam serve started no runner"
        model_path = Path(found.group(1))
        flags = ("--ctx-size", "4096", "--parallel", "1", "--batch-size", "512", "--threads", "2")
        with (
            RunnerProcess(model_path, *flags) as runner,
            RunnerProcess(model_path, *flags, executable=args.llama_server) as server,
        ):
            for rnd in range(args.rounds):
                rates["runner"].append(completion_rate(runner.url, rnd))
                rates["llama-server"].append(completion_rate(server.url, rnd))
                rates["loam serve"].append(serve_rate(serve.url, args.model, rnd))
                overheads.append(ask_overhead(serve, args.model))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for name, value in med.items():
        print(f"{name:<14} {value:6.1f} tok/s streamed ({N_TOKENS} tokens)")
    print(f"loam serve / runner alone:  {med['loam serve'] / med['runner']:.2f}x")
    print(f"loam serve / llama-server:  {med['loam serve'] / med['llama-server']:.2f}x")
    print(f"warm loam ask, wall time minus the server's total duration: {statistics.median(overheads) * 1000:.0f} ms")


def _runner_argv(serve: ServerProcess) -> str:
    """The command line of the runner `loam serve` started, read from /proc."""
    for pid in serve.runner_pids():
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


if __name__ == "__main__":
    main()
