"""Saved sequence states: conversations that lost their slot, kept in RAM until they return.

A slot holds one conversation's KV cache. When another conversation needs the
slot, the old one's state is copied out here (llama_state_seq_get_data); when
it comes back, the entry with the longest common prefix is copied into a slot
again, so its history is not evaluated twice. Least recently used entries go
first once the byte budget is spent.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class SavedState:
    """The KV state of a token sequence, as llama.cpp serialized it."""

    tokens: tuple[int, ...]
    data: bytes


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    """How many leading tokens two sequences share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class StateCache:
    """An LRU of saved states bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], SavedState] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.saves = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, state: SavedState) -> None:
        if len(state.data) > self.max_bytes or not state.tokens:
            return
        # A saved state that is a prefix of this one is now redundant.
        for key in [k for k in self._entries if common_prefix(k, state.tokens) == len(k)]:
            self._drop(key)
        self._entries[state.tokens] = state
        self.bytes += len(state.data)
        self.saves += 1
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def best(self, tokens: list[int]) -> tuple[SavedState | None, int]:
        """The entry sharing the longest prefix with `tokens`, and that length."""
        best, best_n = None, 0
        for key, state in self._entries.items():
            n = common_prefix(key, tokens)
            if n > best_n:
                best, best_n = state, n
        return best, best_n

    def take(self, state: SavedState) -> bytes | None:
        """Remove an entry that is being restored into a slot; its bytes (None if they cannot be trusted)."""
        self._drop(state.tokens)
        self.hits += 1
        return state.data

    def flush(self) -> None:
        """The process is stopping: keep what can outlive it (nothing, for RAM alone)."""

    def _drop(self, key: tuple[int, ...]) -> None:
        state = self._entries.pop(key)
        self.bytes -= len(state.data)
