"""A model file already on this machine, copied into the store while hashing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.errors import SourceUnavailable
from app.store.blobs import BlobRef, BlobStore, partial_key
from app.store.progress import Meter, ProgressFn

_CHUNK = 4 << 20


@dataclass(frozen=True)
class PathSource:
    path: Path

    def describe(self) -> str:
        return str(self.path)

    def fetch_model(
        self,
        blobs: BlobStore,
        expected: str | None,
        size: int | None,
        progress: ProgressFn,
        validate: Callable[[Path], None],
    ) -> BlobRef:
        try:
            f = self.path.open("rb")
        except OSError as e:
            raise SourceUnavailable(f"cannot read {self.path}: {e.strerror}") from e
        with f:
            total = self.path.stat().st_size
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
