"""A streamed answer's tokens gathered into fewer events, for readers on machines whose cores the model needs.

Every event a stream sends wakes each process it passes through (`loam serve`,
then its client), each time taking a core from the model's threads when they
have every core. A request with `stream_interval` gets its tokens at most that
often: the first token of a quiet spell at once, the ones that follow within
the interval together when it ends, and the last with the stop chunk at once,
so gathering never delays the start or the end of an answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.runner.slot import Chunk


class Gatherer:
    """Holds one stream's token chunks between the times it lets them through.

    `take` is given each chunk as the engine sends it and answers what to send
    now; `wake` is called (by a timer on the running loop) when an interval
    ends, and the stream then calls `flush` for what waited.
    """

    def __init__(self, interval: float, wake: Callable[[], None]) -> None:
        self.interval, self._wake = interval, wake
        self._held: list[Chunk] = []
        self._timer: asyncio.TimerHandle | None = None

    def take(self, chunk: Chunk) -> list[Chunk]:
        """The chunks to send now that `chunk` came: it alone, nothing (it waits), or what waited and it."""
        if chunk.get("stop"):
            self.close()
            return self._release() + [chunk]
        if "prompt_progress" in chunk and not chunk.get("content"):
            return [chunk]
        if self._timer is not None:
            self._held.append(chunk)
            return []
        self._arm()
        return [chunk]

    def flush(self) -> list[Chunk]:
        """The interval is over: what waited, as one chunk; a new interval begins if anything did."""
        self._timer = None
        out = self._release()
        if out:
            self._arm()
        return out

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._wake)

    def _release(self) -> list[Chunk]:
        held, self._held = self._held, []
        return [joined(held)] if held else []


def joined(chunks: list[Chunk]) -> Chunk:
    """Token chunks as one: their text, token ids and probabilities in order, the last one's other fields."""
    if len(chunks) == 1:
        return chunks[0]
    out: Chunk = {}
    for chunk in chunks:
        out.update(chunk)
    out["content"] = "".join(chunk.get("content", "") for chunk in chunks)
    for key in ("tokens", "completion_probabilities"):
        if key in out:
            out[key] = [item for chunk in chunks for item in chunk.get(key) or []]
    return out
