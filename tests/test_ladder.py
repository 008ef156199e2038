"""`loam ladder`: a real ladder from an F16 SmolLM2, its table, report and remembered figures; its rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.errors import LoamError
from app.measure.ladder import Rung, parse_types, recommend, rung_name
from app.store.names import ModelName
from tests.conftest import run_loam
from tests.server_process import ServerProcess, clone_store

SENTENCES = (
    "The river rose after three days of rain, and the farmers moved their animals to the high field. "
    "A small boat carried letters across the water every morning. "
    "Children counted the herons standing in the shallow reeds near the old mill. "
    "By evening the wind turned cold and the lamps were lit along the bridge. "
)


def test_rung_names_replace_the_source_type_with_the_rungs() -> None:
    assert rung_name(ModelName.parse("smollm2:135m-f16"), "Q4_K_M") == "smollm2:135m-q4_k_m"
    assert rung_name(ModelName.parse("smollm2:f16"), "Q8_0") == "smollm2:q8_0"
    assert rung_name(ModelName.parse("smollm2"), "Q4_0") == "smollm2:q4_0"
    assert rung_name(ModelName.parse("me/tiny:base"), "Q6_K") == "me/tiny:base-q6_k"


def test_types_are_checked_and_deduplicated() -> None:
    assert parse_types("q8_0, Q4_K_M,q8_0") == ["Q8_0", "Q4_K_M"]
    with pytest.raises(LoamError, match="unknown quantization type 'q9'"):
        parse_types("q8_0,q9")
    with pytest.raises(LoamError, match="--types is empty"):
        parse_types(" , ")


def _rung(qtype: str, size: int, kld: float | None) -> Rung:
    return Rung(qtype, qtype, "", Path("x"), size, 0.0, figures={} if kld is None else {"kld_mean": kld})


def test_the_recommendation_is_the_smallest_type_under_the_threshold() -> None:
    source = _rung("F16", 300, None)
    rungs = [source, _rung("Q8_0", 150, 0.004), _rung("Q4_K_M", 100, 0.03), _rung("Q4_0", 90, 0.2)]
    assert recommend(rungs, 0.05)[0] is rungs[2]
    assert recommend(rungs, 0.001)[0] is rungs[1]  # none under it: the closest to the source, and says so
    assert "none is" in recommend(rungs, 0.001)[1]
    assert recommend([source, _rung("Q8_0", 150, None)], 0.05)[0] is None


def test_a_report_path_in_a_missing_folder_fails_before_any_measuring(tmp_path: Path) -> None:
    from argparse import Namespace

    from app.measure import ladder

    report = tmp_path / "no-such-folder" / "ladder.md"
    args = Namespace(source="no-such:model", types="q8_0", text=None, choices=None, report=str(report))
    with pytest.raises(LoamError, match="--report .*folder does not exist"):
        ladder.run(args)


@pytest.fixture(scope="module")
def f16_home(smollm2_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("ladder")
    clone_store(smollm2_store, home / "models")
    (home / "Modelfile").write_text("FROM smollm2:135m\n")
    env = _env(home)
    made = run_loam("create", "smollm2:f16", "-f", str(home / "Modelfile"), "-q", "f16", "--allow-requantize", env=env)
    assert made.returncode == 0, made.stderr
    return home


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "LOAM_MODELS": str(home / "models"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CACHE_HOME": str(home / "cache"),
        **extra,
    }


def test_a_ladder_from_f16_measures_every_rung_and_writes_its_report(f16_home: Path) -> None:
    text = f16_home / "text.txt"
    text.write_text(SENTENCES * 40)
    report = f16_home / "ladder.md"
    with ServerProcess(f16_home / "models", f16_home) as server:
        env = _env(f16_home, LOAM_HOST=server.host)
        args = ["--types", "q8_0,q4_0", "--text", str(text), "--ctx", "256", "--chunks", "4"]
        args += ["--prompt-tokens", "64", "--gen", "8", "--report", str(report), "--json"]
        done = run_loam("ladder", "smollm2:f16", *args, env=env)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        shown = run_loam("show", "smollm2:q4_0", env=env)
        again = run_loam("ladder", "smollm2:f16", "--types", "q4_0", "--prompt-tokens", "32", "--gen", "4", env=env)
    names = [r["name"] for r in result["rungs"]]
    assert names == ["smollm2:f16", "smollm2:q8_0", "smollm2:q4_0"]
    f16, q8, q4 = result["rungs"]
    assert f16["size"] > q8["size"] > q4["size"] and f16["bpw"] > q8["bpw"] > q4["bpw"]
    assert all(r["memory"] > r["size"] for r in result["rungs"])
    assert 0 < q8["kld_mean"] < q4["kld_mean"] and q8["same_top"] > q4["same_top"]
    assert all(r["ppl"] > 1 and r["gen_tps_1"] > 0 and r["agg_tps_4"] > 0 and r["slots"] == 4 for r in result["rungs"])
    assert result["recommended"] in names[1:] and "KL divergence" in result["rule"]
    written = report.read_text()
    assert "loam ladder smollm2:f16 --types q8_0,q4_0" in written and "| smollm2:q4_0 | Q4_0 |" in written
    assert "Measured on this machine" in shown.stdout and "tok/s generation" in shown.stdout
    assert "KLD" in shown.stdout and "vs smollm2:f16" in shown.stdout
    assert again.returncode == 0 and "reusing smollm2:q4_0" in again.stderr and "quantizing" not in again.stderr
    assert "recommended: none" in again.stdout  # no --text: nothing measured quality, and it says so


def test_a_quantized_source_is_refused_in_one_line(f16_home: Path) -> None:
    done = run_loam("ladder", "smollm2:135m", "--types", "q4_0", env=_env(f16_home))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "the ladder starts from F32, F16 or BF16" in done.stderr and "--quantize f16" in done.stderr
    missing = run_loam("ladder", "smollm2:f16", "--text", "/nonexistent.txt", env=_env(f16_home))
    assert missing.returncode == 1 and "--text /nonexistent.txt: no such file" in missing.stderr
