"""A plain HTTP(S) URL of a .gguf file (a Hugging Face `resolve` URL, say), resumed with Range."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.errors import SourceUnavailable
from app.store.blobs import BlobRef, BlobStore, partial_key
from app.store.progress import Meter, ProgressEvent, ProgressFn
from app.store.sources import http

#: Downloads in flight in this process, by blob key: a second pull of the same URL joins the first.
_inflight: dict[str, _Flight] = {}
_inflight_lock = threading.Lock()


class _Flight:
    """One download that later pulls of the same source wait for and share."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: BlobRef | None = None
        self.error: BaseException | None = None
        self.watchers: list[ProgressFn] = []

    def progress(self, event: object) -> None:
        for watcher in list(self.watchers):
            watcher(event)  # type: ignore[arg-type]


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
        with _inflight_lock:
            flight = _inflight.get(key)
            joined = flight is not None
            if flight is None:
                flight = _inflight[key] = _Flight()
            flight.watchers.append(progress)
        if joined:
            progress(ProgressEvent(f"joining the download of {self.url} already in progress"))
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            return flight.result
        try:
            flight.result = self._fetch(key, blobs, expected, size, flight.progress, validate)
            return flight.result
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with _inflight_lock:
                _inflight.pop(key, None)
            flight.done.set()

    def _fetch(
        self,
        key: str,
        blobs: BlobStore,
        expected: str | None,
        size: int | None,
        progress: ProgressFn,
        validate: Callable[[Path], None],
    ) -> BlobRef:
        with http.client() as client:
            total = size if size is not None else self._content_length(client)
            with blobs.lock(key):
                if expected and blobs.has(expected, total):
                    return BlobRef(expected, total or blobs.path(expected).stat().st_size)
                partial = blobs.partial(key, total, expected)
                try:
                    meter = Meter(progress, f"pulling {Path(httpx.URL(self.url).path).name}", expected, total)
                    http.download(client, self.url, partial, meter, note=http.note_to(progress))
                    return partial.finish(validate)
                finally:
                    partial.close()

    def _content_length(self, client: httpx.Client) -> int | None:
        """The size the server announces, when it does; None when unknown.

        A server that refuses HEAD may still serve GET, so only a transport
        failure makes the source unavailable here.
        """
        try:
            response = client.head(self.url)
        except httpx.TransportError as e:
            raise SourceUnavailable(f"{self.url}: {http.describe_error(e)}") from e
        if response.status_code != 200:
            return None
        length = response.headers.get("content-length")
        return int(length) if length and length.isdigit() else None
