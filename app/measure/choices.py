"""Multiple-choice tasks: llama.cpp's `--multiple-choice` binary format, a JSONL form, and llama.cpp's scoring rule.

The binary layout (tools/perplexity/perplexity.cpp, `multiple_choice_score`),
all integers little-endian:

    u32 n_task
    u32 task_pos[n_task]            byte offset of each task from the start of the file
    n_task times:
        string question             u32 length + bytes
        mc1: u32 n (<= 100), n strings, n x i32 labels (1 = correct)
        mc2: the same layout (several correct answers; llama.cpp reads it and ignores it)

The JSONL form is one task a line: `{"question": ..., "choices": [...], "answer": i}`;
the JSON the seed project converts from (`"single_correct": {"answers", "labels"}`)
is read too, one object a line or as one array. Everything read is bounded:
a task file is hostile input.

Scoring, as llama.cpp does it: each choice is tokenized as question + " " + choice
(with BOS when the model adds one); the sequences' common prefix is context; a
choice's score is the mean log-probability of its tokens after that prefix; the
highest score is the model's answer.

    python -m app.measure.choices convert IN OUT   # OUT's extension picks the format: .bin or .jsonl
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import LoamError

MAX_FILE = 512 << 20  # MMLU's test set is 7 MB, HellaSwag's 10 MB
MAX_TASKS = 1_000_000
MAX_CHOICES = 100  # llama.cpp's own limit
MAX_STRING = 1 << 20  # a question longer than this cannot fit any context worth scoring
_U32 = struct.Struct("<I")


class ChoicesError(LoamError):
    """A multiple-choice file that cannot be read: what is wrong and where."""


@dataclass(frozen=True)
class Task:
    """One question, its choices, and a label per choice (1 = correct)."""

    question: str
    choices: tuple[str, ...]
    labels: tuple[int, ...]

    @property
    def answer(self) -> int:
        """The index of the first correct choice (-1 if none is marked)."""
        return next((i for i, label in enumerate(self.labels) if label == 1), -1)


# -- reading ---------------------------------------------------------------------------------------


def read(path: Path) -> list[Task]:
    """Tasks from a binary or JSONL file, the format told by its content; ChoicesError says what is wrong."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE:
            raise ChoicesError(f"{path}: {size} bytes is more than a multiple-choice file can be ({MAX_FILE} at most)")
        data = path.read_bytes()
    except OSError as e:
        raise ChoicesError(f"cannot read {path}: {e.strerror or e}") from None
    return parse(data, str(path))


def parse(data: bytes, where: str = "choices") -> list[Task]:
    """Tasks from the bytes of a binary or JSON/JSONL file."""
    if len(data) > MAX_FILE:
        raise ChoicesError(f"{where}: more than {MAX_FILE} bytes")
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    tasks = _parse_json(data, where) if head in (b"{", b"[") else _parse_binary(data, where)
    if not tasks:
        raise ChoicesError(f"{where}: no tasks")
    return tasks


class _Reader:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, data: bytes, pos: int, where: str) -> None:
        self.data, self.pos, self.where = data, pos, where

    def fail(self, what: str) -> ChoicesError:
        return ChoicesError(f"{self.where}: {what} at byte {self.pos}; not a llama.cpp multiple-choice file?")

    def u32(self, what: str) -> int:
        if self.pos + 4 > len(self.data):
            raise self.fail(f"file ends inside {what}")
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self, what: str) -> str:
        n = self.u32(f"the length of {what}")
        if n > MAX_STRING:
            raise self.fail(f"{what} of {n} bytes is longer than {MAX_STRING}")
        if self.pos + n > len(self.data):
            raise self.fail(f"file ends inside {what} ({n} bytes)")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", "replace")

    def answers(self, what: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        n = self.u32(f"the answer count of {what}")
        if n > MAX_CHOICES:
            raise self.fail(f"{what} has {n} answers, more than {MAX_CHOICES}")
        answers = tuple(self.string(f"answer {i + 1} of {what}") for i in range(n))
        if self.pos + 4 * n > len(self.data):
            raise self.fail(f"file ends inside the labels of {what}")
        labels = struct.unpack_from(f"<{n}i", self.data, self.pos)
        self.pos += 4 * n
        return answers, tuple(int(x) for x in labels)


def _parse_binary(data: bytes, where: str) -> list[Task]:
    r = _Reader(data, 0, where)
    n_task = r.u32("the task count")
    if n_task == 0:
        raise ChoicesError(f"{where}: no tasks")
    if n_task > MAX_TASKS or 4 + 4 * n_task > len(data):
        raise ChoicesError(f"{where}: says it holds {n_task} tasks, which its {len(data)} bytes cannot")
    r.pos = 4 + 4 * n_task  # the offsets are for random access; tasks also follow each other in order
    tasks: list[Task] = []
    for i in range(n_task):
        name = f"task {i + 1}"
        question = r.string(f"the question of {name}")
        choices, labels = r.answers(name)
        r.answers(f"the multiple-correct answers of {name}")
        tasks.append(Task(question, choices, labels))
    return tasks


def _task_from_json(obj: object, where: str) -> Task:
    if not isinstance(obj, dict):
        raise ChoicesError(f"{where}: a task must be a JSON object")
    question = obj.get("question")
    if "choices" in obj:
        choices, answer = obj.get("choices"), obj.get("answer")
        if not isinstance(choices, list) or isinstance(answer, bool) or not isinstance(answer, int):
            raise ChoicesError(f'{where}: "choices" must be a list and "answer" the index of the right one')
        labels = [int(i == answer) for i in range(len(choices))]
        if not 0 <= answer < len(choices):
            raise ChoicesError(f'{where}: "answer" {answer} is not the index of one of the {len(choices)} choices')
    elif isinstance(obj.get("single_correct"), dict):
        choices, labels = obj["single_correct"].get("answers"), obj["single_correct"].get("labels")
        if not isinstance(choices, list) or not isinstance(labels, list) or len(labels) != len(choices):
            raise ChoicesError(f'{where}: "single_correct" needs "answers" and as many "labels"')
    else:
        raise ChoicesError(f'{where}: a task needs "question", "choices" and "answer"')
    if not isinstance(question, str) or not all(isinstance(c, str) for c in choices):
        raise ChoicesError(f"{where}: the question and the choices must be strings")
    if len(choices) > MAX_CHOICES:
        raise ChoicesError(f"{where}: {len(choices)} choices, more than {MAX_CHOICES}")
    if any(isinstance(x, bool) or not isinstance(x, int) for x in labels):
        raise ChoicesError(f"{where}: labels must be integers")
    if max((len(s.encode()) for s in (question, *choices)), default=0) > MAX_STRING:
        raise ChoicesError(f"{where}: a string longer than {MAX_STRING} bytes")
    return Task(question, tuple(choices), tuple(int(x) for x in labels))


def _parse_json(data: bytes, where: str) -> list[Task]:
    text = data.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        try:
            items = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ChoicesError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(items, list):
            raise ChoicesError(f"{where}: expected a list of tasks")
        if len(items) > MAX_TASKS:
            raise ChoicesError(f"{where}: more than {MAX_TASKS} tasks")
        return [_task_from_json(item, f"{where}: task {i + 1}") for i, item in enumerate(items)]
    tasks: list[Task] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if len(tasks) >= MAX_TASKS:
            raise ChoicesError(f"{where}: more than {MAX_TASKS} tasks")
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise ChoicesError(f"{where}:{number}: not a JSON object ({e})") from None
        tasks.append(_task_from_json(obj, f"{where}:{number}"))
    return tasks


def check(task: Task, where: str) -> None:
    """What llama.cpp refuses before scoring: an empty question, no choices, an empty choice."""
    if not task.question or not task.choices:
        raise ChoicesError(f"{where}: a task with an empty question or no choices")
    if any(not c for c in task.choices):
        raise ChoicesError(f"{where}: a task with an empty choice")


# -- writing ---------------------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode()
    return _U32.pack(len(raw)) + raw


def _answers(choices: Sequence[str], labels: Sequence[int]) -> bytes:
    return _U32.pack(len(choices)) + b"".join(_string(c) for c in choices) + struct.pack(f"<{len(labels)}i", *labels)


def to_binary(tasks: Sequence[Task]) -> bytes:
    """llama.cpp's --multiple-choice file for `tasks` (mc2 left empty)."""
    bodies = [_string(t.question) + _answers(t.choices, t.labels) + _answers((), ()) for t in tasks]
    pos = 4 + 4 * len(tasks)
    offsets = []
    for body in bodies:
        offsets.append(pos)
        pos += len(body)
    return _U32.pack(len(tasks)) + struct.pack(f"<{len(tasks)}I", *offsets) + b"".join(bodies)


def to_jsonl(tasks: Sequence[Task]) -> str:
    """One `{"question", "choices", "answer"}` line per task."""
    lines = [
        json.dumps({"question": t.question, "choices": list(t.choices), "answer": t.answer}, ensure_ascii=False)
        for t in tasks
    ]
    return "".join(line + "\n" for line in lines)


def write(tasks: Sequence[Task], path: Path) -> None:
    """Write `tasks` as binary for a .bin path, else as JSONL."""
    if path.suffix.lower() == ".bin":
        path.write_bytes(to_binary(tasks))
    else:
        path.write_text(to_jsonl(tasks), encoding="utf-8")


# -- choosing tasks as llama.cpp does --------------------------------------------------------------


class _MT19937:
    """std::mt19937, so `--tasks N` picks the tasks llama-perplexity's --multiple-choice-tasks N picks."""

    def __init__(self, seed: int) -> None:
        self.mt = [0] * 624
        self.mt[0] = seed & 0xFFFFFFFF
        for i in range(1, 624):
            self.mt[i] = (1812433253 * (self.mt[i - 1] ^ (self.mt[i - 1] >> 30)) + i) & 0xFFFFFFFF
        self.index = 624

    def __call__(self) -> int:
        if self.index >= 624:
            mt = self.mt
            for i in range(624):
                y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7FFFFFFF)
                mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.index = 0
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)


def select(tasks: list[Task], n: int) -> list[Task]:
    """All tasks for n = 0 or n >= len; else n of them drawn as llama.cpp draws them (mt19937 seed 1, float math)."""
    if n <= 0 or n >= len(tasks):
        return tasks
    rng = _MT19937(1)
    aux = list(range(len(tasks)))
    scale = np.float32(1.0) / (np.float32(1.0) + np.float32(4294967295.0))
    out = []
    for _ in range(n):
        j = int(scale * np.float32(rng()) * np.float32(len(aux)))
        out.append(tasks[aux[j]])
        aux[j] = aux[-1]
        aux.pop()
    return out


# -- scoring ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A task's token sequences (one per choice) and the length of their common prefix."""

    sequences: tuple[tuple[int, ...], ...]
    prefix: int

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def texts(task: Task) -> list[str]:
    """What is tokenized for each choice: question + " " + choice."""
    return [f"{task.question} {choice}" for choice in task.choices]


def prepare(sequences: Sequence[Sequence[int]]) -> Prepared:
    """The common prefix of a task's sequences, as llama.cpp counts it.

    It is kept at least 1 (a first token to condition on) and short of the
    shortest sequence, so every choice has a token to score; llama.cpp reads
    past a sequence's end there.
    """
    seqs = tuple(tuple(s) for s in sequences)
    shortest = min(len(s) for s in seqs)
    prefix = 0
    while prefix < shortest and all(s[prefix] == seqs[0][prefix] for s in seqs):
        prefix += 1
    return Prepared(seqs, max(1, min(prefix, shortest - 1)))


def choose(logprobs: Sequence[Sequence[float]]) -> int:
    """The choice with the highest mean log-probability (the first on a tie, as llama.cpp's strict >)."""
    best, best_score = 0, -math.inf
    for i, values in enumerate(logprobs):
        score = float(np.mean(np.asarray(values, dtype=np.float64))) if len(values) else -math.inf
        if score > best_score:
            best, best_score = i, score
    return best


@dataclass
class Accuracy:
    """Correct answers so far; llama.cpp's figures from them."""

    done: int = 0
    correct: int = 0
    chance_sum: float = 0.0
    answers: int = 0

    def add(self, task: Task, chosen: int) -> None:
        self.done += 1
        self.correct += int(task.labels[chosen] == 1)
        self.chance_sum += 1.0 / len(task.choices)
        self.answers += len(task.choices)

    @property
    def accuracy(self) -> float:
        """Percent correct."""
        return 100.0 * self.correct / self.done if self.done else math.nan

    @property
    def stderr(self) -> float:
        """llama.cpp's '+/-': 100 * sqrt(p (1 - p) / (n - 1))."""
        if self.done < 2:
            return math.nan
        p = self.correct / self.done
        return 100.0 * math.sqrt(p * (1 - p) / (self.done - 1))

    @property
    def chance(self) -> float:
        """Percent a random guess gets right: the mean of 1 / choices (llama.cpp prints tasks / answers)."""
        return 100.0 * self.chance_sum / self.done if self.done else math.nan


def main(argv: Sequence[str] | None = None) -> int:
    """`convert IN OUT`: rewrite a task file in the other format."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "convert":
        print("usage: python -m app.measure.choices convert IN OUT  (OUT ending in .bin: binary, else JSONL)")
        return 2
    try:
        tasks = read(Path(args[1]))
        write(tasks, Path(args[2]))
    except (ChoicesError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(tasks)} tasks to {args[2]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
