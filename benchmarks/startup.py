"""How fast loam starts: `loam ask --help`, and the chat TUI's first painted frame.

    python -m benchmarks.startup [--runs 10]

Each figure is the wall time from spawning a child process to the moment it is
done (exit for --help; Textual's Ready event, sent once the first frame is
drawn, for the TUI). Baselines in the same run, alternating with loam's runs:
  python -c pass           the interpreter's own start, which no command can beat
  minimal Textual app      an App with one Static: the floor for any Textual TUI
Prints medians and the ratios loam/baseline. Targets: ask --help < 0.3 s,
first paint < 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MINIMAL_APP = """
import os
from textual.app import App
from textual.widgets import Static

class Minimal(App):
    def compose(self):
        yield Static("hello")
    def on_ready(self):
        os.write(1, b"painted\\n")
        self.exit()

Minimal().run(headless=True, size=(120, 36))
"""

LOAM_APP = """
import os, sys
from app.tui.app import LoamApp

class Timed(LoamApp):
    def on_ready(self):
        os.write(1, b"painted\\n")
        self.exit()

Timed(model="smollm2:135m", host="127.0.0.1:9", autostart=False).run(headless=True, size=(120, 36))
"""


def timed(command: list[str], env: dict[str, str], until_line: bool) -> float:
    """Seconds from spawn to exit, or to the child's first line on stdout when `until_line`."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    if until_line:
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        if line.strip() != b"painted":
            raise RuntimeError(f"{command[-1][:40]!r} did not paint: {line!r}")
        proc.wait()
        return elapsed
    proc.stdout.read()
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{command} exited {proc.returncode}")
    return time.perf_counter() - start


def measure(cases: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():
        case()  # warm the page cache and the .pyc files
    for _ in range(runs):
        for name, case in cases.items():
            results[name].append(case())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="loam-startup-"))
    env = {
        **os.environ,
        **{f"XDG_{d.upper()}_HOME": str(home / d) for d in ("data", "config", "state", "cache")},
        "LOAM_MODELS": str(home / "models"),
    }
    py = sys.executable
    loam = [py, "-m", "app"]
    cases = {
        "python -c pass": lambda: timed([py, "-c", "pass"], env, False),
        "loam ask --help": lambda: timed([*loam, "ask", "--help"], env, False),
        "minimal Textual app, first paint": lambda: timed([py, "-c", MINIMAL_APP], env, True),
        "loam chat, first paint": lambda: timed([py, "-c", LOAM_APP], env, True),
    }
    results = measure(cases, args.runs)
    median = {name: statistics.median(times) for name, times in results.items()}
    print(f"{'':36} {'median s':>9}   runs")
    for name, times in results.items():
        print(f"{name:36} {median[name]:9.3f}   {', '.join(f'{t:.3f}' for t in times)}")
    print()
    ask, chat = median["loam ask --help"], median["loam chat, first paint"]
    print(f"ask --help / python -c pass:        {ask / median['python -c pass']:.2f}x  (target < 0.3 s: {ask:.3f} s)")
    print(
        f"chat first paint / minimal Textual:  {chat / median['minimal Textual app, first paint']:.2f}x  "
        f"(target < 1 s: {chat:.3f} s)"
    )


if __name__ == "__main__":
    main()
