"""The wire format of the Ollama and OpenAI routes as pydantic models: one typed place for what a body may hold.

The server validates every POST body with these before it touches the store
or the scheduler, so a malformed body is a 400 that names the field
(`options.temperature: takes a number, got 'x'`) and never loads a model. The
client builds its requests from the same models. Unknown fields are ignored,
as Ollama and OpenAI do, so their official clients keep working.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.durations import parse_keep_alive
from app.store.parameters import PARAMETERS, ParameterError, coerce

#: keep_alive beyond this many seconds (about 100 years) is refused; a negative one means forever.
MAX_KEEP_ALIVE = 100 * 365.25 * 86400
#: Largest context window a request may ask for (16M tokens), and largest other whole-number option.
MAX_NUM_CTX = 1 << 24
MAX_INT_OPTION = (1 << 31) - 1
#: Longest echo of a client's value (a model name, a bad option) in an error message.
ECHO = 100

Role = Literal["system", "user", "assistant", "tool"]


class FieldError(ValueError):
    """A bad value found outside pydantic's own checks, with the path of the field it was in."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def clip(text: str, limit: int = ECHO) -> str:
    """`text` cut to `limit` characters, so an error never echoes a megabyte back."""
    return text if len(text) <= limit else text[:limit] + "…"


class Wire(BaseModel):
    """A JSON object on the wire: strict types (no "no" for false), unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, value: Any) -> Any:
        """`"field": null` means the field is not set, as Ollama's (Go) server reads it."""
        return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def _options(value: Any, field: str) -> dict[str, Any]:
    """Ollama's `options` (or create's `parameters`): each known entry coerced by the parameter table."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    out: dict[str, Any] = {}
    for name, item in value.items():
        if item is None or name not in PARAMETERS:
            continue  # Ollama ignores options it does not know
        if name == "stop" and item == []:
            continue  # no stop strings
        try:
            coerced = coerce(name, item)
        except ParameterError as e:
            text = str(e).removeprefix(f"{name} ")
            raise FieldError(f"{field}.{name}", clip(text, 200)) from None
        if isinstance(coerced, int) and not isinstance(coerced, bool):
            high = MAX_NUM_CTX if name == "num_ctx" else MAX_INT_OPTION
            if abs(coerced) > high:
                raise FieldError(f"{field}.{name}", f"must be at most {high}")
        out[name] = coerced
    return out


def keep_alive_seconds(value: Any) -> float | None:
    """Seconds for Ollama's keep_alive (math.inf for forever); None when unset."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) > 64:
        raise ValueError("is not a duration; use e.g. 5m, 1h, 0 or -1")
    try:
        seconds = parse_keep_alive(value)
    except (ValueError, OverflowError):
        raise ValueError("is not a duration; use e.g. 5m, 1h30m, 0 or -1") from None
    if math.isnan(seconds) or (seconds != math.inf and seconds > MAX_KEEP_ALIVE):
        raise ValueError("must be at most 100 years; a negative value keeps the model loaded forever")
    return seconds


def json_schema(value: Any, convert: bool = True) -> dict[str, Any] | None:
    """Ollama's `format`: "json" for any JSON object, or a JSON schema the reply must match.

    `convert` checks that llama.cpp can turn the schema into a grammar (the
    server does; a client leaves that to whichever server it talks to).
    """
    if value in (None, ""):
        return None
    if value == "json":
        return {"type": "object"}
    if isinstance(value, dict):
        return usable_schema(value) if convert else value
    raise ValueError('must be "json" or a JSON schema object')


def usable_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, once llama.cpp's converter (the one the runner uses) turns it into a grammar; ValueError if not."""
    from app.runner.sampling import schema_grammar  # llama.cpp's converter, loaded on first use

    try:
        schema_grammar(schema)
    except (ValueError, RecursionError) as e:
        detail = str(e).removeprefix("json_schema is not usable: ")
        detail = "" if re.search(r"Error|Exception|Traceback", detail) else f" ({clip(detail)})"
        raise ValueError(f"is not a JSON schema the reply can be held to{detail}") from None
    return schema


# -- Ollama requests ---------------------------------------------------------------


class Message(Wire):
    """One chat message; fields a template may use besides role and content pass through."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Role
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


def _required(value: str) -> str:
    if not value:
        raise ValueError("is required")
    return value


#: A model name that must be given and not be empty.
RequiredName = Annotated[str, AfterValidator(_required)]


class Generation(Wire):
    """What /api/generate, /api/chat and the embedding routes share: a model, options, keep_alive."""

    model: RequiredName
    options: dict[str, Any] = {}
    keep_alive: float | None = None
    stream: bool = True
    think: bool | None = None
    format: dict[str, Any] | None = None

    @field_validator("options", mode="before")
    @classmethod
    def _check_options(cls, value: Any) -> dict[str, Any]:
        return _options(value, "options")

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _check_keep_alive(cls, value: Any) -> float | None:
        return keep_alive_seconds(value)

    @field_validator("format", mode="before")
    @classmethod
    def _check_format(cls, value: Any, info: ValidationInfo) -> dict[str, Any] | None:
        return json_schema(value, convert=not (info.context or {}).get("client"))

    @field_validator("think", mode="before")
    @classmethod
    def _check_think(cls, value: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        if value in ("low", "medium", "high"):
            return True  # a thinking budget some models take; loam thinks or not
        raise ValueError('must be true, false, "low", "medium" or "high"')


#: Most alternatives a request may ask for at each position (Ollama's and OpenAI's limit).
MAX_TOP_LOGPROBS = 20


def _top_count(value: Any) -> Any:
    """A top_logprobs count: a whole number from 0 to MAX_TOP_LOGPROBS (a 400 otherwise, as Ollama answers)."""
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ValueError(f"must be between 0 and {MAX_TOP_LOGPROBS}")
    return value


class Sampled(Generation):
    """Generate and chat: a reply is sampled, so its tokens' log-probabilities can come back with it."""

    logprobs: bool = False
    top_logprobs: int = 0

    @field_validator("top_logprobs")
    @classmethod
    def _check_top_logprobs(cls, value: int) -> int:
        return _top_count(value)

    def logprob_count(self) -> int | None:
        """Alternatives wanted per token, or None when no log-probabilities are (top_logprobs implies logprobs)."""
        return self.top_logprobs if self.logprobs or self.top_logprobs else None


class GenerateRequest(Sampled):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    context: list[int] | None = None

    @field_validator("context")
    @classmethod
    def _check_context(cls, value: list[int] | None) -> list[int] | None:
        if value and not all(0 <= t <= MAX_INT_OPTION for t in value):
            raise ValueError("must be token ids from an earlier reply")
        return value

    images: list[str] | None = None


class ChatRequest(Sampled):
    messages: list[Message] = []
    tools: list[dict[str, Any]] | None = None


class EmbedRequest(Generation):
    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(i, str) for i in value)):
            return value
        raise ValueError("must be a string or a list of strings")


class EmbeddingsRequest(Generation):
    prompt: str = ""


class NameRequest(Wire):
    """/api/show, /api/delete, /api/pull: a model, by `model` or the older `name`."""

    model: str | None = None
    name: str | None = None
    insecure: bool = False
    stream: bool = True

    def model_name(self) -> str:
        """The name given, or FieldError when neither field is set."""
        if self.model:
            return self.model
        if self.name:
            return self.name
        raise FieldError("model", "is required")


class CopyRequest(Wire):
    source: str
    destination: str


class CreateRequest(NameRequest):
    modelfile: str | None = None
    from_: str | None = Field(None, alias="from")
    files: dict[str, str] = {}
    adapters: dict[str, str] = {}
    parameters: dict[str, Any] = {}
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    messages: list[Message] = []
    quantize: str | None = None

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    @field_validator("parameters", mode="before")
    @classmethod
    def _check_parameters(cls, value: Any) -> dict[str, Any]:
        return _options(value, "parameters")

    @field_validator("license", mode="before")
    @classmethod
    def _check_license(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(i, str) for i in value):
            return value
        raise ValueError("must be a string or a list of strings")


# -- Ollama replies (what app/client.py reads) ------------------------------------------


class Stats(Wire):
    """The figures on a final chunk, in nanoseconds, as Ollama sends them (read leniently: any server's)."""

    model_config = ConfigDict(extra="allow", strict=False)

    done: bool = False
    done_reason: str | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    draft_count: int = 0  # loam's: drafted tokens verified (lookup or draft model), sent only when some were
    draft_accepted_count: int = 0


class ChatChunk(Stats):
    model: str = ""
    created_at: str = ""
    message: Message | None = None
    logprobs: list[dict[str, Any]] | None = None


class GenerateChunk(Stats):
    model: str = ""
    created_at: str = ""
    response: str = ""
    thinking: str | None = None
    context: list[int] | None = None
    logprobs: list[dict[str, Any]] | None = None


# -- OpenAI requests -----------------------------------------------------------------


def _content(value: Any) -> str:
    """A message's content: a string, or the text parts of a list of content parts."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        return "".join(str(p.get("text", "")) for p in value if p.get("type") == "text")
    raise ValueError("must be a string or a list of content parts")


class OpenAIMessage(Wire):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] = []  # image_url parts of the content, kept so a model without vision can refuse them
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _take_images(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("content"), list):
            parts = [p for p in value["content"] if isinstance(p, dict) and p.get("type") == "image_url"]
            urls = [str(p["image_url"].get("url", "")) if isinstance(p.get("image_url"), dict) else "" for p in parts]
            value = {**value, "images": urls} if urls else value
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> str:
        return _content(value)

    @field_validator("tool_calls")
    @classmethod
    def _check_tool_calls(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for call in value or []:
            function = call.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError("each tool call needs a function with a name")
            arguments = function.get("arguments", "{}")
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise ValueError("function.arguments must be a JSON object (as text)")
        return value

    def internal(self, names: dict[str, str]) -> dict[str, Any]:
        """This message in the server's (Ollama's) shape; `names` maps earlier tool call ids to their functions."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.content}
        if self.images:
            out["images"] = self.images
        if self.tool_calls:
            out["tool_calls"] = [_internal_call(c) for c in self.tool_calls]
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id or ""
            out["tool_name"] = self.name or names.get(self.tool_call_id or "", "")
        return out


def _internal_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    arguments = function.get("arguments", "{}")
    arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    out: dict[str, Any] = {"function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def choice_of(value: Any, tools: list[dict[str, Any]] | None) -> str | None:
    """OpenAI's tool_choice as the generator takes it: "auto", "none", "required" or a function's name."""
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict):
        function = value.get("function") if isinstance(value.get("function"), dict) else value
        name = function.get("name")
        if isinstance(name, str) and name:
            if not tools:
                raise FieldError("tool_choice", "names a function, but the request has no tools")
            return name
    raise FieldError("tool_choice", 'must be "auto", "none", "required" or {"type": "function", "function": {...}}')


class StreamOptions(Wire):
    include_usage: bool = False


class OpenAIRequest(Wire):
    """The sampling fields OpenAI's chat and text completions share."""

    model: RequiredName
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: list[str] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: Literal[1] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> list[str] | None:
        if value is None or value == []:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
            raise ValueError("must be a string or a list of non-empty strings")
        return items

    @field_validator("response_format")
    @classmethod
    def _check_response_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        schema = response_schema(value)
        return None if schema is None else value

    def options(self) -> dict[str, Any]:
        """These fields as Ollama options, checked by the parameter table."""
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
        return wire_options({key: (name, getattr(self, key)) for key, name in names.items()})

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def wire_options(fields: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Wire fields as Ollama options (`{wire: (option, value)}`), each checked by the parameter table.

    A bad value is a 400 naming the wire field (`max_tokens: ...`), not the option it became.
    """
    options: dict[str, Any] = {}
    for wire, (name, value) in fields.items():
        if value is None:
            continue
        try:
            options.update(_options({name: value}, wire))
        except FieldError as e:
            raise FieldError(wire, str(e).split(": ", 1)[1]) from None
    return options


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's response_format: json_object for any object, json_schema for a given schema."""
    if response_format is None or response_format.get("type") in (None, "text"):
        return None
    if response_format["type"] == "json_object":
        return {"type": "object"}
    inner = response_format.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, dict) else None
    if response_format["type"] == "json_schema" and isinstance(schema, dict):
        return usable_schema(schema)
    raise ValueError("must be text, json_object, or json_schema with a schema")


class ChatCompletionRequest(OpenAIRequest):
    messages: list[OpenAIMessage]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _check_top_logprobs(cls, value: int | None) -> int | None:
        return _top_count(value)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise FieldError("top_logprobs", "needs logprobs: true")  # as OpenAI answers
        return self

    def logprob_count(self) -> int | None:
        """Alternatives wanted per token, or None when no log-probabilities are."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _check_tool_choice(self) -> ChatCompletionRequest:
        choice_of(self.tool_choice, self.tools)
        return self

    def choice(self) -> str | None:
        """tool_choice as the generator takes it."""
        return choice_of(self.tool_choice, self.tools)

    def think(self) -> bool | None:
        """reasoning_effort as Ollama's think: none turns thinking off, any effort on, absent leaves it to the model."""
        return None if self.reasoning_effort is None else self.reasoning_effort != "none"

    def internal_messages(self) -> list[dict[str, Any]]:
        """The messages in the server's shape, tool results named after the calls they answer."""
        names: dict[str, str] = {}
        out = []
        for message in self.messages:
            for call in message.tool_calls or []:
                if isinstance(call.get("id"), str):
                    names[call["id"]] = call["function"]["name"]
            out.append(message.internal(names))
        return out

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, value: list[OpenAIMessage]) -> list[OpenAIMessage]:
        if not value:
            raise ValueError("must be a non-empty list")
        return value


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_INT_OPTION for t in value
    )


class CompletionRequest(OpenAIRequest):
    """A text completion; `prompt` is text or token ids (as evaluation harnesses send), one prompt per request."""

    prompt: str | list[int] = ""
    suffix: str | None = None
    logprobs: int | None = None  # alternatives per token (OpenAI allows 5; loam up to 20)
    echo: bool = False  # the prompt comes back before the reply, with its tokens' logprobs when asked

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, list) and len(value) == 1 and (isinstance(value[0], str) or _token_ids(value[0])):
            value = value[0]
        if isinstance(value, str):
            return value
        if _token_ids(value) and value:
            return value
        if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
            raise ValueError("takes one prompt per request; send several requests")
        raise ValueError("must be a string or a list of token ids")

    @field_validator("logprobs", mode="before")
    @classmethod
    def _check_logprobs(cls, value: Any) -> Any:
        if value is False:
            return None
        return _top_count(value)


class OpenAIEmbeddingRequest(Wire):
    model: str
    input: list[str]
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise ValueError("must be a string or a non-empty list of strings")
        return items


# -- errors ----------------------------------------------------------------------------

_PLAIN = {
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be a list",
    "literal_error": "{input} is not one of {expected}",
    "int_parsing_size": "is too large",
    "too_long": "is too long",
}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(error: ValidationError) -> str:
    """The first problem pydantic found, as `field.path: what is wrong` (no URLs, no class names)."""
    first = error.errors(include_url=False)[0]
    kind, ctx = first["type"], first.get("ctx") or {}
    if isinstance(ctx.get("error"), FieldError):
        return str(ctx["error"])
    if kind in _PLAIN:
        expected = str(ctx.get("expected", "")).replace("'", "")
        message = _PLAIN[kind].format(expected=expected, input=clip(repr(first.get("input")), 40))
    else:
        message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{_path(first['loc']) or 'body'}: {clip(message, 200)}"


__all__ = [
    "ChatChunk",
    "ChatCompletionRequest",
    "ChatRequest",
    "CompletionRequest",
    "CopyRequest",
    "CreateRequest",
    "EmbedRequest",
    "EmbeddingsRequest",
    "FieldError",
    "GenerateChunk",
    "GenerateRequest",
    "Message",
    "NameRequest",
    "OpenAIEmbeddingRequest",
    "Stats",
    "clip",
    "describe",
    "response_schema",
    "Sampled",
]
