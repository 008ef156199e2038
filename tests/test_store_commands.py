"""list, show, rm, cp as a person runs them, and sharing a store with Ollama."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from app.store.blobs import BlobStore
from tests.conftest import run_loam

CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


def put_blob(models: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    (models / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def ollama_store(models: Path, gguf: Path) -> dict[str, bytes]:
    """A store as Ollama leaves it: pulled manifests with extra fields, a created model."""
    model = {"mediaType": "application/vnd.ollama.image.model", **put_blob(models, gguf.read_bytes()), "from": ""}
    params = {"mediaType": "application/vnd.ollama.image.params", **put_blob(models, b'{"num_ctx":4096}')}
    system = {"mediaType": "application/vnd.ollama.image.system", **put_blob(models, b"Be brief.")}
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "125K",
        "file_type": "F32",
        "renderer": "",
        "parser": "",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [model["digest"]]},
    }
    cfg = {"mediaType": CONFIG_TYPE, **put_blob(models, json.dumps(config).encode())}
    manifests = {
        "registry.ollama.ai/library/tiny/latest": {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": cfg,
            "layers": [model, params],
        },
        "registry.ollama.ai/me/brief/v1": {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": cfg,
            "layers": [model, system],
        },
    }
    raw = {}
    for rel, doc in manifests.items():
        path = models / "manifests" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        raw[rel] = json.dumps(doc).encode()
        path.write_bytes(raw[rel])
    return raw


def assert_ollama_can_read(models: Path) -> None:
    """What Ollama's reader needs: v2 manifests whose every digest names a blob of that hash and size,
    and a config blob with the fields Ollama's ConfigV2 reads."""
    blobs = BlobStore(models)
    manifests = [p for p in (models / "manifests").glob("*/*/*/*") if p.is_file()]
    assert manifests
    for path in manifests:
        doc = json.loads(path.read_bytes())
        assert doc["schemaVersion"] == 2
        assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert doc["config"]["mediaType"] == CONFIG_TYPE
        for layer in [doc["config"], *doc["layers"]]:
            assert set(layer) >= {"mediaType", "digest", "size"}
            data = blobs.path(layer["digest"]).read_bytes()
            assert len(data) == layer["size"] and "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        config = json.loads(blobs.path(doc["config"]["digest"]).read_bytes())
        assert {"model_format", "model_family", "model_type", "file_type", "rootfs"} <= set(config)
        assert any(x["mediaType"] == "application/vnd.ollama.image.model" for x in doc["layers"])


def test_list_show_an_ollama_store_unchanged(loam_home: Path, models_dir: Path, tiny_gguf: Path) -> None:
    raw = ollama_store(models_dir, tiny_gguf)
    listed = run_loam("list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert sorted(names) == ["me/brief:v1", "tiny:latest"]
    shown = run_loam("show", "me/brief:v1")
    assert "Be brief." in shown.stdout and "architecture        llama" in shown.stdout
    assert "num_ctx         4096" in run_loam("show", "tiny").stdout
    for rel, data in raw.items():
        assert (models_dir / "manifests" / rel).read_bytes() == data


def test_what_loam_writes_ollama_can_read(loam_home: Path, models_dir: Path, tiny_gguf: Path) -> None:
    ollama_store(models_dir, tiny_gguf)
    assert run_loam("pull", "mine:1", "--from", str(tiny_gguf)).returncode == 0
    assert run_loam("cp", "tiny", "copied:1").returncode == 0
    assert_ollama_can_read(models_dir)
    mine = json.loads((models_dir / "manifests/registry.ollama.ai/library/mine/1").read_bytes())
    config = json.loads(BlobStore(models_dir).path(mine["config"]["digest"]).read_bytes())
    assert config["model_type"] == "125K" and config["file_type"] == "F32" and config["context_length"] == 256
    assert config["rootfs"]["diff_ids"] == [x["digest"] for x in mine["layers"]]


def test_list_orders_by_modified_and_formats_columns(loam_home: Path, models_dir: Path, tiny_gguf: Path) -> None:
    ollama_store(models_dir, tiny_gguf)
    old = models_dir / "manifests/registry.ollama.ai/library/tiny/latest"
    past = time.time() - 3 * 3600
    os.utime(old, (past, past))
    lines = run_loam("list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert lines[1].startswith("me/brief:v1") and "second" in lines[1]
    assert lines[2].startswith("tiny:latest") and lines[2].endswith("3 hours ago")
    manifest_id = hashlib.sha256(old.read_bytes()).hexdigest()[:12]
    assert manifest_id in lines[2] and "508 KB" in lines[2]


def test_cp_shares_blobs_and_rm_keeps_what_others_use(loam_home: Path, models_dir: Path, tiny_gguf: Path) -> None:
    assert run_loam("pull", "a:1", "--from", str(tiny_gguf)).returncode == 0
    blobs_before = sorted(p.name for p in (models_dir / "blobs").iterdir())
    copied = run_loam("cp", "a:1", "b:1")
    assert copied.returncode == 0 and copied.stdout.strip() == "copied 'a:1' to 'b:1'"
    assert sorted(p.name for p in (models_dir / "blobs").iterdir()) == blobs_before
    removed = run_loam("rm", "a:1")
    assert removed.returncode == 0 and removed.stdout.strip() == "deleted 'a:1'"
    assert sorted(p.name for p in (models_dir / "blobs").iterdir()) == blobs_before
    assert run_loam("show", "b:1").returncode == 0
    assert run_loam("rm", "b:1").returncode == 0
    assert [p for p in (models_dir / "blobs").iterdir() if p.name.startswith("sha256-")] == []
    assert not (models_dir / "manifests" / "registry.ollama.ai").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["show", "nothere:1"], "model 'nothere:1' not found; pull it with: loam pull nothere:1"),
        (["rm", "nothere:1"], "model 'nothere:1' not found"),
        (["cp", "nothere:1", "x:1"], "model 'nothere:1' not found"),
        (["cp", "nothere:1", "../x"], "invalid namespace '..'"),
    ],
)
def test_missing_models_are_one_line_errors(loam_home: Path, args: list[str], says: str) -> None:
    result = run_loam(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0]


def test_partials_past_the_grace_period_are_pruned_on_pull(loam_home: Path, models_dir: Path, tiny_gguf: Path) -> None:
    stale = models_dir / "blobs" / ("c" * 64 + "-partial")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    past = time.time() - 30 * 86400
    os.utime(stale, (past, past))
    assert run_loam("pull", "a:1", "--from", str(tiny_gguf)).returncode == 0
    assert not stale.exists()


def test_installed_console_script_finds_the_shipped_catalog(loam_home: Path) -> None:
    import shutil
    import subprocess

    loam = shutil.which("loam")
    assert loam, "install loam first: pip install ."
    result = subprocess.run(
        [loam, "pull", "--insecure", "127.0.0.1:9/library/gema3:270m"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "did you mean" in result.stderr and "gemma3:270m" in result.stderr


def test_cp_onto_an_existing_name_needs_force(loam_home: Path, models_dir: Path, tiny_gguf: Path) -> None:
    assert run_loam("pull", "a:1", "--from", str(tiny_gguf)).returncode == 0
    assert run_loam("cp", "a:1", "b:1").returncode == 0
    target = models_dir / "manifests/registry.ollama.ai/library/b/1"
    before = target.read_bytes()
    refused = run_loam("cp", "a:1", "b:1")
    assert refused.returncode == 1 and "pass --force" in refused.stderr
    assert target.read_bytes() == before
    assert run_loam("cp", "--force", "a:1", "b:1").returncode == 0


@pytest.mark.parametrize("args", [["show", "smolm:1"], ["rm", "smolm:1"], ["cp", "smolm:1", "x:1"], ["show", "smol"]])
def test_near_misses_suggest_the_stored_name(
    loam_home: Path, models_dir: Path, tiny_gguf: Path, args: list[str]
) -> None:
    assert run_loam("pull", "smol:1", "--from", str(tiny_gguf)).returncode == 0
    result = run_loam(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("(did you mean smol:1?)")
    assert (models_dir / "manifests/registry.ollama.ai/library/smol/1").is_file()


def test_run_help_says_the_prompt_is_optional(loam_home: Path) -> None:
    assert "optional" in run_loam("run", "--help").stdout
