"""Start `python -m app.runner` as a real child process on a free 127.0.0.1 port, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.runner import hugepages

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunnerProcess:
    """A runner child process; `url` once `/health` says ok."""

    def __init__(self, model: Path, *args: str, executable: Path | None = None, by_hand: bool = False) -> None:
        """`executable`: a llama-server binary to start instead of loam's runner. loam's runner gets the
        environment `loam serve` gives it (app.runner.hugepages), unless `by_hand`: then it starts itself
        again to get it, as when a person starts it."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        program = [str(executable)] if executable else [sys.executable, "-m", "app.runner"]
        # a runner of loam's follows its parent out, so a killed test run leaves no model in memory
        env = {**os.environ, "LOAM_RUNNER_PARENT": str(os.getpid())}
        if not executable and not by_hand:
            env = hugepages.child_environ(env)
        self.proc = subprocess.Popen(
            [*program, "--model", str(model), "--port", str(self.port), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, polls: int = 600) -> RunnerProcess:
        """Poll /health (at most `polls` times, 50 ms apart) until it answers 200."""
        for _ in range(polls):
            if self.proc.poll() is not None:
                raise RuntimeError(f"runner exited {self.proc.returncode}: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("runner did not become ready")

    def complete(self, **body: object) -> dict:
        """The whole answer of /completion, with its token ids (`return_tokens`) unless the body says otherwise."""
        response = httpx.post(self.url + "/completion", json={"return_tokens": True, **body}, timeout=None)
        response.raise_for_status()
        return response.json()

    def stream(self, **body: object) -> list[dict]:
        chunks = []
        with httpx.stream("POST", self.url + "/completion", json={**body, "stream": True}, timeout=None) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):  # server-sent events, as llama-server streams
                    chunks.append(json.loads(line[6:]))
        return chunks

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> RunnerProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
