"""Manifests: Docker v2 image manifests naming a model's layers, one file per name.

The JSON is Ollama's, field for field, so either program reads what the other
wrote. Manifests pulled from a registry are stored byte for byte as served.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import write_atomic
from app.errors import InvalidName, ModelNotFound, StoreWriteError
from app.store.names import ModelName

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_PREFIX = "application/vnd.ollama.image."
MEDIA_MODEL = MEDIA_PREFIX + "model"
MEDIA_TEMPLATE = MEDIA_PREFIX + "template"
MEDIA_SYSTEM = MEDIA_PREFIX + "system"
MEDIA_PARAMS = MEDIA_PREFIX + "params"
MEDIA_MESSAGES = MEDIA_PREFIX + "messages"
MEDIA_LICENSE = MEDIA_PREFIX + "license"
MEDIA_ADAPTER = MEDIA_PREFIX + "adapter"
MEDIA_PROJECTOR = MEDIA_PREFIX + "projector"
#: A smaller model with the same vocabulary that drafts tokens for the model to verify (Modelfile DRAFT);
#: the type newer Ollama versions give their draft layer.
MEDIA_DRAFT = MEDIA_PREFIX + "draft"


@dataclass(frozen=True)
class Layer:
    """One blob a manifest points at."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layer:
        return cls(str(data["mediaType"]), str(data["digest"]), int(data["size"]))


@dataclass
class Manifest:
    """A model: a config blob and an ordered list of layers."""

    config: Layer
    layers: list[Layer] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse manifest JSON; ValueError when it is not one."""
        try:
            doc = json.loads(raw)
            if doc.get("schemaVersion") != 2:
                raise ValueError(f"schemaVersion {doc.get('schemaVersion')!r}, expected 2")
            return cls(Layer.from_json(doc["config"]), [Layer.from_json(x) for x in doc.get("layers") or []])
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a v2 manifest: {e}") from e

    def layer(self, media_type: str) -> Layer | None:
        """The first layer of a media type."""
        return next((x for x in self.layers if x.media_type == media_type), None)

    @property
    def blobs(self) -> list[Layer]:
        """Every blob this manifest needs, config included."""
        return [self.config, *self.layers]

    @property
    def size(self) -> int:
        return sum(x.size for x in self.blobs)


@dataclass(frozen=True)
class StoredManifest:
    """A manifest as found on disk, with what `list` shows about it."""

    name: ModelName
    manifest: Manifest
    digest: str
    modified: float


class ManifestStore:
    """The `manifests/` tree of a store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "manifests"

    def read(self, name: ModelName) -> StoredManifest:
        path = name.manifest_path(self.root)
        try:
            raw = path.read_bytes()
            modified = path.stat().st_mtime
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ModelNotFound(f"model {name.display!r} not found; pull it with: loam pull {name.display}") from None
        try:
            manifest = Manifest.from_bytes(raw)
        except ValueError as e:
            raise ModelNotFound(f"manifest of {name.display} is damaged ({e}); pull it again") from e
        return StoredManifest(name, manifest, "sha256:" + hashlib.sha256(raw).hexdigest(), modified)

    def exists(self, name: ModelName) -> bool:
        return name.manifest_path(self.root).is_file()

    def write(self, name: ModelName, manifest: Manifest | bytes) -> None:
        """Write atomically; `bytes` are stored as given (a registry's manifest)."""
        raw = manifest if isinstance(manifest, bytes) else manifest.to_bytes()
        try:
            write_atomic(name.manifest_path(self.root), raw)
        except OSError as e:
            raise StoreWriteError(f"cannot write the manifest of {name.display}: {os.strerror(e.errno or 5)}") from e

    def delete(self, name: ModelName) -> None:
        path = name.manifest_path(self.root)
        path.unlink()
        for parent in list(path.parents)[:3]:
            try:
                parent.rmdir()
            except OSError:
                break

    def names(self) -> Iterator[ModelName]:
        """Every valid name in the tree; files that are not manifests are skipped."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*/*/*/*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            host, namespace, model, tag = path.relative_to(self.dir).parts
            try:
                yield ModelName.parse(f"{host}/{namespace}/{model}:{tag}")
            except InvalidName:
                continue

    def all(self) -> Iterator[StoredManifest]:
        for name in self.names():
            try:
                yield self.read(name)
            except ModelNotFound:
                continue
