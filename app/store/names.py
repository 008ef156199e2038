"""Model names: `[host/][namespace/]model[:tag]`, with Ollama's defaults.

A name becomes a path under manifests/, so every part is checked before any
file is touched: no `..`, no empty parts, no separators, bounded lengths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.errors import InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,348}[A-Za-z0-9])?(?::[0-9]{1,5})?$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,79}$")
_MAX_LENGTH = 600
_RULE = "use letters, digits, '.', '_' and '-', starting with a letter or digit"


@dataclass(frozen=True, order=True)
class ModelName:
    """A fully qualified model name."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse and validate; raise InvalidName with the offending part named."""
        raw = text.strip()
        if not raw:
            raise InvalidName("empty model name; give one like smollm2:135m")
        if len(raw) > _MAX_LENGTH:
            raise InvalidName(f"model name is {len(raw)} characters long; the limit is {_MAX_LENGTH}")
        path, tag = raw, DEFAULT_TAG
        last_slash = raw.rfind("/")
        colon = raw.rfind(":")
        if colon > last_slash:
            path, tag = raw[:colon], raw[colon + 1 :]
            if not tag:
                raise InvalidName(f"invalid model name {raw!r}: empty tag after ':'")
        parts = path.split("/")
        if len(parts) > 3:
            raise InvalidName(f"invalid model name {raw!r}: expected [host/][namespace/]model[:tag]")
        if any(not p for p in parts):
            raise InvalidName(f"invalid model name {raw!r}: empty part between '/'")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        if not _HOST.match(host) or ".." in host:
            raise InvalidName(f"invalid host {host!r} in model name {raw!r}")
        for label, value in (("namespace", namespace), ("model", model)):
            if not _PART.match(value):
                raise InvalidName(f"invalid {label} {value!r} in model name {raw!r}: {_RULE}")
        if not _TAG.match(tag):
            raise InvalidName(f"invalid tag {tag!r} in model name {raw!r}: {_RULE}")
        return cls(host, namespace, model, tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """The short form people type: defaults left out, tag always shown."""
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return str(self)

    @property
    def repository(self) -> str:
        """`namespace/model`, the repository path in a registry URL."""
        return f"{self.namespace}/{self.model}"

    def manifest_path(self, root: Path) -> Path:
        """Where this name's manifest lives in a store rooted at `root`."""
        return root / "manifests" / self.host / self.namespace / self.model / self.tag
