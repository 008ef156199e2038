"""Runner processes: start one for a model, wait for it to load, talk to it, stop it.

A runner is `python -m app.runner` or a llama-server binary named in
config.toml; both speak the same protocol on a loopback port. Its stderr goes
to a log file in the state dir; a runner that cannot load ends that log with
one JSON line, `{"error", "kind"}`, which becomes the error the client sees.

A runner that sends nothing for `timeout` seconds while answering a request
(stopped, wedged in the decode loop) is killed, and the request gets an error;
the next request loads the model again. loam's runner sends a blank line each
second the decode loop moves without output for that request (the prompt
being read, or other requests ahead of it), so a slow reply is not mistaken for
a wedged one. Idle runners are never timed out.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app import config
from app.errors import LoamError
from app.http11 import ProtocolError
from app.http11_async import Stream
from app.runner import hugepages

_REPO_ROOT = Path(__file__).resolve().parents[2]
_OOM = re.compile(r"out of memory|failed to allocate|unable to allocate|cannot allocate", re.I)
#: Set for a runner the server starts: the server's pid, which the runner watches.
PARENT_ENV = "LOAM_RUNNER_PARENT"


class RunnerError(LoamError):
    """A runner that failed to load or died; `kind` is the runner's (oom, bad_model, ...) or "crashed"."""

    def __init__(self, message: str, kind: str = "crashed") -> None:
        super().__init__(message)
        self.kind = kind


#: Seconds a runner has to exit after SIGTERM when it keeps no states on disk.
STOP_GRACE = 5.0
#: A slower disk than most: states are written at stop at least this fast, in bytes a second.
STATE_WRITE_RATE = 200e6


def stop_grace(state_dir_bytes: int) -> float:
    """How long a runner may take to stop: time to write a full disk cache of states (at most a minute) more."""
    return STOP_GRACE + min(55.0, max(0, state_dir_bytes) / STATE_WRITE_RATE)


@dataclass(frozen=True)
class RunnerCommand:
    """What to execute: loam's runner (None) or a llama-server binary."""

    llama_server: Path | None = None

    @property
    def label(self) -> str:
        return f"llama-server ({self.llama_server})" if self.llama_server else "loam runner"

    def argv(self, model: Path, port: int, args: list[str]) -> list[str]:
        program = [str(self.llama_server)] if self.llama_server else [sys.executable, "-m", "app.runner"]
        return [*program, "--model", str(model), "--port", str(port), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Runner:
    """One runner child process and an HTTP client for it."""

    def __init__(
        self,
        command: RunnerCommand,
        model: Path,
        args: list[str],
        log_dir: Path,
        timeout: float = 60.0,
        stop_grace: float = STOP_GRACE,
        stream_interval: float = 0.0,
    ) -> None:
        """`timeout`: seconds without a byte from the runner on a request before it counts as wedged (0: never);
        `stop_grace`: seconds it has to exit after SIGTERM (it may be saving its slots' states) before SIGKILL."""
        self.timeout = timeout
        self.stop_grace = stop_grace
        self.stream_interval = stream_interval
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.log_path = log_dir / f"runner-{self.port}.log"
        self.argv = command.argv(model, self.port, args)
        env = {
            **hugepages.child_environ(os.environ),  # the runner need not start itself again to get huge pages
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])),
            PARENT_ENV: str(os.getpid()),  # the runner exits if this process is gone, even after a SIGKILL
            "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),  # nvidia-smi's numbering
        }
        with config.open_private_log(self.log_path, append=False) as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # Ctrl+C in the server's terminal is the server's to handle
            )  # fmt: skip
        read = timeout if timeout > 0 else None
        self.client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(None, connect=10.0, read=read))
        self._pieces: dict[int, str] = {}  # token id -> its text, filled as logprob answers need them

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    async def wait_ready(self, on_progress: Callable[[float], None] = lambda p: None) -> None:
        """Poll /health until the model is loaded; RunnerError if the process exits first."""
        while True:
            if not self.alive:
                raise self.failure()
            try:
                r = await self.client.get("/health", timeout=2.0)
                if r.status_code == 200:
                    return
                progress = (
                    r.json().get("progress")
                    if r.headers.get("content-type", "").startswith("application/json")
                    else None
                )
                if isinstance(progress, (int, float)):
                    on_progress(float(progress))
            except (httpx.TransportError, ValueError):
                pass
            await asyncio.sleep(0.05)

    def failure(self) -> RunnerError:
        """The runner's own one-line report of why it stopped, else its exit status."""
        code = self.proc.poll()
        for line in reversed(self._log_tail()):
            if line.startswith("{"):
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                if isinstance(report, dict) and "error" in report:
                    return RunnerError(str(report["error"]), str(report.get("kind", "error")))
        if any(_OOM.search(line) for line in self._log_tail()[-40:]):  # llama-server says it only in its log
            return RunnerError(f"not enough memory to load the model; see {self.log_path}", "oom")
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return RunnerError(f"the runner was killed by {name}; see {self.log_path}")
        return RunnerError(f"the runner exited with status {code}; see {self.log_path}")

    def _log_tail(self) -> list[str]:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                return f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    async def props(self) -> dict[str, Any]:
        r = await self.client.get("/props")
        r.raise_for_status()
        return r.json()

    async def tokenize(self, text: str) -> list[int]:
        return (await self._post("/tokenize", {"content": text, "add_special": True}))["tokens"]

    async def detokenize(self, tokens: list[int]) -> str:
        return (await self._post("/detokenize", {"tokens": tokens}))["content"]

    async def tokenize_pieces(self, text: str) -> list[tuple[int, str]]:
        """`text` as a prompt's tokens (BOS when the model adds one) with each token's text (control tokens spelled)."""
        answer = await self._post("/tokenize", {"content": text, "add_special": True, "with_pieces": True})
        out = []
        for item in answer["tokens"]:
            piece = item["piece"]
            if isinstance(piece, list):  # llama-server: the bytes of a piece that is not valid UTF-8
                piece = bytes(piece).decode("utf-8", "replace")
            out.append((int(item["id"]), str(piece)))
        return out

    async def pieces(self, tokens: list[int]) -> list[str]:
        """The text of each token id, looked up once per id and remembered for this runner's life."""
        missing = sorted(set(tokens) - self._pieces.keys())
        limit = asyncio.Semaphore(8)

        async def one(token: int) -> None:
            async with limit:
                self._pieces[token] = await self.detokenize([token])

        await asyncio.gather(*(one(t) for t in missing))
        return [self._pieces[t] for t in tokens]

    async def score(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /score: log p(token | the tokens before it) for windows of tokens, in full batches.

        `body` is `{"windows": [{"tokens", "from"}], "top_k", "distribution"}`. The
        JSON answer is returned as it comes; with `distribution` the binary answer
        becomes `{"distribution": float32 array (rows, n_vocab), "n_vocab": V}`.
        No watchdog: scoring runs in the decode loop and sends nothing until done.
        """
        try:
            r = await self.client.post("/score", json=body, timeout=httpx.Timeout(None, connect=10.0))
        except httpx.TransportError as e:
            raise self.failure() if not self.alive else RunnerError(f"lost the runner: {e}") from e
        if r.status_code == 404:
            raise RunnerError("scoring needs loam's runner; this runner (llama-server) has no /score", "request")
        if r.status_code != 200:
            raise RunnerError(_reply_error(r.content, r.status_code), "request")
        if not body.get("distribution"):
            return r.json()
        import numpy as np  # only distributions need it

        rows, vocab = int(r.headers["X-Score-Rows"]), int(r.headers["X-Score-Vocab"])
        values = np.frombuffer(r.content, dtype="<f4")
        if values.size != rows * vocab:
            raise RunnerError(f"the runner sent {values.size} log-probabilities for {rows} rows of {vocab}")
        return {"distribution": values.reshape(rows, vocab), "n_vocab": vocab, "rows": rows}

    async def embedding(self, text: str) -> dict[str, Any]:
        """`{"embedding": vector, "tokens_evaluated": n}` of `text`, by the OpenAI-style route both runners have."""
        # No watchdog: an embedding may wait silently behind long generations in the runner's queue.
        answer = await self._post("/v1/embeddings", {"input": text}, timeout=httpx.Timeout(None, connect=10.0))
        return {"embedding": answer["data"][0]["embedding"], "tokens_evaluated": answer["usage"]["prompt_tokens"]}

    async def complete(self, body: dict[str, Any], interval: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Stream /completion chunks; RunnerError if the runner dies or answers with an error.

        `interval` (default: this runner's stream_interval) asks loam's runner
        to gather the tokens of that many seconds into one chunk, their text,
        token ids and probabilities joined (app/runner/gather.py); llama-server
        ignores it and sends every token alone.
        """
        interval = self.stream_interval if interval is None else interval
        # return_progress: both send prompt progress chunks; loam's runner also a comment while it waits.
        body = {**body, "stream": True, "return_progress": True} | ({"stream_interval": interval} if interval else {})
        payload = json.dumps(body).encode()
        read = self.timeout if self.timeout > 0 else None
        try:
            headers = {"Content-Type": "application/json"}
            async with Stream(
                self.host, "POST", "/completion", payload, headers=headers, connect_timeout=10.0, read_timeout=read
            ) as r:
                if r.status != 200:
                    raise RunnerError(_reply_error(await r.read(), r.status), "request")
                async for line in r.lines():
                    chunk = _event(line)
                    if chunk is None:
                        continue
                    yield chunk
                    if chunk.get("stop"):
                        return
        except TimeoutError as e:
            raise await self._wedged() from e
        except (OSError, ProtocolError) as e:
            for _ in range(40):  # a dropped connection usually means the process is dying: let its status land
                if not self.alive:
                    break
                await asyncio.sleep(0.05)
            raise self.failure() if not self.alive else RunnerError(f"lost the runner: {e}") from e
        raise self.failure() if not self.alive else RunnerError("the runner ended the stream early")

    async def _post(self, path: str, body: dict[str, Any], timeout: httpx.Timeout | None = None) -> dict[str, Any]:
        try:
            r = await self.client.post(path, json=body, **({"timeout": timeout} if timeout else {}))
        except httpx.ReadTimeout as e:
            raise await self._wedged() from e
        except httpx.TransportError as e:
            raise self.failure() if not self.alive else RunnerError(f"lost the runner: {e}") from e
        if r.status_code != 200:
            raise RunnerError(_reply_error(r.content, r.status_code), "request")
        return r.json()

    async def _wedged(self) -> RunnerError:
        """Kill a runner that stopped making progress (SIGKILL ends even a SIGSTOPped one); the error to report."""
        if self.alive:
            self.proc.kill()
        for _ in range(100):
            if not self.alive:
                break
            await asyncio.sleep(0.02)
        return RunnerError(f"runner made no progress for {self.timeout:g} s; it was stopped and will reload", "wedged")

    async def stop(self) -> None:
        """Terminate the process (kill it after `stop_grace` seconds) and close the client."""
        await self.client.aclose()
        if self.alive:
            self.proc.terminate()
            deadline = time.monotonic() + self.stop_grace
            while self.alive and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.alive:
                self.proc.kill()
        self.proc.wait()

    def kill_now(self) -> None:
        """Synchronous stop for interpreter exit."""
        if self.alive:
            self.proc.kill()
            self.proc.wait()


def _event(line: bytes) -> dict[str, Any] | None:
    """A /completion stream line's chunk; None for what only keeps the stream alive. RunnerError for an error."""
    if not line.startswith(b"data: "):
        return None  # the blank line ending an event, or a ": progress" comment
    chunk = json.loads(line[6:])
    if "error" in chunk:
        raise RunnerError(_error_text(chunk), "request")
    if "prompt_progress" in chunk and not chunk.get("stop") and not chunk.get("content"):
        return None  # only proof of life
    return chunk


def _reply_error(body: bytes, status: int) -> str:
    """A runner's error reply as one line: its JSON error's message, else its text, else its status."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip() or f"runner answered {status}"
    return _error_text(data)


def _error_text(data: Any) -> str:
    """The message of llama-server's error shape (`{"error": {"message"}}`), or of a plain `{"error": text}`."""
    error = data.get("error") if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)
