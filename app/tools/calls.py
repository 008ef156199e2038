"""Tool calls in a model's output: the common formats, parsed as the text streams in.

Models announce a call in one of a few ways, and the chat template says which:

- Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call;
- Llama 3.x: `<|python_tag|>` then `{"name": ..., "parameters": {...}}`, calls separated by `;`,
  or the same JSON as the whole answer;
- Mistral: `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}`;
- Gemma: `<|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>` (Gemma 4), or FunctionGemma's
  `<start_function_call>call:NAME{key:<escape>text<escape>}<end_function_call>`;
- plain JSON: an answer that is one call object, or a list of them.

A `CallParser` takes the text piece by piece: text before a call comes out at
once (minus a possible half-written marker at its end), a call comes out whole
when its closing marker or the end of the answer arrives. What does not parse
as a call is given back as text, never lost. Everything it holds is bounded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

#: Most characters held back while a call is being written; beyond it the text is given back as text.
MAX_HELD = 1 << 20
MAX_CALLS = 64

FORMATS = ("hermes", "llama3", "mistral", "gemma", "functiongemma", "json")
#: Deepest nesting of a Gemma-style argument value.
MAX_DEPTH = 32


@dataclass(frozen=True)
class ToolCall:
    """One call: the function's name and its arguments as a JSON object."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def detect_format(template: str | None) -> str:
    """The call format a chat template (Go or Jinja) teaches its model; "json" when it names none."""
    text = template or ""
    if "<tool_call>" in text:
        return "hermes"
    if "[TOOL_CALLS]" in text:
        return "mistral"
    if "<|python_tag|>" in text or "<|eom_id|>" in text:
        return "llama3"
    if "<|start_header_id|>" in text and "tools" in text:  # Llama 3.2's custom tools: bare JSON with "parameters"
        return "llama3"
    if "<|tool_call>" in text:
        return "gemma"
    if "<start_function_call>" in text:
        return "functiongemma"
    return "json"


_OPENERS = {
    "hermes": "<tool_call>",
    "llama3": "<|python_tag|>",
    "mistral": "[TOOL_CALLS]",
    "gemma": "<|tool_call>",
    "functiongemma": "<start_function_call>",
}
_CLOSERS = {"hermes": "</tool_call>", "gemma": "<tool_call|>", "functiongemma": "<end_function_call>"}
#: How Gemma-style calls quote a string.
_QUOTES = {"gemma": '<|"|>', "functiongemma": "<escape>"}


def _as_call(obj: Any) -> ToolCall | None:
    """A call from a decoded JSON object: `name` plus `arguments` or `parameters` (an object or its JSON text)."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        return None
    return ToolCall(name, args)


def parse_calls(text: str) -> list[ToolCall] | None:
    """Every call in `text` (JSON: one object, a list, or objects separated by `;`), or None if it is not calls."""
    text = text.strip()
    if not text:
        return None
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    at = 0
    while at < len(text):
        try:
            obj, end = decoder.raw_decode(text, at)
        except ValueError:
            return None
        for item in obj if isinstance(obj, list) else [obj]:
            call = _as_call(item)
            if call is None:
                return None
            calls.append(call)
        if len(calls) > MAX_CALLS:
            return None
        at = end
        while at < len(text) and text[at] in " \t\r\n;,":
            at += 1
    return calls or None


class _GemmaArgs:
    """A Gemma-style argument object, `{key:value,...}`, read into Python values; ValueError when it is not one."""

    _WORD = re.compile(r"[A-Za-z_][\w.\-]*")
    _NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")

    def __init__(self, text: str, quote: str) -> None:
        self.text, self.quote, self.at = text, quote, 0

    def value(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError("nested too deeply")
        text, at = self.text, self.at
        if text.startswith(self.quote, at):
            end = text.find(self.quote, at + len(self.quote))
            if end < 0:
                raise ValueError("unterminated string")
            self.at = end + len(self.quote)
            return text[at + len(self.quote) : end]
        if text.startswith("{", at):
            return self._items("}", depth, keyed=True)
        if text.startswith("[", at):
            return self._items("]", depth, keyed=False)
        if number := self._NUMBER.match(text, at):
            self.at = number.end()
            return json.loads(number.group())
        for word, value in (("true", True), ("false", False), ("null", None)):
            if text.startswith(word, at):
                self.at = at + len(word)
                return value
        raise ValueError(f"unexpected text at {at}")

    def _items(self, close: str, depth: int, keyed: bool) -> Any:
        self.at += 1
        out: Any = {} if keyed else []
        while not self.text.startswith(close, self.at):
            if out:
                if not self.text.startswith(",", self.at):
                    raise ValueError(f"expected , at {self.at}")
                self.at += 1
            if keyed:
                key = self._key()
                if not self.text.startswith(":", self.at):
                    raise ValueError(f"expected : at {self.at}")
                self.at += 1
                out[key] = self.value(depth + 1)
            else:
                out.append(self.value(depth + 1))
        self.at += 1
        return out

    def _key(self) -> str:
        if self.text.startswith(self.quote, self.at):
            key = self.value()
            return str(key)
        word = self._WORD.match(self.text, self.at)
        if not word:
            raise ValueError(f"expected a key at {self.at}")
        self.at = word.end()
        return word.group()


def parse_gemma_call(text: str, fmt: str = "gemma") -> list[ToolCall] | None:
    """A Gemma-style call body, `call:NAME{...}`, or None when it is not one."""
    match = re.match(r"\s*call:([A-Za-z_][\w.\-]*)", text)
    if not match:
        return None
    reader = _GemmaArgs(text, _QUOTES.get(fmt, '<|"|>'))
    reader.at = match.end()
    try:
        arguments = reader.value() if reader.at < len(text) and text[reader.at] == "{" else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(arguments, dict) or text[reader.at :].strip():
        return None
    return [ToolCall(match.group(1), arguments)]


def _fence_opens_json(text: str) -> bool | None:
    """For an answer opening with a backtick: does a ``` or ```json fence open it, with JSON inside?

    None while that cannot be told yet (the fence line or the first character after it is still to come).
    """
    if "\n" not in text:
        return None if len(text) < 16 and "```json".startswith(text.rstrip()[:7]) else False
    header, rest = text.split("\n", 1)
    if header.strip() not in ("```", "```json"):
        return False
    rest = rest.lstrip()
    return None if not rest else rest[0] in "{["


def _unfenced(text: str) -> str:
    """The inside of a ```json fence around the whole text (the text itself when there is none)."""
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and "\n" in body:
        return body.split("\n", 1)[1][:-3]
    return body


def _partial_suffix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class CallParser:
    """Splits a streamed answer into text and tool calls, in one of FORMATS."""

    def __init__(self, fmt: str = "json", names: list[str] | None = None) -> None:
        """`names`: the offered tools; a "call" to any other name is text, not a call."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown tool call format {fmt!r}; one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.names = set(names) if names is not None else None
        self.calls: list[ToolCall] = []
        self._opener = _OPENERS.get(fmt)
        self._closer = _CLOSERS.get(fmt)
        self._pending = ""  # text not yet given out: a possible marker start, or a call being written
        self._in_call = False
        self._started = False  # some non-space text has been seen
        self._bare = False  # the answer opened with JSON: it may be a call as a whole
        self._after_call = False  # blank text right after a call is not shown

    def feed(self, piece: str) -> str:
        """The text of `piece` that is safe to show now; calls found go to `self.calls`."""
        self._pending += piece
        out: list[str] = []
        while self._pending:
            before = len(self._pending), self._in_call
            out.append(self._step())
            if (len(self._pending), self._in_call) == before:
                break
        if len(self._pending) > MAX_HELD:  # a runaway "call": show it as what it is
            out.append(self._give_back())
        return "".join(out)

    def flush(self) -> str:
        """The end of the answer: finish a call written to the end, give back whatever is not one."""
        held, self._pending = self._pending, ""
        if self._in_call or self._bare:
            if self._bare:
                calls = self._known(parse_calls(_unfenced(held)))
            else:
                calls = self._parse(held[len(self._opener) :] if self._opener else held)
            if calls is not None:
                self.calls += calls
                return ""
        self._in_call = self._bare = False
        return held.lstrip() if self._after_call else held

    def abandon(self) -> bool:
        """Drop a call still being written (a reply cut off by its token limit); True when there was one."""
        if not self._in_call:
            return False
        self._pending, self._in_call = "", False
        return True

    def _parse(self, block: str) -> list[ToolCall] | None:
        return self._known(parse_gemma_call(block, self.fmt) if self.fmt in _QUOTES else parse_calls(block))

    def _known(self, calls: list[ToolCall] | None) -> list[ToolCall] | None:
        """Calls only when every one names an offered tool: other JSON is the answer's text."""
        if calls is None or (self.names is not None and any(c.name not in self.names for c in calls)):
            return None
        return calls

    def _give_back(self) -> str:
        held, self._pending = self._pending, ""
        self._in_call = self._bare = False
        return held

    def _step(self) -> str:
        """Consume what can be decided of `_pending`; returns the text to show."""
        if not self._started:
            stripped = self._pending.lstrip()
            if not stripped:
                return ""
            if self._opener and self._opener.startswith(stripped):
                return ""  # maybe the format's own opener: wait for it
            if stripped.startswith("`") and (decided := _fence_opens_json(stripped)) is None:
                self._started = False
                return ""  # not yet known whether the fence holds a call
            self._started = True
            opened = bool(self._opener) and stripped.startswith(self._opener)
            if not opened and (stripped[0] in "{[" or (stripped.startswith("`") and decided)):
                self._bare = True  # the whole answer may be a call object (or a fenced one), in any format
        if self._bare:
            return ""  # held to the end: the whole answer is a call, or it is given back as text
        if self._in_call:
            return self._close_call()
        if self._opener is None:
            text, self._pending = self._pending, ""
            return text
        if self._after_call:
            self._pending = self._pending.lstrip()
            if not self._pending:
                return ""
            self._after_call = False
        at = self._pending.find(self._opener)
        if at < 0:
            keep = _partial_suffix(self._pending, self._opener)
            text = self._pending[: len(self._pending) - keep]
            self._pending = self._pending[len(text) :]
            return text
        text, self._pending = self._pending[:at], self._pending[at:]
        self._in_call = True
        return text

    def _close_call(self) -> str:
        """Inside a call: with a closing marker, parse the block once it is whole; without one, wait for the end."""
        if self._closer is None:
            return ""
        assert self._opener is not None
        end = self._pending.find(self._closer)
        if end < 0:
            return ""
        block = self._pending[len(self._opener) : end]
        whole = self._pending[: end + len(self._closer)]
        self._pending = self._pending[end + len(self._closer) :]
        self._in_call = False
        calls = self._parse(block)
        if calls is None:
            return whole  # not a call after all: show it as the model wrote it
        self.calls += calls
        self._after_call = True
        return ""


#: Calls one reply may carry; more is a server (or model) gone wrong, and the rest are dropped.
MAX_CALLS_PER_REPLY = 16


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall]:
    """The calls in a reply's `message.tool_calls` (Ollama's shape), arguments as a dict.

    OpenAI-style arguments given as a JSON string are decoded; a call without a name is
    dropped, and arguments that are not an object become {"": value} so the tool can refuse them.
    """
    calls: list[ToolCall] = []
    raw = message.get("tool_calls")
    for item in raw if isinstance(raw, list) else []:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            continue
        arguments: Any = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                pass
        if arguments is None:
            arguments = {}
        calls.append(ToolCall(function["name"], arguments if isinstance(arguments, dict) else {"": arguments}))
    return calls[:MAX_CALLS_PER_REPLY]
