"""llama-server's prompt grammar: what a /completion `prompt` or an /embeddings `input` may be.

A prompt is a string, a list of token ids, a mix of both, or an object with a
`prompt_string`; a list holding no number at its top level is several prompts,
answered one by one. `logit_bias` names tokens by id or by text.
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol

_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
#: Most prompts one request may hold, and most entries of its logit_bias.
MAX_PROMPTS = 256
MAX_BIAS = 4096


class Vocabulary(Protocol):
    """What tokenizing needs from the model."""

    n_vocab: int

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]: ...


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_multi(prompt: Any) -> bool:
    """A list with no token id at its top level: several prompts."""
    return isinstance(prompt, list) and not any(_is_id(p) for p in prompt)


def split_prompts(prompt: Any) -> list[Any]:
    """The prompts a request holds; ValueError when there are none or too many."""
    prompts = prompt if is_multi(prompt) else [prompt]
    if not prompts:
        raise ValueError('"prompt" must not be empty')
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"a request holds at most {MAX_PROMPTS} prompts")
    return prompts


def tokenize_prompt(model: Vocabulary, prompt: Any) -> list[int]:
    """One prompt's tokens: special tokens added only where it starts with text, token ids checked."""
    if isinstance(prompt, dict) and "prompt_string" in prompt:
        if "multimodal_data" in prompt:
            raise ValueError("Multimodal data provided, but model does not support multimodal requests.")
        prompt = prompt["prompt_string"]
    if isinstance(prompt, str):
        return model.tokenize(prompt, add_special=True, parse_special=True)
    if not isinstance(prompt, list) or not all(_is_id(p) or isinstance(p, str) for p in prompt):
        raise ValueError(
            '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt string, '
            "or a list of mixed strings & tokens."
        )
    tokens: list[int] = []
    for i, part in enumerate(prompt):
        if isinstance(part, str):
            tokens += model.tokenize(part, add_special=i == 0, parse_special=True)
        elif not 0 <= part < model.n_vocab:
            raise ValueError(f"token id {part} is out of range (vocabulary of {model.n_vocab})")
        else:
            tokens.append(part)
    return tokens


def content_parts_text(parts: Any) -> str:
    """The text of an OpenAI content array (`[{"type": "text", "text": ...}]`), its parts joined."""
    if not isinstance(parts, list):
        raise ValueError('"content" must be an array')
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_audio", "input_video"):
            raise ValueError(f"{kind.split('_')[-1]} input is not supported by this model")
        else:
            raise ValueError("unsupported content[].type")
    return "".join(texts)


def parse_logit_bias(model: Vocabulary, value: Any) -> list[tuple[int, float]]:
    """llama-server's logit_bias: `[[token or text, bias], ...]` or `{"token or text": bias}`.

    A text names every token it tokenizes to; `false` bans a token (-inf);
    entries llama-server would skip (a bad shape, an id out of range) are skipped.
    """
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = [tuple(el) for el in value if isinstance(el, list) and len(el) == 2]
    else:
        return []
    if len(pairs) > MAX_BIAS:
        raise ValueError(f"logit_bias names at most {MAX_BIAS} tokens")
    out: list[tuple[int, float]] = []
    for key, raw in pairs:
        if raw is False:
            bias = -math.inf
        elif isinstance(raw, float) and not math.isnan(raw):
            bias = max(-1e30, min(raw, 1e30))  # a JSON 1e400 or Infinity would swamp every logit
        elif isinstance(raw, int) and not isinstance(raw, bool):
            bias = float(max(-(10**30), min(raw, 10**30)))
        else:
            continue
        if isinstance(value, dict) and isinstance(key, str) and _INTEGER.fullmatch(key):
            key = int(key)
        if _is_id(key):
            out += [(key, bias)] if 0 <= key < model.n_vocab else []
        elif isinstance(key, str):
            out += [(t, bias) for t in model.tokenize(key, add_special=False, parse_special=False)]
        if len(out) > MAX_BIAS:
            raise ValueError(f"logit_bias names at most {MAX_BIAS} tokens")
    return out


def exceeds_context(n_tokens: int, n_ctx: int) -> str:
    """llama-server's words for a prompt a slot cannot hold."""
    return f"request ({n_tokens} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"
