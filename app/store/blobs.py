"""Content-addressed blobs: `blobs/sha256-<hex>`.

Bytes never appear under a final name until they hash to it. Downloads land in
`<key>-partial` (with a `-partial.parts` file recording how far each byte range
got, so an interrupted pull resumes), are hashed while they arrive, checked, and
only then renamed into place. A lock file per blob keeps two pulls of the same
blob, in one process or two, from writing the same partial file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.config import temp_file
from app.errors import DigestMismatch, StoreWriteError

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_PARTS_MAGIC = b"LOAMPRT1"
_PARTS_HEADER = struct.Struct("<8sQI")
_PART_RECORD = struct.Struct("<QQQ")
_HASH_READ = 4 << 20


def digest_hex(digest: str) -> str:
    """The hex of `sha256:<hex>` or `sha256-<hex>`; ValueError for anything else."""
    m = _DIGEST.match(digest)
    if not m:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return m.group(1)


def _header_safe(value: str) -> bool:
    """Whether a recorded validator can go back into an If-Range header: short, printable ASCII, one line."""
    return 0 < len(value) <= 1024 and value.isascii() and value.isprintable()


def partial_key(digest: str) -> str:
    """The name stem of a digest's partial, lock and parts files: `sha256-<hex>`, as Ollama names them."""
    return "sha256-" + digest_hex(digest)


def short_digest(digest: str) -> str:
    """The 12 hex characters people see, as in Ollama's progress lines."""
    return digest_hex(digest)[:12]


class DiskFull(StoreWriteError):
    """The disk filled up while a download was being written."""


@dataclass(frozen=True)
class BlobRef:
    """A finished blob: its digest (`sha256:<hex>`) and size in bytes."""

    digest: str
    size: int


class BlobStore:
    """The `blobs/` directory of a store."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs"

    def path(self, digest: str) -> Path:
        return self.dir / f"sha256-{digest_hex(digest)}"

    def has(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob is present (and of the given size, when one is given)."""
        try:
            st = self.path(digest).stat()
        except (FileNotFoundError, ValueError):
            return False
        return size is None or st.st_size == size

    def write_bytes(self, data: bytes) -> BlobRef:
        """Store a small blob (config, template, params) given whole."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest, len(data)):
            self._ensure_dir()
            fd, tmp = temp_file(self.dir, ".tmp-")
            try:
                with _disk_errors(self.dir), os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path(digest))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return BlobRef(digest, len(data))

    def temp_path(self, label: str) -> Path:
        """A fresh name inside `blobs/` for a file made elsewhere (a quantized model) before `adopt`."""
        self._ensure_dir()
        fd, name = temp_file(self.dir, f".tmp-{label}-")
        os.close(fd)
        return Path(name)

    def adopt(self, path: Path, validate: Callable[[Path], None] | None = None) -> BlobRef:
        """Hash a finished file inside `blobs/` and rename it to its digest; it is gone either way."""
        try:
            ref = hash_file(path)
            if validate:
                validate(path)
            with _disk_errors(path):
                os.fsync(fd := os.open(path, os.O_RDONLY))
                os.close(fd)
                os.replace(path, self.path(ref.digest))
            return ref
        finally:
            path.unlink(missing_ok=True)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        """Every finished blob in the store."""
        if not self.dir.is_dir():
            return
        for entry in self.dir.iterdir():
            m = re.match(r"^sha256-([0-9a-f]{64})$", entry.name)
            if m:
                yield "sha256:" + m.group(1)

    def prune_partials(self, max_age: float, now: float | None = None) -> list[Path]:
        """Delete partial downloads nobody has touched for `max_age` seconds."""
        now = time.time() if now is None else now
        removed: list[Path] = []
        if not self.dir.is_dir():
            return removed
        for entry in self.dir.iterdir():
            if "-partial" not in entry.name and not entry.name.startswith(".tmp-"):
                continue
            try:
                if now - entry.stat().st_mtime > max_age:
                    entry.unlink()
                    removed.append(entry)
            except FileNotFoundError:
                continue
        return removed

    @contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lock for blob `key` (a `partial_key` or a source key).

        The lock file is removed when the holder is done, success or failure. A
        waiter that acquired a file since unlinked re-opens the path and tries
        again, so two holders never lock two different files at once.
        """
        self._ensure_dir()
        lock_path = self.dir / f"{key}-partial.lock"
        waited = False
        while True:
            f = open(lock_path, "a+b")  # noqa: SIM115 - held across the yield below
            try:
                if not _try_lock(f.fileno()):
                    if on_wait and not waited:
                        on_wait()
                    waited = True
                    _lock(f.fileno())
                try:
                    same = os.fstat(f.fileno()).st_ino == os.stat(lock_path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    _unlock(f.fileno())
                    continue
                try:
                    yield
                finally:
                    lock_path.unlink(missing_ok=True)
                    _unlock(f.fileno())
                return
            finally:
                f.close()

    def partial(self, key: str, total: int | None, expected: str | None, parts: int = 1) -> PartialBlob:
        """A resumable partial download for the blob named by `key`."""
        self._ensure_dir()
        return PartialBlob(self, key, total, expected, parts)

    def _ensure_dir(self) -> None:
        with _disk_errors(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)


def hash_file(path: Path, on_read: Callable[[int], None] | None = None) -> BlobRef:
    """The digest and size of a file, calling `on_read(bytes so far)` as it goes."""
    hasher, done = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_READ):
            hasher.update(chunk)
            done += len(chunk)
            if on_read:
                on_read(done)
    return BlobRef("sha256:" + hasher.hexdigest(), done)


@dataclass
class Part:
    """One byte range of a partial blob and how much of it is written."""

    offset: int
    size: int | None
    completed: int = 0

    @property
    def done(self) -> bool:
        return self.size is not None and self.completed >= self.size

    @property
    def next_offset(self) -> int:
        return self.offset + self.completed


class PartialBlob:
    """A blob being written in one or more byte ranges, hashed as it arrives.

    Writers call `write(i, data)` for part `i` from any thread; a hashing thread
    follows the contiguous written prefix, so finishing costs no second pass
    over the bytes. `finish()` checks the digest and renames into place.
    """

    def __init__(self, store: BlobStore, key: str, total: int | None, expected: str | None, parts: int) -> None:
        self.store = store
        self.key = key
        self.total = total
        self.expected = expected
        self.data_path = store.dir / f"{key}-partial"
        self.parts_path = store.dir / f"{key}-partial.parts"
        self.meta_path = store.dir / f"{key}-partial.meta"
        loaded = self._load_parts(total)
        self.parts = loaded or _split(total, parts)
        #: The source's ETag / Last-Modified when the partial's first byte arrived; a resume sends it as If-Range.
        self.validator: dict[str, str] | None = self._load_validator() if loaded else None
        self.resumed = sum(p.completed for p in self.parts)
        self._cond = threading.Condition()
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._hash_error: BaseException | None = None
        self._closed = False
        self._disk_full = False
        with _disk_errors(self.data_path):
            self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
            self._parts_fd = os.open(self.parts_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(self._parts_fd, self._encode_parts())
        self._hash_thread = threading.Thread(target=self._hash_loop, name=f"hash-{key[:12]}", daemon=True)
        self._hash_thread.start()

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.parts)

    def write(self, index: int, data: bytes | memoryview) -> None:
        """Append `data` to part `index` and record the progress durably enough to resume."""
        part = self.parts[index]
        try:
            with _disk_errors(self.data_path):
                written = os.pwrite(self._fd, data, part.next_offset)
        except StoreWriteError as e:
            if isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.ENOSPC:
                self._disk_full = True
                raise DiskFull(self._disk_full_message()) from e.__cause__
            raise
        if written != len(data):
            self._disk_full = True
            raise DiskFull(self._disk_full_message())
        with _disk_errors(self.data_path):
            with self._cond:
                before = part.completed
                part.completed += written
                os.pwrite(self._parts_fd, struct.pack("<Q", part.completed), _completed_offset(index))
                if part.done or before // _HASH_READ != part.completed // _HASH_READ:
                    self._cond.notify_all()

    def set_validator(self, etag: str | None, last_modified: str | None) -> None:
        """Record the source's validator for the bytes being written, so a resume can send If-Range."""
        validator = {k: v for k, v in (("etag", etag), ("last_modified", last_modified)) if v}
        if validator == (self.validator or {}):
            return
        self.validator = validator or None
        with _disk_errors(self.meta_path):
            if validator:
                self.meta_path.write_text(json.dumps(validator))
            else:
                self.meta_path.unlink(missing_ok=True)

    def if_range(self) -> str | None:
        """The If-Range value for a resume: the ETag when it is a strong one, else Last-Modified."""
        v = self.validator or {}
        etag = v.get("etag")
        if etag and not etag.startswith("W/"):
            return etag
        return v.get("last_modified")

    def reset(self) -> None:
        """Throw away what was written and start from byte 0 (a source that cannot resume)."""
        self.validator = None
        self.meta_path.unlink(missing_ok=True)
        if self.completed == 0 and self._hashed == 0:
            return
        self._stop_hashing()
        self.parts = _split(self.total, len(self.parts))
        self.resumed = 0
        with _disk_errors(self.data_path):
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._parts_fd, 0)
            os.pwrite(self._parts_fd, self._encode_parts(), 0)
        self._hasher, self._hashed, self._closed = hashlib.sha256(), 0, False
        self._hash_thread = threading.Thread(target=self._hash_loop, name=f"hash-{self.key[:12]}", daemon=True)
        self._hash_thread.start()

    def finish(self, validate: Callable[[Path], None] | None = None) -> BlobRef:
        """Verify the digest, run `validate` on the bytes, rename into place.

        A digest mismatch or a failed validation deletes the partial bytes.
        """
        if self.total is None:
            self.total = self.completed
            self.parts[0].size = self.completed
        if self.completed != self.total:
            raise StoreWriteError(f"download stopped at {self.completed} of {self.total} bytes")
        with self._cond:
            self._cond.notify_all()
        self._hash_thread.join()
        if self._hash_error:
            raise self._hash_error
        digest = "sha256:" + self._hasher.hexdigest()
        self._close_fds()
        if self.expected and digest != self.expected:
            self.discard()
            raise DigestMismatch(f"digest mismatch: expected {self.expected}, got {digest}; the bad bytes were deleted")
        try:
            if validate:
                validate(self.data_path)
        except BaseException:
            self.discard()
            raise
        with _disk_errors(self.data_path):
            os.fsync(fd := os.open(self.data_path, os.O_RDONLY))
            os.close(fd)
            os.replace(self.data_path, self.store.path(digest))
        self.parts_path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        return BlobRef(digest, self.total)

    def discard(self) -> None:
        """Delete the partial bytes and their progress record."""
        self._close_fds()
        self.data_path.unlink(missing_ok=True)
        self.parts_path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop hashing and keep the partial bytes for a later resume; after a full disk, delete them."""
        if self._disk_full:
            self.discard()
        else:
            self._close_fds()

    # -- internals -----------------------------------------------------

    def _close_fds(self) -> None:
        self._stop_hashing()
        fds = (self._fd, self._parts_fd)
        self._fd = self._parts_fd = -1  # before closing: a late writer must not hit a reused fd
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def _stop_hashing(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._hash_thread.is_alive() and self._hash_thread is not threading.current_thread():
            self._hash_thread.join()

    def _frontier(self) -> int:
        """End of the contiguous written prefix from byte 0."""
        for part in self.parts:
            if not part.done:
                return part.next_offset
        return self.parts[-1].next_offset

    def _hash_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        if self._closed:
                            return
                        frontier = self._frontier()
                        if frontier > self._hashed:
                            break
                        if self._all_done():
                            return
                        self._cond.wait(0.5)
                while self._hashed < frontier and not self._closed:
                    chunk = os.pread(self._fd, min(_HASH_READ, frontier - self._hashed), self._hashed)
                    if not chunk:
                        raise StoreWriteError("the partial download shrank while hashing; pull again")
                    self._hasher.update(chunk)
                    self._hashed += len(chunk)
        except BaseException as e:  # reported by finish()
            self._hash_error = e

    def _disk_full_message(self) -> str:
        needed = (self.total - self.completed) if self.total is not None else None
        mb = f"{-(-needed // 1_000_000)} MB" if needed is not None else "more space"
        return f"disk full: {mb} needed in {self.store.dir}"

    def _load_validator(self) -> dict[str, str] | None:
        try:
            raw = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        v = {k: raw[k] for k in ("etag", "last_modified") if isinstance(raw.get(k), str) and _header_safe(raw[k])}
        return v or None

    def _all_done(self) -> bool:
        return all(p.done for p in self.parts)

    def _encode_parts(self) -> bytes:
        header = _PARTS_HEADER.pack(_PARTS_MAGIC, self.total or 0, len(self.parts))
        return header + b"".join(_PART_RECORD.pack(p.offset, p.size or 0, p.completed) for p in self.parts)

    def _load_parts(self, total: int | None) -> list[Part] | None:
        """The recorded parts of an earlier attempt, if they fit this download."""
        if total is None:
            return None
        try:
            raw = self.parts_path.read_bytes()
            data_size = self.data_path.stat().st_size
        except OSError:
            return None
        if len(raw) < _PARTS_HEADER.size:
            return None
        magic, recorded_total, count = _PARTS_HEADER.unpack_from(raw)
        if (
            magic != _PARTS_MAGIC
            or recorded_total != total
            or len(raw) != _PARTS_HEADER.size + count * _PART_RECORD.size
        ):
            return None
        parts = [Part(*_PART_RECORD.unpack_from(raw, _PARTS_HEADER.size + i * _PART_RECORD.size)) for i in range(count)]
        expected_offset = 0
        for part in parts:
            if part.offset != expected_offset or part.completed > (part.size or 0):
                return None
            if part.next_offset > data_size:
                part.completed = max(0, data_size - part.offset)
            expected_offset += part.size or 0
        return parts if expected_offset == total else None


def _split(total: int | None, parts: int) -> list[Part]:
    if total is None or total == 0 or parts <= 1:
        return [Part(0, total)]
    size = -(-total // parts)
    return [Part(off, min(size, total - off)) for off in range(0, total, size)]


def _completed_offset(index: int) -> int:
    return _PARTS_HEADER.size + index * _PART_RECORD.size + 16


@contextmanager
def _disk_errors(where: Path) -> Iterator[None]:
    """Turn an OSError from the disk into one line that says what to do."""
    try:
        yield
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        hint = {
            errno.ENOSPC: "free some disk space and pull again",
            errno.EFBIG: "the file size limit was reached; raise it (ulimit -f) and pull again",
            errno.EDQUOT: "the disk quota is full; free some space and pull again",
            errno.EACCES: "check the permissions of the model store (LOAM_MODELS)",
            errno.EROFS: "the model store is on a read-only file system; set LOAM_MODELS elsewhere",
        }.get(e.errno or 0, "check the model store's disk and pull again")
        raise StoreWriteError(f"cannot write to {where.parent}: {reason}; {hint}") from e


try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _lock(fd: int) -> None:
        while not _try_lock(fd):
            time.sleep(0.1)

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
