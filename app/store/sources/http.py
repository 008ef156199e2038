"""HTTP plumbing shared by the URL and registry sources: one client setup, and
the ranged streaming of a blob into a partial file."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import httpcore
import httpx

from app import __version__
from app.errors import SourceUnavailable
from app.store.blobs import DiskFull, PartialBlob
from app.store.progress import Meter, ProgressEvent, ProgressFn

#: Said once when a partial's source no longer serves the bytes it began with.
CHANGED_NOTE = "source changed since the partial began; starting over"
NO_VALIDATOR_NOTE = "the partial has no ETag or Last-Modified to check it against; starting over"

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
#: Times a dropped transfer is resumed before the pull gives up on the source.
RETRIES = 3
RETRY_DELAY = 0.5

# httpcore reads 64 KiB per recv(); a multi-gigabyte blob in parallel ranges then
# spends its time in per-read Python overhead (250 MB/s on two cores). 1 MiB reads
# double that (benchmarks/pull.py). A read still returns whatever has arrived.
_READ_SIZE = 1 << 20
if getattr(httpcore._sync.http11.HTTP11Connection, "READ_NUM_BYTES", _READ_SIZE) < _READ_SIZE:
    httpcore._sync.http11.HTTP11Connection.READ_NUM_BYTES = _READ_SIZE


def client() -> httpx.Client:
    """An httpx client for downloads: redirects followed, generous read timeout."""
    return httpx.Client(
        follow_redirects=True,
        timeout=TIMEOUT,
        headers={"User-Agent": f"loam/{__version__}"},
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
    )


def describe_error(e: BaseException) -> str:
    """One line for a failed request."""
    if isinstance(e, httpx.HTTPStatusError):
        return f"HTTP {e.response.status_code} {e.response.reason_phrase}"
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    if isinstance(e, httpx.ConnectError):
        text = str(e).splitlines()[0] if str(e) else "connection failed"
        return f"cannot connect ({text})"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def note_to(progress: ProgressFn | None) -> Callable[[str], None]:
    """A one-line note on the progress stream, or on stderr when there is none."""

    def note(text: str) -> None:
        if progress is None:
            print(text, file=sys.stderr)
        else:
            progress(ProgressEvent(text))

    return note


def download(
    http: httpx.Client,
    url: str,
    partial: PartialBlob,
    meter: Meter,
    headers: dict[str, str] | None = None,
    note: Callable[[str], None] | None = None,
) -> None:
    """Fetch every unfinished part of `partial` in its own thread; report progress from this one.

    A resume sends If-Range with the validator recorded when the partial began,
    so a changed source restarts from byte 0 instead of splicing two files. A
    partial without a validator or a known digest cannot be trusted: it restarts.
    Workers are daemon threads, so Ctrl+C in this thread ends the pull at once;
    what they wrote stays recorded for a resume. A full disk deletes the partial.
    """
    note = note or note_to(None)
    if partial.completed and partial.expected is None and partial.if_range() is None:
        note(NO_VALIDATOR_NOTE)
        partial.reset()
    cancelled = threading.Event()
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            stream_range(http, url, partial, index, headers, cancelled, note)
        except BaseException as e:
            errors.append(e)
            cancelled.set()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i, p in enumerate(partial.parts) if not p.done]
    for w in workers:
        w.start()
    try:
        while any(w.is_alive() for w in workers):
            time.sleep(0.1)
            if partial.completed:
                meter.update(partial.completed)
    finally:
        cancelled.set()
    if errors:
        full = next((e for e in errors if isinstance(e, DiskFull)), None)
        if full is not None:
            for w in workers:
                w.join()
            partial.discard()
            raise full
        raise errors[0]
    meter.update(partial.completed, force=True)


def stream_range(
    http: httpx.Client,
    url: str,
    partial: PartialBlob,
    index: int,
    headers: dict[str, str] | None = None,
    cancelled: threading.Event | None = None,
    note: Callable[[str], None] | None = None,
) -> None:
    """Fetch the unwritten rest of part `index` into `partial`, resuming after a
    dropped connection up to RETRIES times from the last byte written."""
    for attempt in range(RETRIES + 1):
        try:
            _stream_once(http, url, partial, index, headers, cancelled, note or note_to(None))
            return
        except (httpx.TransportError, _ClosedEarly) as e:
            if attempt == RETRIES or (cancelled is not None and cancelled.is_set()):
                raise SourceUnavailable(
                    f"{url}: {describe_error(e)} at byte {partial.parts[index].next_offset}; pull again to resume"
                ) from e
            time.sleep(RETRY_DELAY * (attempt + 1))
        except httpx.HTTPError as e:
            raise SourceUnavailable(f"{url}: {describe_error(e)}") from e


class _ClosedEarly(Exception):
    """The server ended a response before the range was complete."""


def _stream_once(
    http: httpx.Client,
    url: str,
    partial: PartialBlob,
    index: int,
    headers: dict[str, str] | None,
    cancelled: threading.Event | None,
    note: Callable[[str], None],
) -> None:
    part = partial.parts[index]
    if part.done:
        return
    request_headers = dict(headers or {})
    ranged = part.next_offset > 0 or part.size != partial.total
    if_range = partial.if_range() if partial.completed else None
    if ranged:
        end = "" if part.size is None else str(part.offset + part.size - 1)
        request_headers["Range"] = f"bytes={part.next_offset}-{end}"
        if if_range:
            request_headers["If-Range"] = if_range
    with http.stream("GET", url, headers=request_headers) as response:
        response.raise_for_status()
        if ranged and response.status_code != 206:
            if index == 0 and len(partial.parts) == 1:
                if part.next_offset > 0:
                    note(CHANGED_NOTE if if_range else "the source ignores byte ranges; starting over")
                partial.reset()
                part = partial.parts[index]
            else:
                raise SourceUnavailable(f"{url} changed or ignores byte ranges; cannot resume, pull again")
        if partial.completed == 0 or partial.validator is None:
            partial.set_validator(response.headers.get("etag"), response.headers.get("last-modified"))
        for chunk in response.iter_raw():
            if cancelled is not None and cancelled.is_set():
                return
            room = None if part.size is None else part.size - part.completed
            if room is not None and len(chunk) > room:
                chunk = chunk[:room]
            if chunk:
                partial.write(index, chunk)
            if part.done:
                return
    if part.size is not None and not part.done:
        raise _ClosedEarly("connection closed early")
