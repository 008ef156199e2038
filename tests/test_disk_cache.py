"""The disk cache of conversation states: kept past eviction and restarts, and never trusted blindly.

The file format and its checks are tested on made-up state bytes; the runner and
`loam serve` tests restore real llama.cpp states across a process restart.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.runner.cache import SavedState, StateCache
from app.runner.disk_cache import SUFFIX, DiskStates
from tests.ggufmaker import write_tiny_llama
from tests.runner_process import RunnerProcess
from tests.server_process import ServerProcess, clone_store

KEY = {"model": "sha256-" + "ab" * 32, "llama_cpp": "0.3.36", "kv_cache_type": "f16", "flash_attn": "auto", "lora": ""}


def states(folder: Path, max_bytes: int = 1 << 20, **key: str) -> DiskStates:
    return DiskStates(folder, max_bytes, {**KEY, **key})


def only_file(folder: Path) -> Path:
    (path,) = folder.glob("*" + SUFFIX)
    return path


def test_a_state_outlives_the_process_that_wrote_it(tmp_path: Path) -> None:
    states(tmp_path).write((1, 2, 3, 4), b"kv bytes")
    again = states(tmp_path)  # a new runner: it finds the file by scanning
    entry, n = again.best([1, 2, 3, 4, 5, 6])
    assert entry is not None and n == 4
    assert again.read(entry.tokens) == b"kv bytes"
    assert again.hits == 1


def test_a_damaged_file_is_ignored_with_a_log_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    states(tmp_path).write((1, 2, 3), b"x" * 1000)
    path = only_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the state
    path.write_bytes(bytes(data))
    again = states(tmp_path)
    entry, _ = again.best([1, 2, 3])
    assert entry is not None  # the header and tokens still read: only the checksum can tell
    assert again.read(entry.tokens) is None
    assert "checksum does not match" in capsys.readouterr().err
    assert not path.exists() and again.best([1, 2, 3]) == (None, 0)


def test_a_file_made_for_another_build_is_ignored_with_a_log_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    states(tmp_path, llama_cpp="0.3.35").write((1, 2, 3), b"old build")
    ours = states(tmp_path)
    assert ours.best([1, 2, 3]) == (None, 0)  # another key's files are not even looked at
    # Renamed to pass for one of ours, its header still gives it away.
    theirs = only_file(tmp_path)
    theirs.rename(tmp_path / (ours.prefix + "0" * 32 + SUFFIX))
    again = states(tmp_path)
    assert again.best([1, 2, 3]) == (None, 0)
    assert "made for another model, llama.cpp build or cache layout" in capsys.readouterr().err


def test_a_truncated_file_is_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    states(tmp_path).write((5, 6, 7), b"y" * 100)
    path = only_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    assert states(tmp_path).best([5, 6, 7]) == (None, 0)
    assert "its header says" in capsys.readouterr().err


def test_a_file_that_changes_after_the_scan_is_not_restored(tmp_path: Path) -> None:
    ours = states(tmp_path)
    ours.write((1, 2), b"first")
    path = only_file(tmp_path)
    other = states(tmp_path / "elsewhere")
    other.write((1, 3), b"first")  # same length, other tokens, a valid checksum of its own
    path.write_bytes(only_file(tmp_path / "elsewhere").read_bytes())
    assert ours.read((1, 2)) is None


def test_the_folder_stays_within_its_size_least_recently_used_first(tmp_path: Path) -> None:
    cache = states(tmp_path, max_bytes=30_000)
    for i in range(6):
        cache.write((i, 1), bytes(9000))
        os.utime(only_newest(tmp_path), (1000 + i, 1000 + i))
    cache.read((3, 1))  # used again: now the most recent
    cache.write((9, 1), bytes(9000))
    total = sum(p.stat().st_size for p in tmp_path.glob("*" + SUFFIX))
    assert total <= 30_000
    assert set(cache.entries) == {(3, 1), (5, 1), (9, 1)}


def only_newest(folder: Path) -> Path:
    return max(folder.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime_ns)


def test_a_longer_state_of_the_same_conversation_replaces_the_shorter(tmp_path: Path) -> None:
    cache = states(tmp_path)
    cache.write((1, 2, 3), b"turn one")
    cache.write((1, 2, 3, 4, 5), b"turn two")
    assert set(cache.entries) == {(1, 2, 3, 4, 5)}
    assert len(list(tmp_path.glob("*" + SUFFIX))) == 1


def test_writing_the_same_conversation_again_keeps_its_file(tmp_path: Path) -> None:
    """A state restored from disk and saved again unchanged (a slot kept at stop) must not delete itself."""
    cache = states(tmp_path)
    cache.write((1, 2, 3), b"turn one")
    cache.write((1, 2, 3), b"turn one")
    assert states(tmp_path).read((1, 2, 3)) == b"turn one"
    assert cache.read((1, 2, 3)) == b"turn one"


def test_a_state_too_big_for_the_folder_is_not_written(tmp_path: Path) -> None:
    cache = states(tmp_path, max_bytes=5000)
    cache.write((1,), bytes(6000))
    assert not cache.entries and not list(tmp_path.glob("*" + SUFFIX))


@settings(max_examples=60, deadline=None)
@given(junk=st.binary(max_size=300), tokens=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=20))
def test_junk_files_never_break_the_scan(tmp_path_factory: pytest.TempPathFactory, junk: bytes, tokens: list) -> None:
    folder = tmp_path_factory.mktemp("junk")
    good = states(folder)
    good.write(tuple(tokens), b"state")
    (folder / (good.prefix + "f" * 32 + SUFFIX)).write_bytes(junk)
    (folder / (good.prefix + "e" * 32 + SUFFIX)).write_bytes(b"LOAMSTATE1\n" + junk)
    again = states(folder)
    assert again.read(tuple(tokens)) == b"state"
    assert set(again.entries) == {tuple(tokens)}


def test_the_ram_cache_spills_to_disk_and_flushes_at_stop(tmp_path: Path) -> None:
    disk = states(tmp_path)
    ram = StateCache(2500, disk)
    ram.put(SavedState((1, 2), bytes(1000)))
    ram.put(SavedState((3, 4), bytes(1000)))
    ram.put(SavedState((5, 6), bytes(1000)))  # over the RAM budget: the oldest goes to disk
    assert set(disk.entries) == {(1, 2)}
    state, n = ram.best([1, 2, 9])
    assert n == 2 and ram.take(state) == bytes(1000)  # found on disk, read back whole
    ram.flush()
    assert set(states(tmp_path).entries) == {(1, 2), (3, 4), (5, 6)}


def test_a_temp_file_left_by_a_killed_runner_is_cleaned_up(tmp_path: Path) -> None:
    old, new = tmp_path / ".tmp-old", tmp_path / ".tmp-new"
    old.write_bytes(b"half a state")
    new.write_bytes(b"being written now")
    os.utime(old, (1000, 1000))
    states(tmp_path)
    assert not old.exists() and new.exists()


def test_loam_cache_disk_takes_sizes_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import config
    from app.errors import ConfigError

    sizes = (("4GB", 4 * 10**9), ("512MiB", 512 << 20), ("0", 0), ("1.5 GB", 1_500_000_000), ("2t", 2 * 10**12))
    for text, size in sizes:
        monkeypatch.setenv("LOAM_CACHE_DISK", text)
        assert config.cache_disk_bytes() == size
    monkeypatch.delenv("LOAM_CACHE_DISK")
    assert config.cache_disk_bytes() == 4 * 10**9
    for text in ("lots", "-1GB", "4 parsecs", "nan"):
        monkeypatch.setenv("LOAM_CACHE_DISK", text)
        with pytest.raises(ConfigError, match="LOAM_CACHE_DISK: .* write it like 4GB"):
            config.cache_disk_bytes()


# -- real states, real processes --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, trained (so it says) on 1024 tokens: a slot's context never exceeds that."""
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny-1k.gguf", n_ctx=1024)


def test_the_runner_restores_a_conversation_after_a_restart(tiny_gguf: Path, tmp_path: Path) -> None:
    prompt = [1] + [random.Random(3).randrange(2, 200) for _ in range(300)]
    args = ("--ctx-size", "1024", "--metrics", "--cache-disk", str(tmp_path / "states"))
    with RunnerProcess(tiny_gguf, *args) as runner:
        first = runner.complete(prompt=prompt, n_predict=4, temperature=0)
    with RunnerProcess(tiny_gguf, "--ctx-size", "1024") as runner:  # no disk cache: the reference
        fresh = runner.complete(prompt=prompt + [7, 8], n_predict=8, temperature=0)
    with RunnerProcess(tiny_gguf, *args) as runner:
        again = runner.complete(prompt=prompt + [7, 8], n_predict=8, temperature=0)
        metrics = httpx.get(runner.url + "/metrics").text
    assert first["timings"]["prompt_n"] == len(prompt)
    assert fresh["timings"]["prompt_n"] == len(prompt) + 2
    assert again["timings"]["cache_n"] >= len(prompt) and again["timings"]["prompt_n"] <= 3
    assert again["tokens"] == fresh["tokens"]  # restored, the answer is the one a fresh read gives
    assert "loam:disk_cache_hits_total 1" in metrics


def test_the_runner_ignores_a_damaged_state_and_reads_the_prompt(tiny_gguf: Path, tmp_path: Path) -> None:
    prompt = [1] + list(range(10, 200))
    folder = tmp_path / "states"
    args = ("--ctx-size", "1024", "--cache-disk", str(folder))
    with RunnerProcess(tiny_gguf, *args) as runner:
        runner.complete(prompt=prompt, n_predict=2, temperature=0)
    path = only_file(folder)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 100] ^= 0x01
    path.write_bytes(bytes(data))
    runner = RunnerProcess(tiny_gguf, *args).wait_ready()
    try:
        again = runner.complete(prompt=prompt + [5], n_predict=2, temperature=0)
    finally:
        runner.proc.terminate()
        log = runner.proc.communicate(timeout=30)[1]
    assert again["timings"]["cache_n"] == 0 and again["timings"]["prompt_n"] == len(prompt) + 1
    assert "ignoring saved state" in log and "checksum does not match" in log


def test_a_long_conversation_survives_a_server_restart(smollm2_store: Path, tmp_path: Path) -> None:
    """The issue's case: 2,000 tokens of history, `loam serve` restarted, the next turn reads only what is new."""
    from openai import OpenAI

    models = clone_store(smollm2_store, tmp_path / "models")
    words = " ".join(f"item{i}" for i in range(700))
    history = [{"role": "user", "content": f"Here is my list: {words}. Remember it."}]
    turn = {"model": "smollm2:135m", "max_tokens": 12, "temperature": 0}
    with ServerProcess(models, tmp_path / "home") as server:
        first = OpenAI(base_url=server.url + "/v1", api_key="x").chat.completions.create(messages=history, **turn)
    assert first.usage.prompt_tokens >= 2000
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "What was the first item?"},
    ]
    with ServerProcess(models, tmp_path / "home") as server:  # the same home: the same cache folder
        second = OpenAI(base_url=server.url + "/v1", api_key="x").chat.completions.create(messages=history, **turn)
    new_tokens = second.usage.prompt_tokens - first.usage.prompt_tokens
    evaluated = second.usage.prompt_tokens - second.usage.prompt_tokens_details.cached_tokens
    assert 0 < new_tokens < 60
    assert evaluated <= new_tokens + 1
