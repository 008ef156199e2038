"""Resumed and shared downloads never splice two files, and clean up after themselves.

A real `loam pull` child is killed mid-download from a real HTTP server on
127.0.0.1, the served file is replaced, and the pull is run again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.errors import StoreWriteError
from app.store.blobs import BlobStore
from app.store.catalog import Catalog
from app.store.progress import ProgressEvent
from app.store.pull import pull
from app.store.store import Store
from tests.conftest import REPO, run_loam
from tests.fake_registry import FakeRegistry
from tests.ggufmaker import write_tiny_llama


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> FakeRegistry:
    reg = FakeRegistry(require_auth=False).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def other_big_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GGUF of the same size as `big_gguf` with different bytes: a changed upload."""
    return write_tiny_llama(tmp_path_factory.mktemp("gguf2") / "big2.gguf", padding_bytes=40 << 20, seed=2)


def partial_files(models: Path, suffix: str = "-partial") -> list[Path]:
    blobs = models / "blobs"
    return [p for p in blobs.iterdir() if p.name.endswith(suffix)] if blobs.is_dir() else []


def kill_midway(server: FakeRegistry, models: Path, url: str, name: str) -> int:
    """Start `loam pull NAME --from URL`, SIGKILL it once some bytes are on disk; the bytes kept."""
    server.pause_after = 12 << 20
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "pull", name, "--from", url],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not any(p.stat().st_size >= 4 << 20 for p in partial_files(models)):
            assert proc.poll() is None, "the pull ended before it was killed"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    server.pause_after = None
    server.release.set()
    (partial,) = partial_files(models)
    return partial.stat().st_size


def test_resume_after_the_file_changed_stores_the_new_file(
    loam_home: Path, models_dir: Path, server: FakeRegistry, big_gguf: Path, other_big_gguf: Path
) -> None:
    old, new = big_gguf.read_bytes(), other_big_gguf.read_bytes()
    assert len(old) == len(new) and old != new
    url = server.put_file("model.gguf", old, mtime=1_700_000_000)
    kept = kill_midway(server, models_dir, url, "changed:1")
    assert partial_files(models_dir, "-partial.meta"), "the validator is recorded beside the partial"
    server.put_file("model.gguf", new, mtime=1_700_086_400)
    server.gets.clear()
    result = run_loam("pull", "changed:1", "--from", url)
    assert result.returncode == 0, result.stderr
    assert "source changed since the partial began; starting over" in result.stderr
    ranged = [g for g in server.gets if g[1]]
    assert ranged and ranged[0][1].startswith(f"bytes={kept}-") and ranged[0][2] and ranged[0][3] == 200
    blobs = BlobStore(models_dir)
    assert blobs.path(sha(new)).read_bytes() == new
    assert not blobs.has(sha(old))
    assert [p.name for p in (models_dir / "blobs").iterdir() if "partial" in p.name] == []


def test_resume_of_an_unchanged_file_continues_from_the_offset(
    loam_home: Path, models_dir: Path, server: FakeRegistry, big_gguf: Path
) -> None:
    data = big_gguf.read_bytes()
    url = server.put_file("same.gguf", data)
    kept = kill_midway(server, models_dir, url, "same:1")
    server.gets.clear()
    server.served.clear()
    result = run_loam("pull", "same:1", "--from", url)
    assert result.returncode == 0, result.stderr
    assert server.gets == [("/files/same.gguf", f"bytes={kept}-{len(data) - 1}", server.gets[0][2], 206)]
    assert server.gets[0][2].startswith('"'), "the strong ETag is preferred for If-Range"
    assert server.served["/files/same.gguf"] == len(data) - kept
    assert BlobStore(models_dir).path(sha(data)).read_bytes() == data


def test_partial_without_a_validator_starts_over(
    loam_home: Path, models_dir: Path, server: FakeRegistry, big_gguf: Path, other_big_gguf: Path
) -> None:
    server.validators = False
    old, new = big_gguf.read_bytes(), other_big_gguf.read_bytes()
    url = server.put_file("bare.gguf", old)
    kill_midway(server, models_dir, url, "bare:1")
    server.put_file("bare.gguf", new)
    server.gets.clear()
    result = run_loam("pull", "bare:1", "--from", url)
    assert result.returncode == 0, result.stderr
    assert [g[1] for g in server.gets] == [""], "no blind Range request"
    assert BlobStore(models_dir).path(sha(new)).read_bytes() == new


def test_pulls_of_one_url_in_one_process_share_the_download(
    loam_home: Path, models_dir: Path, server: FakeRegistry, big_gguf: Path
) -> None:
    data = big_gguf.read_bytes()
    url = server.put_file("shared.gguf", data)
    server.delay_per_chunk = 0.02
    store, catalog = Store(models_dir), Catalog({}, "tiny")
    events: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def one(i: int, name: str) -> None:
        try:
            pull(store, catalog, name, lambda e: events[i].append(e.status), source=url)
        except BaseException as e:
            errors.append(e)

    first = threading.Thread(target=one, args=(0, "shared-a:1"))
    first.start()
    while server.served["/files/shared.gguf"] == 0:
        time.sleep(0.01)
    second = threading.Thread(target=one, args=(1, "shared-b:1"))
    second.start()
    first.join()
    second.join()
    assert errors == []
    assert server.served["/files/shared.gguf"] == len(data), "the bytes were fetched once"
    assert len([g for g in server.gets if g[0] == "/files/shared.gguf"]) == 1
    assert any(s.startswith("joining the download of") for s in events[1])
    assert sum(s.startswith("pulling") for s in events[1]) > 1, "the joiner sees the download's progress"
    assert {m.name.display for m in store.list()} >= {"shared-a:1", "shared-b:1"}
    assert not [p for p in (models_dir / "blobs").iterdir() if "partial" in p.name]


def test_lock_files_are_removed_after_success_and_failure(
    loam_home: Path, models_dir: Path, server: FakeRegistry, tiny_gguf: Path
) -> None:
    url = server.put_file("tiny.gguf", tiny_gguf.read_bytes())
    assert run_loam("pull", "ok:1", "--from", url).returncode == 0
    failed = run_loam("pull", "gone:1", "--from", f"http://{server.host}/files/missing.gguf")
    assert failed.returncode == 1
    assert not [p.name for p in (models_dir / "blobs").iterdir() if p.name.endswith(".lock")]


def test_lock_waiter_never_holds_an_unlinked_file(tmp_path: Path) -> None:
    """Holders run one at a time even though each removes the lock file on leaving."""
    blobs = BlobStore(tmp_path)
    inside, overlaps = [0], [0]
    guard = threading.Lock()

    def hold() -> None:
        for _ in range(30):
            with blobs.lock("k"):
                with guard:
                    inside[0] += 1
                    overlaps[0] = max(overlaps[0], inside[0])
                time.sleep(0.001)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 1
    assert not (tmp_path / "blobs" / "k-partial.lock").exists()


def test_full_disk_says_so_and_removes_the_partial(
    loam_home: Path, models_dir: Path, server: FakeRegistry, big_gguf: Path, tiny_gguf: Path, monkeypatch
) -> None:
    """ENOSPC cannot be produced on demand, so os.pwrite fails with it once 8 MiB are written."""
    data = big_gguf.read_bytes()
    store, catalog = Store(models_dir), Catalog({}, "tiny")
    pull(store, catalog, "keep:1", source=server.put_file("keep.gguf", tiny_gguf.read_bytes()))
    manifests = sorted(p.read_bytes() for p in (models_dir / "manifests").rglob("*") if p.is_file())
    real_pwrite, written = os.pwrite, [0]

    def filling_pwrite(fd: int, chunk: bytes, offset: int) -> int:
        if written[0] >= 8 << 20 and len(chunk) > 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(chunk)
        return real_pwrite(fd, chunk, offset)

    monkeypatch.setattr(os, "pwrite", filling_pwrite)
    url = server.put_file("huge.gguf", data)
    notes: list[ProgressEvent] = []
    with pytest.raises(StoreWriteError) as caught:
        pull(store, catalog, "huge:1", notes.append, source=url)
    message = str(caught.value)
    assert message.startswith("disk full: ") and f"MB needed in {models_dir / 'blobs'}" in message
    assert "\n" not in message and "-partial" not in message
    needed = int(message.split()[2])
    assert 0 < needed <= -(-(len(data) - (8 << 20)) // 1_000_000)
    assert not [p.name for p in (models_dir / "blobs").iterdir() if "partial" in p.name]
    assert [m.name.display for m in store.list()] == ["keep:1"]
    assert sorted(p.read_bytes() for p in (models_dir / "manifests").rglob("*") if p.is_file()) == manifests
