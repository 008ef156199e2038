"""The tool loop of one chat turn, apart from any UI: ask the model, run the calls it makes, ask again.

The model (through loam's /api/chat) answers with text or with calls of the tools it
was offered. Each call goes through `confirm` first ("once", "chat" or "deny"); an
allowed call runs and its result goes back to the model as a `tool` message, a
denied one gets a tool message saying so, so the model can go on without it. A
step limit bounds how often the model is asked in one turn; cancelling the task
that runs the loop stops it wherever it is.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.async_client import AsyncClient
from app.errors import LoamError
from app.tools.calls import ToolCall, tool_calls_of

#: How often the model is asked within one turn before the loop stops it.
MAX_STEPS = 8
#: Most tools one request offers the model (each spec costs prompt tokens).
MAX_TOOLS = 64
#: Characters of a tool result the model gets; the rest is cut with a note.
MAX_RESULT_CHARS = 16_000
#: Largest JSON schema (as text) a tool may bring; a bigger one is left out.
MAX_SCHEMA_CHARS = 16_000
#: Longest tool description kept.
MAX_DESCRIPTION_CHARS = 1_000

Decision = Literal["once", "chat", "deny"]
Confirm = Callable[[ToolCall], Awaitable[Decision]]

DENIED = "The user denied this call of {name}; it was not run. Go on without it."
NOT_RUN = "The call of {name} was not run: the limit of {steps} tool steps in one answer was reached."


class StopTurn(LoamError):
    """Raised by a confirm callback to end the turn at once (the user pressed Esc at the question)."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool gave back, as text for the model; `is_error` marks a failure the model should see as one."""

    text: str
    is_error: bool = False

    def content(self) -> str:
        """The tool message's content: the text, marked when it is an error."""
        return f"Error: {self.text}" if self.is_error else self.text


def capped(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters cut by loam]"


@dataclass(frozen=True)
class Tool:
    """One tool the model may call: its spec (as sent) and how to run it."""

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any]], Awaitable[ToolResult]]
    source: str = "loam"

    def spec(self) -> dict[str, Any]:
        """The Ollama/OpenAI function spec."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def clean_schema(schema: Any) -> dict[str, Any] | None:
    """A tool's parameters schema fit to send: an object schema of bounded size, else None."""
    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        return None
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError):
        return None
    if len(text) > MAX_SCHEMA_CHARS:
        return None
    return schema if schema.get("type") == "object" else {"type": "object", "properties": {}, **schema}


@dataclass
class Toolbox:
    """The tools of one chat, by the name the model sees; `notes` say what was left out and why."""

    tools: dict[str, Tool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, groups: Iterable[list[Tool]]) -> Toolbox:
        """Join the tools of several sources; a name two sources share gets its source as a prefix."""
        flat = [tool for group in groups for tool in group]
        counts: dict[str, int] = {}
        for tool in flat:
            counts[tool.name] = counts.get(tool.name, 0) + 1
        box = cls()
        for tool in flat:
            name = tool.name
            if counts[name] > 1 and tool.source != "loam":
                name = f"{tool.source}_{tool.name}"[:64]
            base, n = name, 2
            while name in box.tools:
                name, n = f"{base[:60]}_{n}", n + 1
            if len(box.tools) >= MAX_TOOLS:
                box.notes.append(f"only the first {MAX_TOOLS} tools are offered; {tool.source}'s {tool.name} is not")
                continue
            box.tools[name] = Tool(name, tool.description, tool.parameters, tool.run, tool.source)
        return box

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self.tools.values()]

    async def call(self, call: ToolCall) -> ToolResult:
        """Run one call; an unknown tool, bad arguments or a tool's own failure is an error result."""
        tool = self.tools.get(call.name)
        if tool is None:
            names = ", ".join(self.tools) or "none"
            return ToolResult(f"there is no tool named {call.name!r}; the tools are: {names}", is_error=True)
        if "" in call.arguments and len(call.arguments) == 1:
            return ToolResult(f"the arguments of {call.name} must be a JSON object", is_error=True)
        try:
            result = await tool.run(call.arguments)
        except LoamError as e:
            result = ToolResult(str(e), is_error=True)
        return ToolResult(capped(result.text), result.is_error)

    def __bool__(self) -> bool:
        return bool(self.tools)


class TurnEvents:
    """What a UI hears from the loop; each hook does nothing unless overridden."""

    async def step_started(self, step: int) -> None:
        """The model is asked (again): a new reply starts."""

    async def chunk(self, chunk: dict[str, Any]) -> None:
        """One streamed chunk of the reply."""

    async def message(self, message: dict[str, Any], final: dict[str, Any] | None) -> None:
        """A message joined the conversation: the model's reply (with `final`, its last chunk) or a tool result."""

    async def tool_result(self, call: ToolCall, decision: Decision, result: ToolResult | None) -> None:
        """A call was decided and, unless denied, run; `result` is None for a denied or unrun call."""


@dataclass
class TurnOutcome:
    """How a turn ended: the last reply's text and final chunk, and whether the step limit cut it."""

    text: str
    final: dict[str, Any] | None
    steps: int
    hit_limit: bool = False


def assistant_message(text: str, calls: list[ToolCall], thinking: str = "") -> dict[str, Any]:
    """The reply as a chat message in Ollama's shape."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return message


def tool_message(name: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "content": content, "tool_name": name}


async def run_turn(
    client: AsyncClient,
    model: str,
    messages: list[dict[str, Any]],
    toolbox: Toolbox,
    confirm: Confirm,
    *,
    allowed: set[str] | None = None,
    events: TurnEvents | None = None,
    max_steps: int = MAX_STEPS,
    **chat: Any,
) -> TurnOutcome:
    """Answer the conversation in `messages` (appended to as the turn goes), running the calls the model makes.

    `allowed` holds the tools the user allowed for the whole chat; "chat" answers add to it.
    `chat` passes on to /api/chat (options, keep_alive, think). An option tool_choice that forces
    a call (required, or a tool's name) holds for the first request only, or every step would call again.
    """
    events = events or TurnEvents()
    allowed = allowed if allowed is not None else set()
    specs = toolbox.specs() or None
    options = dict(chat.pop("options", None) or {})
    step = 0
    while True:
        step += 1
        await events.step_started(step)
        text, thinking, final, calls = [], [], None, []
        if step == 2 and options.get("tool_choice") not in (None, "auto", "none"):
            options.pop("tool_choice")  # a forced call is the first step's; then the model may answer
        async for chunk in client.chat(model, messages, tools=specs, options=options or None, **chat):
            message = chunk.get("message") or {}
            text.append(message.get("content") or "")
            thinking.append(message.get("thinking") or "")
            calls += tool_calls_of(message)
            if chunk.get("done"):
                final = chunk
            await events.chunk(chunk)
        reply = assistant_message("".join(text), calls, "".join(thinking))
        messages.append(reply)
        await events.message(reply, final)
        if not calls:
            return TurnOutcome(reply["content"], final, step)
        if step >= max_steps:
            for call in calls:
                await _add(messages, events, tool_message(call.name, NOT_RUN.format(name=call.name, steps=max_steps)))
                await events.tool_result(call, "deny", None)
            return TurnOutcome(reply["content"], final, step, hit_limit=True)
        for call in calls:
            await _one_call(call, toolbox, confirm, allowed, messages, events)


async def _one_call(
    call: ToolCall,
    toolbox: Toolbox,
    confirm: Confirm,
    allowed: set[str],
    messages: list[dict[str, Any]],
    events: TurnEvents,
) -> None:
    if call.name not in toolbox.tools:  # nothing to ask about: the model made the name up
        result = await toolbox.call(call)
        await _add(messages, events, tool_message(call.name, result.content()))
        await events.tool_result(call, "once", result)
        return
    decision: Decision = "chat" if call.name in allowed else await confirm(call)
    if decision == "chat":
        allowed.add(call.name)
    if decision == "deny":
        await _add(messages, events, tool_message(call.name, DENIED.format(name=call.name)))
        await events.tool_result(call, decision, None)
        return
    result = await toolbox.call(call)
    await _add(messages, events, tool_message(call.name, result.content()))
    await events.tool_result(call, decision, result)


async def _add(messages: list[dict[str, Any]], events: TurnEvents, message: dict[str, Any]) -> None:
    messages.append(message)
    await events.message(message, None)
