"""A request's generation settings and the llama.cpp sampler chain built from them."""

from __future__ import annotations

import ctypes
import json
import math
import random
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

import llama_cpp as llama
import numpy as np

#: Most top entries per token: each is kept for the whole answer of a non-streamed request.
MAX_N_PROBS = 100
#: Most tokens one speculative draft may propose.
MAX_DRAFT = 64
#: Most seconds a streamed request may ask its tokens to gather (app/runner/gather.py).
MOST_STREAM_INTERVAL = 1.0
#: Most stop strings and response_fields one request may name: each stop string is looked for after every token.
MAX_STOPS, MAX_FIELDS = 64, 64
#: llama-server's names for fields that are not Python names.
_ALIASES = {
    "speculative.n_max": "draft_max",
    "speculative.n_min": "draft_min",
    "max_tokens": "n_predict",
    "max_completion_tokens": "n_predict",
    "logprobs": "n_probs",
}
#: What llama-server reports as the seed of a request that asked for a random one.
DEFAULT_SEED = 0xFFFFFFFF


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
    grammar: str = ""  # GBNF; a json_schema is turned into one
    json_schema: Any = None
    grammar_lazy: bool = False  # the grammar binds only once a trigger has appeared in the output
    grammar_triggers: list[Any] = field(default_factory=list)  # [{type: word|pattern|pattern_full, value}]
    n_probs: int = 0  # > 0: each token's top n raw-logit logprobs (llama-server's completion_probabilities)
    draft_max: int = -1  # llama-server's speculative.n_max: most drafted tokens a step (-1: the runner's --draft-max)
    draft_min: int = -1  # speculative.n_min: no draft shorter than this (-1: the runner's --draft-min)
    n_discard: int = 0  # tokens a context shift drops (0: half of what is not kept)
    min_keep: int = 0
    logit_bias: list[tuple[int, float]] = field(default_factory=list)  # (token, bias); -inf bans the token
    post_sampling_probs: bool = False  # n_probs as probabilities after the sampler chain, not raw logprobs
    return_tokens: bool = False  # the answer lists the generated token ids
    return_progress: bool = False  # a streamed answer reports prompt progress
    timings_per_token: bool = False  # every streamed chunk carries timings
    response_fields: list[str] = field(default_factory=list)  # only these (slash-separated) paths are answered
    stream: bool = False
    stream_interval: float = 0.0  # loam's own: a stream's tokens gather this many seconds (app/runner/gather.py)

    @classmethod
    def from_json(cls, body: dict[str, Any], defaults: SamplingParams | None = None) -> SamplingParams:
        """Known fields taken from a request body and checked; ValueError names a bad one.

        `defaults` holds the server's defaults (llama-server's --temp, --seed, --n-predict).
        """
        params = replace(defaults) if defaults is not None else cls()
        given = {k: v for k, v in body.items() if v is not None}  # null means "the default", as in llama-server
        body = {_ALIASES.get(k, k): v for k, v in given.items() if k not in _ALIASES or _ALIASES[k] not in given}
        if isinstance(body.get("n_probs"), bool):  # OpenAI's `logprobs: true`
            body["n_probs"] = 1 if body["n_probs"] else 0
        for f in fields(cls):
            if f.name not in body or body[f.name] is None or f.name == "logit_bias":
                continue
            value = body[f.name]
            if f.name == "stop":
                value = [value] if isinstance(value, str) else value
                if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or len(value) > MAX_STOPS:
                    raise ValueError(f"stop must be a string or a list of at most {MAX_STOPS} strings")
            elif f.type in ("int", "float"):
                if not _finite_number(value):
                    raise ValueError(f"{f.name} must be a finite number")
                value = int(value) if f.type == "int" else float(value)
            elif f.type == "bool":
                value = bool(value)
            elif f.type == "str" and not isinstance(value, str):
                raise ValueError(f"{f.name} must be a string")
            elif f.name in ("response_fields", "grammar_triggers"):
                if not isinstance(value, list) or len(value) > MAX_FIELDS:
                    raise ValueError(f"{f.name} must be a list of at most {MAX_FIELDS} entries")
                if f.name == "response_fields" and not all(isinstance(s, str) for s in value):
                    raise ValueError("response_fields must be a list of strings")
            setattr(params, f.name, value)
        if params.draft_max > MAX_DRAFT or params.draft_min > MAX_DRAFT:
            raise ValueError(f"speculative.n_max and n_min are at most {MAX_DRAFT}")
        if not 0 <= params.n_probs <= MAX_N_PROBS or params.n_probs != body.get("n_probs", params.n_probs):
            raise ValueError(f"n_probs must be a whole number from 0 to {MAX_N_PROBS}")
        if not 0 <= params.stream_interval <= MOST_STREAM_INTERVAL:
            raise ValueError(f"stream_interval must be from 0 to {MOST_STREAM_INTERVAL:g} seconds")
        if params.json_schema is not None and not params.grammar:
            params.grammar = schema_grammar(params.json_schema)
        if params.grammar_lazy:
            trigger_patterns(params.grammar_triggers)  # checked now, used by the decode loop
        return params


def _finite_number(value: Any) -> bool:
    """A JSON number a C field can hold: no bool, no infinity or NaN, no 400-digit integer."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**62) < value < 2**62
    return isinstance(value, float) and math.isfinite(value)


#: Most triggers one lazy grammar may have, and the longest one.
MAX_TRIGGERS, MAX_TRIGGER_CHARS = 16, 256


def trigger_patterns(triggers: Any) -> list[str]:
    """llama-server's grammar triggers as the full-match regular expressions llama.cpp's lazy grammar takes.

    A `word` switches the grammar on where it appears, `pattern` where the regex
    matches, `pattern_full` when the whole output so far matches; the grammar then
    applies from the first capture group (or the match) on. A word or pattern must
    end the output so far (a token boundary falls right after it): text past the
    trigger that the grammar refuses would abort llama.cpp, so the grammar only
    switches on where what it is fed is exactly the trigger.
    """
    if not isinstance(triggers, list) or not triggers or len(triggers) > MAX_TRIGGERS:
        raise ValueError(f"grammar_triggers must be a list of 1 to {MAX_TRIGGERS} triggers for a lazy grammar")
    anywhere, full = [], []
    for t in triggers:
        kind, value = (t.get("type"), t.get("value")) if isinstance(t, dict) else (None, None)
        if not isinstance(value, str) or not value or len(value) > MAX_TRIGGER_CHARS:
            raise ValueError(f"grammar_triggers: each value must be a string of 1 to {MAX_TRIGGER_CHARS} characters")
        if kind != "word" and not _portable_regex(value):
            raise ValueError(f"grammar_triggers: {value[:40]!r} is not a regular expression llama.cpp takes")
        if kind == "word":
            anywhere.append(re.escape(value))
        elif kind == "pattern":
            anywhere.append(value)
        elif kind == "pattern_full":
            full.append(value)
        else:
            raise ValueError("grammar_triggers: type must be word, pattern or pattern_full")
    if anywhere:
        full.append("^[\\s\\S]*?(" + "|".join(anywhere) + ")$")
    return full


def schema_grammar(schema: Any) -> str:
    """The GBNF grammar that constrains output to JSON matching `schema` (llama.cpp's converter)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if not isinstance(schema, (dict, bool)):
        raise ValueError("json_schema must be a JSON Schema object")
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # noqa: BLE001 - the converter raises bare Exceptions for schemas it cannot express
        raise ValueError(f"json_schema is not usable: {e}") from None
    return _STRING_CHAR.sub(lambda m: m.group(1) + JSON_CHAR, grammar)


#: A character inside a JSON string: anything but a quote, a backslash or a control character, or an escape.
#: The converter's own rule lets raw U+0000-U+001F through, which json.loads rejects.
JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_STRING_CHAR = re.compile(r'^(char ::= )\[\^"\\\\\] \| .*$', re.M)


def _portable_regex(value: str) -> bool:
    """A regex both Python and llama.cpp's ECMAScript engine read the same way (no named groups, lookbehind...)."""
    try:
        re.compile(value)
    except re.error:
        return False
    return not re.search(r"\(\?(?![:=!])|\\[AZzGPpNQEK]", value)


def grammar_sampler(vocab: llama.llama_vocab_p, grammar: str, lazy: list[str] | None = None) -> llama.llama_sampler_p:
    """llama.cpp's grammar sampler, lazy when given trigger patterns; ValueError when the GBNF does not parse."""
    if lazy:
        patterns = (ctypes.c_char_p * len(lazy))(*[p.encode() for p in lazy])
        no_tokens = (llama.llama_token * 1)()
        sampler = llama.llama_sampler_init_grammar_lazy_patterns(
            vocab, grammar.encode(), b"root", patterns, len(lazy), no_tokens, 0
        )
    else:
        sampler = llama.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise ValueError("the grammar does not parse as GBNF with a `root` rule")
    return sampler


def check_grammar(vocab: llama.llama_vocab_p, grammar: str, lazy: list[str] | None = None) -> None:
    """Raise ValueError now, on the HTTP side, for a grammar the decode loop could not use."""
    llama.llama_sampler_free(grammar_sampler(vocab, grammar, lazy))


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Sampler:
    """A llama.cpp sampler chain for one request; freed with `close`."""

    def __init__(
        self, params: SamplingParams, vocab: llama.llama_vocab_p, n_vocab: int, banned: list[int] | None = None
    ) -> None:
        self.penalties = None
        self._row = ctypes.c_float * n_vocab  # a view type for one row of llama.cpp's logits
        self._candidates: np.ndarray | None = None  # post_sampling_probs' candidate array, made on first use
        self.greedy = params.temperature <= 0
        self.banned = sorted(set(banned or ()))
        self.chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        add = lambda s: llama.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        # ignore_eos: end-of-generation tokens can never be picked, as in llama-server
        bias = [*params.logit_bias, *[(t, -math.inf) for t in self.banned]]
        if bias:
            biases = (llama.llama_logit_bias * len(bias))(*[llama.llama_logit_bias(t, b) for t, b in bias])
            add(llama.llama_sampler_init_logit_bias(n_vocab, len(bias), biases))
        penalized = params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
        if penalized and params.repeat_last_n != 0:
            self.penalties = llama.llama_sampler_init_penalties(
                n_vocab, params.repeat_last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
            )
            add(self.penalties)
        self.penalized = self.penalties is not None
        if params.grammar:  # before truncation, so a legal token always survives
            try:
                lazy = trigger_patterns(params.grammar_triggers) if params.grammar_lazy else None
                add(grammar_sampler(vocab, params.grammar, lazy))
            except ValueError:
                self.close()
                raise
        #: Greedy with nothing to reshape the logits but banned tokens: an argmax over llama.cpp's logits
        #: in place, where the chain would first copy all n_vocab candidates (0.16 ms a token for SmolLM2).
        self.argmax = params.temperature <= 0 and not self.penalized and not params.grammar and not params.logit_bias
        if params.temperature <= 0:
            add(llama.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama.llama_sampler_init_top_k(params.top_k))
        if params.typical_p < 1.0:
            add(llama.llama_sampler_init_typical(params.typical_p, max(1, params.min_keep)))
        if params.top_p < 1.0:
            add(llama.llama_sampler_init_top_p(params.top_p, max(1, params.min_keep)))
        if params.min_p > 0.0:
            add(llama.llama_sampler_init_min_p(params.min_p, max(1, params.min_keep)))
        add(llama.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed >= 0 else random.getrandbits(32)
        add(llama.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def accept(self, token: int) -> None:
        """Count a prompt token for the repeat penalties (the grammar only sees generated tokens)."""
        if self.penalties is not None:
            llama.llama_sampler_accept(self.penalties, token)

    def sample(self, ctx: llama.llama_context_p, index: int) -> int:
        """Pick the next token from the logits at batch `index` (and accept it)."""
        if self.argmax:
            row = self._row.from_address(ctypes.addressof(llama.llama_get_logits_ith(ctx, index).contents))
            logits = np.frombuffer(row, dtype=np.float32)
            token = int(logits.argmax())  # the first of equal maxima, as llama.cpp's greedy sampler picks
            if self.banned and token in self.banned:
                allowed = logits.copy()
                allowed[self.banned] = -np.inf
                token = int(allowed.argmax())
            return token
        return int(llama.llama_sampler_sample(self.chain, ctx, index))

    def sample_candidates(
        self, ctx: llama.llama_context_p, index: int, n: int
    ) -> tuple[int, float, list[tuple[int, float]]]:
        """Sample as `sample` does, and also return the chosen token's probability after the chain
        and the n most probable candidates left by it (llama-server's post_sampling_probs)."""
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, index), shape=(self._row._length_,))
        if self._candidates is None:
            self._candidates = np.zeros(len(logits), dtype=_TOKEN_DATA)
        data = self._candidates
        data["id"] = np.arange(len(logits), dtype=np.int32)  # the samplers reorder the array, so set it each time
        data["logit"] = logits
        data["p"] = 0.0
        pointer = data.ctypes.data_as(ctypes.POINTER(llama.llama_token_data))
        array = llama.llama_token_data_array(pointer, len(data), -1, False)
        llama.llama_sampler_apply(self.chain, ctypes.byref(array))  # the samplers work in place, shrinking size
        kept = data[: array.size]
        token = int(kept["id"][array.selected])
        llama.llama_sampler_accept(self.chain, token)
        if self.greedy:  # the greedy sampler picks without probabilities; llama-server's chain gives it 1
            return token, 1.0, [(token, 1.0)]
        p = kept["p"]
        top = np.argpartition(-p, n - 1)[:n] if n < len(p) else np.arange(len(p))
        top = top[np.argsort(-p[top], kind="stable")]
        return token, float(p[array.selected]), [(int(kept["id"][i]), float(p[i])) for i in top if p[i] > 0]

    def close(self) -> None:
        if self.chain:
            llama.llama_sampler_free(self.chain)
            self.chain = None
