"""How loam draws on a terminal: progress bars, tables, human units.

Everything here writes to stderr or returns strings; data meant for pipes is
printed by the caller on stdout.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from app.store.progress import ProgressEvent


def human_bytes(n: float) -> str:
    """Decimal units as Ollama prints them: 98 MB, 4.7 GB, 512 B."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.1f} {unit}" if abs(n) < 10 else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} TB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    """A short ETA: 45s, 2m05s, 1h02m."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def human_ago(then: float, now: float | None = None) -> str:
    """`ollama list`'s MODIFIED column: '2 minutes ago', 'About an hour ago'."""
    delta = max(0.0, (time.time() if now is None else now) - then)
    if delta < 1:
        return "Less than a second ago"
    steps = (
        (60, "second", 1),
        (3600, "minute", 60),
        (86400, "hour", 3600),
        (86400 * 14, "day", 86400),
        (86400 * 60, "week", 86400 * 7),
        (86400 * 365 * 2, "month", 86400 * 30),
        (float("inf"), "year", 86400 * 365),
    )
    for limit, unit, size in steps:
        if delta < limit:
            count = int(delta // size)
            if count == 1:
                article = "an" if unit == "hour" else "a"
                return f"About {article} {unit} ago" if unit != "second" else "1 second ago"
            return f"{count} {unit}s ago"
    return "a long time ago"  # pragma: no cover


def human_until(expires_at: str, now: float | None = None) -> str:
    """`ollama ps`'s UNTIL column from an RFC 3339 time: '4 minutes from now', 'Forever'."""
    try:
        then = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return expires_at
    delta = then - (time.time() if now is None else now)
    if delta > 86400 * 365 * 100:
        return "Forever"
    if delta <= 0:
        return "Stopping..."
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if delta >= size:
            count = int(delta // size)
            return f"{count} {unit}{'s' if count != 1 else ''} from now"
    return "Less than a second from now"


def processor(size: int, size_vram: int) -> str:
    """`ollama ps`'s PROCESSOR column: where a loaded model's bytes are."""
    if size_vram <= 0 or size <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def table(rows: list[list[str]], gap: int = 4) -> str:
    """Left-aligned columns, as `ollama list` prints them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("".join(cell.ljust(w + gap) for cell, w in zip(row[:-1], widths, strict=False)) + row[-1] for row in rows)
    return "\n".join(lines)


@dataclass
class _Bar:
    status: str
    total: int
    first_completed: int
    started: float = field(default_factory=time.monotonic)
    completed: int = 0


class ProgressDisplay:
    """Turns progress events into Ollama-style lines on stderr.

    On a terminal a transfer is one line redrawn in place: status, percent, bar,
    bytes, rate, ETA. Elsewhere (a log, a pipe) each transfer prints one line
    when it ends, and status lines print once each.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._bar: _Bar | None = None
        self._last_status: str | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.total is not None and event.completed is not None:
            self._transfer(event)
        else:
            self._status(event.status)

    def close(self) -> None:
        self._end_bar()

    def _status(self, status: str) -> None:
        if status == self._last_status:
            return
        self._end_bar()
        self._last_status = status
        self.stream.write(status + "\n")
        self.stream.flush()

    def _transfer(self, event: ProgressEvent) -> None:
        assert event.total is not None and event.completed is not None
        bar = self._bar
        if bar is None or bar.status != event.status:
            self._end_bar()
            bar = self._bar = _Bar(event.status, event.total, event.completed)
            self._last_status = event.status
        bar.completed, bar.total = event.completed, event.total
        if self.tty:
            self.stream.write("\r" + self.render(bar) + "\x1b[K")
            self.stream.flush()

    def _end_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is None:
            return
        line = self.render(bar)
        self.stream.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        self.stream.flush()

    def render(self, bar: _Bar, width: int | None = None) -> str:
        width = width or shutil.get_terminal_size((100, 20)).columns
        total = max(bar.total, 1)
        pct = min(100, int(bar.completed * 100 / total))
        elapsed = max(time.monotonic() - bar.started, 1e-6)
        rate = (bar.completed - bar.first_completed) / elapsed
        if bar.completed >= bar.total:
            figures = human_bytes(bar.total)
        else:
            eta = human_duration((bar.total - bar.completed) / rate) if rate > 0 else "?"
            figures = f"{human_bytes(bar.completed)}/{human_bytes(bar.total)}  {human_bytes(rate)}/s  {eta}"
        head = f"{bar.status} {pct:3d}% "
        cells = max(10, min(50, width - len(head) - len(figures) - 4))
        filled = cells * bar.completed // total
        return f"{head}▕{'█' * filled}{' ' * (cells - filled)}▏ {figures}"
