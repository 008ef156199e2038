"""Turning a conversation into the prompt text a model was trained on.

Which template renders it:

1. a Modelfile TEMPLATE (Go text/template, as Ollama's library models carry), else
2. the GGUF's own Jinja chat template (`tokenizer.chat_template`), else
3. a plain fallback: the system text, then each message's content, joined by blank lines.

The Modelfile SYSTEM stands in when a request brings no system message, and
Modelfile MESSAGE history goes between the system message and the request's
messages. When the prompt is longer than the context window, the oldest
non-system messages are left out, as Ollama does (see docs/templates.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.server.gotemplate import GoTemplate, parse
from app.server.jinja import render_jinja
from app.server.thinking import prompt_opens_thinking

Message = dict[str, Any]


@dataclass
class PromptSpec:
    """What a model brings to prompt rendering, from its Modelfile layers and its GGUF metadata."""

    template: str | None = None  # Modelfile TEMPLATE (Go syntax); wins when present
    chat_template: str | None = None  # the GGUF's Jinja template; used when there is no Go template
    system: str | None = None  # Modelfile SYSTEM: used when the request has no system message
    messages: list[Message] = field(default_factory=list)  # Modelfile MESSAGE history, before the request's
    bos_token: str = ""
    eos_token: str = ""


@dataclass
class Rendered:
    """A rendered chat prompt and what it took to fit it."""

    prompt: str
    dropped: int  # how many old messages were left out to fit
    thinking_started: bool  # the prompt ends inside an opened <think> (e.g. a template that appends "<think>\n")


def render_chat(
    spec: PromptSpec,
    messages: list[Message],
    *,
    count_tokens: Callable[[str], int],
    num_ctx: int,
    tools: list | None = None,
    think: bool | None = None,
) -> Rendered:
    """Render a chat request, leaving out the oldest non-system messages until it fits in `num_ctx` tokens.

    System messages and the latest message are always kept, and a tool result is
    never kept without the assistant turn that called the tool. When even that
    does not fit, the shortest candidate is returned anyway, as Ollama does.
    """
    conversation = _conversation(spec, messages)
    render = _renderer(spec, tools, think)
    total = len(conversation)
    prompt = render(conversation)
    if total <= 1 or count_tokens(prompt) <= num_ctx:
        return Rendered(prompt, 0, prompt_opens_thinking(prompt))

    def kept(i: int) -> list[Message]:
        start = _block_start(conversation, i)
        return [m for m in conversation[:start] if m["role"] == "system"] + conversation[start:]

    # Leaving out more never lengthens the prompt, so the fewest messages to leave out are found by
    # bisection: a request with thousands of messages costs a few renders, not one per message.
    lo, hi = 1, total - 1  # the answer is in [lo, hi]; leaving out all but the last always "fits"
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(render(kept(mid))) <= num_ctx:
            hi = mid
        else:
            lo = mid + 1
    messages_kept = kept(lo)
    prompt = render(messages_kept)
    return Rendered(prompt, total - len(messages_kept), prompt_opens_thinking(prompt))


def render_generate(
    spec: PromptSpec,
    prompt: str,
    *,
    system: str | None = None,
    template: str | None = None,
    suffix: str = "",
    think: bool | None = None,
) -> str:
    """Render a /api/generate prompt: the request's system (else the Modelfile's) and one user turn.

    A request `template` overrides the model's. With a `suffix` (fill-in-the-middle)
    a Go template runs once with Prompt and Suffix. Without any template the
    prompt is sent as it is.
    """
    source = template or spec.template
    system_text = system or spec.system or ""
    if source and suffix:
        data = {"System": system_text, "Prompt": prompt, "Suffix": suffix, "Response": "", **_think_fields(think)}
        return _go(_with_response(source)).truncated_at("Response").execute(data)
    messages = [{"role": "system", "content": system_text}] if system_text else []
    messages.append({"role": "user", "content": prompt})
    if source:
        return _go_renderer(source, None, think)(messages)
    if spec.chat_template:
        return _jinja_renderer(spec, None, think)(messages)
    return prompt


def _message(raw: Message) -> Message:
    """A copy with role and content as strings, whatever the client sent."""
    message = dict(raw)
    message["role"] = str(raw.get("role") or "user").lower()
    message["content"] = str(raw.get("content") or "")
    return message


def _conversation(spec: PromptSpec, messages: list[Message]) -> list[Message]:
    """System message(s), then Modelfile MESSAGE history, then the request's other messages."""
    request = [_message(m) for m in messages]
    lead = 0
    while lead < len(request) and request[lead]["role"] == "system":
        lead += 1
    head = request[:lead]
    if spec.system and not any(m["role"] == "system" for m in request):
        head = [{"role": "system", "content": spec.system}]
    return head + [_message(m) for m in spec.messages] + request[lead:]


def _block_start(conversation: list[Message], i: int) -> int:
    """Where a prompt starting at message i must start so a tool result keeps the call that asked for it."""
    if conversation[i]["role"] != "tool":
        return i
    start = i
    while start > 0 and conversation[start - 1]["role"] == "tool":
        start -= 1
    if start > 0 and conversation[start - 1]["role"] == "assistant" and conversation[start - 1].get("tool_calls"):
        return start - 1
    return i


def _renderer(spec: PromptSpec, tools: list | None, think: bool | None) -> Callable[[list[Message]], str]:
    if spec.template:
        return _go_renderer(spec.template, tools, think)
    if spec.chat_template:
        return _jinja_renderer(spec, tools, think)
    return _plain


@functools.lru_cache(maxsize=64)
def _go(source: str) -> GoTemplate:
    return parse(source)


def _with_response(source: str) -> str:
    """Ollama appends `{{ .Response }}` to a template that names neither .Messages nor .Response."""
    template = _go(source)
    return source if template.uses("Messages") or template.uses("Response") else source + "{{ .Response }}"


def _think_fields(think: bool | None) -> dict[str, Any]:
    return {"Think": bool(think), "IsThinkSet": think is not None}


def _collate(messages: list[Message]) -> tuple[str, list[Message]]:
    """Ollama's collate: all system texts joined, and consecutive same-role messages (not tool results) merged."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"] != "tool":
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + message["content"]}
        else:
            merged.append(message)
    return system, merged


def _go_message(message: Message) -> dict[str, Any]:
    """A message with the field names Ollama's templates read (.Role .Content .Thinking .ToolCalls .ToolName)."""
    return {
        "Role": message["role"],
        "Content": message["content"],
        "Thinking": message.get("thinking") or "",
        "ToolCalls": message.get("tool_calls") or None,
        "ToolName": message.get("tool_name") or "",
    }


def _go_renderer(source: str, tools: list | None, think: bool | None) -> Callable[[list[Message]], str]:
    template = _go(source)
    if template.uses("Messages"):

        def render(messages: list[Message]) -> str:
            system, merged = _collate(messages)
            data = {"System": system, "Messages": [_go_message(m) for m in merged], "Tools": tools}
            return template.execute({**data, "Prompt": "", "Response": "", **_think_fields(think)})

        return render
    full = _go(_with_response(source))
    return lambda messages: _legacy(full, _collate(messages)[1], _think_fields(think))


def _legacy(template: GoTemplate, messages: list[Message], extra: dict[str, Any]) -> str:
    """Ollama's rendering for templates without .Messages: one execution per user turn, the last cut at .Response."""
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def run(tmpl: GoTemplate) -> None:
        out.append(tmpl.execute({**turn, **extra}))
        turn.update(System="", Prompt="", Response="")

    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                run(template)
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                run(template)
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    run(template.truncated_at("Response"))
    return "".join(out)


def _jinja_message(message: Message) -> Message:
    """Hugging Face's message shape: role and content, plus tool calls, thinking and a tool result's id and name."""
    plain = {"role": message["role"], "content": message["content"]}
    plain.update({k: message[k] for k in ("thinking", "tool_call_id") if message.get(k)})
    if message.get("tool_calls"):
        plain["tool_calls"] = [_jinja_call(c) for c in message["tool_calls"] if isinstance(c, dict)]
    if message.get("tool_name"):
        plain["name"] = message["tool_name"]
    return plain


def _jinja_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call as Hugging Face templates read it: {type, id, function: {name, arguments}}."""
    out = {"type": "function", "function": call.get("function") or {}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def _jinja_renderer(spec: PromptSpec, tools: list | None, think: bool | None) -> Callable[[list[Message]], str]:
    source = spec.chat_template or ""
    extra = {} if think is None else {"enable_thinking": think}

    def render(messages: list[Message]) -> str:
        plain = [_jinja_message(m) for m in messages]
        return render_jinja(source, plain, bos_token=spec.bos_token, eos_token=spec.eos_token, tools=tools, **extra)

    return render


def _plain(messages: list[Message]) -> str:
    """No template at all: the system text, then each message's content, separated by blank lines."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    parts = [system] + [m["content"] for m in messages if m["role"] != "system"]
    return "\n\n".join(p for p in parts if p)
