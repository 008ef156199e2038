"""What a model can do, read from its template and its GGUF metadata, as Ollama reports it.

`capabilities` is what /api/show lists; `require` is what a route calls before it
generates, so a request for tools, thinking or images that the model cannot honour
is a 400 with Ollama's wording instead of a reply that silently ignores them.

The rules follow the template loam actually renders with (see app/server/prompt.py):
a Modelfile TEMPLATE (Go syntax) when there is one, else the GGUF's Jinja chat template.

- completion: every model that is not embedding-only.
- embedding: the GGUF declares a pooling type or non-causal attention, or its
  architecture is an encoder (bert, nomic-bert...); such a model has no completion.
- tools: the Go template reads `.Tools`, or the Jinja template uses a `tools` variable.
- thinking: the Go template reads `.Think` or `.Thinking`; the Jinja template uses
  `enable_thinking`, handles `reasoning_content`, or writes a `<think>` tag.
- vision: the manifest has a projector layer, or the GGUF carries a vision encoder.
- insert: the Go template reads `.Suffix` (fill-in-the-middle; only Go templates get a suffix).
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2
from jinja2 import meta, nodes

from app.errors import Unsupported
from app.server.gotemplate import TemplateError, parse
from app.server.jinja import parse_template
from app.store.manifest import MEDIA_PROJECTOR
from app.store.store import ModelDetails

#: Every capability, in the order `capabilities` lists them.
ORDER = ("completion", "tools", "thinking", "vision", "embedding", "insert")

#: llama.cpp architectures that are encoders: they embed text and cannot continue it.
EMBEDDING_ARCHITECTURES = frozenset(
    {
        "bert",
        "eurobert",
        "llama-embed",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "modern-bert",
        "t5encoder",
        "gemma-embedding",
    }
)

#: What `require` checks, and the word Ollama's error uses for it.
_NEEDS = (("tools", "tools"), ("thinking", "thinking"), ("vision", "vision"))


def capabilities(details: ModelDetails) -> list[str]:
    """The model's capabilities, an ordered subset of ORDER."""
    found: set[str] = set()
    if _embedding_only(details):
        found.add("embedding")
    else:
        found.add("completion")
    if _vision(details):
        found.add("vision")
    if details.template:
        found |= _go_capabilities(details.template)
    elif details.info.chat_template:
        found |= _jinja_capabilities(details.info.chat_template)
    return [c for c in ORDER if c in found]


def require(
    model_name: str, details: ModelDetails, *, tools: bool = False, thinking: bool = False, images: bool = False
) -> None:
    """Unsupported (an API 400) naming the first capability the request needs and the model lacks.

    The wording is Ollama's: `"NAME" does not support tools` (or thinking, or vision for images).
    """
    wanted = {"tools": tools, "thinking": thinking, "vision": images}
    if not any(wanted.values()):
        return
    have = capabilities(details)
    for capability, word in _NEEDS:
        if wanted[capability] and capability not in have:
            raise Unsupported(f'"{model_name}" does not support {word}')


def _embedding_only(details: ModelDetails) -> bool:
    """An encoder: a pooling type or non-causal attention in the GGUF, or an encoder architecture."""
    info = details.info
    if info.architecture in EMBEDDING_ARCHITECTURES:
        return True
    pooling = _meta(info, "pooling_type")
    if isinstance(pooling, int) and not isinstance(pooling, bool) and pooling > 0:  # 0 is LLAMA_POOLING_TYPE_NONE
        return True
    return _meta(info, "causal_attention") is False


def _vision(details: ModelDetails) -> bool:
    """A projector layer (Ollama's split vision models) or a vision encoder inside the GGUF itself."""
    if any(layer.media_type == MEDIA_PROJECTOR for layer in details.stored.manifest.layers):
        return True
    return bool(_meta(details.info, "vision"))


def _meta(info: Any, name: str) -> Any:
    """A GGUF fact that not every GGUFInfo carries (pooling_type, causal_attention, vision); None when absent."""
    return getattr(info, name, None)


@functools.lru_cache(maxsize=128)
def _go_capabilities(source: str) -> frozenset[str]:
    """tools, thinking and insert from the fields a Go template reads; nothing when it does not parse."""
    try:
        template = parse(source)
    except TemplateError:
        return frozenset()
    found = set()
    if template.uses("Tools"):
        found.add("tools")
    if template.uses("Think") or template.uses("Thinking"):
        found.add("thinking")
    if template.uses("Suffix"):
        found.add("insert")
    return frozenset(found)


@functools.lru_cache(maxsize=128)
def _jinja_capabilities(source: str) -> frozenset[str]:
    """tools and thinking from the variables a Jinja chat template uses; nothing when it does not parse."""
    try:
        tree = parse_template(source)
    except jinja2.TemplateSyntaxError:
        return frozenset()
    variables = meta.find_undeclared_variables(tree)
    found = set()
    if "tools" in variables:
        found.add("tools")
    if "enable_thinking" in variables or "<think>" in source or _reads(tree, "reasoning_content"):
        found.add("thinking")
    return frozenset(found)


def _reads(tree: nodes.Template, key: str) -> bool:
    """Whether the template reads `key` off something: `m.key`, `m['key']` or `'key' in m`."""
    return any(
        (node.attr if isinstance(node, nodes.Getattr) else node.value) == key
        for node in tree.find_all((nodes.Getattr, nodes.Const))
    )
