"""The errors loam reports to people: each carries one line that says what went
wrong and what to do about it."""

from __future__ import annotations


class LoamError(Exception):
    """Base of every error that the CLI prints as one line and exits 1 on."""

    exit_code = 1


class InvalidName(LoamError):
    """A model name that cannot be a store path."""


class ModelNotFound(LoamError):
    """No manifest (or catalog entry, or registry model) answers to a name."""


class SourceUnavailable(LoamError):
    """A pull source could not deliver: unreachable, not found, refused."""


class DigestMismatch(LoamError):
    """Downloaded bytes did not hash to the digest they were promised to have."""


class BadModelFile(LoamError):
    """A file that should be a GGUF model is not one, or is cut short."""


class StoreWriteError(LoamError):
    """Writing into the model store failed (disk full, permissions, file size limit)."""


class CatalogError(LoamError):
    """A catalog file (shipped or the user's) is malformed."""


class ConfigError(LoamError):
    """config.toml or an environment variable holds a value loam cannot use."""


class ModelfileError(LoamError):
    """A Modelfile that cannot be built: the message starts with FILE:LINE."""


class QuantizeError(LoamError):
    """Quantizing a model failed, was refused, or its process crashed."""


class Unsupported(LoamError):
    """A request needs a capability the model lacks (tools, thinking, images): an API 400."""
