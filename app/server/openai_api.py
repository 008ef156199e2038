"""OpenAI's API on top of the same generator: chat and text completions, models, embeddings."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIEmbeddingRequest,
    OpenAIRequest,
    clip,
    response_schema,
)
from app.errors import ModelNotFound
from app.server.generate import Call, Done, Piece, gather, renormalized, resolve
from app.server.http import guarded, parsed, primed, sse, unless_disconnected
from app.server.state import ServerState

_FINISH = {"stop": "stop", "length": "length"}


def error_shape(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error", 503: "server_busy"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def routes(state: ServerState) -> list[Route]:
    def r(path: str, handler: Callable[[ServerState, Request], Any], methods: list[str]) -> Route:
        async def call(request: Request) -> Response:
            return await handler(state, request)

        return Route(path, guarded(call, error_shape), methods=methods)

    return [
        r("/v1/chat/completions", chat_completions, ["POST"]),
        r("/v1/completions", completions, ["POST"]),
        r("/v1/models", models, ["GET"]),
        r("/v1/models/{model:path}", model, ["GET"]),
        r("/v1/embeddings", embeddings, ["POST"]),
    ]


def _resolve(state: ServerState, name: str) -> Any:
    """The stored model `name`, or a 404 that echoes at most ~100 characters of it."""
    try:
        return resolve(state.store, name)
    except ModelNotFound:
        raise ModelNotFound(f'model "{clip(name)}" not found, try pulling it first') from None


def _call(state: ServerState, body: OpenAIRequest | OpenAIEmbeddingRequest) -> Call:
    """A checked request as the generator's Call; sampling fields become Ollama options."""
    options = body.options() if isinstance(body, OpenAIRequest) else {}
    call = Call(_resolve(state, body.model), options, state.settings.keep_alive)
    if isinstance(body, OpenAIRequest):
        call.json_schema = response_schema(body.response_format)
    return call


def _usage(done: Done) -> dict[str, Any]:
    prompt = done.prompt_tokens or done.prompt_eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": done.eval_count,
        "total_tokens": prompt + done.eval_count,
        "prompt_tokens_details": {"cached_tokens": max(0, prompt - done.prompt_eval_count)},
    }


async def chat_completions(state: ServerState, request: Request) -> Response:
    body = await parsed(request, ChatCompletionRequest)
    call = _call(state, body)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages]
    items = state.generator.chat(call, messages, body.tools)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": call.model.name}
    head["system_fingerprint"] = "fp_loam"
    if body.stream:
        return sse(_chat_chunks(await primed(items), head, body.include_usage()), error_shape)
    text, reasoning, done = await unless_disconnected(request, gather(items))
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning"] = reasoning
    choice = {"index": 0, "message": message, "finish_reason": _FINISH.get(done.reason, "stop"), "logprobs": None}
    return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": _usage(done)})


async def _chat_chunks(
    items: AsyncIterator[Piece | Done], head: dict[str, Any], include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    chunk = {**head, "object": "chat.completion.chunk"}
    first = True
    async for item in items:
        if isinstance(item, Done):
            finish = _FINISH.get(item.reason, "stop")
            yield {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None}]}
            if include_usage:
                yield {**chunk, "choices": [], "usage": _usage(item)}
            return
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        first = False
        if item.content:
            delta["content"] = item.content
        if item.thinking:
            delta["reasoning"] = item.thinking
        yield {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]}


async def completions(state: ServerState, request: Request) -> Response:
    body = await parsed(request, CompletionRequest)
    call = _call(state, body)
    items = state.generator.generate(call, body.prompt, suffix=body.suffix or "")
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": call.model.name}
    if body.stream:
        return sse(_completion_chunks(await primed(items), head, body.include_usage()), error_shape)
    text, _, done = await unless_disconnected(request, gather(items))
    choice = {"index": 0, "text": text, "finish_reason": _FINISH.get(done.reason, "stop"), "logprobs": None}
    return JSONResponse({**head, "object": "text_completion", "choices": [choice], "usage": _usage(done)})


async def _completion_chunks(
    items: AsyncIterator[Piece | Done], head: dict[str, Any], include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    chunk = {**head, "object": "text_completion"}
    async for item in items:
        if isinstance(item, Done):
            finish = _FINISH.get(item.reason, "stop")
            yield {**chunk, "choices": [{"index": 0, "text": "", "finish_reason": finish, "logprobs": None}]}
            if include_usage:
                yield {**chunk, "choices": [], "usage": _usage(item)}
            return
        yield {**chunk, "choices": [{"index": 0, "text": item.content, "finish_reason": None, "logprobs": None}]}


def _model_entry(name: str, modified: float) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(modified),
        "owned_by": name.split("/")[0] if "/" in name else "library",
    }


async def models(state: ServerState, request: Request) -> Response:
    data = [_model_entry(m.name.display, m.modified) for m in state.store.list()]
    return JSONResponse({"object": "list", "data": data})


async def model(state: ServerState, request: Request) -> Response:
    resolved = _resolve(state, request.path_params["model"])
    return JSONResponse(_model_entry(resolved.name, resolved.details.stored.modified))


async def embeddings(state: ServerState, request: Request) -> Response:
    body = await parsed(request, OpenAIEmbeddingRequest)
    call = _call(state, body)
    vectors, count, _ = await state.generator.embed(call, body.input, truncate=True)
    dims = body.dimensions
    if isinstance(dims, int) and dims > 0:
        vectors = [renormalized(v[:dims]) for v in vectors]
    as_base64 = body.encoding_format == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v} for i, v in enumerate(vectors)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": call.model.name,
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
    )


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
