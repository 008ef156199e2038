"""Grammars that hold a model's tool calls to the tools' JSON schemas, in the format its template teaches.

`tool_choice` decides how hard the grammar binds:

- "required" or a function's name: from the first token, the answer is one or more calls
  (only that function's, when named);
- "auto": the model writes freely until it opens a call (the format's marker, or a JSON
  object starting with "name"), then the rest must be valid calls: a *lazy* grammar, with
  llama-server's `grammar_lazy` and `grammar_triggers`;
- "none": no tools reach the model at all (decided before this module).

The call's arguments come from the tool's `parameters` schema, converted by llama.cpp's
own JSON-schema converter, so arguments always parse and validate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

#: Most tools one request may offer: each becomes grammar rules.
MAX_TOOLS = 128
#: Most calls one constrained answer may hold.
MAX_GRAMMAR_CALLS = 8

_MARKERS = {
    "hermes": ('"<tool_call>" tc-ws', 'tc-ws "</tool_call>"'),
    "mistral": ('"[TOOL_CALLS]" tc-ws "["', '"]"'),
}


@dataclass
class ToolGrammar:
    """What the runner's /completion takes to constrain the answer: GBNF, and triggers when lazy."""

    grammar: str
    lazy: bool = False
    triggers: list[dict[str, Any]] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"grammar": self.grammar}
        if self.lazy:
            out |= {"grammar_lazy": True, "grammar_triggers": self.triggers}
        return out


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    """The function names of OpenAI/Ollama-style tool specs, in order."""
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            names.append(name)
    return names


def _parameters(tool: dict[str, Any]) -> Any:
    function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    params = function.get("parameters") if isinstance(function, dict) else None
    return params if isinstance(params, dict) and params else {"type": "object"}


def call_schema(tools: list[dict[str, Any]], fmt: str, only: str | None = None) -> dict[str, Any]:
    """The JSON schema of one call object: {"name": one of the tools, "arguments": that tool's parameters}."""
    key = "parameters" if fmt == "llama3" else "arguments"
    options, defs = [], {}
    for i, tool in enumerate(tools):
        names = tool_names([tool])
        if not names:
            raise ValueError(f"tools[{i}]: each tool needs a function with a name")
        if only is not None and names[0] != only:
            continue
        # Each tool's schema and its $defs move under the root's $defs, named apart, so that the
        # references a schema makes to its own definitions resolve there (the converter reads refs from the root).
        params = dict(_parameters(tool))
        own = {**_mapping(params.pop("definitions", None)), **_mapping(params.pop("$defs", None))}
        prefix = f"tool{i}"
        defs[prefix] = _rebased(params, prefix, own)
        defs |= {f"{prefix}-{name}": _rebased(value, prefix, own) for name, value in own.items()}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": names[0]}, key: {"$ref": f"#/$defs/tool{i}"}},
                "required": ["name", key],
                "additionalProperties": False,
            }
        )
    if not options:
        raise ValueError(f'tool_choice: no tool named "{only}" among the request\'s tools')
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return schema | {"$defs": defs}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


#: Deepest nesting (objects and lists) of a tool's parameters schema: the converter recurses once a level.
MAX_SCHEMA_DEPTH = 128


def _rebased(schema: Any, prefix: str, own: dict[str, Any], depth: int = 0) -> Any:
    """`schema` with its local references pointing to where `call_schema` moved the tool's schema and definitions."""
    if depth > MAX_SCHEMA_DEPTH:
        raise ValueError(f"tools: a parameters schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(schema, list):
        return [_rebased(v, prefix, own, depth + 1) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _rebased(v, prefix, own, depth + 1) for k, v in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        if ref in ("#", "#/"):
            raise ValueError("tools: a parameters schema refers to itself as a whole; give it named $defs")
        parts = ref[2:].split("/")
        if len(parts) >= 2 and parts[0] in ("$defs", "definitions"):
            if parts[1] not in own:
                raise ValueError(f"tools: a parameters schema refers to {ref[:80]}, which it does not define")
            out["$ref"] = "/".join([f"#/$defs/{prefix}-{parts[1]}", *parts[2:]])
        else:
            out["$ref"] = f"#/$defs/{prefix}/{ref[2:]}"
    return out


def tool_grammar(
    tools: list[dict[str, Any]], fmt: str, choice: str, most: int = MAX_GRAMMAR_CALLS
) -> ToolGrammar | None:
    """The grammar for `choice` ("auto", "required" or a tool's name) allowing `most` calls.

    None for the Gemma-style formats, whose arguments are not JSON (they are parsed, not
    constrained); ValueError when the tools can't be expressed as a grammar.
    """
    if len(tools) > MAX_TOOLS:
        raise ValueError(f"tools: at most {MAX_TOOLS} tools may be offered in one request")
    only = None if choice in ("auto", "required") else choice
    if fmt in ("gemma", "functiongemma"):
        call_schema(tools, fmt, only)  # still refuse a tool_choice naming no tool
        return None
    call = _converted(call_schema(tools, fmt, only))
    opener, closer = _MARKERS.get(fmt, ("", ""))
    more = f"{{0,{max(1, min(most, MAX_GRAMMAR_CALLS)) - 1}}}"
    if fmt == "hermes":
        block = f"{opener} tc-call {closer}"
        rules = f'root ::= tc-block (tc-ws tc-block){more} | tc-call (tc-ws "```")?\ntc-block ::= {block}\n'
    elif fmt == "mistral":
        rules = f'root ::= {opener} tc-ws tc-call (tc-ws "," tc-ws tc-call){more} tc-ws {closer}\n'
    elif fmt == "llama3":
        rules = f'root ::= "<|python_tag|>"? tc-call (tc-ws ";" tc-ws tc-call){more}\n'
    else:
        rules = "root ::= tc-call\n"
    grammar = rules + "tc-ws ::= [ \\t\\n]{0,2}\n" + call
    if choice != "auto":
        return ToolGrammar(grammar)
    return ToolGrammar(grammar, lazy=True, triggers=_triggers(fmt))


def _triggers(fmt: str) -> list[dict[str, Any]]:
    """Where a lazy grammar switches on: the format's opening marker, or a call-shaped JSON object."""
    # what the converted `space` rule takes (one optional space), so the text fed to the grammar always parses;
    # a call object written with other whitespace is still parsed, only not constrained
    opening = r'\{ ?"name" ?: ?'
    bare = {"type": "pattern_full", "value": rf"^[ \t\n]{{0,8}}(?:```(?:json)?[ \t\n]{{0,8}})?({opening})$"}
    if fmt == "hermes":  # models trained on it also answer a bare (or fenced) call object
        return [{"type": "word", "value": "<tool_call>"}, bare]
    if fmt == "mistral":
        return [{"type": "word", "value": "[TOOL_CALLS]"}]
    if fmt == "llama3":
        return [{"type": "word", "value": "<|python_tag|>"}, bare]
    return [bare]


def _converted(schema: dict[str, Any]) -> str:
    """llama.cpp's GBNF for `schema`, with its `root` rule renamed `tc-call` so it can be embedded."""
    from app.runner.sampling import schema_grammar  # the runner's converter, with its JSON string fix

    text = schema_grammar(schema)
    if re.search(r"(?<![\w-])root(?![\w-])(?! ::=)", text):
        raise ValueError("tools: a parameters schema refers to itself as a whole; give it named $defs")
    return re.sub(r"^root ::=", "tc-call ::=", text, count=1, flags=re.M)


def describe(tools: list[dict[str, Any]]) -> str:
    """The tools as compact JSON, for error messages and logs."""
    return json.dumps(tool_names(tools))
