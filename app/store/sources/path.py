"""A model file already on this machine, copied into the store while hashing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.errors import BadModelFile, SourceUnavailable
from app.store.blobs import BlobRef, BlobStore, partial_key
from app.store.gguf_info import open_regular
from app.store.progress import Meter, ProgressFn

_CHUNK = 4 << 20


@dataclass(frozen=True)
class PathSource:
    path: Path

    def describe(self) -> str:
        text = str(self.path)
        return text if len(text) <= 200 else text[:100] + "..." + text[-97:]

    def fetch_model(
        self,
        blobs: BlobStore,
        expected: str | None,
        size: int | None,
        progress: ProgressFn,
        validate: Callable[[Path], None],
    ) -> BlobRef:
        try:
            f = os.fdopen(open_regular(self.path), "rb")  # a FIFO or /dev/zero is refused, never read forever
        except BadModelFile as e:
            raise SourceUnavailable(str(e)) from None
        with f:
            total = os.fstat(f.fileno()).st_size
            key = (
                partial_key(expected)
                if expected
                else "path-" + hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:32]
            )
            with blobs.lock(key):
                if expected and blobs.has(expected, total):
                    return BlobRef(expected, total)
                partial = blobs.partial(key, total, expected)
                try:
                    partial.reset()
                    meter = Meter(progress, f"copying {self.path.name}", expected, total)
                    while chunk := f.read(_CHUNK):
                        partial.write(0, chunk)
                        meter.update(partial.completed)
                    meter.update(partial.completed, force=True)
                    return partial.finish(validate)
                finally:
                    partial.close()
