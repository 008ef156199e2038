"""Turning sampled token bytes into text that is safe to send.

A character split across tokens is held until it is whole (and dropped if the
reply ends before it is), and text that could be the start of a stop string is
held until it is known not to be one.
"""

from __future__ import annotations

import codecs


class TextStream:
    """Feed token bytes in; get out the text that may be sent now."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""
        self.stopped_by: str | None = None

    def feed(self, data: bytes) -> str:
        """Text ready to send after these bytes; sets `stopped_by` when a stop string completes."""
        self._held += self._decoder.decode(data)
        for stop in self.stops:
            at = self._held.find(stop)
            if at != -1:
                self.stopped_by = stop
                out, self._held = self._held[:at], ""
                return out
        keep = self._partial_stop_length()
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return out

    def flush(self) -> str:
        """Everything still held, at the end of generation.

        The bytes of a character the last token left unfinished (a reply cut by
        n_predict mid-character) are dropped, not sent as U+FFFD.
        """
        out = self._held
        self._held = ""
        self._decoder.reset()
        return out

    def _partial_stop_length(self) -> int:
        """Length of the longest tail of the held text that begins some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:n]):
                    best = n
                    break
        return best
