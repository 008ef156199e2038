"""`create`: a new model from a Modelfile, and `show --modelfile`, its inverse.

Everything a Modelfile names is checked before the store is touched, so a bad
Modelfile stores nothing. Model bytes already in the store are reused by
digest, never copied; a quantized model is written straight into `blobs/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import BadModelFile, InvalidName, LoamError, ModelfileError, QuantizeError
from app.store.blobs import BlobRef, hash_file, short_digest
from app.store.catalog import Catalog
from app.store.gguf_info import GGUFInfo, inspect, open_regular, vocabulary, vocabulary_difference
from app.store.manifest import MEDIA_MODEL, StoredManifest
from app.store.modelfile import Modelfile, parse, render
from app.store.names import ModelName
from app.store.progress import Meter, ProgressEvent, ProgressFn, ignore_progress
from app.store.pull import pull
from app.store.quantize import UNQUANTIZED, quant_type, quantize
from app.store.sources.path import PathSource
from app.store.store import Store, check_model_file

_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
_PATH_SUFFIXES = (".gguf", ".bin")
#: A Modelfile is a recipe, not a model: anything bigger is a mistaken -f (a GGUF, /dev/zero).
MAX_MODELFILE_BYTES = 16 << 20


@dataclass
class Base:
    """The model a Modelfile builds FROM: its GGUF, and what it already carries when it is a stored model."""

    path: Path
    info: GGUFInfo
    ref: BlobRef | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    adapters: list[BlobRef] = field(default_factory=list)
    draft: BlobRef | None = None


@dataclass(frozen=True)
class Draft:
    """The model a DRAFT names: its GGUF, and its blob when the store holds it already."""

    path: Path
    ref: BlobRef | None = None


def create(
    store: Store,
    catalog: Catalog,
    name: ModelName,
    modelfile: Modelfile,
    *,
    folder: Path,
    quantize_to: str | None = None,
    allow_requantize: bool = False,
    progress: ProgressFn = ignore_progress,
    insecure: bool = False,
) -> StoredManifest:
    """Build `name` from `modelfile` (paths in it are relative to `folder`) and store it."""
    qtype = quant_type(quantize_to) if quantize_to else None
    _check_template(modelfile)
    for warning in modelfile.warnings:
        progress(ProgressEvent(f"warning: {warning}"))
    progress(ProgressEvent("gathering model components"))
    adapter_paths = [_adapter_path(modelfile, text, line, folder) for text, line in modelfile.adapters]
    base = _resolve_base(store, catalog, modelfile, folder, progress, insecure)
    draft = _resolve_draft(store, catalog, modelfile, folder, progress, insecure) if modelfile.draft else None
    if draft is not None:
        _check_vocabulary(modelfile, draft, base)
    if qtype and base.info.file_type == qtype:
        progress(ProgressEvent(f"the model is already {qtype}; nothing to quantize"))
        qtype = None
    if qtype:
        _check_quantizable(modelfile, base.info, allow_requantize)
        model, info = _quantized_blob(store, base, qtype, allow_requantize, progress)
    else:
        model, info = _model_blob(store, base, progress), base.info
    adapters = list(base.adapters)
    for path in adapter_paths:
        ref = _stored_copy(store, path, progress)
        if ref not in adapters:
            adapters.append(ref)
    if draft is not None:
        draft_ref = draft.ref or _stored_copy(store, draft.path, progress)
    else:
        draft_ref = base.draft if modelfile.draft is None else None  # DRAFT "" drops the base's
    progress(ProgressEvent("writing manifest"))
    stored = store.write_model(
        name,
        model,
        info,
        template=_override(modelfile.template, base.template),
        system=_override(modelfile.system, base.system),
        parameters={**base.parameters, **modelfile.parameters},
        license=base.licenses + [t for t in modelfile.licenses if t not in base.licenses],
        messages=modelfile.messages or base.messages,
        adapters=adapters,
        draft=draft_ref,
    )
    progress(ProgressEvent("success"))
    return stored


def modelfile_text(store: Store, name: ModelName) -> str:
    """`show --modelfile`: a Modelfile that builds this model again, FROM its blob."""
    details = store.show(name)
    layer = details.stored.manifest.layer(MEDIA_MODEL)
    assert layer is not None  # store.show has checked the model layer
    mf = Modelfile(
        source="",
        base=str(store.blobs.path(layer.digest)),
        base_line=0,
        template=details.template,
        system=details.system,
        parameters=details.parameters,
        messages=details.messages,
        licenses=details.licenses,
        adapters=[(str(store.blobs.path(a.digest)), 0) for a in details.adapters],
        draft=str(store.blobs.path(details.draft.digest)) if details.draft else None,
    )
    header = (
        f'Modelfile generated by "loam show"\nTo build a new Modelfile based on this, replace FROM with:\n'
        f"FROM {name.display}"
    )
    return render(mf, header)


def _override(value: str | None, inherited: str | None) -> str | None:
    """A Modelfile value replaces the base's; an empty one removes it."""
    return inherited if value is None else (value or None)


def _resolve_base(
    store: Store, catalog: Catalog, mf: Modelfile, folder: Path, progress: ProgressFn, insecure: bool
) -> Base:
    path = _as_path(mf.base, folder)
    if path is not None:
        _check_file(mf, mf.base_line, "FROM", mf.base, path)
        info = _inspect(mf, mf.base_line, "FROM", path)
        if info.kind == "adapter":
            raise mf.error(mf.base_line, f"FROM {mf.base} is a LoRA adapter; FROM its base model and add ADAPTER")
        return Base(path, info)
    try:
        name = ModelName.parse(mf.base)
    except InvalidName as e:
        raise mf.error(mf.base_line, f"FROM {_shown(mf.base)}: {e}") from None
    if not store.manifests.exists(name):
        try:
            pull(store, catalog, mf.base, progress, insecure=insecure)
        except LoamError as e:
            raise mf.error(mf.base_line, f"FROM {mf.base}: {e}") from None
    details = store.show(name)
    layer = details.stored.manifest.layer(MEDIA_MODEL)
    assert layer is not None
    return Base(
        path=store.blobs.path(layer.digest),
        info=details.info,
        ref=BlobRef(layer.digest, layer.size),
        template=details.template,
        system=details.system,
        parameters=dict(details.parameters),
        messages=list(details.messages),
        licenses=list(details.licenses),
        adapters=[BlobRef(a.digest, a.size) for a in details.adapters],
        draft=BlobRef(details.draft.digest, details.draft.size) if details.draft else None,
    )


def _resolve_draft(
    store: Store, catalog: Catalog, mf: Modelfile, folder: Path, progress: ProgressFn, insecure: bool
) -> Draft:
    """The GGUF a DRAFT names, resolved as FROM is: a file, a stored model, or a name pulled first."""
    text, line = mf.draft or "", mf.draft_line
    path = _as_path(text, folder)
    if path is not None:
        _check_file(mf, line, "DRAFT", text, path)
        info = _inspect(mf, line, "DRAFT", path)
        if info.kind == "adapter":
            raise mf.error(line, f"DRAFT {_shown(text)} is a LoRA adapter; DRAFT needs a whole model")
        return Draft(path)
    try:
        name = ModelName.parse(text)
    except InvalidName as e:
        raise mf.error(line, f"DRAFT {_shown(text)}: {e}") from None
    try:
        if not store.manifests.exists(name):
            pull(store, catalog, text, progress, insecure=insecure)
        layer = store.get(name).manifest.layer(MEDIA_MODEL)
        path = store.model_path(name)
    except LoamError as e:
        raise mf.error(line, f"DRAFT {text}: {e}") from None
    assert layer is not None  # model_path has checked the model layer
    if not store.blobs.has(layer.digest, layer.size):
        raise mf.error(line, f"DRAFT {text}: its model blob is not the size its manifest says; pull it again")
    return Draft(path, BlobRef(layer.digest, layer.size))


def _check_vocabulary(mf: Modelfile, draft: Draft, base: Base) -> None:
    """Refuse a draft whose tokens are not the model's: its guesses would be verified as other words."""
    shown = _shown(mf.draft or "")
    try:
        theirs = vocabulary(base.path)
    except LoamError as e:
        raise mf.error(mf.draft_line, f"DRAFT {shown}: the model has no vocabulary to share ({e})") from None
    try:
        difference = vocabulary_difference(vocabulary(draft.path), theirs)
    except LoamError as e:
        raise mf.error(mf.draft_line, f"DRAFT {shown}: {e}") from None
    if difference:
        raise mf.error(mf.draft_line, f"DRAFT {shown}: its vocabulary differs from the model's ({difference})")


def _check_template(mf: Modelfile) -> None:
    """Refuse a TEMPLATE that does not parse as a Go template, naming its line, before anything is stored.

    The parser lives with the server that renders prompts; it is imported here,
    lazily, so a bad template fails `create` rather than the first chat.
    """
    if not mf.template:
        return
    from app.server import gotemplate  # upward import, kept lazy: the store layer does not load the server

    check = getattr(gotemplate, "check_template", None) or gotemplate.parse
    try:
        problem = check(mf.template)
    except gotemplate.TemplateError as e:
        problem = str(e)
    if isinstance(problem, str) and problem:  # a checker that reports rather than raises
        raise mf.error(mf.template_line, f"TEMPLATE does not parse: {problem}")


def _as_path(text: str, folder: Path) -> Path | None:
    """The file FROM/ADAPTER names, when the text is a path rather than a model name."""
    looks_like_path = text.startswith(_PATH_PREFIXES) or text.lower().endswith(_PATH_SUFFIXES)
    if "\0" in text:
        return Path(text) if looks_like_path else None
    try:
        candidate = (folder / Path(text).expanduser()).resolve() if not text.startswith("/") else Path(text)
        exists = candidate.exists()
    except (OSError, RuntimeError, ValueError):  # a name too long to stat, a symlink loop, ~user unknown
        return Path(text)
    if looks_like_path or exists:
        return candidate
    return None


def _shown(text: str) -> str:
    """A FROM/ADAPTER value fit for a one-line message: cut when long, quoted when it holds control characters."""
    short = text if len(text) <= 200 else text[:100] + "..." + text[-60:]
    return short if short.isprintable() else repr(short)


def _check_file(mf: Modelfile, line: int, keyword: str, text: str, path: Path) -> None:
    """A regular file at `path`, or a one-line ModelfileError: checked without opening
    anything that could block (a FIFO) or never end (/dev/zero)."""
    shown = _shown(text)
    if "\0" in text:
        raise mf.error(line, f"{keyword} {shown} contains a NUL byte; give a path to a .gguf file")
    try:
        path.stat()
    except FileNotFoundError:
        raise mf.error(line, f"{keyword} {shown}: no such file ({path}); give a path to a .gguf file") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise mf.error(line, f"{keyword} {shown}: cannot read it ({reason}); give a path to a .gguf file") from None
    if path.is_dir():
        raise mf.error(
            line,
            f"{keyword} {shown} is a directory; loam builds from one GGUF file "
            "(convert safetensors with llama.cpp's convert_hf_to_gguf.py first)",
        )
    try:
        os.close(open_regular(path))
    except BadModelFile as e:
        raise mf.error(line, f"{keyword}: {e}") from None


def _inspect(mf: Modelfile, line: int, keyword: str, path: Path) -> GGUFInfo:
    try:
        return inspect(path)
    except LoamError as e:
        raise mf.error(line, f"{keyword}: {e}") from None


def _adapter_path(mf: Modelfile, text: str, line: int, folder: Path) -> Path:
    path = _as_path(text, folder) or (folder / text)
    _check_file(mf, line, "ADAPTER", text, path)
    info = _inspect(mf, line, "ADAPTER", path)
    if info.kind != "adapter":
        raise mf.error(line, f"ADAPTER {text} is a model, not a LoRA adapter GGUF (general.type is {info.kind!r})")
    return path


def _check_quantizable(mf: Modelfile, info: GGUFInfo, allow_requantize: bool) -> None:
    if info.file_type not in UNQUANTIZED and not allow_requantize:
        raise QuantizeError(
            f"{mf.base} is already quantized ({info.file_type}); quantizing it again loses quality. "
            "Start from an F16, BF16 or F32 GGUF, or pass --allow-requantize"
        )


def _model_blob(store: Store, base: Base, progress: ProgressFn) -> BlobRef:
    if base.ref is not None:
        progress(ProgressEvent(f"using existing layer sha256:{short_digest(base.ref.digest)}"))
        return base.ref
    return _stored_copy(store, base.path, progress)


def _stored_copy(store: Store, path: Path, progress: ProgressFn) -> BlobRef:
    """The blob for a file: found by digest when the store has it, else copied in and checked."""
    label = f"sha256:{path.name[7:19]}" if path.name.startswith("sha256-") else path.name
    meter = Meter(progress, f"hashing {label}", None, path.stat().st_size)
    ref = hash_file(path, meter.update)
    meter.update(ref.size, force=True)
    if store.blobs.has(ref.digest, ref.size):
        progress(ProgressEvent(f"using existing layer sha256:{short_digest(ref.digest)}"))
        return ref
    copied = PathSource(path).fetch_model(store.blobs, ref.digest, ref.size, progress, check_model_file)
    progress(ProgressEvent(f"creating new layer sha256:{short_digest(copied.digest)}"))
    return copied


def _quantized_blob(
    store: Store, base: Base, qtype: str, allow_requantize: bool, progress: ProgressFn
) -> tuple[BlobRef, GGUFInfo]:
    target = store.blobs.temp_path("quantize")
    checked: list[GGUFInfo] = []
    try:
        status = f"quantizing {base.info.file_type} model to {qtype}"
        quantize(base.path, target, qtype, progress, status=status, allow_requantize=allow_requantize)
        ref = store.blobs.adopt(target, lambda p: checked.append(inspect(p)))
    finally:
        target.unlink(missing_ok=True)
    progress(ProgressEvent(f"creating new layer sha256:{short_digest(ref.digest)}"))
    return ref, checked[0]


def load(path: Path) -> Modelfile:
    """Read and parse a Modelfile; ModelfileError when it cannot be read or parsed.

    Only a regular file of at most MAX_MODELFILE_BYTES is read, so `-f` naming a
    FIFO, a device or a model file fails at once instead of hanging or filling memory.
    """
    try:
        fd = open_regular(path, "pass the path of a Modelfile with -f")
    except BadModelFile as e:
        if "\0" not in str(path) and not os.path.lexists(path):
            raise ModelfileError(f"{path}: no such Modelfile; pass its path with -f") from None
        raise ModelfileError(str(e)) from None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_MODELFILE_BYTES + 1)
    except OSError as e:
        raise ModelfileError(f"{path}: cannot read the Modelfile ({e.strerror or e})") from None
    if len(data) > MAX_MODELFILE_BYTES:
        raise ModelfileError(
            f"{path}: over {MAX_MODELFILE_BYTES >> 20} MiB, too big to be a Modelfile; pass one with -f"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelfileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a Modelfile?") from None
    return parse(text, str(path))
