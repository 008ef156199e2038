"""Fuzzing the GGUF reader, `create` and `pull --from PATH` with broken model files and Modelfiles.

Hundreds of seeded mutations of the tiny GGUF that ggufmaker writes, plus
hand-made broken Modelfiles, go through the same code the CLI runs: each must
end in success or one of loam's own errors (one line), within a watchdog, and
leave nothing behind in the store or the temp dir. A sample runs through the
real CLI in a child process to check what a person sees: exit 1, one `error:`
line, no traceback.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app import config
from app.errors import LoamError
from app.store.catalog import Catalog
from app.store.create import create, load
from app.store.gguf_info import inspect
from app.store.names import ModelName
from app.store.pull import pull
from app.store.store import Store
from tests.conftest import REPO
from tests.ggufmaker import write_tiny_llama

SEED = 20261201
WATCHDOG_S = 5  # a hang detector, not a speed limit: one case takes milliseconds
CLI_WATCHDOG_S = 60  # a child process pays Python's start-up on a busy machine
N_GGUF_MUTATIONS = 220
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


# --- where things are in the valid file -------------------------------------------------------


@dataclass
class Layout:
    """Byte offsets of the parts of a valid GGUF header, for mutations that aim at them."""

    kv_start: int
    tensors_start: int
    header_end: int
    key_lengths: list[int]  # offset of each key's u64 length
    value_types: list[int]  # offset of each value's u32 type
    string_lengths: list[int]  # offset of each string value's u64 length
    array_counts: list[int]  # offset of each array's u64 count
    floats: list[int]  # offset of each float32 value
    ints: dict[str, tuple[int, int]]  # key -> (offset of value, value type) for integer values
    tensor_dims: list[int]  # offset of each tensor's u32 dimension count
    tensor_types: list[int]  # offset of each tensor's u32 ggml type
    tensor_offsets: list[int]  # offset of each tensor's u64 data offset


def layout(data: bytes) -> Layout:
    pos = 24
    lay = Layout(24, 0, 0, [], [], [], [], [], {}, [], [], [])
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def u(fmt: str) -> int:
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    for _ in range(n_kv):
        lay.key_lengths.append(pos)
        n = u("<Q")
        key = data[pos : pos + n].decode()
        pos += n
        lay.value_types.append(pos)
        vtype = u("<I")
        if vtype == 8:
            lay.string_lengths.append(pos)
            n = u("<Q")
            pos += n
        elif vtype == 9:
            etype = u("<I")
            lay.array_counts.append(pos)
            count = u("<Q")
            for _ in range(count):
                n = u("<Q") if etype == 8 else _SCALAR_SIZE[etype]
                pos += n
        else:
            if vtype == 6:
                lay.floats.append(pos)
            elif vtype != 7:
                lay.ints[key] = (pos, vtype)
            pos += _SCALAR_SIZE[vtype]
    lay.tensors_start = pos
    for _ in range(n_tensors):
        n = u("<Q")
        pos += n
        lay.tensor_dims.append(pos)
        n = 8 * u("<I")
        pos += n
        lay.tensor_types.append(pos)
        pos += 4
        lay.tensor_offsets.append(pos)
        pos += 8
    lay.header_end = pos
    return lay


# --- mutations ----------------------------------------------------------------------------------


def put(data: bytes, offset: int, packed: bytes) -> bytes:
    return data[:offset] + packed + data[offset + len(packed) :]


def gguf_mutations(base: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    """Seeded broken (and a few still-valid) variants of `base`, each named for what was done."""
    lay = layout(base)
    header = lay.header_end
    big = [2**60, 2**62, 2**63, 2**64 - 1, 2**32, len(base) * 8]
    out: list[tuple[str, bytes]] = [
        ("bad magic", b"GGUX" + base[4:]),
        ("empty file", b""),
        ("magic only", b"GGUF"),
        ("version 1", put(base, 4, struct.pack("<I", 1))),
        ("version 4", put(base, 4, struct.pack("<I", 4))),
        ("version 2**32-1", put(base, 4, struct.pack("<I", 2**32 - 1))),
        ("tensor count 2**60", put(base, 8, struct.pack("<Q", 2**60))),
        ("metadata count 2**64-1", put(base, 16, struct.pack("<Q", 2**64 - 1))),
        ("tensor count 0", put(base, 8, struct.pack("<Q", 0))),
        (
            "overlapping tensors",
            put(base, lay.tensor_offsets[1], base[lay.tensor_offsets[0] : lay.tensor_offsets[0] + 8]),
        ),
        ("tensor offset past the end", put(base, lay.tensor_offsets[-1], struct.pack("<Q", 2**40))),
        ("tensor offset 2**64-32", put(base, lay.tensor_offsets[-1], struct.pack("<Q", 2**64 - 32))),
        ("misaligned tensor offset", put(base, lay.tensor_offsets[-1], struct.pack("<Q", 3))),
        ("dims product overflows", put(base, lay.tensor_dims[0] + 4, struct.pack("<QQ", 2**40, 2**40))),
        ("dimension 2**64-1", put(base, lay.tensor_dims[0] + 4, struct.pack("<Q", 2**64 - 1))),
        ("5 dimensions", put(base, lay.tensor_dims[0], struct.pack("<I", 5))),
        ("2**32-1 dimensions", put(base, lay.tensor_dims[0], struct.pack("<I", 2**32 - 1))),
        ("unknown tensor type", put(base, lay.tensor_types[0], struct.pack("<I", 9999))),
        ("removed tensor type Q4_2", put(base, lay.tensor_types[0], struct.pack("<I", 4))),
        ("string length 2**62", put(base, lay.string_lengths[0], struct.pack("<Q", 2**62))),
        ("key length 2**63", put(base, lay.key_lengths[0], struct.pack("<Q", 2**63))),
        ("array length 2**61", put(base, lay.array_counts[0], struct.pack("<Q", 2**61))),
        ("unknown value type", put(base, lay.value_types[0], struct.pack("<I", 13))),
        ("value type 2**32-1", put(base, lay.value_types[1], struct.pack("<I", 2**32 - 1))),
        ("header cut in the tensor infos", base[: lay.tensors_start + 5]),
        ("data cut by one byte", base[:-1]),
    ]
    for key, (offset, _vtype) in lay.ints.items():
        out.append((f"{key} turned into a float NaN", put(base, offset - 4, struct.pack("<If", 6, math.nan))))
        out.append((f"{key} bytes as a float", put(base, offset - 4, struct.pack("<I", 6))))
    for label, build in _crafted().items():
        out.append((label, build))
    kinds = ["bitflip", "overwrite", "truncate", "inflate", "typeswap", "nan", "insert"]
    while len(out) < N_GGUF_MUTATIONS:
        kind = kinds[len(out) % len(kinds)]
        data = bytearray(base)
        if kind == "bitflip":
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(header)
                data[i] ^= 1 << rng.randrange(8)
        elif kind == "overwrite":
            target = rng.choice([0, lay.kv_start, *rng.sample(lay.key_lengths, 3), *rng.sample(lay.tensor_dims, 3)])
            i = min(target + rng.randrange(16), header - 1)
            data[i : i + 4] = bytes(rng.randrange(256) for _ in range(4))
        elif kind == "truncate":
            data = data[: rng.randrange(len(base))]
        elif kind == "inflate":
            spot = rng.choice(lay.key_lengths + lay.string_lengths + lay.array_counts + [8, 16])
            data[spot : spot + 8] = struct.pack("<Q", min(rng.choice(big) + rng.randrange(1000), 2**64 - 1))
        elif kind == "typeswap":
            spot = rng.choice(lay.value_types + lay.tensor_types)
            data[spot : spot + 4] = struct.pack("<I", rng.choice([0, 4, 6, 7, 8, 9, 12, 13, 99, 2**31]))
        elif kind == "nan":
            spot = rng.choice(lay.floats + [o for o, _ in lay.ints.values()])
            data[spot : spot + 4] = struct.pack("<f", rng.choice([math.nan, math.inf, -math.inf]))
        else:
            i = rng.randrange(header)
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        out.append((f"{kind} #{len(out)}", bytes(data)))
    return out


def _crafted() -> dict[str, bytes]:
    """Headers written from scratch: wrong-typed well-known keys, deep arrays."""

    def gguf(kvs: list[bytes], n_tensors: int = 0) -> bytes:
        return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs)

    def key(name: str) -> bytes:
        return struct.pack("<Q", len(name)) + name.encode()

    def s(name: str, value: str) -> bytes:
        return key(name) + struct.pack("<IQ", 8, len(value.encode())) + value.encode()

    arch = s("general.architecture", "llama")
    nested = struct.pack("<I", 9) + b"".join(struct.pack("<IQ", 9, 1) for _ in range(200))
    return {
        "float general.alignment": gguf([arch, key("general.alignment") + struct.pack("<If", 6, 32.0)]),
        "NaN general.alignment": gguf([arch, key("general.alignment") + struct.pack("<If", 6, math.nan)]),
        "string general.alignment": gguf([arch, s("general.alignment", "32")]),
        "zero general.alignment": gguf([arch, key("general.alignment") + struct.pack("<II", 4, 0)]),
        "alignment 48": gguf([arch, key("general.alignment") + struct.pack("<II", 4, 48)]),
        "inf context_length": gguf([arch, key("llama.context_length") + struct.pack("<Id", 12, math.inf)]),
        "string block_count": gguf([arch, s("llama.block_count", "2")]),
        "int architecture": gguf([key("general.architecture") + struct.pack("<II", 4, 7)]),
        "array architecture": gguf([key("general.architecture") + struct.pack("<IIQ", 9, 4, 0)]),
        "duplicate key": gguf([arch, arch]),
        "arrays nested 200 deep": gguf([arch, key("deep") + nested + struct.pack("<IQ", 4, 0)]),
        "array of 2**40 strings": gguf([arch, key("v") + struct.pack("<IIQ", 9, 8, 2**40)]),
        "array of 2**62 float64": gguf([arch, key("v") + struct.pack("<IIQ", 9, 12, 2**62)]),
        "tensor name 1000 bytes": gguf([arch], 1) + key("t" * 1000) + struct.pack("<IQIQ", 1, 32, 0, 0),
        "duplicate tensor": gguf([arch], 2) + (key("t") + struct.pack("<IQIQ", 1, 32, 0, 0)) * 2,
        "q4_0 row of 33": gguf([arch], 1) + key("t") + struct.pack("<IQIQ", 1, 33, 2, 0),
    }


# --- running one case ---------------------------------------------------------------------------


def run_guarded(fn: Callable[[], object]) -> str:
    """Run `fn` under a watchdog: "ok", or the one-line message of a LoamError; fails on anything else."""
    result: list[object] = []

    def target() -> None:
        try:
            fn()
            result.append("ok")
        except BaseException as e:  # noqa: BLE001 - recorded and judged below
            result.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(WATCHDOG_S)
    assert not thread.is_alive(), "hung: no answer within the watchdog"
    (outcome,) = result
    if isinstance(outcome, LoamError):
        message = str(outcome)
        assert message and "\n" not in message, f"not one line: {message!r}"
        assert "Traceback" not in message
        return message
    if isinstance(outcome, BaseException):
        raise AssertionError(f"{type(outcome).__name__} escaped: {outcome}") from outcome
    return "ok"


def snapshot(*roots: Path) -> set[str]:
    return {str(p) for root in roots if root.exists() for p in root.rglob("*")}


@dataclass
class Bench:
    models: Path
    temp: Path
    work: Path
    locks: set[str] = field(default_factory=set)

    def store(self) -> Store:
        return Store.default()

    def catalog(self) -> Catalog:
        return Catalog.load(config.paths().user_catalog)

    def create(self, modelfile: Path, name: str = "fuzz") -> None:
        mf = load(modelfile)
        create(self.store(), self.catalog(), ModelName.parse(name), mf, folder=modelfile.resolve().parent)

    def pull_from(self, path: Path, name: str = "fuzzpull") -> None:
        pull(self.store(), self.catalog(), name, source=str(path))

    def cleanup(self) -> None:
        """Remove what a case that succeeded stored, so the next one starts from the same store."""
        store = self.store()
        for name in ("fuzz", "fuzzpull"):
            model = ModelName.parse(name)
            if store.manifests.exists(model):
                store.remove(model)

    def check(self, before: set[str], label: str) -> None:
        """Nothing new in the store or the temp dir, save the empty per-source lock file
        BlobStore.lock keeps for a source key that never becomes a blob (counted in `locks`)."""
        left = snapshot(self.models, self.temp) - before
        locks = {p for p in left if p.endswith("-partial.lock") and Path(p).stat().st_size == 0}
        self.locks |= locks
        assert not left - locks, f"{label}: left behind {sorted(left - locks)}"


@pytest.fixture
def bench(loam_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf_small: Path) -> Iterator[Bench]:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_gguf_small, work / "model.gguf")
    b = Bench(loam_home / "models", temp, work)
    (work / "Modelfile").write_text("FROM ./model.gguf\n")
    b.create(work / "Modelfile")  # the store's folders exist from here on; later cases add nothing
    b.pull_from(work / "model.gguf")
    b.cleanup()
    yield b


@pytest.fixture(scope="module")
def tiny_gguf_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("fuzz") / "base.gguf", n_embd=32, n_head=2, n_ff=64, n_layer=1)


def test_the_layout_walker_reads_the_base(tiny_gguf_small: Path) -> None:
    lay = layout(tiny_gguf_small.read_bytes())
    assert len(lay.tensor_offsets) == 1 + 9 + 2
    assert "llama.context_length" in lay.ints and lay.array_counts and lay.floats


def test_gguf_mutations_through_inspect_create_and_pull(bench: Bench, tiny_gguf_small: Path) -> None:
    mutations = gguf_mutations(tiny_gguf_small.read_bytes(), random.Random(SEED))
    assert len(mutations) >= 200
    before = snapshot(bench.models, bench.temp)
    outcomes: dict[str, int] = {"ok": 0, "error": 0}
    messages: set[str] = set()
    case = bench.work / "case.gguf"
    modelfile = bench.work / "Modelfile"
    modelfile.write_text(f"FROM {case}\n")
    for label, data in mutations:
        case.write_bytes(data)
        for step, fn in (
            ("inspect", lambda: inspect(case)),
            ("create", lambda: bench.create(modelfile)),
            ("pull", lambda: bench.pull_from(case)),
        ):
            outcome = run_guarded(fn)
            outcomes["ok" if outcome == "ok" else "error"] += 1
            if outcome != "ok":
                messages.add(outcome)
            if step != "inspect":
                bench.cleanup()
                bench.check(before, f"{label} via {step}")
    # Most mutations break the file; the flips that land in vocabulary text leave it valid.
    assert outcomes["error"] > 2 * outcomes["ok"]
    assert any("not a valid GGUF" in m for m in messages)
    for needle in ("overlaps", "overflows", "GGUF version", "general.alignment", "nests arrays", "truncated GGUF"):
        assert any(needle in m for m in messages), needle


def test_wrong_typed_metadata_names_the_key(tmp_path: Path) -> None:
    crafted = _crafted()
    path = tmp_path / "m.gguf"
    for label, expected in (
        ("float general.alignment", "general.alignment is a float32, not an integer"),
        ("inf context_length", "llama.context_length is the float inf, not an integer"),
        ("string block_count", "llama.block_count is str '2', not an integer"),
        ("arrays nested 200 deep", "nests arrays more than 8 deep"),
        ("array of 2**40 strings", "more than the"),
        ("duplicate tensor", "tensor 't' appears twice"),
    ):
        path.write_bytes(crafted[label])
        assert expected in run_guarded(lambda: inspect(path)), label


# --- Modelfiles ---------------------------------------------------------------------------------


def broken_modelfiles(work: Path) -> list[tuple[str, str | bytes]]:
    """(label, text) of Modelfiles that must be refused; FROM ./model.gguf is the valid base."""
    ok = "FROM ./model.gguf\n"
    long_path = "./" + "a" * 5000 + ".gguf"
    deep_path = "./" + "/".join(["d" * 200] * 30) + ".gguf"
    return [
        ("empty", ""),
        ("only a comment", "# FROM ./model.gguf\n"),
        ("no FROM", "SYSTEM hi\n"),
        ("two FROMs", ok + ok),
        ("misspelled FROM", "FORM ./model.gguf\n"),
        ("FROM without value", "FROM\n"),
        ("FROM blank value", "FROM   \n"),
        ("unknown instruction", ok + "TEMPERATURE 1\n"),
        ("Ollama-only instruction", ok + "REQUIRES 0.5.0\n"),
        ("PARAMETER alone", ok + "PARAMETER\n"),
        ("PARAMETER without value", ok + "PARAMETER temperature\n"),
        ("unknown PARAMETER", ok + "PARAMETER warmth 1\n"),
        ("PARAMETER name with symbols", ok + "PARAMETER te$mp 1\n"),
        ("temperature is a word", ok + "PARAMETER temperature hot\n"),
        ("temperature nan", ok + "PARAMETER temperature nan\n"),
        ("temperature inf", ok + "PARAMETER temperature inf\n"),
        ("temperature 1e400", ok + "PARAMETER temperature 1e400\n"),
        ("temperature negative", ok + "PARAMETER temperature -1\n"),
        ("num_ctx fraction", ok + "PARAMETER num_ctx 1.5\n"),
        ("num_ctx 5000 digits", ok + "PARAMETER num_ctx " + "9" * 5000 + "\n"),
        ("num_ctx below 1", ok + "PARAMETER num_ctx -5\n"),
        ("bool not a bool", ok + "PARAMETER use_mmap maybe\n"),
        ("stop empty quotes", ok + 'PARAMETER stop ""\n'),
        ("MESSAGE unknown role", ok + "MESSAGE robot hello\n"),
        ("MESSAGE without content", ok + "MESSAGE user\n"),
        ("SYSTEM without value", ok + "SYSTEM\n"),
        ("unterminated triple quote", ok + 'SYSTEM """never closed\nand on\n'),
        ("unterminated quote", ok + 'TEMPLATE "{{ .Prompt }}\n'),
        ("unterminated triple quote in a huge line", ok + 'SYSTEM """' + "x" * 300_000),
        ("a line of 200k quotes", ok + "SYSTEM " + '"' * 200_001 + "x\n"),
        ("TEMPLATE unclosed action", ok + 'TEMPLATE """{{ .Prompt }"""\n'),
        ("TEMPLATE unclosed if", ok + 'TEMPLATE "{{ if .System }}{{ .System }}"\n'),
        ("TEMPLATE stray end", ok + 'TEMPLATE "{{ .Prompt }}{{ end }}"\n'),
        ("TEMPLATE empty pipe", ok + 'TEMPLATE "{{ .Prompt | }}"\n'),
        ("TEMPLATE unclosed comment", ok + 'TEMPLATE "{{/* note"\n'),
        ("TEMPLATE bad escape", ok + 'TEMPLATE """{{ "\\q" }}"""\n'),
        ("TEMPLATE range without pipeline", ok + 'TEMPLATE "{{ range }}{{ end }}"\n'),
        ("TEMPLATE nested 5000 deep", ok + 'TEMPLATE """' + "{{ if 1 }}" * 5000 + '"""\n'),
        ("FROM nonexistent", "FROM ./nope.gguf\n"),
        ("FROM nonexistent absolute", "FROM /nonexistent/dir/x.gguf\n"),
        ("FROM NUL path", "FROM ./a\x00b.gguf\n"),
        ("FROM NUL name", "FROM tiny\x00llama\n"),
        ("FROM a directory", "FROM ./\n"),
        ("FROM the folder by name", f"FROM {work}\n"),
        ("FROM /dev/zero", "FROM /dev/zero\n"),
        ("FROM /dev/null", "FROM /dev/null\n"),
        ("FROM a FIFO", "FROM ./pipe.gguf\n"),
        ("FROM a 5000-byte name", f"FROM {long_path}\n"),
        ("FROM a path too long", f"FROM {deep_path}\n"),
        ("FROM a 100k-character name", "FROM " + "x" * 100_000 + "\n"),
        ("FROM a text file", "FROM ./notes.txt\n"),
        ("FROM a broken GGUF", "FROM ./broken.gguf\n"),
        ("ADAPTER missing", ok + "ADAPTER ./nope.gguf\n"),
        ("ADAPTER is a model", ok + "ADAPTER ./model.gguf\n"),
        ("ADAPTER is /dev/zero", ok + "ADAPTER /dev/zero\n"),
        ("ADAPTER is a FIFO", ok + "ADAPTER ./pipe.gguf\n"),
        ("not UTF-8", b"FROM ./model.gguf\nSYSTEM \xff\xfe\n"),
        ("a GGUF as Modelfile", (work / "model.gguf").read_bytes()),
    ]


def _prepare_work(work: Path) -> None:
    (work / "notes.txt").write_text("just notes\n")
    (work / "broken.gguf").write_bytes((work / "model.gguf").read_bytes()[:2000])
    if not (work / "pipe.gguf").exists():
        os.mkfifo(work / "pipe.gguf")


def test_broken_modelfiles_are_refused_with_their_line(bench: Bench) -> None:
    _prepare_work(bench.work)
    cases = broken_modelfiles(bench.work)
    assert len(cases) >= 50
    before = snapshot(bench.models, bench.temp)
    path = bench.work / "Modelfile"
    for label, text in cases:
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        outcome = run_guarded(lambda: bench.create(path))
        assert outcome != "ok", f"{label}: was accepted"
        assert len(outcome) < 2000, f"{label}: message of {len(outcome)} characters"
        bench.check(before, label)
    for label, special in (("-f a FIFO", bench.work / "pipe.gguf"), ("-f /dev/zero", Path("/dev/zero"))):
        assert run_guarded(lambda p=special: bench.create(p)) != "ok", label
    assert "/dev/zero is not a regular file" in run_guarded(lambda: bench.create(Path("/dev/zero")))
    assert "NUL" in run_guarded(lambda: bench.create(Path("/tmp/a\x00b")))
    bench.check(before, "special -f paths")


def test_unparsable_template_names_its_line_and_stores_nothing(bench: Bench) -> None:
    before = snapshot(bench.models, bench.temp)
    path = bench.work / "Modelfile"
    path.write_text('FROM ./model.gguf\nSYSTEM hi\n\nTEMPLATE """\n{{ if .System }}\n{{ .System }}\n"""\n')
    message = run_guarded(lambda: bench.create(path))
    assert message.startswith(f"{path}:4: TEMPLATE does not parse: ")
    bench.check(before, "template")
    path.write_text('FROM ./model.gguf\nTEMPLATE """{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}"""\n')
    assert run_guarded(lambda: bench.create(path)) == "ok"


# --- the real CLI, for a sample -----------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "app", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=os.environ.copy(),
            timeout=CLI_WATCHDOG_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: loam {' '.join(args)[:200]}")


def _assert_one_error_line(result: subprocess.CompletedProcess[str], label: str) -> None:
    assert result.returncode == 1, f"{label}: exit {result.returncode}: {result.stderr[-500:]}"
    assert "Traceback" not in result.stderr, f"{label}: {result.stderr[-2000:]}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"{label}: {result.stderr[-1000:]}"


def test_a_sample_through_the_cli(bench: Bench, tiny_gguf_small: Path) -> None:
    _prepare_work(bench.work)
    rng = random.Random(SEED + 1)
    broken = [
        (label, data)
        for label, data in gguf_mutations(tiny_gguf_small.read_bytes(), random.Random(SEED))
        if run_guarded(lambda d=data: _inspect_bytes(bench.work / "probe.gguf", d)) != "ok"
    ]
    before = snapshot(bench.models, bench.temp)
    case = bench.work / "case.gguf"
    for label, data in rng.sample(broken, 8):
        case.write_bytes(data)
        (bench.work / "Modelfile").write_text(f"FROM {case}\n")
        _assert_one_error_line(_cli("create", "fuzz", "-f", str(bench.work / "Modelfile")), f"create {label}")
        _assert_one_error_line(_cli("pull", "fuzzpull", "--from", str(case)), f"pull --from {label}")
        bench.check(before, label)
    chosen = dict(broken_modelfiles(bench.work))
    for label in (
        "unterminated triple quote",
        "TEMPLATE unclosed if",
        "FROM a FIFO",
        "FROM /dev/zero",
        "FROM NUL path",
        "FROM a path too long",
        "temperature nan",
        "ADAPTER is a FIFO",
    ):
        text = chosen[label]
        (bench.work / "Modelfile").write_bytes(text if isinstance(text, bytes) else text.encode())
        _assert_one_error_line(_cli("create", "fuzz", "-f", str(bench.work / "Modelfile")), label)
        bench.check(before, label)
    _assert_one_error_line(_cli("create", "fuzz", "-f", str(bench.work / "pipe.gguf")), "-f FIFO")
    _assert_one_error_line(_cli("create", "fuzz", "-f", "/dev/zero"), "-f /dev/zero")
    bench.check(before, "-f")


def _inspect_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    inspect(path)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory", "nul"])
def test_pull_from_a_path_that_is_no_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        source = str(tmp_path / "pipe")
        os.mkfifo(source)
    elif kind == "directory":
        source = str(tmp_path)
    elif kind == "nul":
        source = str(tmp_path / "a\x00b")
    else:
        source = kind
    store = Store(tmp_path / "models")
    message = run_guarded(lambda: pull(store, Catalog({}, "x"), "a:1", lambda e: None, source=source))
    assert "give the path" in message or "NUL" in message
    assert not (tmp_path / "models" / "manifests").exists()
    leftovers = [p.name for p in (tmp_path / "models" / "blobs").glob("*")] if (tmp_path / "models").exists() else []
    assert [n for n in leftovers if not n.endswith("-partial.lock")] == []
