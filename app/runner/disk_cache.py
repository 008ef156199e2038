"""Saved sequence states on disk: conversations kept past eviction, unload and restart.

When a conversation's state leaves RAM (the RAM cache is full, the model is
unloaded, the server stops), it is written here; a returning conversation, even
in a new process, is restored instead of having its history read again.

One file per state in a folder shared by every runner, bounded in total bytes
(least recently used files go first). A file holds a header naming what the
state was made with (the model's digest, llama.cpp's build, the KV cache's
type, adapters), the token sequence and llama.cpp's serialized state, with a
SHA-256 of all of it. A state is used only when every key field and the
checksum match; anything else is ignored with a log line, never restored, so a
stale or damaged file costs a re-read of the history, not a wrong answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app.runner.cache import common_prefix

MAGIC = b"LOAMSTATE1\n"
#: The longest token sequence and header a file may claim: bounds what a damaged file can make us read.
MAX_TOKENS = 1 << 21
MAX_HEADER = 4096
SUFFIX = ".state"


def log(message: str) -> None:
    """One line in the runner's log (its stderr)."""
    sys.stderr.write(f"loam runner: {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class DiskEntry:
    """A state file of this runner's key: where it is and the tokens it holds."""

    path: Path
    tokens: tuple[int, ...]
    size: int


class DiskStates:
    """The states of one key (model, build, cache layout) in a folder bounded by `max_bytes` in all."""

    def __init__(self, folder: Path, max_bytes: int, key: dict[str, str]) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.key = json.dumps(key, sort_keys=True)
        self.prefix = hashlib.sha256(self.key.encode()).hexdigest()[:16] + "-"
        self.entries: dict[tuple[int, ...], DiskEntry] = {}
        self.hits = 0
        self.writes = 0
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._scan()

    # -- reading -------------------------------------------------------

    def _scan(self) -> None:
        """Index this key's files by their token sequences; unusable files are logged and left out.

        Temp files an hour old are what a runner killed while writing left behind, and go.
        """
        for tmp in self.folder.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > 3600:
                    tmp.unlink()
        for path in sorted(self.folder.glob(self.prefix + "*" + SUFFIX)):
            try:
                size = path.stat().st_size
                with path.open("rb") as f:
                    tokens, _, _ = self._read_header(f, size)
            except (OSError, ValueError) as e:
                log(f"ignoring saved state {path.name}: {e}")
                continue
            self.entries[tokens] = DiskEntry(path, tokens, size)

    def _read_header(self, f: BinaryIO, file_size: int) -> tuple[tuple[int, ...], int, str]:
        """(tokens, state bytes, checksum) from an open file, checked against this key and the file's size."""
        read = f.read
        if read(len(MAGIC)) != MAGIC:
            raise ValueError("not a loam state file")
        line = read(MAX_HEADER).split(b"\n", 1)[0]
        try:
            header = json.loads(line)
            key, n_tokens, n_data, digest = header["key"], header["tokens"], header["bytes"], header["sha256"]
        except (ValueError, KeyError, TypeError):
            raise ValueError("its header is damaged") from None
        if key != self.key:
            raise ValueError("it was made for another model, llama.cpp build or cache layout")
        if not (isinstance(n_tokens, int) and 0 < n_tokens <= MAX_TOKENS and isinstance(n_data, int) and n_data > 0):
            raise ValueError("its header is damaged")
        start = len(MAGIC) + len(line) + 1
        if file_size != start + 4 * n_tokens + n_data:
            raise ValueError(f"it is {file_size} bytes, its header says {start + 4 * n_tokens + n_data}")
        f.seek(start)
        tokens = struct.unpack(f"<{n_tokens}i", read(4 * n_tokens))
        return tokens, n_data, str(digest)

    def best(self, tokens: list[int]) -> tuple[DiskEntry | None, int]:
        """The entry sharing the longest prefix with `tokens`, and that length."""
        best, best_n = None, 0
        for entry in self.entries.values():
            n = common_prefix(entry.tokens, tokens)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n

    def read(self, tokens: tuple[int, ...]) -> bytes | None:
        """The state saved for exactly `tokens`, checked; None (logged, and the file dropped) if it can't be trusted."""
        entry = self.entries.get(tokens)
        if entry is None:
            return None
        try:
            with entry.path.open("rb") as f:
                found, n_data, digest = self._read_header(f, os.fstat(f.fileno()).st_size)
                body = f.read(n_data)
            if found != tokens:
                raise ValueError("its tokens changed since it was indexed")
            if hashlib.sha256(struct.pack(f"<{len(found)}i", *found) + body).hexdigest() != digest:
                raise ValueError("its checksum does not match (the file is damaged)")
        except (OSError, ValueError) as e:
            log(f"ignoring saved state {entry.path.name}: {e}")
            self._remove(entry)
            return None
        os.utime(entry.path)  # least recently used goes first
        self.hits += 1
        return body

    # -- writing -------------------------------------------------------

    def write(self, tokens: tuple[int, ...], data: bytes) -> None:
        """Keep a state (temp file, then rename); entries it extends are dropped, then the folder is trimmed."""
        if not tokens or len(tokens) > MAX_TOKENS or len(data) + 4 * len(tokens) + MAX_HEADER > self.max_bytes:
            return
        packed = struct.pack(f"<{len(tokens)}i", *tokens)
        digest = hashlib.sha256(packed + data).hexdigest()
        header = json.dumps({"key": self.key, "tokens": len(tokens), "bytes": len(data), "sha256": digest})
        path = self.folder / f"{self.prefix}{hashlib.sha256(packed).hexdigest()[:32]}{SUFFIX}"
        try:
            self._trim(len(data) + len(packed) + len(header) + len(MAGIC) + 1)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(MAGIC + header.encode() + b"\n")
                    f.write(packed)
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            log(f"cannot save a conversation's state to {self.folder}: {e}")
            return
        for old in [e for e in self.entries.values() if e.path != path and e.tokens == tokens[: len(e.tokens)]]:
            self._remove(old)  # a shorter prefix of this one: redundant now (the same tokens were just rewritten)
        self.entries[tokens] = DiskEntry(path, tokens, path.stat().st_size)
        self.writes += 1

    def _trim(self, incoming: int) -> None:
        """Delete the least recently used state files of any key until `incoming` more bytes fit."""
        files = []
        for path in self.folder.glob("*" + SUFFIX):
            try:
                st = path.stat()
            except OSError:
                continue  # another runner removed it
            files.append((st.st_mtime, path, st.st_size))
        total = sum(size for _, _, size in files)
        for _, path, size in sorted(files):
            if total + incoming <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            for tokens in [t for t, e in self.entries.items() if e.path == path]:
                del self.entries[tokens]

    def _remove(self, entry: DiskEntry) -> None:
        entry.path.unlink(missing_ok=True)
        self.entries.pop(entry.tokens, None)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries.values())
