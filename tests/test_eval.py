"""`loam eval` end to end with real llama.cpp: the tiny random GGUF for the rules, SmolLM2 for a real quant ladder."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.measure import choices as mc
from tests.conftest import REPO, run_loam
from tests.runner_process import RunnerProcess

SUBJECTS = ["The farmer", "A young teacher", "My neighbour", "The old captain", "Her brother", "The baker", "A doctor"]
VERBS = ["carried", "painted", "found", "sold", "repaired", "watched", "borrowed", "described", "cleaned", "opened"]
OBJECTS = ["a wooden boat", "the red door", "an old map", "the kitchen table", "a small garden", "the letters"]
PLACES = ["near the river", "in the morning", "after the storm", "behind the school", "at the market", "by the sea"]
CLAUSES = ["because it was needed", "while the children slept", "before the winter came", "as the bells rang"]


def english_text(words: int, seed: int = 7) -> str:
    """Plain English sentences, the same for a seed: text to measure perplexity on without downloading any."""
    rng = random.Random(seed)
    out: list[str] = []
    count = 0
    while count < words:
        parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)]
        if rng.random() < 0.4:
            parts.append(rng.choice(CLAUSES))
        sentence = " ".join(parts) + "."
        out.append(sentence)
        count += len(sentence.split())
        if rng.random() < 0.1:
            out.append("\n\n")
    return " ".join(out).replace(" \n\n ", "\n\n")


def question_tasks(n: int, seed: int = 3) -> list[mc.Task]:
    """Small arithmetic and colour questions with four choices each."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        if i % 2:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            right = a + b
            wrong = rng.sample([x for x in range(2, 19) if x != right], 3)
            question, options = f"Question: What is {a} plus {b}?\nAnswer:", [str(x) for x in [right, *wrong]]
        else:
            thing, colour = rng.choice([("grass", "green"), ("the sky", "blue"), ("snow", "white"), ("coal", "black")])
            others = [c for c in ["green", "blue", "white", "black", "red"] if c != colour]
            question, options = f"Question: What colour is {thing}?\nAnswer:", [colour, *rng.sample(others, 3)]
        order = list(range(4))
        rng.shuffle(order)
        tasks.append(mc.Task(question, tuple(options[j] for j in order), tuple(int(j == 0) for j in order)))
    return tasks


def eval_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_loam("eval", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def figures(out: dict[str, Any], name_part: str, base: bool = False) -> dict[str, Any]:
    return next(m["figures"] for m in out["models"] if name_part in m["name"] and m["base"] == base)


def assert_one_error_line(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and text in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(english_text(1500))
    return path


# -- fast: the tiny random model ---------------------------------------------------------------------


def test_perplexity_is_exp_mean_nll_of_the_runners_logprobs(tiny_gguf: Path, loam_home: Path, text_file: Path) -> None:
    out = eval_json(str(tiny_gguf), "--perplexity", str(text_file), "--ctx", "64", "--chunks", "6")
    got = figures(out, "tiny")
    runner = RunnerProcess(tiny_gguf, "--ctx-size", "256", "--parallel", "1").wait_ready()
    try:
        tok = lambda text: httpx.post(  # noqa: E731
            runner.url + "/tokenize", json={"content": text, "add_special": True, "parse_special": False}
        ).json()["tokens"]
        tokens, bos = tok(text_file.read_text()), tok("")[0]
        nll: list[float] = []
        for i in range(6):  # llama-perplexity's windows, each scored on its own
            window = [bos, *tokens[i * 64 + 1 : (i + 1) * 64]]
            answer = httpx.post(runner.url + "/score", json={"windows": [{"tokens": window, "from": 33}]}).json()
            nll += [-x for x in answer["windows"][0]["logprobs"]]
    finally:
        runner.proc.terminate()
        runner.proc.wait()
    values = np.array(nll)
    assert len(values) == 6 * (64 - 1 - 32) == got["tokens_scored"]
    ppl = math.exp(values.mean())
    assert got["ppl"] == pytest.approx(ppl, rel=1e-4)
    assert got["ppl_err"] == pytest.approx(ppl * values.std() / math.sqrt(len(values) - 1), rel=1e-3)
    assert got["windows"] == 6 and got["tokens_evaluated"] == 6 * 64 and got["tokens_per_second"] > 0
    from app.measure import results

    digest = out["models"][0]["digest"]
    assert f"PPL {got['ppl']:.2f} at ctx 64" in results.summary(digest)


def test_kld_of_a_model_against_itself_is_zero(tiny_gguf: Path, loam_home: Path, text_file: Path) -> None:
    out = eval_json(str(tiny_gguf), "--kld", str(tiny_gguf), "--perplexity", str(text_file), "--ctx", "64", "--no-save")
    got = figures(out, "tiny")
    # Zero to llama-perplexity's printed precision: the runner may place a window in another slot the second
    # time, which changes the order of float sums in attention by a few ulps, never the top token.
    for key in ("kld_mean", "kld_max", "kld_median", "kld_p99"):
        assert abs(got[key]) < 1e-6, (key, got[key])
    assert got["same_top"] == 100.0 and got["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)
    base = figures(out, "tiny", base=True)
    assert base["ppl"] == pytest.approx(got["ppl"]) and "kld_mean" not in base
    assert out["settings"]["base"] == str(tiny_gguf) and out["settings"]["ctx"] == 64


def test_a_task_file_gives_the_same_results_in_both_formats(tiny_gguf: Path, loam_home: Path, tmp_path: Path) -> None:
    tasks = question_tasks(60)
    mc.write(tasks, tmp_path / "t.bin")
    mc.write(tasks, tmp_path / "t.jsonl")
    a = figures(eval_json(str(tiny_gguf), "--choices", str(tmp_path / "t.bin"), "--no-save"), "tiny")
    b = figures(eval_json(str(tiny_gguf), "--choices", str(tmp_path / "t.jsonl"), "--no-save"), "tiny")
    keys = ("accuracy", "accuracy_err", "chance", "tasks")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["tasks"] == 60 and a["chance"] == pytest.approx(25.0)
    assert 0 <= a["accuracy"] <= 100
    sample = figures(eval_json(str(tiny_gguf), "--choices", str(tmp_path / "t.bin"), "--tasks", "10", "--no-save"), "")
    assert sample["tasks"] == 10


def test_input_errors_are_one_line(tiny_gguf: Path, loam_home: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Too short for a window.")
    assert_one_error_line(run_loam("eval", str(tiny_gguf), "--perplexity", str(tmp_path / "none.txt")), "none.txt")
    assert_one_error_line(run_loam("eval", str(tiny_gguf)), "nothing to measure")
    assert_one_error_line(run_loam("eval", str(tiny_gguf), "--kld", str(tiny_gguf)), "--perplexity FILE")
    assert_one_error_line(run_loam("eval", "nosuchmodel:1", "--perplexity", str(short)), "nosuchmodel")
    assert_one_error_line(run_loam("eval", str(tmp_path / "x.gguf"), "--perplexity", str(short)), "x.gguf")
    (tmp_path / "bad.bin").write_bytes(b"\xff\xff\xff\xff")
    assert_one_error_line(run_loam("eval", str(tiny_gguf), "--choices", str(tmp_path / "bad.bin")), "bad.bin")
    assert_one_error_line(
        run_loam("eval", str(tiny_gguf), "--perplexity", str(short), "--ctx", "128"), "fewer than one window"
    )


def test_ctrl_c_prints_what_was_measured_and_exits_130(tiny_gguf: Path, loam_home: Path, tmp_path: Path) -> None:
    text = tmp_path / "long.txt"
    text.write_text(english_text(120_000))
    child = subprocess.Popen(
        [sys.executable, "-m", "app", "eval", str(tiny_gguf), "--perplexity", str(text), "--ctx", "64", "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert child.stderr is not None
    seen = []
    for line in child.stderr:  # wait for the first progress line: some windows are scored
        seen.append(line)
        if "tokens," in line:
            break
    child.send_signal(signal.SIGINT)
    stdout, rest = child.communicate()
    assert child.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    got = json.loads(stdout)
    assert got["interrupted"] is True
    partial = figures(got, "tiny")
    assert partial["windows"] > 0 and partial["ppl"] > 1
    from app.measure import results

    assert results.history(got["models"][0]["digest"]) == []  # an interrupted run is not remembered
    mark = f"LOAM_RUNNER_PARENT={child.pid}\0".encode()
    for proc in Path("/proc").iterdir():  # every runner the eval started has stopped with it
        try:
            environ = (proc / "environ").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        assert mark not in environ, f"runner {proc.name} outlived loam eval"


# -- real: SmolLM2 and a quant ladder made from it ---------------------------------------------------


@pytest.fixture(scope="session")
def ladder(smollm2_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private store with an F16 SmolLM2 made from the shipped Q4_1 and q8_0, q4_K_M, q4_0 made from the F16."""
    from app.store.names import ModelName
    from app.store.store import Store

    home = tmp_path_factory.mktemp("ladder")
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(smollm2_store.parent / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "LOAM_MODELS": str(home / "models"),
    }
    blob = Store(smollm2_store).model_path(ModelName.parse("smollm2:135m"))
    done = run_loam("pull", "smollm2:135m", "--from", str(blob), env=env)
    assert done.returncode == 0, done.stderr
    (home / "Modelfile.f16").write_text("FROM smollm2:135m\n")
    done = run_loam("create", "smol-f16", "-f", str(home / "Modelfile.f16"), "-q", "f16", "--allow-requantize", env=env)
    assert done.returncode == 0, done.stderr
    (home / "Modelfile").write_text("FROM smol-f16\n")
    for kind in ("q8_0", "q4_K_M", "q4_0"):
        done = run_loam("create", f"smol-{kind}", "-f", str(home / "Modelfile"), "-q", kind, env=env)
        assert done.returncode == 0, done.stderr
    text = home / "text.txt"
    text.write_text(english_text(3000))
    env["EVAL_TEXT"] = str(text)
    return env


def test_kld_orders_the_quant_ladder(ladder: dict[str, str]) -> None:
    out = eval_json(
        "smol-q8_0", "smol-q4_K_M", "smol-q4_0", "--kld", "smol-f16",
        "--perplexity", ladder["EVAL_TEXT"], "--ctx", "512", "--chunks", "4", env=ladder,
    )  # fmt: skip
    q8, q4km, q40 = (figures(out, f"smol-{k}") for k in ("q8_0", "q4_K_M", "q4_0"))
    assert q8["kld_mean"] < q4km["kld_mean"] < q40["kld_mean"], (q8, q4km, q40)
    assert q8["same_top"] > q40["same_top"] and q8["tokens_scored"] == 4 * 255
    assert all(f["ppl_ratio"] > 0.9 and f["kld_mean"] > 0 for f in (q8, q4km, q40))
    base = figures(out, "smol-f16", base=True)
    assert 1 < base["ppl"] < 100, base  # plain English on a real model
    shown = run_loam("show", "smol-q4_0", env=ladder)
    assert shown.returncode == 0 and "vs smol-f16" in shown.stdout and "PPL" in shown.stdout, shown.stdout
