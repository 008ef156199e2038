"""OpenAI's Responses API (`POST /v1/responses`), stateless as Ollama's: every request carries the whole conversation.

The input items (messages, function calls, their outputs, reasoning) become
the internal Ollama-shaped messages, the generator answers, and the reply goes
back as output items: a reasoning item, a message with output_text, function
calls with their arguments as JSON text. A stream is the named events the
official SDK reads, each with its type and sequence_number.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import ConfigDict, field_validator, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api import FieldError, RequiredName, Wire, response_schema
from app.server.agent_wire import (
    Event,
    Part,
    TokenLimit,
    agent_call,
    arguments_of,
    collect,
    function_spec,
    named_sse,
    new_id,
    options_of,
    parts,
)
from app.server.generate import Call, Done, Piece
from app.server.http import guarded, parsed, primed, unless_disconnected
from app.server.openai_api import error_shape
from app.server.state import ServerState
from app.tools.calls import ToolCall

_TEXT_PARTS = {"input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"}
_CHOICES = ("auto", "none", "required")
_STATELESS = "loam keeps no state between requests; send the whole conversation in input"


def _text_parts(value: Any) -> Any:
    """A string stands for one text part, as the API allows for content and function outputs."""
    if value is None:
        return []
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


class InputPart(Wire):
    type: str
    text: str = ""

    @model_validator(mode="after")
    def _text_only(self) -> InputPart:
        if self.type not in _TEXT_PARTS:
            raise ValueError(f"{clipped(self.type)} content is not supported; loam's Responses API takes text only")
        return self


class InputItem(Wire):
    """One input item; `type` may be left out for a message, as the SDK's easy input messages do."""

    type: Literal["message", "function_call", "function_call_output", "reasoning"] = "message"
    role: Literal["user", "system", "developer", "assistant"] = "user"
    content: list[InputPart] = []
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    output: list[InputPart] = []
    summary: list[InputPart] = []

    @field_validator("content", "output", mode="before")
    @classmethod
    def _as_parts(cls, value: Any) -> Any:
        return _text_parts(value)

    @model_validator(mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") == "item_reference":
            raise ValueError(f"item references are not supported: {_STATELESS}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> InputItem:
        if self.type in ("function_call", "function_call_output") and not self.call_id:
            raise ValueError(f"a {self.type} item needs its call_id")
        if self.type == "function_call" and not self.name:
            raise ValueError("a function_call item needs its name")
        return self

    def text(self) -> str:
        return "".join(p.text for p in self.content)


class FunctionTool(Wire):
    """A tool in the Responses shape: flat, {"type": "function", "name", "description", "parameters"}."""

    type: str
    name: str = ""
    description: str | None = None
    parameters: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _function_only(self) -> FunctionTool:
        if self.type != "function":
            raise ValueError(f"{clipped(self.type)} tools are not supported; loam runs function tools only")
        if not self.name:
            raise ValueError("a function tool needs its name")
        return self


class Reasoning(Wire):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None


class TextConfig(Wire):
    format: dict[str, Any] | None = None


class ResponsesRequest(Wire):
    model: RequiredName
    input: list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] = []
    tool_choice: Any = None
    max_output_tokens: TokenLimit | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True
    background: bool = False
    previous_response_id: str | None = None
    conversation: Any = None

    model_config = ConfigDict(extra="ignore", strict=True)

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"type": "message", "role": "user", "content": value}]
        if value is None or value == []:
            raise ValueError("is required: a string or a list of input items")
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice(cls, value: Any) -> Any:
        if value is None or value in _CHOICES:
            return value
        if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
            return value
        if isinstance(value, dict) and value.get("type") in _CHOICES:
            return value["type"]
        raise ValueError('must be "auto", "none", "required" or {"type": "function", "name": ...}')

    @model_validator(mode="after")
    def _stateless(self) -> ResponsesRequest:
        if self.previous_response_id is not None:
            raise FieldError("previous_response_id", _STATELESS)
        if self.conversation is not None:
            raise FieldError("conversation", _STATELESS)
        if self.background:
            raise FieldError("background", "is not supported; loam answers while the request waits")
        return self

    def choice(self) -> str | None:
        """tool_choice as the generator takes it: "auto", "none", "required" or a function's name."""
        if isinstance(self.tool_choice, dict):
            return str(self.tool_choice["name"])
        return self.tool_choice

    def think(self) -> bool | None:
        effort = self.reasoning.effort if self.reasoning else None
        return None if effort is None else effort != "none"

    def json_schema(self) -> dict[str, Any] | None:
        """text.format as the reply's JSON schema: json_object, or json_schema with its `schema` (flat here)."""
        fmt = self.text.format if self.text else None
        if not fmt or fmt.get("type") in (None, "text"):
            return None
        try:
            if fmt.get("type") == "json_schema":
                return response_schema({"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}})
            return response_schema(fmt)
        except ValueError as e:
            raise FieldError("text.format", str(e)) from None


def clipped(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "…"


def routes(state: ServerState) -> list[Route]:
    async def endpoint(request: Request) -> Response:
        return await responses(state, request)

    return [Route("/v1/responses", guarded(endpoint, error_shape), methods=["POST"])]


def messages_of(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The input items as internal chat messages; calls join the assistant turn before them."""
    out: list[dict[str, Any]] = [{"role": "system", "content": body.instructions}] if body.instructions else []
    names: dict[str, str] = {}  # call_id -> function name, for the tool results that answer them
    thinking = ""  # a reasoning item's text, for the assistant turn that follows it
    for i, item in enumerate(body.input):
        if item.type == "reasoning":
            thinking += "".join(p.text for p in item.summary + item.content)
        elif item.type == "message":
            role = "system" if item.role in ("system", "developer") else item.role
            message: dict[str, Any] = {"role": role, "content": item.text()}
            if role == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            out.append(message)
        elif item.type == "function_call":
            names[item.call_id] = item.name
            arguments = arguments_of(item.arguments, f"input[{i}].arguments")
            call = {"id": item.call_id, "function": {"name": item.name, "arguments": arguments}}
            if not out or out[-1]["role"] != "assistant":
                out.append({"role": "assistant", "content": ""})
            if thinking:
                out[-1]["thinking"], thinking = thinking, ""
            out[-1].setdefault("tool_calls", []).append(call)
        else:
            result = "".join(p.text for p in item.output)
            out.append({"role": "tool", "content": result, "tool_call_id": item.call_id})
            if item.call_id in names:
                out[-1]["tool_name"] = names[item.call_id]
    return out


def _call(state: ServerState, body: ResponsesRequest) -> Call:
    options = options_of(
        {
            "temperature": ("temperature", body.temperature),
            "top_p": ("top_p", body.top_p),
            "max_output_tokens": ("num_predict", body.max_output_tokens),
        }
    )
    tools = [function_spec(t.name, t.description, t.parameters) for t in body.tools]
    choice, think = body.choice(), body.think()
    call = agent_call(
        state, body.model, options, tools=tools, tool_choice=choice, think=think, parallel=body.parallel_tool_calls
    )
    call.json_schema = body.json_schema()
    return call


async def responses(state: ServerState, request: Request) -> Response:
    body = await parsed(request, ResponsesRequest)
    call = _call(state, body)
    items = state.generator.chat(call, messages_of(body))
    shell = _Shell(body, call.model.name)
    if body.stream:
        stream = _Stream(shell)
        return named_sse(stream.events(await primed(items)), stream.error)
    reply = await unless_disconnected(request, collect(items))
    assert reply.done is not None
    cut = len(reply.blocks) if reply.done.reason == "length" else 0  # the last block, when the token limit cut it
    output = [_item(block, "incomplete" if i == cut else "completed") for i, block in enumerate(reply.blocks, 1)]
    if not any(block.kind == "text" for block in reply.blocks) and not reply.calls:
        output.append(_message(new_id("msg_"), ""))
    return JSONResponse(shell.response(reply.done, output))


class _Shell:
    """The response object around the output: the request's settings echoed, the status, the usage."""

    def __init__(self, body: ResponsesRequest, model: str) -> None:
        self.id = new_id("resp_")
        self.created = int(time.time())
        self.body = body
        self.model = model

    def response(self, done: Done | None, output: list[dict[str, Any]]) -> dict[str, Any]:
        body = self.body
        incomplete = done is not None and done.reason == "length"
        status = "in_progress" if done is None else "incomplete" if incomplete else "completed"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
            "store": False,
            "temperature": body.temperature,
            "text": {"format": body.text.format if body.text and body.text.format else {"type": "text"}},
            "tool_choice": body.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) | {"strict": False} for t in body.tools],
            "top_p": body.top_p,
            "truncation": "disabled",
            "usage": _usage(done) if done is not None else None,
            "metadata": body.metadata or {},
        }


def _usage(done: Done) -> dict[str, Any]:
    prompt = done.prompt_tokens or done.prompt_eval_count
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": max(0, prompt - done.prompt_eval_count), "cache_write_tokens": 0},
        "output_tokens": done.eval_count,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + done.eval_count,
    }


def _message(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [] if status == "in_progress" else [_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    summary = [] if status == "in_progress" else [{"type": "summary_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "status": status, "summary": summary}


def _function_call(item_id: str, call_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    arguments = "" if status == "in_progress" else json.dumps(call.arguments, ensure_ascii=False)
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": call.name,
        "arguments": arguments,
    }


def _item(block: Part, status: str) -> dict[str, Any]:
    """A whole output item for one block of a reply that was not streamed."""
    if block.call is not None:
        return _function_call(new_id("fc_"), new_id("call_"), block.call)
    if block.kind == "thinking":
        return _reasoning(new_id("rs_"), block.text, status)
    return _message(new_id("msg_"), block.text, status)


class _Stream:
    """The event sequence of one streamed response; each output item is opened, filled and closed in turn."""

    def __init__(self, shell: _Shell) -> None:
        self.shell = shell
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # finished items, for response.completed
        self.open: dict[str, Any] | None = None  # the item being written: its kind, id and text so far

    def event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, data

    def error(self, status: int, message: str) -> Event:
        code = error_shape(status, message)["error"]["type"]
        return self.event("error", code=code, message=message, param=None)

    async def events(self, items: AsyncIterator[Piece | Done]) -> AsyncIterator[Event]:
        yield self.event("response.created", response=self.shell.response(None, []))
        yield self.event("response.in_progress", response=self.shell.response(None, []))
        async for part in parts(items):
            if part.kind == "done":
                assert part.done is not None
                for event in self._close("incomplete" if part.done.reason == "length" else "completed"):
                    yield event
                if not any(item["type"] in ("message", "function_call") for item in self.output):
                    for event in self._open("text") + self._close():
                        yield event
                assert part.done is not None
                response = self.shell.response(part.done, self.output)
                kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
                yield self.event(kind, response=response)
                return
            if part.call is not None:
                for event in self._close() + self._call(part.call):
                    yield event
                continue
            events = [] if self.open and self.open["kind"] == part.kind else self._close() + self._open(part.kind)
            for event in events + [self._delta(part.text)]:
                yield event

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output)}

    def _open(self, kind: str) -> list[Event]:
        thinking = kind == "thinking"
        self.open = {"kind": kind, "id": new_id("rs_" if thinking else "msg_"), "text": ""}
        item = (
            _reasoning(self.open["id"], "", "in_progress") if thinking else _message(self.open["id"], "", "in_progress")
        )
        added = self.event("response.output_item.added", output_index=len(self.output), item=item)
        if thinking:
            part = {"type": "summary_text", "text": ""}
            return [
                added,
                self.event("response.reasoning_summary_part.added", **self._where(), summary_index=0, part=part),
            ]
        return [added, self.event("response.content_part.added", **self._where(), content_index=0, part=_text_part(""))]

    def _delta(self, text: str) -> Event:
        assert self.open is not None
        self.open["text"] += text
        if self.open["kind"] == "thinking":
            return self.event("response.reasoning_summary_text.delta", **self._where(), summary_index=0, delta=text)
        return self.event("response.output_text.delta", **self._where(), content_index=0, delta=text, logprobs=[])

    def _close(self, status: str = "completed") -> list[Event]:
        if self.open is None:
            return []
        text, where = self.open["text"], self._where()
        if self.open["kind"] == "thinking":
            item = _reasoning(self.open["id"], text, status)
            events = [
                self.event("response.reasoning_summary_text.done", **where, summary_index=0, text=text),
                self.event("response.reasoning_summary_part.done", **where, summary_index=0, part=item["summary"][0]),
            ]
        else:
            item = _message(self.open["id"], text, status)
            events = [
                self.event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                self.event("response.content_part.done", **where, content_index=0, part=_text_part(text)),
            ]
        events.append(self.event("response.output_item.done", output_index=where["output_index"], item=item))
        self.output.append(item)
        self.open = None
        return events

    def _call(self, call: ToolCall) -> list[Event]:
        item_id, call_id, index = new_id("fc_"), new_id("call_"), len(self.output)
        item = _function_call(item_id, call_id, call)
        where = {"item_id": item_id, "output_index": index}
        self.output.append(item)
        return [
            self.event(
                "response.output_item.added",
                output_index=index,
                item=_function_call(item_id, call_id, call, "in_progress"),
            ),
            self.event("response.function_call_arguments.delta", **where, delta=item["arguments"]),
            self.event("response.function_call_arguments.done", **where, name=call.name, arguments=item["arguments"]),
            self.event("response.output_item.done", output_index=index, item=item),
        ]
