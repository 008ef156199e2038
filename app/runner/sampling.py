"""A request's generation settings and the llama.cpp sampler chain built from them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from typing import Any

import llama_cpp as llama


@dataclass
class SamplingParams:
    """The /completion fields that shape generation, with llama-server's defaults."""

    n_predict: int = -1
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    ignore_eos: bool = False
    n_keep: int = 0
    cache_prompt: bool = True
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SamplingParams:
        """Known fields taken from a request body and checked; ValueError names a bad one."""
        params = cls()
        for f in fields(cls):
            if f.name not in body or body[f.name] is None:
                continue
            value = body[f.name]
            if f.name == "stop":
                value = [value] if isinstance(value, str) else value
                if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                    raise ValueError("stop must be a string or a list of strings")
            elif f.type in ("int", "float"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{f.name} must be a number")
                value = int(value) if f.type == "int" else float(value)
            elif f.type == "bool":
                value = bool(value)
            setattr(params, f.name, value)
        if "max_tokens" in body and "n_predict" not in body:
            params.n_predict = int(body["max_tokens"])
        return params


class Sampler:
    """A llama.cpp sampler chain for one request; freed with `close`."""

    def __init__(self, params: SamplingParams, n_vocab: int, banned: list[int] | None = None) -> None:
        self.chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        add = lambda s: llama.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        if banned:  # ignore_eos: end-of-generation tokens can never be picked, as in llama-server
            biases = (llama.llama_logit_bias * len(banned))(*[llama.llama_logit_bias(t, -math.inf) for t in banned])
            add(llama.llama_sampler_init_logit_bias(n_vocab, len(banned), biases))
        penalized = params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
        if penalized and params.repeat_last_n != 0:
            add(
                llama.llama_sampler_init_penalties(
                    n_vocab,
                    params.repeat_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        self.penalized = bool(penalized)
        if params.temperature <= 0:
            add(llama.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama.llama_sampler_init_top_k(params.top_k))
        if params.typical_p < 1.0:
            add(llama.llama_sampler_init_typical(params.typical_p, 1))
        if params.top_p < 1.0:
            add(llama.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(llama.llama_sampler_init_min_p(params.min_p, 1))
        add(llama.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed >= 0 else random.getrandbits(32)
        add(llama.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def accept(self, token: int) -> None:
        """Count a prompt token for the repeat penalties."""
        if self.penalized:
            llama.llama_sampler_accept(self.chain, token)

    def sample(self, ctx: llama.llama_context_p, index: int) -> int:
        """Pick the next token from the logits at batch `index` (and accept it)."""
        return int(llama.llama_sampler_sample(self.chain, ctx, index))

    def close(self) -> None:
        if self.chain:
            llama.llama_sampler_free(self.chain)
            self.chain = None
