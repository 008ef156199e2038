"""The tools loam itself offers, each off until a chat (or `loam ask --tools`) turns it on.

- `current_time`: the date and time in this machine's time zone.
- `read_file`: a text file under a folder config.toml allows (`[tools] read_roots`);
  the path is resolved (symlinks and `..` included) before it is checked, so nothing
  outside those folders can be read through a link or a climb.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from app.config import BUILTIN_TOOL_NAMES
from app.tools.loop import Tool, ToolResult

#: Bytes read_file returns at most; a longer file is cut with a note.
MAX_READ_BYTES = 64 * 1024
BUILTINS = BUILTIN_TOOL_NAMES


def current_time() -> ToolResult:
    """Now, in the local time zone, with the weekday and the zone's offset."""
    now = datetime.now().astimezone()
    return ToolResult(now.strftime("%A %Y-%m-%d %H:%M:%S %Z (UTC%z)"))


def read_file(path: str, roots: Sequence[Path], limit: int = MAX_READ_BYTES) -> ToolResult:
    """The text of `path` when it resolves to a regular file inside one of `roots`; an error result otherwise.

    A relative path is taken from the first root.
    """
    if not roots:
        return ToolResult(
            'no folder is open to read_file; the user can allow one in config.toml: [tools] read_roots = ["~/notes"]',
            is_error=True,
        )
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        return ToolResult("path must be a file path, e.g. notes/todo.md", is_error=True)
    resolved_roots = [root.expanduser().resolve() for root in roots]
    try:  # expanduser raises RuntimeError for "~someone" with no such user
        wanted = Path(path).expanduser()
        if not wanted.is_absolute():
            wanted = resolved_roots[0] / wanted
        target = wanted.resolve(strict=True)
    except (OSError, RuntimeError):
        return ToolResult(f"{path}: no such file", is_error=True)
    if not any(target == root or target.is_relative_to(root) for root in resolved_roots):
        allowed = ", ".join(str(root) for root in resolved_roots)
        return ToolResult(f"{path} is outside the folders read_file may read ({allowed})", is_error=True)
    try:
        # O_NOFOLLOW: the resolved path has no link left in it, so a link appearing now is refused.
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        return ToolResult(f"{path}: {e.strerror}", is_error=True)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return ToolResult(f"{path} is not a regular file", is_error=True)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        return ToolResult(f"{path}: {e.strerror}", is_error=True)
    if b"\0" in data:
        return ToolResult(f"{path} is not a text file", is_error=True)
    text = data[:limit].decode("utf-8", errors="replace")
    if len(data) > limit:
        text += f"\n[... cut at {limit} bytes of {info.st_size}]"
    return ToolResult(text)


def builtin_tools(names: Sequence[str], roots: Sequence[Path]) -> list[Tool]:
    """The built-in tools named (unknown names are ignored), bound to the allowed folders."""

    async def run_time(arguments: dict[str, Any]) -> ToolResult:
        return current_time()

    async def run_read(arguments: dict[str, Any]) -> ToolResult:
        path = arguments.get("path")
        if not isinstance(path, str):
            return ToolResult('read_file needs {"path": "..."}', is_error=True)
        return await asyncio.to_thread(read_file, path, roots)

    listing = ", ".join(str(root) for root in roots) or "none allowed yet"
    tools = {
        "current_time": Tool(
            "current_time",
            "Get the current local date, time and time zone.",
            {"type": "object", "properties": {}},
            run_time,
        ),
        "read_file": Tool(
            "read_file",
            f"Read a UTF-8 text file from the user's allowed folders ({listing}). "
            "A relative path starts in the first folder.",
            {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "the file's path"}},
                "required": ["path"],
            },
            run_read,
        ),
    }
    return [tools[name] for name in names if name in tools]
