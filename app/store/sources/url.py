"""A plain HTTP(S) URL of a .gguf file (a Hugging Face `resolve` URL, say), resumed with Range."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import httpx

from app.errors import SourceUnavailable
from app.store.blobs import BlobRef, BlobStore, partial_key
from app.store.progress import Meter, ProgressFn
from app.store.sources import http


@dataclass(frozen=True)
class UrlSource:
    url: str

    def describe(self) -> str:
        return self.url

    def fetch_model(
        self,
        blobs: BlobStore,
        expected: str | None,
        size: int | None,
        progress: ProgressFn,
        validate: Callable[[Path], None],
    ) -> BlobRef:
        key = partial_key(expected) if expected else "url-" + hashlib.sha256(self.url.encode()).hexdigest()[:32]
        with http.client() as client:
            total = size if size is not None else self._content_length(client)
            with blobs.lock(key):
                if expected and blobs.has(expected, total):
                    return BlobRef(expected, total or blobs.path(expected).stat().st_size)
                partial = blobs.partial(key, total, expected)
                try:
                    meter = Meter(progress, f"pulling {Path(httpx.URL(self.url).path).name}", expected, total)
                    worker_error: list[BaseException] = []

                    def work() -> None:
                        try:
                            http.stream_range(client, self.url, partial, 0)
                        except BaseException as e:
                            worker_error.append(e)

                    worker = Thread(target=work, daemon=True)
                    worker.start()
                    while worker.is_alive():
                        worker.join(0.1)
                        if partial.completed:
                            meter.update(partial.completed)
                    if worker_error:
                        raise worker_error[0]
                    meter.update(partial.completed, force=True)
                    return partial.finish(validate)
                finally:
                    partial.close()

    def _content_length(self, client: httpx.Client) -> int | None:
        """The size the server announces, when it does; None when unknown."""
        try:
            response = client.head(self.url)
            response.raise_for_status()
        except httpx.HTTPError as e:
            raise SourceUnavailable(f"{self.url}: {http.describe_error(e)}") from e
        length = response.headers.get("content-length")
        return int(length) if length and length.isdigit() else None
