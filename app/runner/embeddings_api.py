"""/embedding, /embeddings and /v1/embeddings, as llama-server answers them.

The first two answer a list of `{index, embedding: [vector, ...]}` (one vector
per token with pooling `none`); /v1/embeddings answers OpenAI's shape, floats
or base64, unless the body names its input `content`.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from functools import partial
from typing import Any

import llama_cpp as llama
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from app.runner.embedding import EmbedJob, split_allowed
from app.runner.engine import Engine
from app.runner.http import error, loading, read_body, submit_each
from app.runner.model import Model
from app.runner.prompts import content_parts_text, exceeds_context, split_prompts, tokenize_prompt
from app.runner.sampling import SamplingParams
from app.runner.slot import Chunk, Request
from app.runner.state import RunnerState


def _tokens(model: Model, entry: Any) -> list[int]:
    """One input's tokens: a prompt as /completion takes it, or an OpenAI content array."""
    if isinstance(entry, dict) and "content" in entry:
        return model.tokenize(content_parts_text(entry["content"]), add_special=True, parse_special=True)
    return tokenize_prompt(model, entry)


def _too_long(model: Model, n: int) -> JSONResponse | None:
    """llama-server's refusal of an input the context cannot read, if this one is."""
    if split_allowed(model):
        if n >= model.n_ctx_slot:
            message = exceeds_context(n, model.n_ctx_slot)
            return error(400, message, "exceed_context_size_error", n_prompt_tokens=n, n_ctx=model.n_ctx_slot)
        return None
    if n > model.n_ubatch:
        message = f"input ({n} tokens) is too large to process. increase the physical batch size"
        message += f" (current batch size: {model.n_ubatch})"
        return error(500, message, "server_error")
    if n > model.n_ctx_slot:
        message = f"input ({n} tokens) is larger than the max context size ({model.n_ctx_slot} tokens). skipping"
        return error(400, message, "exceed_context_size_error")
    return None


async def embeddings(state: RunnerState, http: HttpRequest, oai: bool = False) -> Response:
    """Embed one input or several, each in turn in a free slot."""
    engine, model = state.engine, state.model
    if engine is None or model is None:
        return loading()
    if not state.options.embedding:
        return error(
            501, "This server does not support embeddings. Start it with `--embeddings`", "not_supported_error"
        )
    if oai and model.pooling == llama.LLAMA_POOLING_TYPE_NONE:
        return error(400, "Pooling type 'none' is not OAI compatible. Please use a different pooling type")
    try:
        body = await read_body(http)
        if "input" in body:
            value = body["input"]
        elif "content" in body:
            value, oai = body["content"], False  # `content` is llama-server's own field: its own answer
        else:
            raise ValueError('"input" or "content" must be provided')
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ValueError("The format to return the embeddings in. Can be either float or base64")
        normalize = body.get("embd_normalize")
        normalize = 2 if normalize is None else normalize
        if isinstance(normalize, bool) or not isinstance(normalize, int) or not -1 <= normalize <= 64:
            raise ValueError("embd_normalize must be a whole number from -1 to 64")
        inputs = [_tokens(model, entry) for entry in split_prompts(value)]
    except ValueError as e:
        message = str(e).replace('"prompt" must not be empty', '"input" must not be empty')
        return error(400, message)
    if any(not tokens for tokens in inputs):
        return error(400, "Input content cannot be empty")
    for i, tokens in enumerate(inputs):
        if state.options.truncate_prompts:  # loam's choice: embed what fits rather than refuse
            inputs[i] = tokens = tokens[
                : model.n_ctx_slot - 1 if split_allowed(model) else min(model.n_ubatch, model.n_ctx_slot)
            ]
        if refusal := _too_long(model, len(tokens)):
            return refusal
    results = await _embed_all(engine, http, inputs, EmbedJob(normalize))
    if isinstance(results, Response):
        return results
    if not oai:
        return JSONResponse([{"index": i, "embedding": r["embedding"]} for i, r in enumerate(results)])
    return JSONResponse(_oai(body, state.options.model_name, results, fmt == "base64"))


async def _embed_all(
    engine: Engine, http: HttpRequest, inputs: list[list[int]], job: EmbedJob
) -> list[Chunk] | Response:
    """Every input's result, in order; the first error as the answer instead."""
    loop = asyncio.get_running_loop()
    makers = [partial(Request, tokens, SamplingParams(), loop=loop, embedding=job, stream=False) for tokens in inputs]
    chunks, requests, watcher = submit_each(engine, http, makers)
    results: dict[int, Chunk] = {}
    try:
        while len(results) < len(requests):
            chunk = await chunks.get()
            if chunk is None:
                return error(499, "the client went away")
            if "error" in chunk:
                return error(500, chunk["error"], "server_error")
            results[chunk["index"]] = chunk
    finally:
        watcher.cancel()
        for request in requests:
            engine.cancel(request)
    return [results[i] for i in range(len(requests))]


def _oai(body: dict[str, Any], model_name: str, results: list[Chunk], use_base64: bool) -> dict[str, Any]:
    data = []
    for i, result in enumerate(results):
        vector = result["embedding"][0]
        item: dict[str, Any] = {"embedding": vector, "index": i, "object": "embedding"}
        if use_base64:
            raw = struct.pack(f"<{len(vector)}f", *vector)
            item = {"embedding": base64.b64encode(raw).decode(), "index": i, "object": "embedding"}
            item["encoding_format"] = "base64"
        data.append(item)
    n = sum(r["tokens_evaluated"] for r in results)
    model = body.get("model", model_name)
    return {"model": model, "object": "list", "usage": {"prompt_tokens": n, "total_tokens": n}, "data": data}
