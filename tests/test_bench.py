"""`loam bench` against real servers: loam's own, a second loam as an Ollama and an OpenAI peer, a llama-server.

Every run is the CLI in a child process with small numbers (prompts of 64
tokens, 16 generated, 1 and 2 streams) on SmolLM2, so the figures are real
and the tests stay cheap on a shared machine.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.measure import results
from app.measure.bench import parse_levels, target_url
from app.measure.loadgen import LlamaServerApi, OllamaApi, OpenAIApi, percentile
from tests.conftest import run_loam
from tests.runner_process import REPO, RunnerProcess
from tests.server_process import ServerProcess, clone_store

SMOL = "smollm2:135m"
SMALL = ("--concurrency", "1,2", "--prompt-tokens", "64", "--gen", "16", "--requests", "2")
FIGURES = ("ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms", "stream_tps", "aggregate_tps", "prompt_tps")


@pytest.fixture(scope="module")
def models(smollm2_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_store(smollm2_store, tmp_path_factory.mktemp("bench") / "models")


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(models, tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.fixture(scope="module")
def client_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the bench commands keep their data (the results store)."""
    return tmp_path_factory.mktemp("client")


def env_for(server: ServerProcess, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LOAM_HOST": server.host,
        "LOAM_MODELS": server.env["LOAM_MODELS"],
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }


def bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = run_loam("bench", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def assert_measured(level: dict, concurrency: int, requests: int) -> None:
    """Every figure of a level is there and positive, every request finished, none failed."""
    assert level["concurrency"] == concurrency
    assert level["requests"] == requests and level["errors"] == 0 and level["cut"] == 0
    for key in FIGURES:
        assert isinstance(level[key], (int, float)) and level[key] > 0, (key, level)
    assert level["ttft_p95_ms"] >= level["ttft_p50_ms"] and level["itl_p95_ms"] >= level["itl_p50_ms"]
    assert 32 <= level["prompt_tokens"] <= 128  # the server's own count of a prompt calibrated to 64
    assert 1 <= level["gen_tokens"] <= 16


def test_bench_through_loam_prints_a_table_with_the_slots_and_remembers_the_results(
    server: ServerProcess, client_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = bench(env_for(server, client_home), SMOL, *SMALL)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{SMOL} through loam: 2 slots, prompts of 64 tokens")
    head = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
    columns = lines[head].split("  ")
    assert [c.strip() for c in columns if c.strip()][:3] == ["MODEL", "STREAMS", "SLOTS"]
    rows = [line.split() for line in lines[head + 1 : head + 3]]
    assert [r[:3] for r in rows] == [[SMOL, "1", "2"], [SMOL, "2", "2"]]
    assert all(float(cell) > 0 for r in rows for cell in r[4:11])  # the figures
    assert [r[11] for r in rows] == ["0", "0"]  # errors
    assert "1 stream, 2/2 requests" in result.stderr and "2 streams, 2/2 requests" in result.stderr

    digest = "sha256:" + next(m["digest"] for m in httpx.get(server.url + "/api/tags").json()["models"])
    monkeypatch.setenv("XDG_DATA_HOME", str(client_home / "data"))
    [stored] = results.history(digest)
    assert stored.kind == "bench" and stored.name == SMOL and stored.settings["slots"] == 2
    assert stored.figures["best_concurrency"] in (1, 2) and len(stored.figures["levels"]) == 2
    assert stored.figures["gen_tps_1"] == stored.figures["levels"][0]["stream_tps"] > 0
    assert "tok/s generation" in results.summary(digest)


def test_json_and_csv_carry_every_figure(server: ServerProcess, client_home: Path) -> None:
    env = env_for(server, client_home)
    data = json.loads(bench(env, SMOL, *SMALL, "--json", "--warmup", "0", "--no-save").stdout)
    assert data["interrupted"] is False and data["settings"]["api"] == "loam"
    [run] = data["models"]
    assert run["model"] == SMOL and run["slots"] == 2 and run["complete"] is True
    assert_measured(run["levels"][0], 1, 2)
    assert_measured(run["levels"][1], 2, 2)
    assert all(level["slots"] == 2 for level in run["levels"])

    one_level = ("--concurrency", "2", "--prompt-tokens", "64", "--gen", "16", "--warmup", "0")
    text = bench(env, SMOL, *one_level, "--csv").stdout
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert row["model"] == SMOL and row["concurrency"] == "2" and row["slots"] == "2" and row["errors"] == "0"
    assert all(float(row[key]) > 0 for key in FIGURES)


@pytest.fixture(scope="module")
def peer(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A second loam server: another peer to compare, reached with --target."""
    with ServerProcess(models, tmp_path_factory.mktemp("peer")) as s:
        yield s


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_target_measures_another_server(
    api: str, server: ServerProcess, peer: ServerProcess, client_home: Path
) -> None:
    env = env_for(server, client_home)
    data = json.loads(bench(env, SMOL, *SMALL, "--target", peer.url, "--api", api, "--json", "--warmup", "0").stdout)
    assert data["settings"]["target"] == peer.url and data["settings"]["api"] == api
    [run] = data["models"]
    assert run["url"] == peer.url and run["api"] == api and run["slots"] is None  # not known through these APIs
    assert_measured(run["levels"][0], 1, 2)
    assert_measured(run["levels"][1], 2, 2)


def test_target_llama_server(smollm2_store: Path, server: ServerProcess, client_home: Path) -> None:
    """loam's runner speaks llama-server's /completion, /tokenize and /props, so it stands in for one."""
    model = next((smollm2_store / "blobs").glob("sha256-b179*"))
    with RunnerProcess(model, "--parallel", "2", "--ctx-size", "512") as runner:
        args = ("--target", runner.url, "--api", "llama-server", "--json", "--warmup", "0")
        data = json.loads(bench(env_for(server, client_home), *SMALL, *args).stdout)
    [run] = data["models"]
    assert run["model"] == model.name and run["slots"] == 2  # the name and the slots from /props
    assert_measured(run["levels"][0], 1, 2)
    assert_measured(run["levels"][1], 2, 2)


def test_ctrl_c_prints_what_was_measured_and_exits_130(server: ServerProcess, client_home: Path) -> None:
    args = ("--concurrency", "1,2", "--prompt-tokens", "64", "--gen", "16", "--json", "--warmup", "0", "--no-save")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "bench", SMOL, *args],
        cwd=REPO,
        env=env_for(server, client_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "1 stream, " in line:  # the first level is done; the second has started
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    data = json.loads(out)
    assert data["interrupted"] is True
    [run] = data["models"]
    assert run["complete"] is False and run["levels"][0]["concurrency"] == 1
    assert_measured(run["levels"][0], 1, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--concurrency", "0"), "--concurrency '0': '0' is not a number of clients"),
        (("--concurrency", "x"), "--concurrency 'x': 'x' is not a number of clients"),
        (("--gen", "0"), "--gen 0: generate at least 1 token"),
        (("--json", "--csv"), "--json and --csv: choose one"),
        (("--api", "openai"), "--api openai needs --target URL"),
    ],
)
def test_bad_arguments_are_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    env = {**os.environ, "LOAM_HOST": "127.0.0.1:9", "XDG_DATA_HOME": str(tmp_path)}  # nothing is started
    result = run_loam("bench", SMOL, *args, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1


def test_an_unknown_model_is_one_line(server: ServerProcess, client_home: Path) -> None:
    for args in (("nosuch:1b",), ("nosuch", "--target", server.url, "--api", "ollama")):
        result = run_loam("bench", *args, env=env_for(server, client_home))
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("error: ") and "nosuch" in result.stderr
    result = run_loam("bench", "--target", server.url, "--api", "openai", env=env_for(server, client_home))
    assert result.returncode == 1 and result.stderr.startswith("error: --target with --api openai: name the MODEL")


def test_levels_targets_and_percentiles() -> None:
    assert parse_levels("8, 1,2,4,2") == (1, 2, 4, 8)
    assert target_url("127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5 and percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    assert percentile([], 50) is None


def test_each_protocol_reads_its_servers_counts() -> None:
    """The last line of each stream carries the server's token counts, as these servers send them."""
    last = OllamaApi().parse('{"response":"","done":true,"prompt_eval_count":64,"eval_count":16}')
    assert last is not None and last.end and (last.prompt_tokens, last.gen_tokens) == (64, 16)
    usage = OpenAIApi().parse('data: {"choices":[],"usage":{"prompt_tokens":64,"completion_tokens":16}}')
    assert usage is not None and (usage.prompt_tokens, usage.gen_tokens) == (64, 16)
    assert OpenAIApi().parse("data: [DONE]").end  # type: ignore[union-attr]
    stop = LlamaServerApi().parse('data: {"content":"","stop":true,"timings":{"prompt_n":64,"predicted_n":16}}')
    assert stop is not None and stop.end and (stop.prompt_tokens, stop.gen_tokens) == (64, 16)
    assert LlamaServerApi().parse(": progress") is None


def test_the_chart_draws_both_figures_one_line_per_model() -> None:
    from app.measure.chart import render

    runs = [
        (
            "a:1",
            [
                {"concurrency": 1, "aggregate_tps": 50.0, "ttft_p50_ms": 90.0},
                {"concurrency": 4, "aggregate_tps": 120.0},
            ],
        ),
        ("b:2", [{"concurrency": 1, "aggregate_tps": 40.0, "ttft_p50_ms": 110.0}]),
    ]
    text = render(runs, width=100)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "aggregate tok/s" in plain and "TTFT p50 ms" in plain and "a:1" in plain and "b:2" in plain
    assert render([("a:1", [{"concurrency": 1, "aggregate_tps": None, "ttft_p50_ms": None}])]) == ""
