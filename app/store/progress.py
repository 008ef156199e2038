"""Progress events shaped like Ollama's pull stream: `{status, digest, total, completed}`.

The store emits them; the CLI draws bars from them and the server will stream
them as NDJSON, so both show the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One step of long work; `digest`/`total`/`completed` are set for byte transfers."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


ProgressFn = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """A ProgressFn for callers that show nothing."""


class Meter:
    """Reports a transfer's byte count, at most every `interval` seconds until it ends."""

    def __init__(
        self, progress: ProgressFn, status: str, digest: str | None, total: int | None, interval: float = 0.1
    ) -> None:
        self.progress = progress
        self.status = status
        self.digest = digest
        self.total = total
        self.interval = interval
        self._last = 0.0

    def update(self, completed: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.progress(ProgressEvent(self.status, self.digest, self.total, completed))
