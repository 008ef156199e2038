"""The catalog: short model names mapped to where their bytes come from.

`models.toml` ships with loam; a `models.toml` in the user's config dir adds
entries or replaces them by name. Each entry has an ordered list of sources,
the expected sha256 and size of the GGUF, and optional defaults (system,
template, parameters, license) that become layers of the pulled model.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import shipped_file
from app.errors import CatalogError, InvalidName
from app.store.names import ModelName
from app.store.parameters import ParameterError, coerce_all

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:  # the sources bring httpx, which `loam ask` should not wait for
    from app.store.sources import Source


@dataclass(frozen=True)
class CatalogEntry:
    """One model the catalog knows how to fetch."""

    name: ModelName
    sources: tuple[Source, ...]
    sha256: str | None = None
    size: int | None = None
    description: str = ""
    license: str | None = None
    system: str | None = None
    template: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str | None:
        return f"sha256:{self.sha256}" if self.sha256 else None


@dataclass
class Catalog:
    """Catalog entries by their short name, and the default model."""

    entries: dict[str, CatalogEntry]
    default: str

    @classmethod
    def load(cls, user_file: Path | None = None, shipped: Path | None = None) -> Catalog:
        """The shipped catalog with the user's file (when present) laid over it."""
        catalog = cls.from_file(shipped or shipped_file("models.toml"))
        if user_file is not None and user_file.is_file():
            catalog.extend(cls.from_file(user_file))
        return catalog

    @classmethod
    def from_file(cls, path: Path) -> Catalog:
        try:
            with path.open("rb") as f:
                doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise CatalogError(f"{path}: {e}") from e
        entries: dict[str, CatalogEntry] = {}
        for key, table in (doc.get("models") or {}).items():
            entry = _entry(key, table, path)
            entries[entry.name.display] = entry
        return cls(entries, str(doc.get("default") or ""))

    @staticmethod
    def default_name(user_file: Path | None = None, shipped: Path | None = None) -> str:
        """The default model's name alone, the user's file first, without reading the entries."""
        for path in (user_file, shipped or shipped_file("models.toml")):
            if path is None or not path.is_file():
                continue
            try:
                with path.open("rb") as f:
                    default = tomllib.load(f).get("default")
            except tomllib.TOMLDecodeError as e:
                raise CatalogError(f"{path}: {e}") from e
            if default:
                return str(default)
        return ""

    def extend(self, other: Catalog) -> None:
        self.entries.update(other.entries)
        if other.default:
            self.default = other.default

    def get(self, name: ModelName) -> CatalogEntry | None:
        return self.entries.get(name.display)

    def suggest(self, text: str, extra: Iterable[str] = ()) -> list[str]:
        """Names close to `text`: same model with another tag first, then spelling neighbours."""
        candidates = sorted(set(self.entries) | set(extra))
        model = text.split("/")[-1].split(":")[0].lower()
        same_model = [c for c in candidates if c.split("/")[-1].split(":")[0].lower() == model]
        close = difflib.get_close_matches(text.lower(), candidates, n=3, cutoff=0.6)
        close += difflib.get_close_matches(model, [c.split(":")[0] for c in candidates], n=3, cutoff=0.6)
        full = [c for c in candidates if c.split(":")[0] in close or c in close]
        return list(dict.fromkeys(same_model + full))[:4]


def _entry(key: str, table: Any, path: Path) -> CatalogEntry:
    where = f"{path}: [models.{key!r}]"
    if not isinstance(table, dict):
        raise CatalogError(f"{where} must be a table")
    try:
        name = ModelName.parse(key)
    except InvalidName as e:
        raise CatalogError(f"{where}: {e}") from e
    sources = table.get("sources")
    if not isinstance(sources, list) or not sources:
        raise CatalogError(f"{where} needs a non-empty `sources` list")
    sha256 = table.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64 or not _is_hex(sha256)):
        raise CatalogError(f"{where}: sha256 must be 64 lowercase hex characters")
    size = table.get("size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise CatalogError(f"{where}: size must be a positive integer")
    parameters = table.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise CatalogError(f"{where}: parameters must be a table")
    try:
        parameters = coerce_all(parameters)
    except ParameterError as e:
        raise CatalogError(f"{where}: parameters: {e}") from None
    from app.store.sources import parse_source

    return CatalogEntry(
        name=name,
        sources=tuple(parse_source(s, path.parent) for s in sources),
        sha256=sha256,
        size=size,
        description=str(table.get("description", "")),
        license=table.get("license"),
        system=table.get("system"),
        template=table.get("template"),
        parameters=parameters,
    )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
