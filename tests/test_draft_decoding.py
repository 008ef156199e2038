"""A draft model guessing for a bigger one: the F16 SmolLM2 drafted by the shipped Q4_1.

The draft only proposes; the model decides every token, so greedy text is the
model's own, drafts or not. (The store side of DRAFT is in test_draft_model.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, SMOLLM2_SHA256, run_loam
from tests.runner_process import RunnerProcess, free_port
from tests.server_process import ServerProcess, clone_store

PROMPT = "<|im_start|>user\nWhat is the capital of France? Answer in two sentences.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def drafted_home(smollm2_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with smollm2:135m (Q4_1), smollm2:f16, and smollm2:f16-drafted (DRAFT smollm2:135m)."""
    home = tmp_path_factory.mktemp("drafted")
    clone_store(smollm2_store, home / "models")
    env = {**os.environ, "LOAM_MODELS": str(home / "models"), "XDG_CONFIG_HOME": str(home / "config")}
    (home / "f16").write_text("FROM smollm2:135m\n")
    made = run_loam("create", "smollm2:f16", "-f", str(home / "f16"), "-q", "f16", "--allow-requantize", env=env)
    assert made.returncode == 0, made.stderr
    (home / "drafted").write_text("FROM smollm2:f16\nDRAFT smollm2:135m\nPARAMETER draft_num_predict 8\n")
    made = run_loam("create", "smollm2:f16-drafted", "-f", str(home / "drafted"), env=env)
    assert made.returncode == 0, made.stderr
    return home


def blob_of(home: Path, name: str) -> Path:
    folder = home / "models" / "manifests" / "registry.ollama.ai" / "library" / "smollm2"
    manifest = json.loads((folder / name).read_text())
    (layer,) = [x for x in manifest["layers"] if x["mediaType"] == "application/vnd.ollama.image.model"]
    return home / "models" / "blobs" / layer["digest"].replace(":", "-")


@pytest.fixture(scope="module")
def runners(drafted_home: Path) -> Iterator[tuple[RunnerProcess, RunnerProcess]]:
    f16 = blob_of(drafted_home, "f16")
    q4 = drafted_home / "models" / "blobs" / f"sha256-{SMOLLM2_SHA256}"
    flags = ("--ctx-size", "2048", "--threads", "2")
    with RunnerProcess(f16, *flags, "--draft-max", "0") as plain:
        with RunnerProcess(f16, *flags, "--model-draft", str(q4), "--draft-max", "8") as drafted:
            yield plain, drafted


def test_greedy_text_is_the_models_own_and_acceptance_is_reported(
    runners: tuple[RunnerProcess, RunnerProcess],
) -> None:
    plain, drafted = runners
    guessed = kept = 0
    for prompt in (PROMPT, "The three primary colours are"):
        body = {"prompt": prompt, "n_predict": 64, "temperature": 0, "cache_prompt": False}
        a, b = plain.complete(**body), drafted.complete(**body)
        assert b["content"] == a["content"] and b["tokens"] == a["tokens"], prompt
        guessed, kept = guessed + b["timings"].get("draft_n", 0), kept + b["timings"].get("draft_n_accepted", 0)
    # The draft guesses only where it is confident, and a Q4_1 of the same weights is then nearly always right.
    assert guessed >= 10 and kept >= 0.8 * guessed


def test_a_streamed_drafted_reply_is_the_whole_reply(runners: tuple[RunnerProcess, RunnerProcess]) -> None:
    plain, drafted = runners
    body = {"prompt": PROMPT, "n_predict": 48, "temperature": 0, "cache_prompt": False}
    whole = plain.complete(**body)
    chunks = drafted.stream(**body)
    assert "".join(c["content"] for c in chunks) == whole["content"]


def test_a_draft_of_another_vocabulary_stops_the_runner_with_one_line(tiny_gguf: Path, drafted_home: Path) -> None:
    q4 = drafted_home / "models" / "blobs" / f"sha256-{SMOLLM2_SHA256}"
    argv = [sys.executable, "-m", "app.runner", "--model", str(q4), "--model-draft", str(tiny_gguf)]
    done = subprocess.run(
        [*argv, "--port", str(free_port()), "--ctx-size", "512"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["kind"] == "bad_model" and "vocabulary is not the model's" in report["error"]


def test_loam_serve_loads_the_draft_of_a_drafted_model(drafted_home: Path, tmp_path: Path) -> None:
    with ServerProcess(drafted_home / "models", tmp_path / "home") as server:

        def generate(model: str) -> dict:
            body = {"model": model, "prompt": "The three primary colours are", "raw": True, "stream": False}
            body["options"] = {"temperature": 0, "num_predict": 48}
            return httpx.post(server.url + "/api/generate", json=body, timeout=None).json()

        plain, drafted = generate("smollm2:f16"), generate("smollm2:f16-drafted")
    assert drafted["response"] == plain["response"]
    # Prompt lookup finds nothing to copy in this short answer; the draft model guesses.
    assert drafted["draft_count"] > 0 and drafted["draft_accepted_count"] >= 0.8 * drafted["draft_count"]
    assert "draft_count" not in plain
