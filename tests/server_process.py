"""Start `loam serve` as a real child process on a free 127.0.0.1 port, for tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.runner_process import REPO, free_port


def clone_store(source: Path, target: Path) -> Path:
    """A store of its own for a test: manifests copied, blobs hard-linked (no bytes copied)."""
    shutil.copytree(source / "manifests", target / "manifests")
    (target / "blobs").mkdir(parents=True)
    for blob in (source / "blobs").iterdir():
        if blob.name.startswith("sha256-"):
            os.link(blob, target / "blobs" / blob.name)
    return target


class ServerProcess:
    """`python -m app serve` with its own store, home and port; `url` once it answers."""

    def __init__(self, models: Path, home: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.home = home
        self.log = home / "serve.log"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "LOAM_HOST": self.host,
            "LOAM_MODELS": str(models),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CACHE_HOME": str(home / "cache"),  # the disk cache of conversation states is the test's own
            **env,
        }
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", *args], cwd=REPO, env=self.env, stdout=log, stderr=log
            )

    def wait_ready(self, polls: int = 400) -> ServerProcess:
        for _ in range(polls):
            if self.proc.poll() is not None:
                raise RuntimeError(f"loam serve exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("loam serve did not answer")

    def runner_pids(self) -> list[int]:
        """The server's runner children, read from /proc."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
