"""`loam eval` against llama.cpp's own llama-perplexity on SmolLM2: the same figures within 1% (1 point for accuracy).

Skipped unless LLAMA_CPP_BIN_DIR names a directory holding llama-perplexity, built
from the llama.cpp tree vendored in llama-cpp-python's sdist (docs/benchmarks.md
says how). Nothing is downloaded: the text and the tasks are written here.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from app.measure import choices as mc
from tests.test_eval import english_text, eval_json, figures, question_tasks

BIN_DIR = os.environ.get("LLAMA_CPP_BIN_DIR", "")
pytestmark = pytest.mark.skipif(
    not BIN_DIR, reason="set LLAMA_CPP_BIN_DIR to a folder with llama-perplexity (see docs/benchmarks.md)"
)


def llama_perplexity(*args: str) -> str:
    exe = Path(BIN_DIR) / "llama-perplexity"
    done = subprocess.run([str(exe), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def smollm2(smollm2_store: Path) -> tuple[Path, dict[str, str]]:
    from app.store.names import ModelName
    from app.store.store import Store

    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(smollm2_store.parent / "config"),
        "XDG_DATA_HOME": str(smollm2_store.parent / "data"),
        "XDG_STATE_HOME": str(smollm2_store.parent / "state"),
        "XDG_CACHE_HOME": str(smollm2_store.parent / "cache"),
        "LOAM_MODELS": str(smollm2_store),
    }
    return Store(smollm2_store).model_path(ModelName.parse("smollm2:135m")), env


def test_perplexity_agrees_with_llama_perplexity(smollm2: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    model, env = smollm2
    text = tmp_path / "text.txt"
    text.write_text(english_text(4000))
    theirs = llama_perplexity("-m", str(model), "-f", str(text), "-c", "512", "-b", "2048")
    match = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", theirs)
    assert match, theirs[-2000:]
    ours = figures(eval_json("smollm2:135m", "--perplexity", str(text), "--ctx", "512", "--no-save", env=env), "smol")
    assert ours["ppl"] == pytest.approx(float(match.group(1)), rel=0.01)
    assert ours["ppl_err"] == pytest.approx(float(match.group(2)), rel=0.05)
    chunks = re.search(r"calculating perplexity over (\d+) chunks", theirs)
    assert chunks and ours["windows"] == int(chunks.group(1))


def test_multiple_choice_agrees_with_llama_perplexity(smollm2: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    model, env = smollm2
    tasks = tmp_path / "tasks.bin"
    mc.write(question_tasks(150), tasks)
    theirs = llama_perplexity("-m", str(model), "-bf", str(tasks), "--multiple-choice", "-c", "512")
    match = re.search(r"Final result: ([0-9.]+) \+/- ([0-9.]+)", theirs)
    assert match, theirs[-2000:]
    ours = figures(eval_json("smollm2:135m", "--choices", str(tasks), "--no-save", env=env), "smol")
    assert abs(ours["accuracy"] - float(match.group(1))) <= 1.0, (ours, match.group(0))
    assert ours["tasks"] == 150
