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

from app.server.generate import Call, Done, Piece, gather, renormalized, resolve
from app.server.http import BadRequest, body_of, guarded, primed, sse, unless_disconnected
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


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI sampling fields as Ollama options."""
    names = {
        "temperature": "temperature",
        "top_p": "top_p",
        "seed": "seed",
        "frequency_penalty": "frequency_penalty",
        "presence_penalty": "presence_penalty",
        "stop": "stop",
        "max_tokens": "num_predict",
        "max_completion_tokens": "num_predict",
    }
    options = {ollama: body[key] for key, ollama in names.items() if body.get(key) is not None}
    if body.get("n", 1) not in (1, None):
        raise BadRequest("n must be 1: loam returns one choice")
    return options


def _call(state: ServerState, body: dict[str, Any]) -> Call:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required")
    call = Call(resolve(state.store, name), _options(body), state.settings.keep_alive)
    call.json_schema = _response_schema(body.get("response_format"))
    return call


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    """OpenAI's response_format: json_object for any object, json_schema for a given schema."""
    if not isinstance(response_format, dict) or response_format.get("type") in (None, "text"):
        return None
    if response_format["type"] == "json_object":
        return {"type": "object"}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if response_format["type"] == "json_schema" and isinstance(schema, dict):
        return schema
    raise BadRequest("response_format must be text, json_object, or json_schema with a schema")


def _text(content: Any) -> str:
    """A message's content: a string, or the text parts of a list of content parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise BadRequest("message content must be a string or a list of content parts")


def _usage(done: Done) -> dict[str, Any]:
    prompt = done.prompt_tokens or done.prompt_eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": done.eval_count,
        "total_tokens": prompt + done.eval_count,
        "prompt_tokens_details": {"cached_tokens": max(0, prompt - done.prompt_eval_count)},
    }


async def chat_completions(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    call = _call(state, body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list")
    messages = [{"role": m.get("role"), "content": _text(m.get("content"))} for m in raw if isinstance(m, dict)]
    for m in messages:
        if m["role"] == "developer":
            m["role"] = "system"
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"message role {m['role']!r} is not system, user, assistant or tool")
    items = state.generator.chat(call, messages, body.get("tools"))
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": call.model.name}
    head["system_fingerprint"] = "fp_loam"
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse(_chat_chunks(await primed(items), head, include_usage), error_shape)
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
    body = await body_of(request)
    call = _call(state, body)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    items = state.generator.generate(call, prompt, suffix=body.get("suffix") or "")
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": call.model.name}
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse(_completion_chunks(await primed(items), head, include_usage), error_shape)
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
    resolved = resolve(state.store, request.path_params["model"])
    return JSONResponse(_model_entry(resolved.name, resolved.details.stored.modified))


async def embeddings(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    call = _call(state, body)
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise BadRequest("input must be a string or a non-empty list of strings")
    vectors, count, _ = await state.generator.embed(call, inputs, truncate=True)
    dims = body.get("dimensions")
    if isinstance(dims, int) and dims > 0:
        vectors = [renormalized(v[:dims]) for v in vectors]
    as_base64 = body.get("encoding_format") == "base64"
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
