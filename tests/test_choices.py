"""Multiple-choice files: both formats round-trip, the reader survives hostile bytes, llama.cpp's rules hold."""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from app.measure import choices as mc

REPO = Path(__file__).resolve().parent.parent


def sample_tasks(n: int = 12, seed: int = 0) -> list[mc.Task]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(2, 5)
        answer = rng.randrange(k)
        choices = tuple(f"choice {j} of question {i} é" for j in range(k))
        out.append(mc.Task(f"Question {i}: which one?", choices, tuple(int(j == answer) for j in range(k))))
    return out


def test_binary_and_jsonl_hold_the_same_tasks(tmp_path: Path) -> None:
    tasks = sample_tasks()
    mc.write(tasks, tmp_path / "t.bin")
    mc.write(tasks, tmp_path / "t.jsonl")
    assert (tmp_path / "t.bin").read_bytes()[:4] == struct.pack("<I", len(tasks))
    assert mc.read(tmp_path / "t.bin") == tasks
    assert mc.read(tmp_path / "t.jsonl") == tasks


def test_binary_offsets_point_at_each_task() -> None:
    tasks = sample_tasks(5)
    data = mc.to_binary(tasks)
    offsets = struct.unpack_from("<5I", data, 4)
    for task, pos in zip(tasks, offsets, strict=True):
        (n,) = struct.unpack_from("<I", data, pos)
        assert data[pos + 4 : pos + 4 + n].decode() == task.question


def test_the_seed_projects_json_is_read_as_an_array_or_one_object_a_line() -> None:
    item = {
        "multiple_correct": {"answers": [], "labels": []},
        "question": "When was the telescope invented by Galileo?",
        "single_correct": {"answers": ["1409", "1509", "1609", "1709"], "labels": [0, 0, 1, 0]},
    }
    want = [mc.Task(item["question"], ("1409", "1509", "1609", "1709"), (0, 0, 1, 0))]  # type: ignore[arg-type]
    assert mc.parse(json.dumps([item]).encode()) == want
    assert mc.parse((json.dumps(item) + "\n").encode()) == want
    assert want[0].answer == 2


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "not the index"),
        ('{"question": "q", "choices": "ab", "answer": 0}', "must be a list"),
        ('{"question": "q", "choices": ["a", 1], "answer": 0}', "must be strings"),
        ('{"question": "q", "choices": ["a"], "answer": true}', "must be a list"),
        ('{"question": "q"}', "needs"),
        ("{not json", "not a JSON object"),
    ],
)
def test_bad_jsonl_is_one_error_naming_the_line(line: str, message: str) -> None:
    with pytest.raises(mc.ChoicesError, match=message) as info:
        mc.parse(line.encode(), "tasks.jsonl")
    assert "\n" not in str(info.value)


def test_impossible_counts_are_refused_before_anything_is_allocated() -> None:
    with pytest.raises(mc.ChoicesError, match="cannot"):
        mc.parse(struct.pack("<I", 0xFFFFFFFF) + b"\0" * 64)
    body = struct.pack("<II", 1, 8) + struct.pack("<I", 0x7FFFFFFF)  # a 2 GB question
    with pytest.raises(mc.ChoicesError, match="longer than"):
        mc.parse(body)
    answers = struct.pack("<II", 1, 8) + struct.pack("<I", 1) + b"q" + struct.pack("<I", 101)
    with pytest.raises(mc.ChoicesError, match="more than 100"):
        mc.parse(answers)
    with pytest.raises(mc.ChoicesError, match="no tasks"):
        mc.parse(struct.pack("<I", 0))


def test_reader_fuzz_never_raises_anything_but_a_choices_error() -> None:
    rng = random.Random(1234)
    good = mc.to_binary(sample_tasks(6))
    jsonl = mc.to_jsonl(sample_tasks(4)).encode()
    cases: list[bytes] = [good[:n] for n in range(len(good))]  # every truncation
    for _ in range(1500):
        data = bytearray(rng.choice([good, jsonl]))
        for _ in range(rng.randint(1, 8)):
            kind = rng.random()
            pos = rng.randrange(len(data))
            if kind < 0.5:
                data[pos] = rng.randrange(256)
            elif kind < 0.7 and len(data) >= 4:
                struct.pack_into("<I", data, min(pos, len(data) - 4), rng.choice([0, 1, 100, 101, 2**31, 2**32 - 1]))
            elif kind < 0.85:
                del data[pos:]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 16))
            if not data:
                break
        cases.append(bytes(data))
    cases += [rng.randbytes(rng.randint(0, 300)) for _ in range(500)]
    parsed = 0
    for data in cases:
        try:
            tasks = mc.parse(data)
        except mc.ChoicesError as e:
            assert "\n" not in str(e)
            continue
        parsed += 1
        for task in tasks:
            assert isinstance(task.question, str) and len(task.choices) <= mc.MAX_CHOICES
            assert len(task.labels) == len(task.choices)
    assert parsed > 0  # some mutations leave a valid file (a changed letter): the reader did read those


def test_check_refuses_what_llama_cpp_refuses() -> None:
    with pytest.raises(mc.ChoicesError, match="empty question"):
        mc.check(mc.Task("", ("a",), (1,)), "t")
    with pytest.raises(mc.ChoicesError, match="empty choice"):
        mc.check(mc.Task("q", ("a", ""), (1, 0)), "t")


def test_mt19937_is_the_standard_one() -> None:
    rng = mc._MT19937(5489)  # the C++ standard: the 10000th value of a default-seeded mt19937 is 4123659995
    values = [rng() for _ in range(10000)]
    assert values[-1] == 4123659995
    assert mc._MT19937(1)() == 1791095845


def test_select_takes_all_or_a_reproducible_sample() -> None:
    tasks = sample_tasks(50)
    assert mc.select(tasks, 0) == tasks and mc.select(tasks, 50) == tasks and mc.select(tasks, 99) == tasks
    picked = mc.select(tasks, 10)
    assert len(picked) == 10 and len(set(picked)) == 10 and picked == mc.select(tasks, 10)
    assert picked != tasks[:10]


def test_prefix_and_choice_follow_llama_cpp() -> None:
    p = mc.prepare([[1, 5, 6, 7], [1, 5, 6, 8, 9], [1, 5, 2]])
    assert p.prefix == 2 and p.tokens == 12
    assert mc.prepare([[1, 5], [1, 5, 6]]).prefix == 1  # one sequence is a prefix of another: keep a token to score
    assert mc.prepare([[7, 1], [8, 1]]).prefix == 1  # no common BOS: the first token is context
    assert mc.choose([[-1.0, -3.0], [-1.5], [-2.0, -0.1]]) == 2  # means -2, -1.5, -1.05: the mean decides
    assert mc.choose([[-2.0], [-2.0]]) == 0  # ties go to the first


def test_accuracy_figures_are_llama_cpps() -> None:
    acc = mc.Accuracy()
    tasks = [mc.Task("q", ("a", "b", "c", "d"), (1, 0, 0, 0)), mc.Task("q", ("a", "b"), (0, 1))]
    for i in range(100):
        acc.add(tasks[i % 2], 0)
    p = 0.5
    assert acc.accuracy == pytest.approx(50.0)
    assert acc.stderr == pytest.approx(100 * math.sqrt(p * (1 - p) / 99))
    assert acc.chance == pytest.approx(100 * (0.25 + 0.5) / 2)


def test_convert_command_writes_the_other_format(tmp_path: Path) -> None:
    tasks = sample_tasks(7)
    mc.write(tasks, tmp_path / "in.jsonl")
    done = subprocess.run(
        [sys.executable, "-m", "app.measure.choices", "convert", str(tmp_path / "in.jsonl"), str(tmp_path / "out.bin")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert mc.read(tmp_path / "out.bin") == tasks
    bad = subprocess.run(
        [sys.executable, "-m", "app.measure.choices", "convert", str(tmp_path / "none.bin"), str(tmp_path / "x")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: cannot read") and "Traceback" not in bad.stderr
