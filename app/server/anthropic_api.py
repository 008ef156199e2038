"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) on top of the same generator.

Content blocks (text, tool_use, tool_result, thinking) become the internal
Ollama-shaped messages; the reply goes back as blocks with Anthropic's stop
reasons, or as its named stream events. Errors keep Anthropic's shape,
{"type": "error", "error": {"type": ..., "message": ...}}, so its SDK raises the
matching exception class.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import ConfigDict, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api import FieldError, RequiredName, Wire, usable_schema
from app.server.agent_wire import (
    Event,
    Part,
    TokenLimit,
    agent_call,
    collect,
    function_spec,
    named_sse,
    new_id,
    options_of,
    parts,
)
from app.server.generate import Call, Done, Piece
from app.server.http import guarded, parsed, primed, unless_disconnected
from app.server.prompt import render_chat
from app.server.state import ServerState
from app.tools.calls import ToolCall

_ERRORS = {400: "invalid_request_error", 404: "not_found_error", 503: "overloaded_error"}
_CUSTOM = (None, "custom")


def error_shape(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body; its SDK picks the exception class from the status and reads `error.message`."""
    return {"type": "error", "error": {"type": _ERRORS.get(status, "api_error"), "message": message}}


def _blocks(value: Any) -> Any:
    """A string stands for one text block, as the API allows for message and tool_result content."""
    if value is None:
        return []
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class Block(Wire):
    """One content block; which fields count depends on its type."""

    type: Literal["text", "tool_use", "tool_result", "thinking", "redacted_thinking", "image", "document"]
    text: str = ""
    id: str = ""
    name: str = ""
    input: dict[str, Any] = {}
    tool_use_id: str = ""
    content: list[Block] = []
    is_error: bool = False
    thinking: str = ""

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        return _blocks(value)

    def plain(self) -> str:
        """The text a tool_result carries (its text blocks joined)."""
        return "".join(b.text for b in self.content if b.type == "text")


class AnthropicMessage(Wire):
    role: Literal["user", "assistant"]
    content: list[Block]

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        return _blocks(value)


class Tool(Wire):
    """A client tool: name, description, input_schema. Server tools (a versioned `type`) are refused."""

    name: RequiredName
    description: str | None = None
    input_schema: dict[str, Any] = {}
    type: str | None = None

    @field_validator("type")
    @classmethod
    def _custom_only(cls, value: str | None) -> str | None:
        if value not in _CUSTOM:
            raise ValueError(f"{value[:40]} is a server tool, which loam does not run; send tools with an input_schema")
        return value


class ToolChoice(Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str = ""
    disable_parallel_tool_use: bool = False

    def internal(self) -> str:
        """As the generator takes it: "auto", "none", "required" or a tool's name."""
        return {"any": "required", "tool": self.name}.get(self.type, self.type)


class Thinking(Wire):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = None


class CountTokensRequest(Wire):
    """What count_tokens reads; a message request adds the sampling fields."""

    model: RequiredName
    messages: list[AnthropicMessage]
    system: str | list[Block] = ""
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None

    model_config = ConfigDict(extra="ignore", strict=True)

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, value: list[AnthropicMessage]) -> list[AnthropicMessage]:
        if not value:
            raise ValueError("must be a non-empty list")
        return value

    @field_validator("system", mode="before")
    @classmethod
    def _system(cls, value: Any) -> Any:
        return value if isinstance(value, str) else _blocks(value)

    def system_text(self) -> str:
        return self.system if isinstance(self.system, str) else "\n\n".join(b.text for b in self.system)

    def think(self) -> bool | None:
        kind = self.thinking.type if self.thinking else None
        return {"enabled": True, "disabled": False}.get(kind or "")

    def choice(self) -> str | None:
        return self.tool_choice.internal() if self.tool_choice else None


class OutputConfig(Wire):
    format: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: TokenLimit
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] = []
    stream: bool = False
    output_config: OutputConfig | None = None

    def json_schema(self) -> dict[str, Any] | None:
        """output_config.format ({"type": "json_schema", "schema": ...}) as the schema the reply is held to."""
        fmt = self.output_config.format if self.output_config else None
        if not fmt:
            return None
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise FieldError("output_config.format", 'must be {"type": "json_schema", "schema": {...}}')
        try:
            return usable_schema(fmt["schema"])
        except ValueError as e:
            raise FieldError("output_config.format.schema", str(e)) from None

    def options(self) -> dict[str, Any]:
        return options_of(
            {
                "max_tokens": ("num_predict", self.max_tokens),
                "temperature": ("temperature", self.temperature),
                "top_p": ("top_p", self.top_p),
                "top_k": ("top_k", self.top_k),
                "stop_sequences": ("stop", self.stop_sequences or None),
            }
        )


def routes(state: ServerState) -> list[Route]:
    def r(path: str, handler: Any) -> Route:
        async def endpoint(request: Request) -> Response:
            return await handler(state, request)

        return Route(path, guarded(endpoint, error_shape), methods=["POST"])

    return [r("/v1/messages", messages), r("/v1/messages/count_tokens", count_tokens)]


def messages_of(body: CountTokensRequest) -> list[dict[str, Any]]:
    """The conversation as internal chat messages: tool_result blocks become tool turns, in their place."""
    system = body.system_text()
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    names: dict[str, str] = {}  # tool_use id -> tool name, for the results that answer them
    for i, message in enumerate(body.messages):
        for j, block in enumerate(message.content):
            for inner in [block, *block.content]:
                if inner.type in ("image", "document"):
                    raise ValueError(f"messages[{i}].content[{j}]: {inner.type} blocks are not supported; send text")
        if message.role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": "".join(b.text for b in message.content)}
            thinking = "".join(b.thinking for b in message.content if b.type == "thinking")
            if thinking:
                turn["thinking"] = thinking
            calls = [b for b in message.content if b.type == "tool_use"]
            if calls:
                turn["tool_calls"] = [{"id": b.id, "function": {"name": b.name, "arguments": b.input}} for b in calls]
                names.update((b.id, b.name) for b in calls)
            out.append(turn)
            continue
        text = ""
        for block in message.content:
            if block.type != "tool_result":
                text += block.text
                continue
            if text:
                out.append({"role": "user", "content": text})
                text = ""
            result = f"Error: {block.plain()}" if block.is_error else block.plain()
            out.append({"role": "tool", "content": result, "tool_call_id": block.tool_use_id})
            if block.tool_use_id in names:
                out[-1]["tool_name"] = names[block.tool_use_id]
        if text or not any(b.type == "tool_result" for b in message.content):
            out.append({"role": "user", "content": text})
    return out


def _call(state: ServerState, body: CountTokensRequest, options: dict[str, Any]) -> Call:
    tools = [function_spec(t.name, t.description, t.input_schema) for t in body.tools]
    parallel = not (body.tool_choice and body.tool_choice.disable_parallel_tool_use)
    choice, think = body.choice(), body.think()
    return agent_call(state, body.model, options, tools=tools, tool_choice=choice, think=think, parallel=parallel)


async def count_tokens(state: ServerState, request: Request) -> Response:
    """The prompt's length as the model tokenizes it: the conversation rendered by its template, as chat renders it."""
    body = await parsed(request, CountTokensRequest)
    call = _call(state, body, {})
    tools = call.tools if call.tool_choice != "none" else None  # as the generator offers them
    spec, conversation = call.model.spec(), messages_of(body)
    rendered = await asyncio.to_thread(
        render_chat, spec, conversation, count_tokens=lambda _: 0, num_ctx=1, tools=tools, think=call.think
    )
    tokens = await state.generator.prompt_tokens(call, rendered.prompt)
    return JSONResponse({"input_tokens": len(tokens)})


async def messages(state: ServerState, request: Request) -> Response:
    body = await parsed(request, MessagesRequest)
    call = _call(state, body, body.options())
    call.json_schema = body.json_schema()
    items = state.generator.chat(call, messages_of(body))
    head = {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": call.model.name}
    if body.stream:
        return named_sse(_events(await primed(items), head, body.stop_sequences), _stream_error)
    reply = await unless_disconnected(request, collect(items))
    content = [_block(b) for b in reply.blocks]
    if not any(b.kind == "text" for b in reply.blocks) and not reply.calls:
        content.append({"type": "text", "text": ""})
    assert reply.done is not None
    reason, sequence = _stop(reply.done, bool(reply.calls), body.stop_sequences)
    out = {**head, "content": content, "stop_reason": reason, "stop_sequence": sequence, "usage": _usage(reply.done)}
    return JSONResponse(out)


def _stop(done: Done, called: bool, stop_sequences: list[str]) -> tuple[str, str | None]:
    """Anthropic's stop_reason, and the stop sequence that ended the reply when one did."""
    if called:
        return "tool_use", None
    if done.reason == "length":
        return "max_tokens", None
    word = done.stop_word  # the stop string the runner matched, when the generator reports it
    if word and word in stop_sequences:
        return "stop_sequence", word
    return "end_turn", None


def _usage(done: Done) -> dict[str, Any]:
    """Anthropic counts cached prompt tokens apart: input_tokens + cache_read_input_tokens is the whole prompt."""
    prompt = done.prompt_tokens or done.prompt_eval_count
    cached = max(0, prompt - done.prompt_eval_count)
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": done.eval_count,
    }


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": new_id("toolu_"), "name": call.name, "input": call.arguments}


def _block(part: Part) -> dict[str, Any]:
    if part.call is not None:
        return _tool_use(part.call)
    if part.kind == "thinking":
        return {"type": "thinking", "thinking": part.text, "signature": ""}
    return {"type": "text", "text": part.text}


def _stream_error(status: int, message: str) -> Event:
    return "error", error_shape(status, message)


async def _events(items: AsyncIterator[Piece | Done], head: dict[str, Any], stop: list[str]) -> AsyncIterator[Event]:
    """message_start, each block's start / deltas / stop, then message_delta (stop reason, usage) and message_stop."""
    usage = {"input_tokens": 0, "output_tokens": 0}
    message = {**head, "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
    yield "message_start", {"type": "message_start", "message": message}
    yield "ping", {"type": "ping"}
    index, open_kind, called, any_text = -1, "", False, False

    def start(block: dict[str, Any]) -> Event:
        nonlocal index
        index += 1
        return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}

    def delta(payload: dict[str, Any]) -> Event:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": payload}

    def close() -> list[Event]:
        nonlocal open_kind
        if not open_kind:
            return []
        open_kind = ""
        return [("content_block_stop", _stop_event(index))]

    async for part in parts(items):
        if part.kind == "done":
            events = close()
            if not any_text and not called:
                events += [start({"type": "text", "text": ""}), ("content_block_stop", _stop_event(index))]
            for event in events:
                yield event
            assert part.done is not None
            reason, sequence = _stop(part.done, called, stop)
            final = {"stop_reason": reason, "stop_sequence": sequence}
            yield "message_delta", {"type": "message_delta", "delta": final, "usage": _usage(part.done)}
            yield "message_stop", {"type": "message_stop"}
            return
        if part.call is not None:
            called = True
            arguments = json.dumps(part.call.arguments, ensure_ascii=False)
            block = {**_tool_use(part.call), "input": {}}
            events = close() + [start(block), delta({"type": "input_json_delta", "partial_json": arguments})]
            for event in events + [("content_block_stop", _stop_event(index))]:
                yield event
            continue
        if open_kind != part.kind:
            events = close()
            events.append(start({"type": "text", "text": ""} if part.kind == "text" else _block(Part("thinking"))))
            open_kind = part.kind
            for event in events:
                yield event
        any_text = any_text or part.kind == "text"
        if part.kind == "text":
            yield delta({"type": "text_delta", "text": part.text})
        else:
            yield delta({"type": "thinking_delta", "thinking": part.text})


def _stop_event(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}
