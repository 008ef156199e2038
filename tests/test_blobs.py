import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from app.errors import DigestMismatch
from app.store.blobs import BlobStore


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_write_bytes_is_content_addressed(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    ref = blobs.write_bytes(b"hello")
    assert ref.digest == sha(b"hello") and ref.size == 5
    assert blobs.path(ref.digest).name == "sha256-" + hashlib.sha256(b"hello").hexdigest()
    assert blobs.path(ref.digest).read_bytes() == b"hello"
    assert list(blobs.digests()) == [ref.digest]


def test_parts_written_out_of_order_hash_to_the_whole(tmp_path: Path) -> None:
    data = os.urandom(3_000_001)
    blobs = BlobStore(tmp_path)
    partial = blobs.partial("k", len(data), sha(data), parts=3)
    assert [p.size for p in partial.parts] == [1_000_001, 1_000_001, 999_999]

    def feed(i: int) -> None:
        part = partial.parts[i]
        for off in range(part.offset, part.offset + part.size, 65536):
            partial.write(i, data[off : min(off + 65536, part.offset + part.size)])

    threads = [threading.Thread(target=feed, args=(i,)) for i in (2, 1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ref = partial.finish()
    assert ref.digest == sha(data)
    assert blobs.path(ref.digest).read_bytes() == data
    assert not list(tmp_path.joinpath("blobs").glob("*partial*"))


def test_partial_resumes_where_each_part_stopped(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    blobs = BlobStore(tmp_path)
    first = blobs.partial("k", len(data), sha(data), parts=2)
    first.write(0, data[:1000])
    first.write(1, data[524288 : 524288 + 7])
    first.close()
    second = blobs.partial("k", len(data), sha(data), parts=2)
    assert second.resumed == 1007
    assert [p.next_offset for p in second.parts] == [1000, 524295]
    second.write(0, data[1000:524288])
    second.write(1, data[524295:])
    assert second.finish().digest == sha(data)


def test_resume_is_refused_when_the_size_changed(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    first = blobs.partial("k", 100, None)
    first.write(0, b"x" * 50)
    first.close()
    assert blobs.partial("k", 200, None).resumed == 0


def test_digest_mismatch_deletes_the_bytes(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    partial = blobs.partial("k", 4, sha(b"good"))
    partial.write(0, b"evil")
    with pytest.raises(DigestMismatch, match="deleted"):
        partial.finish()
    assert not blobs.has(sha(b"good")) and not blobs.has(sha(b"evil"))
    assert not list(blobs.dir.iterdir()) or all(p.name.endswith(".lock") for p in blobs.dir.iterdir())


def test_failed_validation_deletes_the_bytes(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    partial = blobs.partial("k", 3, None)
    partial.write(0, b"abc")

    def refuse(path: Path) -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError):
        partial.finish(refuse)
    assert not blobs.has(sha(b"abc"))
    assert not (blobs.dir / "k-partial").exists()


def test_unknown_length_download(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    partial = blobs.partial("k", None, None)
    for piece in (b"one ", b"two ", b"three"):
        partial.write(0, piece)
    ref = partial.finish()
    assert ref.size == 13 and ref.digest == sha(b"one two three")


def test_prune_removes_only_old_partials(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    keep = blobs.write_bytes(b"keep")
    old = blobs.dir / ("a" * 64 + "-partial")
    fresh = blobs.dir / ("b" * 64 + "-partial")
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert blobs.prune_partials(max_age=60) == [old]
    assert fresh.exists() and blobs.has(keep.digest)


def test_lock_serializes_writers_of_one_blob(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    order: list[str] = []
    waited = threading.Event()
    with blobs.lock("k"):
        t = threading.Thread(target=lambda: blobs.lock("k", on_wait=waited.set).__enter__() and None)
        t.start()
        assert waited.wait(5)
        order.append("first done")
    t.join(5)
    assert order == ["first done"] and not t.is_alive()


@pytest.mark.parametrize(
    "meta",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"etag": 5}',
        b'{"etag": "\\"a\\"\\r\\nX-Evil: 1"}',
        b'{"etag": "' + b"x" * 5000 + b'"}',
        b"\xff\xfe",
        b'{"last_modified": null}',
    ],
)
def test_a_damaged_validator_file_means_no_if_range(tmp_path: Path, meta: bytes) -> None:
    store = BlobStore(tmp_path)
    partial = store.partial("url-test", 8, None)
    partial.write(0, b"abcd")
    partial.set_validator('"v1"', None)
    partial.close()
    assert (tmp_path / "blobs" / "url-test-partial.meta").is_file()
    (tmp_path / "blobs" / "url-test-partial.meta").write_bytes(meta)
    again = store.partial("url-test", 8, None)
    try:
        assert again.validator is None and again.if_range() is None
    finally:
        again.close()


def test_a_sound_validator_file_is_read_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    partial = store.partial("url-test", 8, None)
    partial.write(0, b"abcd")
    partial.set_validator('"v1"', "Tue, 01 Dec 2026 10:00:00 GMT")
    partial.close()
    again = store.partial("url-test", 8, None)
    try:
        assert again.if_range() == '"v1"'
    finally:
        again.close()
