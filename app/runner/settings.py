"""What the runner reports about a request: llama-server's generation_settings and timings.

The keys are llama-server's own, so its clients read them unchanged; samplers
the runner does not have are reported at the neutral values that leave them off.
"""

from __future__ import annotations

import math
from typing import Any

from app.runner.sampling import DEFAULT_SEED, SamplingParams

#: llama-server's sampler order, as `samplers` reports it; the runner applies the ones it has in this order.
SAMPLERS = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def _finite(x: float) -> float | None:
    """JSON has no infinity: llama-server writes -inf biases as null."""
    return x if math.isfinite(x) else None


def generation_settings(params: SamplingParams, only_metrics: bool = False) -> dict[str, Any]:
    """llama-server's `task_params::to_json` for a request (the /props subset with `only_metrics`)."""
    seed = params.seed if params.seed >= 0 else DEFAULT_SEED
    settings: dict[str, Any] = {
        "seed": seed,
        "temperature": params.temperature,
        "dynatemp_range": 0.0,
        "dynatemp_exponent": 1.0,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "min_p": params.min_p,
        "top_n_sigma": -1.0,
        "xtc_probability": 0.0,
        "xtc_threshold": 0.1,
        "typical_p": params.typical_p,
        "repeat_last_n": params.repeat_last_n,
        "repeat_penalty": params.repeat_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "dry_multiplier": 0.0,
        "dry_base": 1.75,
        "dry_allowed_length": 2,
        "dry_penalty_last_n": -1,
        "dry_sequence_breakers": ["\n", ":", '"', "*"],
        "mirostat": 0,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "adaptive_target": -1.0,
        "adaptive_decay": 0.9,
        "stop": list(params.stop),
        "max_tokens": params.n_predict,
        "n_predict": params.n_predict,
        "n_keep": params.n_keep,
        "n_discard": params.n_discard,
        "ignore_eos": params.ignore_eos,
        "stream": params.stream,
        "logit_bias": [{"bias": _finite(b), "token": t} for t, b in params.logit_bias],
        "n_probs": params.n_probs,
        "min_keep": params.min_keep,
        "grammar": params.grammar,
        "grammar_lazy": params.grammar_lazy,
        "grammar_triggers": list(params.grammar_triggers),
        "preserved_tokens": [],
        "chat_format": "Content-only",
        "reasoning_format": "none",
        "reasoning_in_content": False,
        "generation_prompt": "",
        "samplers": list(SAMPLERS),
        "speculative.types": "ngram" if params.draft_max != 0 else "none",
        "timings_per_token": params.timings_per_token,
        "post_sampling_probs": params.post_sampling_probs,
        "backend_sampling": False,
        "lora": [],
    }
    if only_metrics:
        for key in ("dry_sequence_breakers", "stop", "logit_bias", "grammar", "grammar_lazy"):
            del settings[key]
        for key in ("grammar_triggers", "preserved_tokens"):
            del settings[key]
    return settings


def timings(
    cache_n: int,
    prompt_n: int,
    prompt_ms: float,
    predicted_n: int,
    predicted_ms: float,
    drafted: int = 0,
    accepted: int = 0,
) -> dict[str, float | int]:
    """llama-server's timings object; generation rates leave out the first token, which reading the prompt made."""
    out: dict[str, float | int] = {
        "cache_n": cache_n,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n > 0 else 0.0,
        "prompt_per_second": 1e3 / prompt_ms * prompt_n if prompt_ms > 0 else 0.0,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / (predicted_n - 1) if predicted_n > 1 else 0.0,
        "predicted_per_second": 1e3 / predicted_ms * (predicted_n - 1) if predicted_ms > 0 else 0.0,
    }
    if drafted > 0:
        out["draft_n"], out["draft_n_accepted"] = drafted, accepted
    return out
