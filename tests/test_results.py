"""The measurements store: one JSON line per run, per model digest and machine, read back by `loam show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.measure import results
from tests.conftest import run_loam

DIGEST = "sha256:" + "ab" * 32


def test_a_run_is_stored_and_read_back_under_any_spelling_of_the_digest(loam_home: Path) -> None:
    results.record("bench", DIGEST, "m:1", {"gen_tps_1": 178.4}, {"prompt_tokens": 256})
    for spelling in (DIGEST, DIGEST.replace(":", "-"), DIGEST.removeprefix("sha256:")):
        [m] = results.history(spelling)
        assert m.figures == {"gen_tps_1": 178.4} and m.settings == {"prompt_tokens": 256}
        assert m.machine == results.machine_id() and m.time > 0


def test_figures_merge_across_runs_the_newest_winning(loam_home: Path) -> None:
    results.record("eval", DIGEST, "m:1", {"ppl": 30.0}, {"ctx": 256})
    results.record("eval", DIGEST, "m:1", {"accuracy": 41.5}, {})
    results.record("eval", DIGEST, "m:1", {"ppl": 21.3, "kld_mean": 0.012}, {"ctx": 512, "base": "m:f16"})
    results.record("bench", DIGEST, "m:1", {"gen_tps_1": 178.4, "best_aggregate_tps": 290, "best_concurrency": 4}, {})
    assert results.summary(DIGEST) == (
        "178 tok/s generation, 290 tok/s total at 4 streams, PPL 21.30 at ctx 512, KLD 0.0120 vs m:f16, "
        "41.5% multiple choice"
    )


def test_other_machines_and_damaged_lines_are_left_out(loam_home: Path) -> None:
    results.record("bench", DIGEST, "m:1", {"gen_tps_1": 100.0}, {})
    path = next((loam_home / "data").rglob("sha256-*.jsonl"))
    other = json.loads(path.read_text().splitlines()[0]) | {"machine": "0" * 16, "figures": {"gen_tps_1": 9.0}}
    with path.open("a") as f:
        f.write("{not json\n" + json.dumps({"kind": "bench"}) + "\n" + json.dumps(other) + "\n" + '{"figures": 3}\n')
    assert [m.figures for m in results.history(DIGEST)] == [{"gen_tps_1": 100.0}]
    assert len(results.history(DIGEST, this_machine=False)) == 2
    assert results.summary(DIGEST) == "100 tok/s generation"


def test_a_line_with_settings_or_time_of_the_wrong_kind_is_left_out(loam_home: Path) -> None:
    results.record("eval", DIGEST, "m:1", {"ppl": 21.25}, {"ctx": 512})
    path = next((loam_home / "data").rglob("sha256-*.jsonl"))
    good = json.loads(path.read_text().splitlines()[0])
    with path.open("a") as f:
        f.write(json.dumps(good | {"settings": "ctx=512"}) + "\n" + json.dumps(good | {"time": "today"}) + "\n")
    assert len(results.history(DIGEST)) == 1
    assert results.summary(DIGEST) == "PPL 21.25 at ctx 512" and len(results.history_lines(DIGEST)) == 1


def test_history_lines_list_the_newest_first(loam_home: Path) -> None:
    results.record("bench", DIGEST, "m:1", {"gen_tps_1": 100.0, "levels": [{"concurrency": 1}]}, {"gen": 64})
    results.record("eval", DIGEST, "m:1", {"ppl": 21.25}, {"ctx": 512})
    first, second = results.history_lines(DIGEST)
    assert first.endswith("eval   ppl 21.25  (ctx=512)")
    assert second.endswith("bench  gen_tps_1 100  (gen=64)")  # the per-level list stays in the JSON
    assert results.generation_rate(DIGEST) == 100.0 and results.generation_rate("cd" * 32) is None


def test_a_bad_digest_is_refused_and_reads_as_nothing(loam_home: Path) -> None:
    with pytest.raises(ValueError, match="not a sha256 digest"):
        results.record("bench", "../../etc/passwd", "m", {}, {})
    assert results.history("../x") == [] and results.summary("nope") == ""


def test_loam_show_prints_what_was_measured_here(loam_home: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    from app.store.names import ModelName
    from app.store.store import Store

    (tmp_path / "Modelfile").write_text(f"FROM {tiny_gguf}\n")
    assert run_loam("create", "tiny", "-f", str(tmp_path / "Modelfile")).returncode == 0
    before = run_loam("show", "tiny")
    assert before.returncode == 0 and "Measured" not in before.stdout
    digest = Store(loam_home / "models").show(ModelName.parse("tiny")).stored.digest
    results.record("eval", digest, "tiny", {"ppl": 1234.5}, {"ctx": 128})
    after = run_loam("show", "tiny")
    assert "  Measured on this machine\n    PPL 1234.50 at ctx 128\n" in after.stdout
