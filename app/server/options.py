"""Request options, split the way the runner needs them: what fixes a load and what shapes one reply.

Ollama mixes both kinds in one `options` object. Load options (context size,
GPU layers, threads...) decide how a runner is started, so a change reloads the
model; sampling options travel with each request. Modelfile parameters are the
defaults under a request's own options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.store.parameters import PARAMETERS, ParameterError, coerce

DEFAULT_NUM_CTX = 4096
#: Tokens a draft model proposes per step when draft_num_predict is unset (llama.cpp's --draft-max default).
DEFAULT_DRAFT_NUM_PREDICT = 16
#: Request options that map to runner /completion fields under another name.
_SAMPLING_NAMES = {
    "num_predict": "n_predict",
    "num_keep": "n_keep",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "ignore_eos": "ignore_eos",
}


@dataclass(frozen=True)
class LoadOptions:
    """How a runner is started; two requests with different LoadOptions need different runners."""

    num_ctx: int = DEFAULT_NUM_CTX
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    num_thread: int = 0
    use_mmap: bool | None = None  # None: the runner's choice (app.runner.model.resolve_load_mode)
    use_mlock: bool = False
    parallel: int = 1
    draft_num_predict: int = DEFAULT_DRAFT_NUM_PREDICT  # the runner's --draft-max, for a model with a DRAFT


def merged(defaults: dict[str, Any], request: dict[str, Any] | None) -> dict[str, Any]:
    """Model parameters overlaid with a request's options, each checked; ValueError names a bad one."""
    out = dict(defaults)
    for name, value in (request or {}).items():
        if value is None:
            continue
        if name not in PARAMETERS:
            continue  # Ollama ignores options it does not know
        try:
            out[name] = coerce(name, value)
        except ParameterError as e:
            raise ValueError(str(e)) from None
    return out


def load_options(options: dict[str, Any], context_length: int | None, parallel: int) -> LoadOptions:
    """The load-time part of merged options; num_ctx capped at what the model was trained for.

    `parallel` is the server's slot count (LOAM_NUM_PARALLEL); a request's
    `num_parallel` option overrides it, so a benchmark can load a model with
    as many slots as it has concurrent clients.
    """
    num_ctx = int(options.get("num_ctx") or DEFAULT_NUM_CTX)
    if context_length:
        num_ctx = min(num_ctx, context_length)
    return LoadOptions(
        num_ctx=max(num_ctx, 16),
        num_batch=int(options.get("num_batch") or 512),
        num_gpu=int(options.get("num_gpu", -1)),
        main_gpu=int(options.get("main_gpu", 0)),
        num_thread=int(options.get("num_thread") or 0),
        use_mmap=None if options.get("use_mmap") is None else bool(options["use_mmap"]),
        use_mlock=bool(options.get("use_mlock", False)),
        parallel=int(options.get("num_parallel") or parallel),
        draft_num_predict=int(options.get("draft_num_predict") or DEFAULT_DRAFT_NUM_PREDICT),
    )


def sampling_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The runner /completion fields for merged options (llama-server's names)."""
    body = {_SAMPLING_NAMES[k]: v for k, v in options.items() if k in _SAMPLING_NAMES}
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    return body
