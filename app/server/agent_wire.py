"""What the Responses and Anthropic Messages routes share: the Call they build, a reply as flat parts, named SSE.

Both APIs describe a reply as a list of blocks (reasoning, text, function calls)
and stream it as named events that open, fill and close each block. `parts`
turns the generator's pieces into that flat sequence once, so a streamed reply
and a whole one have the same blocks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator
from starlette.responses import StreamingResponse

from app.api import FieldError, clip, wire_options
from app.errors import ModelNotFound
from app.server.generate import Call, Done, Piece, Resolved, check_capabilities, resolve
from app.server.http import SHUTTING_DOWN, message_of, status_of
from app.server.state import ServerState
from app.tools.calls import ToolCall

Event = tuple[str, dict[str, Any]]


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


#: A token limit: a whole number of at least 1.
TokenLimit = Annotated[int, AfterValidator(_at_least_one)]


def new_id(prefix: str) -> str:
    """An id in the style each API uses for its objects: `resp_…`, `msg_…`, `toolu_…`."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


#: Wire fields as checked Ollama options; the same check OpenAI's chat fields get.
options_of = wire_options


def function_spec(name: str, description: str | None, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A tool in the internal (OpenAI chat / Ollama) shape: {"type": "function", "function": {...}}."""
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = description
    function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def arguments_of(text: str, where: str) -> dict[str, Any]:
    """A function call's arguments sent back as JSON text, as the internal dict; FieldError when not an object."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        raise FieldError(where, "must be a JSON object written as text") from None
    if not isinstance(value, dict):
        raise FieldError(where, "must be a JSON object written as text")
    return value


def _resolve(state: ServerState, name: str) -> Resolved:
    """The stored model `name`, or a 404 that echoes at most ~100 characters of it."""
    try:
        return resolve(state.store, name)
    except ModelNotFound:
        raise ModelNotFound(f'model "{clip(name)}" not found, try pulling it first') from None


def agent_call(
    state: ServerState,
    model: str,
    options: dict[str, Any],
    *,
    tools: list[dict[str, Any]],
    tool_choice: str | None,
    think: bool | None,
    parallel: bool = True,
) -> Call:
    """The generator's Call for a request, once the model is found and can do what it asks (tools, thinking).

    tool_choice may name a function only among `tools`; tools with tool_choice
    "none" are never offered to the model, so they need no tool support.
    """
    names = [t["function"]["name"] for t in tools]
    if tool_choice not in (None, "auto", "none", "required") and tool_choice not in names:
        raise FieldError("tool_choice", f"{clip(tool_choice, 40)!r} is not one of the tools given")
    call = Call(_resolve(state, model), options, state.settings.keep_alive, think=think)
    call.tools = tools or None
    call.tool_choice = tool_choice if tools else None
    call.parallel_calls = parallel
    check_capabilities(call)
    return call


@dataclass
class Part:
    """One step of a reply: some thinking, some answer text, one whole tool call, or the end."""

    kind: Literal["thinking", "text", "call", "done"]
    text: str = ""
    call: ToolCall | None = None
    done: Done | None = None


async def parts(items: AsyncIterator[Piece | Done]) -> AsyncIterator[Part]:
    """A reply's pieces as a flat sequence of parts ending in "done".

    Whitespace an answer starts with (or resumes with after a call) is held
    until real text follows, so a reply that is only a call does not open an
    empty text block; whitespace nothing follows is dropped. Calls come from
    the pieces as they arrive; a Done's calls count only when no piece had any.
    """
    held = ""
    in_text = False
    streamed_calls = False
    async for item in items:
        if isinstance(item, Done):
            if not streamed_calls:
                for call in item.tool_calls:
                    yield Part("call", call=call)
            yield Part("done", done=item)
            return
        if item.thinking:
            yield Part("thinking", item.thinking)
        if item.content:
            if in_text:
                yield Part("text", item.content)
            else:
                held += item.content
                if held.strip():
                    in_text = True
                    yield Part("text", held)
                    held = ""
        for call in item.tool_calls:
            streamed_calls = True
            in_text, held = False, ""
            yield Part("call", call=call)
    raise RuntimeError("the reply ended without its final chunk")


@dataclass
class Collected:
    """A whole reply as blocks in order (runs of the same kind of text joined), and its Done."""

    blocks: list[Part] = field(default_factory=list)
    done: Done | None = None

    @property
    def calls(self) -> list[ToolCall]:
        return [b.call for b in self.blocks if b.call is not None]


async def collect(items: AsyncIterator[Piece | Done]) -> Collected:
    """Every part of a reply, for the non-streamed answers."""
    out = Collected()
    async for part in parts(items):
        if part.kind == "done":
            out.done = part.done
        elif part.kind != "call" and out.blocks and out.blocks[-1].kind == part.kind:
            out.blocks[-1].text += part.text
        else:
            out.blocks.append(Part(part.kind, part.text, part.call))
    return out


def named_sse(events: AsyncIterator[Event], on_error: Callable[[int, str], Event]) -> StreamingResponse:
    """Server-sent events with `event:` lines, as the Responses and Anthropic SDKs read them.

    An error after the headers are sent becomes one last event, `on_error(status, message)`.
    """

    def line(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    async def body() -> AsyncIterator[bytes]:
        try:
            async for name, data in events:
                yield line(name, data)
        except Exception as e:  # noqa: BLE001 - headers are sent; report in the stream
            yield line(*on_error(status_of(e), message_of(e)))
        except asyncio.CancelledError:  # the server's shutdown, as http.sse reports it
            yield line(*on_error(503, SHUTTING_DOWN))

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
