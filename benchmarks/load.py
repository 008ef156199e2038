"""Many clients at once against a real `loam serve`: errors, greedy determinism, req/s and latency.

    python -m benchmarks.load [--models DIR] [--model smollm2:135m] [--clients 8] [--requests 50]
                              [--parallel 4] [--tokens 24] [--deadline 900]

Starts its own server on a free 127.0.0.1 port over the store in DIR (default: the
user's store), then runs `--clients` concurrent clients of `--requests` requests
each, mixed over /api/chat, /api/generate and /v1/chat/completions, streamed and
not, at temperature 0 with a fixed seed. The baseline, in the same run, is one
client doing the same mix of `--requests` requests alone. Prints req/s, p50 and
p95 latency for both and the ratios; counts errors and checks that every reply
to one prompt on one route is the same text. Bounded: every request has a
timeout, the whole run a deadline, and traffic goes to loopback only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app import config
from tests.server_process import ServerProcess

PROMPTS = (
    "Name three colours.",
    "What is two plus two?",
    "Write one sentence about the sea.",
    "Say hello in French.",
)
ROUTES = ("chat", "generate", "openai")


@dataclass
class Tally:
    """What the clients saw: latencies, errors and each (route, prompt)'s distinct replies."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    replies: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, route: str, prompt: str, seconds: float, text: str | None, error: str | None) -> None:
        with self.lock:
            if error is not None:
                self.errors.append(error)
                return
            self.latencies.append(seconds)
            self.replies[(route, prompt)].add(text or "")


def ask(http: httpx.Client, model: str, route: str, prompt: str, stream: bool, tokens: int) -> str:
    """One request; the reply's text, streamed or whole."""
    options = {"temperature": 0, "seed": 0, "num_predict": tokens}
    messages = [{"role": "user", "content": prompt}]
    if route == "openai":
        body = {"model": model, "messages": messages, "stream": stream, "temperature": 0, "seed": 0,
                "max_tokens": tokens}  # fmt: skip
        path = "/v1/chat/completions"
    elif route == "chat":
        body = {"model": model, "messages": messages, "stream": stream, "options": options}
        path = "/api/chat"
    else:
        body = {"model": model, "prompt": prompt, "stream": stream, "options": options}
        path = "/api/generate"
    if not stream:
        r = http.post(path, json=body)
        r.raise_for_status()
        data = r.json()
        if route == "openai":
            return data["choices"][0]["message"]["content"]
        return data["message"]["content"] if route == "chat" else data["response"]
    parts = []
    with http.stream("POST", path, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if route == "openai":
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                if chunk.get("choices"):
                    parts.append(chunk["choices"][0]["delta"].get("content") or "")
            elif line:
                chunk = json.loads(line)
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                parts.append(chunk["message"]["content"] if route == "chat" else chunk.get("response", ""))
    return "".join(parts)


def client(url: str, model: str, index: int, requests: int, tokens: int, deadline: float, tally: Tally) -> None:
    """One client's bounded run over the mix; the offset makes clients hit different routes at once."""
    with httpx.Client(base_url=url, timeout=120) as http:
        for i in range(requests):
            if time.monotonic() > deadline:
                tally.add("", "", 0, None, "deadline passed")
                return
            n = index + i
            route, prompt, stream = ROUTES[n % 3], PROMPTS[(n // 3) % len(PROMPTS)], (n // 12) % 2 == 0
            start = time.perf_counter()
            try:
                text = ask(http, model, route, prompt, stream, tokens)
            except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as e:
                tally.add(route, prompt, 0, None, f"{route}: {e}")
                continue
            tally.add(route, prompt, time.perf_counter() - start, text, None)


def run(url: str, model: str, clients: int, requests: int, tokens: int, deadline: float) -> tuple[Tally, float]:
    tally = Tally()
    threads = [
        threading.Thread(target=client, args=(url, model, c, requests, tokens, deadline, tally)) for c in range(clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - start


def summary(name: str, tally: Tally, wall: float) -> dict[str, float]:
    lat = sorted(tally.latencies)
    figures = {
        "requests": len(lat),
        "errors": len(tally.errors),
        "req_s": len(lat) / wall if wall else 0.0,
        "p50_ms": statistics.median(lat) * 1000 if lat else 0.0,
        "p95_ms": lat[max(0, int(len(lat) * 0.95) - 1)] * 1000 if lat else 0.0,
        "divergent": sum(1 for texts in tally.replies.values() if len(texts) > 1),
    }
    print(
        f"{name:<10} {figures['requests']:>4} requests  {figures['errors']} errors  {figures['req_s']:6.2f} req/s  "
        f"p50 {figures['p50_ms']:7.0f} ms  p95 {figures['p95_ms']:7.0f} ms  "
        f"prompts with differing replies: {figures['divergent']}/{len(tally.replies)}",
        file=sys.stderr,
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="store holding the model (default: yours)")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=4, help="LOAM_NUM_PARALLEL: slots per runner")
    parser.add_argument("--tokens", type=int, default=24, help="num_predict of each reply")
    parser.add_argument("--deadline", type=float, default=900, help="seconds the whole run may take")
    args = parser.parse_args()
    models = args.models or config.paths().models
    with tempfile.TemporaryDirectory() as home:
        server = ServerProcess(models, Path(home), LOAM_NUM_PARALLEL=str(args.parallel)).wait_ready()
        try:
            deadline = time.monotonic() + args.deadline
            warm, _ = run(server.url, args.model, 1, 3, args.tokens, deadline)  # load the model; not counted
            if warm.errors:
                print(f"warm-up failed: {warm.errors[0]}", file=sys.stderr)
                return 1
            alone, alone_wall = run(server.url, args.model, 1, args.requests, args.tokens, deadline)
            base = summary("1 client", alone, alone_wall)
            tally, wall = run(server.url, args.model, args.clients, args.requests, args.tokens, deadline)
            load = summary(f"{args.clients} clients", tally, wall)
            for key, texts in alone.replies.items():  # under load, a prompt must get the reply it got alone
                tally.replies[key] |= texts
            load["divergent"] = sum(1 for texts in tally.replies.values() if len(texts) > 1)
        finally:
            server.stop()
    for error in tally.errors[:5]:
        print(f"error: {error}", file=sys.stderr)
    print(
        f"ratio {args.clients} clients / 1 client: req/s {load['req_s'] / base['req_s']:.2f}x, "
        f"p50 {load['p50_ms'] / base['p50_ms']:.2f}x, p95 {load['p95_ms'] / base['p95_ms']:.2f}x",
        file=sys.stderr,
    )
    print(json.dumps({"baseline": base, "load": load}))
    return 0 if not tally.errors and not load["divergent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
