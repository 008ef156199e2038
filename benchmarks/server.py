"""What `loam serve` and `loam ask` add on top of the runner, against llama-server, in one run.

    python -m benchmarks.server --models STORE --model smollm2:135m --llama-server PATH [--rounds 3]

Three servers of the same model file, with the flags `loam serve` gives its
runner (4096 context, 1 slot, 2 threads): loam's runner alone, llama-server,
and `loam serve` (which starts its own runner). Each streams the same greedy
256-token answer (end tokens ignored), rounds interleaved and each side taking
its turn first; the client times
from the first streamed token to the last, counts the tokens the server
reports (a chunk of `loam serve` may hold several: LOAM_STREAM_INTERVAL), and
prints its own CPU time per token. Then a warm `loam ask --verbose`
(model loaded, 8 tokens) is timed from spawn to exit, and the server's own
total duration is subtracted: what remains is ask's start-up, its HTTP round
trip and its printing. Last, the same 256-token answer is asked for by `loam
ask` and by the chat TUI (headless under Textual's Pilot, stats panel shown,
in a child process like ask), alternating; the server's eval rate of each is
compared: the chat's drawing shares the two cores with the model. The chat
asks once its start-up work is done (it loads the request models in the
background while the user types), and while it answers the harness only
sleeps: Pilot's pause would force a screen update each time. Prints medians
and ratios.

The commands run from this checkout, whose modules are byte-compiled first, as
`pip install .` does for an installed loam: otherwise, where
PYTHONDONTWRITEBYTECODE is set, every `loam ask` would compile its modules anew
(about 15 ms here) and time something no installed copy does.
"""

from __future__ import annotations

import argparse
import compileall
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


def rate(url: str, path: str, body: dict, lines_of: str) -> tuple[float, float]:
    """Tokens per second from the first streamed piece to the last, and this client's CPU seconds per token.

    Tokens are the server's count (llama-server's `timings.predicted_n`,
    Ollama's `eval_count`), not the chunks: `loam serve` may send several
    tokens in one chunk (LOAM_STREAM_INTERVAL). The first piece is one token.
    """
    first = last = 0.0
    count = 0
    cpu = time.process_time()
    with httpx.stream("POST", url + path, json=body, timeout=None) as r:
        for line in r.iter_lines():
            data = line[6:] if line.startswith("data: ") else line
            if not data.strip().startswith("{"):
                continue
            chunk = json.loads(data)
            if chunk.get(lines_of):
                last = time.perf_counter()
                first = first or last
            if chunk.get("stop") or chunk.get("done"):
                count = chunk["timings"]["predicted_n"] if chunk.get("stop") else chunk["eval_count"]
                break
    return (count - 1) / (last - first), (time.process_time() - cpu) / count


def completion_rate(url: str, salt: int) -> tuple[float, float]:
    body = {"prompt": f"{salt}. {PROMPT}", "n_predict": N_TOKENS, "temperature": 0, "ignore_eos": True}
    return rate(url, "/completion", body | {"stream": True}, "content")


def serve_rate(url: str, model: str, salt: int) -> tuple[float, float]:
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


CHAT_OPTIONS = {"num_predict": N_TOKENS, "temperature": 0, "ignore_eos": True, "num_thread": 2}

#: A child process: the chat TUI under Pilot asks one question and prints the answer's figures as JSON.
CHAT_CHILD = """
import asyncio, json, sys, time
from app.tui.app import LoamApp
from app.tui.chat import MessageView, PromptInput

async def main(model, prompt, options):
    app = LoamApp(model=model, verbose=True, new=True, autostart=False)
    async with app.run_test(size=(120, 40)) as pilot:
        while app.client is None or app.session is None:
            await pilot.pause(0.05)
        await app.workers.wait_for_complete()  # start-up's imports, done before anyone has typed a question
        await app.update_session(options=options)
        box = app.query_one(PromptInput)
        box.focus()
        box.text = prompt
        cpu = time.process_time()
        await pilot.press("enter")
        # Plain sleeps from here: Pilot.pause would make every widget answer a callback and force a
        # screen update each time, work the chat does not do for a user and the model would pay for.
        while not app.answering:
            await asyncio.sleep(0.01)
        while app.answering:
            await asyncio.sleep(0.25)
        done = [v for v in app.query(MessageView) if v.role == "assistant" and v.stats]
        errors = [v.content for v in app.query(MessageView) if v.role == "error"]
        if not done:
            raise SystemExit(errors[0] if errors else "the chat ended without an answer")
        print(json.dumps(done[0].stats | {"cpu_seconds": time.process_time() - cpu}))

asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
"""


def ask_eval_rate(server: ServerProcess, model: str, salt: int) -> float:
    """The server's eval rate for a 256-token `loam ask` answer."""
    flags = [f"-o{name}={str(value).lower()}" for name, value in CHAT_OPTIONS.items()]
    argv = [sys.executable, "-m", "app", "ask", "-m", model, "--verbose", *flags, f"{salt}. {PROMPT}"]
    done = subprocess.run(argv, cwd=REPO, env=server.env, capture_output=True, text=True, check=True)
    line = next(line for line in done.stderr.splitlines() if line.startswith("eval rate:"))
    return float(line.split(":", 1)[1].split()[0])


def chat_eval_rate(server: ServerProcess, model: str, salt: int) -> float:
    """The server's eval rate for the same answer asked in the chat TUI, stats panel shown."""
    argv = [sys.executable, "-c", CHAT_CHILD, model, f"{salt}. {PROMPT}", json.dumps(CHAT_OPTIONS)]
    done = subprocess.run(argv, cwd=REPO, env=server.env, capture_output=True, text=True, check=True)
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["eval_count"] == N_TOKENS, stats
    return stats["eval_count"] / stats["eval_duration"] * 1e9


def python_start() -> float:
    """Seconds to spawn `python -c pass` and see it exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="a model store holding --model")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--llama-server", type=Path, help="needed unless --only-chat")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only-chat", action="store_true", help="measure only the chat's eval rate against ask's")
    args = parser.parse_args()
    compileall.compile_dir(REPO / "app", quiet=1)
    with tempfile.TemporaryDirectory() as home, ServerProcess(args.models, Path(home)) as serve:
        serve_rate(serve.url, args.model, -1)  # loads the model; its runner's flags are the ones used below
        if not args.only_chat:
            assert args.llama_server, "--llama-server PATH is needed (or --only-chat)"
            streaming(serve, args.model, args.llama_server, args.rounds)
        chat_against_ask(serve, args.model, args.rounds)


def streaming(serve: ServerProcess, model: str, llama_server: Path, rounds: int) -> None:
    """Streamed tok/s of loam serve, its runner alone and llama-server; then ask's overhead."""
    rates: dict[str, list[float]] = {"runner": [], "llama-server": [], "loam serve": []}
    client_cpu: dict[str, list[float]] = {name: [] for name in rates}
    overheads: list[float] = []
    starts: list[float] = []  # `python -c pass`: the interpreter's own start, which no command can beat
    found = re.search(r"--model (\S+)", _runner_argv(serve))
    assert found, "loam serve started no runner"
    model_path = Path(found.group(1))
    flags = ("--ctx-size", "4096", "--parallel", "1", "--batch-size", "512", "--threads", "2")
    with (
        RunnerProcess(model_path, *flags) as runner,
        RunnerProcess(model_path, *flags, executable=llama_server) as server,
    ):
        measures = {
            "runner": lambda rnd: completion_rate(runner.url, rnd),
            "llama-server": lambda rnd: completion_rate(server.url, rnd),
            "loam serve": lambda rnd: serve_rate(serve.url, model, rnd),
        }
        names = list(measures)
        for rnd in range(rounds):
            for name in names[rnd % 3 :] + names[: rnd % 3]:  # each goes first in turn: drift hits all alike
                speed, cpu = measures[name](rnd)
                rates[name].append(speed)
                client_cpu[name].append(cpu)
            overheads.append(ask_overhead(serve, model))
            starts.append(python_start())
    med = {k: statistics.median(v) for k, v in rates.items()}
    for name, value in med.items():
        cpu_ms = statistics.median(client_cpu[name]) * 1000
        print(f"{name:<14} {value:6.1f} tok/s streamed ({N_TOKENS} tokens); the client's CPU {cpu_ms:.3f} ms a token")
    for other in ("runner alone", "llama-server"):
        theirs = rates[other.removesuffix(" alone")]
        paired = statistics.median(a / b for a, b in zip(rates["loam serve"], theirs, strict=True))
        ratio = med["loam serve"] / statistics.median(theirs)
        print(f"loam serve / {other + ':':<14}{ratio:.2f}x of medians, {paired:.2f}x median of rounds")
    runs = ", ".join(f"{o * 1000:.0f}" for o in overheads)
    print(f"warm loam ask, wall time minus the server's total duration: {statistics.median(overheads) * 1000:.0f} ms")
    print(f"  (runs: {runs} ms); of it, Python's own start (python -c pass): {statistics.median(starts) * 1000:.0f} ms")


def chat_against_ask(serve: ServerProcess, model: str, rounds: int) -> None:
    """The server's eval rate for the same answer asked by `loam ask` and in the chat, alternating."""
    rates: dict[str, list[float]] = {"ask": [], "chat": []}
    for rnd in range(rounds):
        order = ("ask", "chat") if rnd % 2 == 0 else ("chat", "ask")
        for who in order:
            measure = ask_eval_rate if who == "ask" else chat_eval_rate
            rates[who].append(measure(serve, model, 100 + rnd))
    ask_rate, chat_rate = (statistics.median(rates[k]) for k in ("ask", "chat"))
    print(f"eval rate, {N_TOKENS} tokens: loam ask {ask_rate:.1f} tok/s, chat TUI {chat_rate:.1f} tok/s")
    shown = {k: [round(r, 1) for r in v] for k, v in rates.items()}
    paired = statistics.median(c / a for c, a in zip(rates["chat"], rates["ask"], strict=True))
    print(f"chat / ask eval rate:       {chat_rate / ask_rate:.2f}x of medians, {paired:.2f}x median of rounds")
    print(f"  (runs: {shown})")


def _runner_argv(serve: ServerProcess) -> str:
    """The command line of the runner `loam serve` started, read from /proc."""
    for pid in serve.runner_pids():
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


if __name__ == "__main__":
    main()
