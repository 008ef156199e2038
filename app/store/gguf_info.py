"""What a GGUF file says about itself: metadata and tensor infos, read with
the `gguf` package's type tables.

Used to check that downloaded bytes are a whole GGUF model before they are
trusted, and to fill the config blob and `loam show`.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import BadModelFile

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFInfo:
    """The metadata loam uses from a GGUF model."""

    architecture: str
    parameter_count: int
    file_type: str
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    name: str | None = None
    chat_template: str | None = None
    kind: str | None = None  # general.type: "model", "adapter", or unset in older files

    @property
    def parameter_size(self) -> str:
        """Parameter count the way model names say it: 135M, 1.24B, 8.03B."""
        return human_count(self.parameter_count)

    def config_fields(self) -> dict[str, Any]:
        """The fields of Ollama's config blob, plus loam's extra figures."""
        return {
            "model_format": "gguf",
            "model_family": self.architecture,
            "model_families": [self.architecture],
            "model_type": self.parameter_size,
            "file_type": self.file_type,
            "context_length": self.context_length,
            "embedding_length": self.embedding_length,
            "block_count": self.block_count,
        }


def human_count(n: int) -> str:
    """Three significant figures with a K/M/B/T suffix."""
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            value = n / scale
            text = f"{value:.3g}" if value < 1000 else f"{value:.0f}"
            return text + suffix
    return str(n)


def is_gguf(path: Path) -> bool:
    """Whether the file starts with the GGUF magic."""
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def inspect(path: Path) -> GGUFInfo:
    """Read a GGUF's metadata; BadModelFile if it is not one or is cut short."""
    if not is_gguf(path):
        raise BadModelFile(f"{path.name} is not a GGUF model file (no GGUF magic); give a .gguf file")
    size = path.stat().st_size
    try:
        header = read_header(path)
    except (struct.error, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise BadModelFile(f"{path.name} is not a readable GGUF file ({e}); download it again") from e
    if header.data_end > size:
        raise BadModelFile(f"{path.name} is a truncated GGUF: {size} of {header.data_end} bytes; download it again")
    fields = header.fields
    arch = _str(fields.get("general.architecture"))
    if not arch:
        raise BadModelFile(f"{path.name} has no general.architecture; it is not a model GGUF")
    return GGUFInfo(
        architecture=arch,
        parameter_count=sum(t.n_elements for t in header.tensors),
        file_type=_file_type(fields.get("general.file_type"), header.tensors),
        context_length=_int(fields.get(f"{arch}.context_length")),
        embedding_length=_int(fields.get(f"{arch}.embedding_length")),
        block_count=_int(fields.get(f"{arch}.block_count")),
        name=_str(fields.get("general.name")),
        chat_template=_str(fields.get("tokenizer.chat_template")),
        kind=_str(fields.get("general.type")),
    )


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: int
    n_elements: int
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class Header:
    """A GGUF header: scalar and string metadata (arrays skipped), tensor infos, where data ends."""

    version: int
    fields: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    data_end: int


def read_header(path: Path) -> Header:
    """Walk a GGUF header without materializing its arrays.

    gguf's GGUFReader builds an object per vocabulary entry, seconds for a real
    model; this reads only what loam needs, with gguf's type tables.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Cursor(buf)
        if r.take(4) != GGUF_MAGIC:
            raise ValueError("no GGUF magic")
        version = r.unpack("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            fields[key] = r.value(r.unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            dims = [r.unpack("<Q") for _ in range(n_dims)]
            ggml_type, offset = r.unpack("<I"), r.unpack("<Q")
            n_elements = math.prod(dims)
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            tensors.append(TensorInfo(name, ggml_type, n_elements, offset, n_elements // block * type_size))
        alignment = int(fields.get("general.alignment") or 32)
        data_offset = -(-r.pos // alignment) * alignment
    data_end = data_offset + max((t.offset + t.n_bytes for t in tensors), default=0)
    return Header(version, fields, tensors, data_offset, data_end)


class _Cursor:
    """Sequential little-endian reads over a buffer; struct.error when it runs out."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    _STRING, _ARRAY = 8, 9

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise struct.error(f"header runs past the end of the file at byte {self.pos}")
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in self._SCALARS:
            return self.unpack(self._SCALARS[vtype])
        if vtype == self._STRING:
            return self.string()
        if vtype == self._ARRAY:
            self.skip_array(self.unpack("<I"), self.unpack("<Q"))
            return None
        raise ValueError(f"unknown metadata value type {vtype}")

    def skip_array(self, etype: int, count: int) -> None:
        if etype in self._SCALARS:
            self.pos += struct.calcsize(self._SCALARS[etype]) * count
        elif etype == self._STRING:
            for _ in range(count):
                self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
        elif etype == self._ARRAY:
            for _ in range(count):
                self.skip_array(self.unpack("<I"), self.unpack("<Q"))
        else:
            raise ValueError(f"unknown array element type {etype}")
        if self.pos > len(self.buf):
            raise struct.error("header runs past the end of the file")


def _file_type(value: Any, tensors: list[TensorInfo]) -> str:
    """general.file_type as llama.cpp names it (Q4_1, Q4_K_M, F16), else the dominant tensor type."""
    from gguf import GGMLQuantizationType, LlamaFileType

    if value is not None:
        try:
            return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    totals: dict[int, int] = {}
    for t in tensors:
        totals[t.type] = totals.get(t.type, 0) + t.n_bytes
    return GGMLQuantizationType(max(totals, key=totals.__getitem__)).name if totals else "unknown"


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
