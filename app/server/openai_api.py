"""OpenAI's API on top of the same generator: chat and text completions, models, embeddings."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
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
from app.server.generate import Call, Done, Piece, check_capabilities, gather, renormalized, resolve
from app.server.http import guarded, parsed, primed, sse, unless_disconnected
from app.server.state import ServerState
from app.tools.calls import ToolCall

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
    call.logprobs = body.logprob_count()
    call.tools, call.tool_choice, call.think = body.tools or None, body.choice(), body.think()
    call.parallel_calls = body.parallel_tool_calls
    messages = body.internal_messages()
    check_capabilities(call, images=any(m.get("images") for m in messages))
    items = state.generator.chat(call, messages)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": call.model.name}
    head["system_fingerprint"] = "fp_loam"
    if body.stream:
        return sse(_chat_chunks(await primed(items), head, body.include_usage(), call), error_shape)
    text, reasoning, done = await unless_disconnected(request, gather(items))
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning_content"] = reasoning
    if done.tool_calls:
        message["tool_calls"] = openai_calls(done.tool_calls)
        message["content"] = text or None
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": "tool_calls" if done.tool_calls else _FINISH.get(done.reason, "stop"),
        "logprobs": _chat_logprobs(call, done.logprobs),
    }
    return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": _usage(done)})


def openai_calls(calls: list[ToolCall], first: int = 0, indexed: bool = False) -> list[dict[str, Any]]:
    """Tool calls in OpenAI's shape: an id, type function, arguments as JSON text (and an index in stream deltas)."""
    out = []
    for i, call in enumerate(calls, first):
        entry: dict[str, Any] = {"index": i} if indexed else {}
        entry |= {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
        entry["function"] = {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}
        out.append(entry)
    return out


def _token(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": entry.get("token", ""),
        "logprob": float(entry["logprob"]),
        "bytes": list(entry.get("bytes") or []),
    }


def _chat_logprobs(call: Call, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """OpenAI's choice.logprobs: {content: [{token, logprob, bytes, top_logprobs}]}, None when not asked for."""
    if call.logprobs is None:
        return None
    content = [{**_token(e), "top_logprobs": [_token(t) for t in e.get("top_logprobs") or []]} for e in entries]
    return {"content": content, "refusal": None}


async def _chat_chunks(
    items: AsyncIterator[Piece | Done], head: dict[str, Any], include_usage: bool, call: Call
) -> AsyncIterator[dict[str, Any]]:
    chunk = {**head, "object": "chat.completion.chunk"}
    first = True
    calls = 0
    async for item in items:
        if isinstance(item, Done):
            finish = "tool_calls" if calls else _FINISH.get(item.reason, "stop")
            logprobs = _chat_logprobs(call, item.logprobs) if item.logprobs else None
            yield {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish, "logprobs": logprobs}]}
            if include_usage:
                yield {**chunk, "choices": [], "usage": _usage(item)}
            return
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        first = False
        if item.content:
            delta["content"] = item.content
        if item.thinking:
            delta["reasoning_content"] = item.thinking
        if item.tool_calls:
            delta["tool_calls"] = openai_calls(item.tool_calls, first=calls, indexed=True)
            calls += len(item.tool_calls)
        logprobs = _chat_logprobs(call, item.logprobs)
        yield {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": logprobs}]}


@dataclass
class Legacy:
    """The text completion's logprobs, OpenAI's older shape: parallel lists, one entry per token."""

    top: int | None  # alternatives per token; None: no logprobs asked for
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    length: int = 0  # characters of text so far, where the next token's offset starts

    def add(self, token: str, logprob: float | None, top: dict[str, float] | None, offset: int | None = None) -> None:
        self.tokens.append(token)
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(top)
        self.text_offset.append(self.length if offset is None else offset)

    def add_generated(self, entries: list[dict[str, Any]]) -> None:
        """The runner's entries for generated tokens; each token's text follows the one before."""
        for e in entries:
            alternatives = {t.get("token", ""): float(t["logprob"]) for t in e.get("top_logprobs") or []}
            token = str(e.get("token", ""))
            self.add(token, float(e["logprob"]), alternatives | {token: float(e["logprob"])})
            self.length += len(token)

    def part(self, since: int = 0) -> dict[str, Any] | None:
        """The lists from entry `since` on, as the wire has them; None when no logprobs were asked for."""
        if self.top is None:
            return None
        return {
            "tokens": self.tokens[since:],
            "token_logprobs": self.token_logprobs[since:],
            "top_logprobs": self.top_logprobs[since:],
            "text_offset": self.text_offset[since:],
        }


async def _echoed(state: ServerState, call: Call, prompt: str | list[int], legacy: Legacy) -> tuple[str, list[int]]:
    """The prompt's text and tokens (as the runner tokenizes it); with logprobs, its tokens' entries in `legacy`.

    Each token's logprob is log p(token | the tokens before it), from the runner's
    /score in one pass: the first token has none (null), as OpenAI answers.
    """
    if isinstance(prompt, str):
        pairs = await state.generator.prompt_tokens(call, prompt)
        tokens, pieces, text = [t for t, _ in pairs], [p for _, p in pairs], prompt
    else:
        tokens = prompt
        pieces = await state.generator.pieces(call, tokens)
        text = await state.generator.detokenize(call, tokens)
    if legacy.top is None:
        legacy.length = len(text)
        return text, tokens
    scored: list[float] = []
    tops: list[list[list[float]]] = []
    if len(tokens) > 1:
        answer = await state.generator.score(call, [{"tokens": tokens, "from": 1}], top_k=legacy.top)
        window = answer["windows"][0]
        scored, tops = window["logprobs"], window.get("top") or []
    ids = sorted({int(i) for position in tops for i, _ in position})
    spelled = dict(zip(ids, await state.generator.pieces(call, ids), strict=True)) if ids else {}
    offsets = text_offsets(text, pieces)
    for j, (piece, offset) in enumerate(zip(pieces, offsets, strict=True)):
        if j == 0:
            legacy.add(piece, None, None, offset)
            continue
        logprob = float(scored[j - 1])
        alternatives = {spelled[int(i)]: float(lp) for i, lp in (tops[j - 1] if tops else [])}
        legacy.add(piece, logprob, alternatives | {piece: logprob}, offset)
    legacy.length = len(text)
    return text, tokens


def text_offsets(text: str, pieces: list[str]) -> list[int]:
    """Where each token's piece starts in `text`, in characters.

    A piece the text does not hold at that point (an added BOS, half of a
    character split across tokens) starts where the text stands; the next piece
    the text holds is looked for further on, so offsets keep up after it.
    """
    out, at = [], 0
    for piece in pieces:
        if piece and text.startswith(piece, at):
            out.append(at)
            at += len(piece)
        elif piece and "\ufffd" not in piece and (found := text.find(piece, at)) >= 0 and found - at <= 4:
            out.append(found)  # after partial characters: this piece starts a few characters on
            at = found + len(piece)
        else:
            out.append(at)
    return out


async def completions(state: ServerState, request: Request) -> Response:
    body = await parsed(request, CompletionRequest)
    call = _call(state, body)
    call.logprobs = body.logprobs
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": call.model.name}
    legacy = Legacy(body.logprobs)
    raw = body.echo or isinstance(body.prompt, list)  # token ids, or an echo's continuation: never templated
    if raw:
        call.think = False  # the text as the model wrote it
    echo_text, tokens = await _echoed(state, call, body.prompt, legacy) if body.echo else ("", None)
    if tokens is None and isinstance(body.prompt, list):
        tokens = body.prompt
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if limit == 0 and body.echo:
        items: AsyncIterator[Piece | Done] | None = None
    elif tokens is not None:
        items = state.generator.generate(call, "", tokens=tokens)
    else:
        items = state.generator.generate(call, str(body.prompt), suffix=body.suffix or "")
    if body.stream:
        items = items and await primed(items)
        stream = _completion_chunks(items, head, body.include_usage(), echo_text, legacy, len(tokens or []))
        return sse(stream, error_shape)
    if items is None:
        done = Done("length", prompt_tokens=len(tokens or []))
        text = ""
    else:
        text, _, done = await unless_disconnected(request, gather(items))
    legacy.add_generated(done.logprobs)
    choice = {
        "index": 0,
        "text": echo_text + text,
        "finish_reason": _FINISH.get(done.reason, "stop"),
        "logprobs": legacy.part(),
    }
    return JSONResponse({**head, "object": "text_completion", "choices": [choice], "usage": _usage(done)})


async def _completion_chunks(
    items: AsyncIterator[Piece | Done] | None,
    head: dict[str, Any],
    include_usage: bool,
    echo: str,
    legacy: Legacy,
    prompt_count: int,
) -> AsyncIterator[dict[str, Any]]:
    chunk = {**head, "object": "text_completion"}
    sent = 0  # legacy entries already sent

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        nonlocal sent
        part = legacy.part(sent)
        sent = len(legacy.tokens)
        return {**chunk, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": part}]}

    if echo:
        yield choice(echo, None)
    if items is None:
        yield choice("", "length")
        if include_usage:
            yield {**chunk, "choices": [], "usage": _usage(Done("length", prompt_tokens=prompt_count))}
        return
    async for item in items:
        if isinstance(item, Done):
            legacy.add_generated(item.logprobs)
            yield choice("", _FINISH.get(item.reason, "stop"))
            if include_usage:
                yield {**chunk, "choices": [], "usage": _usage(item)}
            return
        legacy.add_generated(item.logprobs)
        yield choice(item.content, None)


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
