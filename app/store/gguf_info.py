"""What a GGUF file says about itself: metadata and tensor infos, read with
the `gguf` package's type tables.

Used to check that downloaded bytes are a whole GGUF model before they are
trusted, and to fill the config blob and `loam show`.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import stat
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import BadModelFile

GGUF_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_INT_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
_STRING, _ARRAY = 8, 9
_MIN_KV = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # name length, dimension count, type, offset
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 64  # GGML_MAX_NAME, counting the NUL llama.cpp stores
_MAX_NESTING = 8  # arrays of arrays deeper than this are refused, never recursed into
_INT64_MAX = 2**63 - 1
_MAX_STRINGS = 1 << 24  # real vocabularies and merge lists hold well under a million


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
    pooling_type: int | None = None  # {arch}.pooling_type: 0 none, 1 mean, 2 cls, 3 last, 4 rank (embedding models)
    causal_attention: bool | None = None  # {arch}.attention.causal: False for BERT-like encoders
    vision: bool = False  # a vision encoder inside the GGUF ({arch}.vision.block_count), as Ollama tests for

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
    """Whether the path is a regular file that starts with the GGUF magic."""
    try:
        fd = open_regular(path)
    except BadModelFile:
        return False
    try:
        return os.pread(fd, 4, 0) == GGUF_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def open_regular(path: Path, hint: str = "give the path of a .gguf file") -> int:
    """A read-only descriptor for `path` when it is a regular file, else BadModelFile.

    Opened without blocking, so a FIFO cannot stall the open, and refused unless
    fstat says regular file: a FIFO, /dev/zero or a directory would never end or
    never start. Local sources (`pull --from PATH`, FROM) should check with this.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except ValueError:
        raise BadModelFile(f"{str(path)[:200]!r} is not a usable path (it contains a NUL byte)") from None
    except OSError as e:
        raise BadModelFile(f"cannot read {_short(path)}: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise BadModelFile(f"cannot read {_short(path)}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise BadModelFile(f"{_short(path)} is {what}; {hint}")
    return fd


def inspect(path: Path) -> GGUFInfo:
    """Read a GGUF's metadata; BadModelFile (one line) if it is not a whole, well-formed model GGUF."""
    header = read_header(path)
    name = path.name[:200]
    fields = header.fields
    arch = _str(fields, "general.architecture", name)
    if not arch:
        raise BadModelFile(f"{name} has no general.architecture; it is not a model GGUF")
    info = GGUFInfo(
        architecture=arch,
        parameter_count=sum(t.n_elements for t in header.tensors),
        file_type=_file_type(_int(fields, "general.file_type", name), header.tensors),
        context_length=_int(fields, f"{arch}.context_length", name),
        embedding_length=_int(fields, f"{arch}.embedding_length", name),
        block_count=_int(fields, f"{arch}.block_count", name),
        name=_str(fields, "general.name", name),
        chat_template=_str(fields, "tokenizer.chat_template", name),
        kind=_str(fields, "general.type", name),
        pooling_type=_int(fields, f"{arch}.pooling_type", name),
        causal_attention=causal if isinstance(causal := fields.get(f"{arch}.attention.causal"), bool) else None,
        vision=f"{arch}.vision.block_count" in fields,
    )
    if not header.tensors:
        raise BadModelFile(f"{name} holds no tensors; it is not a model GGUF (a vocabulary-only file?)")
    return info


#: Blobs whose metadata has been read: (file name, size, mtime) -> info. Bounded; oldest first out.
_INFO_CACHE: OrderedDict[tuple[str, int, int], GGUFInfo] = OrderedDict()
_INFO_CACHE_SIZE = 64
_INFO_LOCK = threading.Lock()


def inspect_blob(path: Path) -> GGUFInfo:
    """inspect() for a store blob, remembered: every request names a model, and reading its header
    (the whole vocabulary) took about 40 ms for SmolLM2 on the server's event loop each time.

    A blob is named by its digest, so its name and size (and mtime, should the file be replaced)
    say whether the remembered metadata is still its own.
    """
    st = path.stat()
    key = (path.name, st.st_size, st.st_mtime_ns)
    with _INFO_LOCK:
        if (found := _INFO_CACHE.get(key)) is not None:
            _INFO_CACHE.move_to_end(key)
            return found
    info = inspect(path)
    with _INFO_LOCK:
        _INFO_CACHE[key] = info
        while len(_INFO_CACHE) > _INFO_CACHE_SIZE:
            _INFO_CACHE.popitem(last=False)
    return info


#: llama.cpp's rule for pairing a draft model with a target (common/speculative.cpp): their token
#: lists may differ in length by this many entries, and must read the same from this token id on.
DRAFT_MAX_SIZE_DIFFERENCE = 128
DRAFT_CHECK_FROM = 5


@dataclass(frozen=True)
class Vocabulary:
    """A GGUF's tokenizer, as far as drafting tokens for another model cares."""

    path: Path
    model: str | None  # tokenizer.ggml.model: llama, gpt2, ...
    size: int
    bos: int | None
    eos: int | None
    add_bos: bool | None
    add_eos: bool | None
    tokens: Array  # tokenizer.ggml.tokens, located in the file but not read


def vocabulary(path: Path) -> Vocabulary:
    """The tokenizer metadata of a GGUF; BadModelFile when the header is malformed or has no token list."""
    header = read_header(path)
    fields, name = header.fields, path.name[:200]
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, Array) or tokens.etype != _STRING:
        raise BadModelFile(f"{name} has no token list (tokenizer.ggml.tokens); it carries no vocabulary")
    return Vocabulary(
        path=path,
        model=_str(fields, "tokenizer.ggml.model", name),
        size=tokens.count,
        bos=_int(fields, "tokenizer.ggml.bos_token_id", name),
        eos=_int(fields, "tokenizer.ggml.eos_token_id", name),
        add_bos=_flag(fields, "tokenizer.ggml.add_bos_token"),
        add_eos=_flag(fields, "tokenizer.ggml.add_eos_token"),
        tokens=tokens,
    )


def vocabulary_difference(draft: Vocabulary, model: Vocabulary) -> str | None:
    """How a draft's vocabulary differs from its target's, in a few words (draft's side first);
    None when the two can be paired as llama.cpp pairs them.

    The token lists are compared by the sha256 of their bytes from token DRAFT_CHECK_FROM to
    the shorter list's end, read through a memory map: nothing a hostile count or length
    says is allocated, and every step is held against the bytes the file has.
    """
    if draft.model != model.model:
        return f"tokenizer {_word(draft.model)} vs {_word(model.model)}"
    if abs(draft.size - model.size) > DRAFT_MAX_SIZE_DIFFERENCE:
        return f"{draft.size} vs {model.size} tokens"
    for what, mine, theirs in (
        ("bos token", draft.bos, model.bos),
        ("eos token", draft.eos, model.eos),
        ("add_bos_token", draft.add_bos, model.add_bos),
        ("add_eos_token", draft.add_eos, model.add_eos),
    ):
        if mine != theirs:
            return f"{what} {_word(mine)} vs {_word(theirs)}"
    shared = min(draft.size, model.size)
    with _mapped(draft.path) as a, _mapped(model.path) as b:
        if _span_digest(a, draft.tokens, shared) == _span_digest(b, model.tokens, shared):
            return None
        index, mine_text, theirs_text = _first_different_token(a, draft.tokens, b, model.tokens, shared)
    return f"token {index} is {mine_text} vs {theirs_text}"


class _mapped:
    """A read-only memory map of a regular file, closed on exit; BadModelFile when it cannot be made."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> mmap.mmap:
        fd = open_regular(self.path)
        try:
            self.map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise BadModelFile(f"cannot map {_short(self.path)}: {e}") from None
        finally:
            os.close(fd)
        return self.map

    def __exit__(self, *exc: object) -> None:
        self.map.close()


def _token_cursor(buf: mmap.mmap, tokens: Array, skip: int) -> _Cursor:
    """A cursor on the token list's item `skip`, checked against the file as it is now."""
    if tokens.end > len(buf) or tokens.start > tokens.end:
        raise BadModelFile("the token list lies past the end of the file (did it change while being read?)")
    cursor = _Cursor(buf)
    cursor.size, cursor.pos = tokens.end, tokens.start
    try:
        cursor.skip_strings(min(skip, tokens.count))
    except _Invalid as e:
        raise BadModelFile(f"the token list is not valid: {e}") from None
    return cursor


def _span_digest(buf: mmap.mmap, tokens: Array, stop: int) -> str:
    """sha256 of the token list's bytes (length prefixes included) from DRAFT_CHECK_FROM to item `stop`."""
    cursor = _token_cursor(buf, tokens, DRAFT_CHECK_FROM)
    begin = cursor.pos
    if stop >= tokens.count:
        end = tokens.end
    else:
        try:
            cursor.skip_strings(max(stop - DRAFT_CHECK_FROM, 0))
        except _Invalid as e:
            raise BadModelFile(f"the token list is not valid: {e}") from None
        end = cursor.pos
    digest = hashlib.sha256()
    with memoryview(buf) as view:
        for at in range(begin, end, 1 << 20):
            digest.update(view[at : min(at + (1 << 20), end)])
    return digest.hexdigest()


def _first_different_token(
    a: mmap.mmap, a_tokens: Array, b: mmap.mmap, b_tokens: Array, stop: int
) -> tuple[int, str, str]:
    """The first token id from DRAFT_CHECK_FROM on whose text differs, and both texts (clipped)."""
    ca, cb = _token_cursor(a, a_tokens, DRAFT_CHECK_FROM), _token_cursor(b, b_tokens, DRAFT_CHECK_FROM)
    with memoryview(a) as va, memoryview(b) as vb:
        try:
            for index in range(DRAFT_CHECK_FROM, stop):
                na, nb = ca.unpack("<Q"), cb.unpack("<Q")
                if na > ca.size - ca.pos or nb > cb.size - cb.pos:
                    raise _Invalid(f"token {index} runs past the end of the list")
                pa, pb = ca.pos, cb.pos
                ca.pos, cb.pos = pa + na, pb + nb
                if na != nb or va[pa : pa + na] != vb[pb : pb + nb]:
                    return index, _token_text(va, pa, na), _token_text(vb, pb, nb)
        except _Invalid as e:
            raise BadModelFile(f"the token list is not valid: {e}") from None
    return stop, "(none)", "(none)"  # the digests differed but no token does: the file changed under us


def _token_text(view: memoryview, pos: int, n: int) -> str:
    text = bytes(view[pos : pos + min(n, 40)]).decode("utf-8", errors="replace")
    return repr(text + ("..." if n > 40 else ""))


def _flag(fields: dict[str, Any], key: str) -> bool | None:
    value = fields.get(key)
    return value if isinstance(value, bool) else None


def _word(value: Any) -> str:
    """A metadata value fit for a one-line message."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if len(text) <= 40 and text.isprintable() else repr(text[:40])


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: int
    n_elements: int
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class Array:
    """A metadata array, skipped rather than read: its element type, length and where its items lie in the file."""

    etype: int
    count: int
    start: int = 0  # offset of the first item
    end: int = 0  # offset just past the last item


@dataclass(frozen=True)
class Header:
    """A GGUF header: scalar and string metadata (arrays as `Array`), tensor infos, where data ends."""

    version: int
    fields: dict[str, Any]
    types: dict[str, int]
    tensors: list[TensorInfo]
    data_offset: int
    data_end: int


class _Invalid(Exception):
    """A header that breaks the GGUF format; the message says how."""


def read_header(path: Path) -> Header:
    """Walk a GGUF header without materializing its arrays, checking every count and
    length against the bytes that remain before using it.

    gguf's GGUFReader builds an object per vocabulary entry (seconds for a real
    model) and trusts what the header says; this reads only what loam needs and
    raises BadModelFile, one line, for anything malformed: bad magic, unknown
    version or type, counts the file cannot hold, truncation, tensors that
    overlap or lie past the end.
    """
    name = path.name[:200]
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if os.pread(fd, 4, 0) != GGUF_MAGIC:
            raise BadModelFile(f"{name} is not a GGUF model file (no GGUF magic); give a .gguf file")
        try:
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
                header = _parse(buf)
        except _Invalid as e:
            raise BadModelFile(f"{name} is not a valid GGUF: {e}") from None
        except (OSError, ValueError, OverflowError, struct.error) as e:  # mmap of a file shrinking under us
            raise BadModelFile(f"{name} is not a valid GGUF: cannot read its header ({e})") from None
    finally:
        os.close(fd)
    if header.data_end > size:
        raise BadModelFile(
            f"{name} is a truncated GGUF: {size} of {header.data_end} bytes; "
            "its tensors end past the end of the file (download it again)"
        )
    return header


def _parse(buf: mmap.mmap) -> Header:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    r = _Cursor(buf)
    r.take(4)
    version = r.unpack("<I")
    if version not in _VERSIONS:
        raise _Invalid(f"GGUF version {version} is not one loam reads (2 or 3)")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    r.fits(n_tensors, _MIN_TENSOR_INFO, "tensor count")
    r.fits(n_kv, _MIN_KV, "metadata count")
    fields: dict[str, Any] = {}
    types: dict[str, int] = {}
    for _ in range(n_kv):
        key = r.string("metadata key")
        if key in fields:
            raise _Invalid(f"metadata key {key[:80]!r} appears twice")
        types[key] = r.unpack("<I")
        fields[key] = r.value(types[key], key)
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        tname = r.string(f"name of tensor {i}")
        label = repr(tname[:80])
        if len(tname.encode()) >= _MAX_NAME:
            raise _Invalid(f"tensor name {label} is longer than {_MAX_NAME - 1} bytes")
        if tname in seen:
            raise _Invalid(f"tensor {label} appears twice")
        seen.add(tname)
        n_dims = r.unpack("<I")
        if n_dims > _MAX_DIMS:
            raise _Invalid(f"tensor {label} has {n_dims} dimensions; GGUF allows at most {_MAX_DIMS}")
        dims = [r.unpack("<Q") for _ in range(n_dims)]
        n_elements = math.prod(dims)
        if any(d > _INT64_MAX for d in dims) or n_elements > _INT64_MAX:
            raise _Invalid(f"tensor {label} has dimensions {dims} whose product overflows 64 bits")
        ggml_type, offset = r.unpack("<I"), r.unpack("<Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise _Invalid(f"tensor {label} has unknown type {ggml_type}") from None
        if dims and dims[0] % block:
            raise _Invalid(f"tensor {label} has rows of {dims[0]}, not a multiple of its type's block of {block}")
        tensors.append(TensorInfo(tname, ggml_type, n_elements, offset, n_elements // block * type_size))
    alignment = fields.get("general.alignment", 32)
    if "general.alignment" in fields and types["general.alignment"] not in _INT_TYPES:
        raise _Invalid(f"general.alignment is {_type_name(types['general.alignment'])}, not an integer")
    if alignment <= 0 or alignment & (alignment - 1):
        raise _Invalid(f"general.alignment {alignment} is not a power of two")
    data_offset = -(-r.pos // alignment) * alignment
    end = 0
    for t in sorted(tensors, key=lambda t: t.offset):
        if t.offset % alignment:
            raise _Invalid(f"tensor {t.name[:80]!r} starts at {t.offset}, not a multiple of the alignment {alignment}")
        if t.offset < end:
            raise _Invalid(f"tensor {t.name[:80]!r} overlaps the tensor before it")
        end = t.offset + t.n_bytes
    data_end = data_offset + end if tensors else r.pos  # no tensors, no data section to pad to
    return Header(version, fields, types, tensors, data_offset, data_end)


class _Cursor:
    """Sequential little-endian reads over a buffer; _Invalid when a read would run past its end."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def fits(self, count: int, each: int, what: str) -> None:
        """Refuse a count whose items, at `each` bytes at least, cannot fit in what is left."""
        if count * each > self.size - self.pos:
            raise _Invalid(f"{what} {count} is more than the {self.size - self.pos} bytes left can hold")

    def take(self, n: int) -> bytes:
        if n > self.size - self.pos:
            raise _Invalid(f"the header is cut short at byte {self.pos} (wants {n} more of {self.size - self.pos})")
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q")
        if n > self.size - self.pos:
            raise _Invalid(f"{what} is {n} bytes long, more than the {self.size - self.pos} bytes left")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(f"the value of {key[:80]!r}")
        if vtype != _ARRAY:
            raise _Invalid(f"metadata {key[:80]!r} has unknown value type {vtype}")
        if depth >= _MAX_NESTING:
            raise _Invalid(f"metadata {key[:80]!r} nests arrays more than {_MAX_NESTING} deep")
        etype, count = self.unpack("<I"), self.unpack("<Q")
        start = self.pos
        if etype in _SCALARS:
            n = struct.calcsize(_SCALARS[etype]) * count
            if n > self.size - self.pos:
                raise _Invalid(
                    f"array {key[:80]!r} of {count} items needs {n} bytes, more than the {self.size - self.pos} left"
                )
            self.pos += n
        elif etype == _STRING:
            self.fits(count, 8, f"array {key[:80]!r} length")
            if count > _MAX_STRINGS:  # each is a Python-level step: bound the walk, not just the bytes
                raise _Invalid(f"array {key[:80]!r} holds {count} strings, more than the {_MAX_STRINGS} loam reads")
            for _ in range(count):
                n = self.unpack("<Q")
                if n > self.size - self.pos:
                    raise _Invalid(f"an item of array {key[:80]!r} is {n} bytes long, more than the file has left")
                self.pos += n
        elif etype == _ARRAY:
            self.fits(count, 12, f"array {key[:80]!r} length")
            for _ in range(count):
                self.value(_ARRAY, key, depth + 1)
        else:
            raise _Invalid(f"array {key[:80]!r} has unknown element type {etype}")
        return Array(etype, count, start, self.pos)

    def skip_strings(self, count: int) -> None:
        """Step over `count` length-prefixed strings; _Invalid when one runs past the end."""
        for _ in range(count):
            n = self.unpack("<Q")
            if n > self.size - self.pos:
                raise _Invalid(f"a string at byte {self.pos} is {n} bytes long, more than the file has left")
            self.pos += n


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


def _int(fields: dict[str, Any], key: str, name: str) -> int | None:
    """An integer field, None when absent; BadModelFile when it holds another type (a float, NaN, text)."""
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadModelFile(f"{name} is not a valid GGUF: {key} is {_describe(value)}, not an integer")
    return value


def _str(fields: dict[str, Any], key: str, name: str) -> str | None:
    """A text field, None when absent or empty; BadModelFile when it holds another type."""
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadModelFile(f"{name} is not a valid GGUF: {key} is {_describe(value)}, not text")
    return value or None


def _describe(value: Any) -> str:
    if isinstance(value, Array):
        return f"an array of {value.count}"
    if isinstance(value, float):
        return f"the float {value!r}"
    return f"{type(value).__name__} {str(value)[:40]!r}"


def _type_name(vtype: int) -> str:
    return {6: "a float32", 12: "a float64", 7: "a bool", 8: "a string", 9: "an array"}.get(vtype, f"type {vtype}")


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 200 else text[:100] + "..." + text[-60:]
