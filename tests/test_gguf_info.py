import os
import struct
from pathlib import Path

import pytest
from gguf import GGUFReader

from app.errors import BadModelFile
from app.store.gguf_info import human_count, inspect, is_gguf, read_header


def test_inspect_tiny_llama(tiny_gguf: Path) -> None:
    info = inspect(tiny_gguf)
    assert info.architecture == "llama"
    assert info.file_type == "F32"
    assert (info.context_length, info.embedding_length, info.block_count) == (256, 64, 2)
    assert info.config_fields()["model_family"] == "llama"


def test_header_agrees_with_gguf_reader(tiny_gguf: Path) -> None:
    reader = GGUFReader(tiny_gguf)
    header = read_header(tiny_gguf)
    assert header.data_offset == reader.data_offset
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    assert [header.data_offset + t.offset for t in header.tensors] == [t.data_offset for t in reader.tensors]
    assert [t.n_bytes for t in header.tensors] == [int(t.n_bytes) for t in reader.tensors]
    assert inspect(tiny_gguf).parameter_count == sum(int(t.n_elements) for t in reader.tensors)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (134_515_008, "135M"),
        (1_235_814_400, "1.24B"),
        (8_030_261_248, "8.03B"),
        (70_553_706_496, "70.6B"),
        (124_608, "125K"),
        (999, "999"),
    ],
)
def test_human_count(n: int, text: str) -> None:
    assert human_count(n) == text


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("<html>Not Found</html>")
    with pytest.raises(BadModelFile, match="not a GGUF model file"):
        inspect(path)


def test_truncated_tensor_data(tmp_path: Path, tiny_gguf: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_gguf.read_bytes()[:-1000])
    with pytest.raises(BadModelFile, match="truncated GGUF"):
        inspect(path)


def test_truncated_header(tmp_path: Path, tiny_gguf: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_gguf.read_bytes()[:3000])
    with pytest.raises(BadModelFile, match="not a valid GGUF"):
        inspect(path)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "nul"])
def test_paths_that_are_not_regular_files_are_refused_without_reading(tmp_path: Path, kind: str) -> None:
    """A FIFO would block the open and /dev/zero would never end: both are refused from fstat alone."""
    path = {"device": Path("/dev/zero"), "directory": tmp_path, "nul": Path("/tmp/a\x00b.gguf")}.get(
        kind, tmp_path / "pipe.gguf"
    )
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(BadModelFile) as e:
        inspect(path)
    assert "\n" not in str(e.value)
    assert ("NUL byte" if kind == "nul" else "directory" if kind == "directory" else "not a regular file") in str(
        e.value
    )
    assert not is_gguf(path)


def test_counts_the_file_cannot_hold_are_refused_before_allocating(tmp_path: Path, tiny_gguf: Path) -> None:
    data = bytearray(tiny_gguf.read_bytes())
    data[8:16] = struct.pack("<Q", 2**60)  # the tensor count
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(BadModelFile, match=r"not a valid GGUF: tensor count 1152921504606846976 is more than"):
        inspect(path)


def test_a_gguf_without_tensors_is_not_a_model(tmp_path: Path) -> None:
    key, arch = b"general.architecture", b"llama"
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(arch)) + arch
    path = tmp_path / "vocab.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv)
    assert read_header(path).data_end == path.stat().st_size
    with pytest.raises(BadModelFile, match="holds no tensors"):
        inspect(path)


def test_a_string_array_longer_than_any_vocabulary_is_refused(tmp_path: Path) -> None:
    """2**24 empty strings fit in 128 MiB of file; walking them one by one would take a minute, so they are refused."""
    key = b"tokenizer.ggml.tokens"
    count = (1 << 24) + 1
    path = tmp_path / "m.gguf"
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key)
        f.write(struct.pack("<IIQ", 9, 8, count))
        f.truncate(f.tell() + 8 * count)  # sparse: zero-length strings, no disk used
    with pytest.raises(BadModelFile, match=f"holds {count} strings, more than the 16777216 loam reads"):
        inspect(path)


def test_a_blobs_metadata_is_read_once_until_the_file_changes(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request shows its model; the header (the whole vocabulary) is read only the first time."""
    import shutil

    from app.store import gguf_info

    blob = tmp_path / "sha256-0123"
    shutil.copyfile(tiny_gguf, blob)
    reads: list[Path] = []
    real = gguf_info.read_header
    monkeypatch.setattr(gguf_info, "read_header", lambda p: reads.append(p) or real(p))
    first = gguf_info.inspect_blob(blob)
    assert gguf_info.inspect_blob(blob) is first and len(reads) == 1
    blob.write_bytes(blob.read_bytes()[:100])  # replaced by something else: read again, and refused
    with pytest.raises(BadModelFile):
        gguf_info.inspect_blob(blob)
    assert len(reads) == 2
