"""Saved sequence states: conversations that lost their slot, kept in RAM until they return.

A slot holds one conversation's KV cache. When another conversation needs the
slot, the old one's state is copied out here (llama_state_seq_get_data); when
it comes back, the entry with the longest common prefix is copied into a slot
again, so its history is not evaluated twice. Least recently used entries go
first once the byte budget is spent; with a disk tier (app.runner.disk_cache)
they are written there instead of lost, and so is every entry when the process
stops.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.runner.disk_cache import DiskStates


@dataclass(frozen=True)
class SavedState:
    """The KV state of a token sequence, as llama.cpp serialized it (no bytes: it is on disk)."""

    tokens: tuple[int, ...]
    data: bytes = b""


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    """How many leading tokens two sequences share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class StateCache:
    """An LRU of saved states bounded by total bytes in RAM, spilling to `disk` when there is one."""

    def __init__(self, max_bytes: int, disk: DiskStates | None = None) -> None:
        self.max_bytes = max_bytes
        self.disk = disk
        self._entries: OrderedDict[tuple[int, ...], SavedState] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.saves = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.disk is not None

    def put(self, state: SavedState) -> None:
        if not state.tokens:
            return
        if len(state.data) > self.max_bytes:
            if self.disk is not None:
                self.disk.write(state.tokens, state.data)
            return
        # A saved state that is a prefix of this one is now redundant.
        for key in [k for k in self._entries if common_prefix(k, state.tokens) == len(k)]:
            self._drop(key)
        self._entries[state.tokens] = state
        self.bytes += len(state.data)
        self.saves += 1
        while self.bytes > self.max_bytes:
            evicted = self._drop(next(iter(self._entries)))
            if self.disk is not None:
                self.disk.write(evicted.tokens, evicted.data)

    def best(self, tokens: list[int]) -> tuple[SavedState | None, int]:
        """The entry sharing the longest prefix with `tokens` (in RAM, else on disk), and that length."""
        best, best_n = None, 0
        for key, state in self._entries.items():
            n = common_prefix(key, tokens)
            if n > best_n:
                best, best_n = state, n
        if self.disk is not None:
            entry, n = self.disk.best(tokens)
            if entry is not None and n > best_n:
                best, best_n = SavedState(entry.tokens), n
        return best, best_n

    def take(self, state: SavedState) -> bytes | None:
        """The bytes of an entry being restored into a slot (None if they cannot be trusted); RAM lets it go."""
        if state.tokens in self._entries:
            self._drop(state.tokens)
            self.hits += 1
            return state.data
        data = self.disk.read(state.tokens) if self.disk is not None else None
        self.hits += data is not None
        return data

    def flush(self) -> None:
        """The process is stopping: every entry in RAM goes to disk, when there is a disk tier."""
        if self.disk is None:
            return
        for state in list(self._entries.values()):
            self.disk.write(state.tokens, state.data)

    def _drop(self, key: tuple[int, ...]) -> SavedState:
        state = self._entries.pop(key)
        self.bytes -= len(state.data)
        return state
