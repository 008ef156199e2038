"""The model store: names to manifests to blobs, and the operations people run on it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import config
from app.errors import ModelNotFound
from app.store.blobs import BlobRef, BlobStore, short_digest
from app.store.gguf_info import GGUFInfo, inspect, inspect_blob
from app.store.manifest import (
    MEDIA_ADAPTER,
    MEDIA_CONFIG,
    MEDIA_DRAFT,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
    ManifestStore,
    StoredManifest,
)
from app.store.names import ModelName


@dataclass(frozen=True)
class ModelDetails:
    """What `show` prints: GGUF metadata and the model's text layers."""

    stored: StoredManifest
    info: GGUFInfo
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    licenses: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    adapters: list[Layer] = field(default_factory=list)
    draft: Layer | None = None  # the draft model's GGUF blob (Modelfile DRAFT)
    draft_name: str | None = None  # a stored model whose model blob that is, when one is

    @property
    def license(self) -> str | None:
        return "\n\n".join(self.licenses) or None

    @property
    def draft_label(self) -> str | None:
        """The draft as `show` names it: "smollm2:135m (sha256-0123456789ab)", or its blob alone."""
        if self.draft is None:
            return None
        blob = f"sha256-{short_digest(self.draft.digest)}"
        return f"{self.draft_name} ({blob})" if self.draft_name else blob


class Store:
    """A model store rooted at a directory laid out as Ollama lays out ~/.ollama/models."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root)
        self.manifests = ManifestStore(root)

    @classmethod
    def default(cls) -> Store:
        return cls(config.paths().models)

    def list(self) -> list[StoredManifest]:
        """Every model, most recently modified first."""
        return sorted(self.manifests.all(), key=lambda m: m.modified, reverse=True)

    def get(self, name: ModelName) -> StoredManifest:
        return self.manifests.read(name)

    def model_path(self, name: ModelName) -> Path:
        """The GGUF blob a runner loads for this model."""
        stored = self.get(name)
        layer = stored.manifest.layer(MEDIA_MODEL)
        if layer is None:
            raise ModelNotFound(f"{name.display} has no model layer; pull it again")
        path = self.blobs.path(layer.digest)
        if not path.is_file():
            raise ModelNotFound(f"the model blob of {name.display} is missing; pull it again")
        return path

    def show(self, name: ModelName) -> ModelDetails:
        stored = self.get(name)
        info = inspect_blob(self.model_path(name))
        texts = {
            media: self._text(layer)
            for layer in stored.manifest.layers
            if (media := layer.media_type) not in (MEDIA_MODEL, MEDIA_ADAPTER, MEDIA_LICENSE, MEDIA_DRAFT)
        }
        draft = stored.manifest.layer(MEDIA_DRAFT)
        params = json.loads(texts[MEDIA_PARAMS]) if texts.get(MEDIA_PARAMS) else {}
        messages = json.loads(texts[MEDIA_MESSAGES]) if texts.get(MEDIA_MESSAGES) else []
        return ModelDetails(
            stored=stored,
            info=info,
            template=texts.get(MEDIA_TEMPLATE),
            system=texts.get(MEDIA_SYSTEM),
            parameters=params if isinstance(params, dict) else {},
            licenses=[
                t for layer in stored.manifest.layers if layer.media_type == MEDIA_LICENSE and (t := self._text(layer))
            ],
            messages=messages if isinstance(messages, list) else [],
            adapters=[layer for layer in stored.manifest.layers if layer.media_type == MEDIA_ADAPTER],
            draft=draft,
            draft_name=self._model_named(draft.digest, name) if draft else None,
        )

    def draft_path(self, details: ModelDetails) -> Path | None:
        """The GGUF a runner loads as this model's draft, or None when it has no DRAFT.

        ModelNotFound when the manifest names a draft whose blob is missing or of
        another size: loading without it would silently drop the speed-up.
        """
        layer = details.draft
        if layer is None:
            return None
        if not self.blobs.has(layer.digest, layer.size):
            name = details.stored.name.display
            raise ModelNotFound(f"the draft model blob of {name} is missing; create {name} again")
        return self.blobs.path(layer.digest)

    def _model_named(self, digest: str, besides: ModelName) -> str | None:
        """The first stored model, other than `besides`, whose model layer is the blob `digest`."""
        for other in self.manifests.all():
            layer = other.manifest.layer(MEDIA_MODEL)
            if other.name != besides and layer is not None and layer.digest == digest:
                return other.name.display
        return None

    def remove(self, name: ModelName) -> list[str]:
        """Delete a model and every blob no other manifest uses; returns the blobs deleted."""
        stored = self.get(name)
        self.manifests.delete(name)
        in_use = {layer.digest for other in self.manifests.all() for layer in other.manifest.blobs}
        removed = []
        for layer in stored.manifest.blobs:
            if layer.digest not in in_use and self.blobs.has(layer.digest):
                self.blobs.remove(layer.digest)
                removed.append(layer.digest)
        return removed

    def copy(self, source: ModelName, target: ModelName) -> None:
        """Give a model a second name; blobs are shared, not copied."""
        self.get(source)
        raw = source.manifest_path(self.root).read_bytes()
        self.manifests.write(target, raw)

    def write_model(
        self,
        name: ModelName,
        model: BlobRef,
        info: GGUFInfo,
        *,
        template: str | None = None,
        system: str | None = None,
        parameters: dict[str, Any] | None = None,
        license: str | list[str] | None = None,
        messages: list[dict[str, str]] | None = None,
        adapters: Iterable[BlobRef] = (),
        draft: BlobRef | None = None,
    ) -> StoredManifest:
        """Store a manifest for a model blob plus its adapter, draft and text layers and config blob.

        Layers go in one fixed order (model, adapters, draft, template, system,
        licenses, params, messages) so the same inputs always make the same manifest.
        """
        layers = [Layer(MEDIA_MODEL, model.digest, model.size)]
        layers += [Layer(MEDIA_ADAPTER, ref.digest, ref.size) for ref in adapters]
        if draft is not None:
            layers.append(Layer(MEDIA_DRAFT, draft.digest, draft.size))
        licenses = [license] if isinstance(license, str) else list(license or [])
        texts = [
            (MEDIA_TEMPLATE, template),
            (MEDIA_SYSTEM, system),
            *((MEDIA_LICENSE, text) for text in licenses),
            (MEDIA_PARAMS, json.dumps(parameters) if parameters else None),
            (MEDIA_MESSAGES, json.dumps(messages) if messages else None),
        ]
        for media_type, text in texts:
            if text:
                ref = self.blobs.write_bytes(text.encode())
                layers.append(Layer(media_type, ref.digest, ref.size))
        config_doc = {
            **info.config_fields(),
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        }
        config_ref = self.blobs.write_bytes(json.dumps(config_doc).encode())
        manifest = Manifest(Layer(MEDIA_CONFIG, config_ref.digest, config_ref.size), layers)
        self.manifests.write(name, manifest)
        return self.get(name)

    def _text(self, layer: Layer) -> str | None:
        try:
            return self.blobs.path(layer.digest).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None


def check_model_file(path: Path) -> None:
    """Validator for model blobs: a whole GGUF with an architecture, or BadModelFile."""
    inspect(path)
