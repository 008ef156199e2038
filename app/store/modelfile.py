"""Modelfiles: Ollama's recipe for a model, parsed into typed values and written back.

    FROM smollm2:135m
    SYSTEM \"\"\"You are terse.\"\"\"
    PARAMETER temperature 0.2
    PARAMETER stop "<|im_end|>"

Instructions are case-insensitive; `#` starts a comment where an instruction
could start. A value is the rest of the line, a "quoted" string or a
\"\"\"triple-quoted\"\"\" one; quoted values may span lines and end at the first
closing quote that ends a line, as in Ollama. Every error names its line.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from app.errors import ModelfileError
from app.store.parameters import DEPRECATED, PARAMETERS, ParameterError, coerce

INSTRUCTIONS = ("from", "parameter", "template", "system", "adapter", "draft", "license", "message")
ROLES = ("system", "user", "assistant")
#: Instructions newer Ollama versions accept that loam has no use for yet.
_OLLAMA_ONLY = ("renderer", "parser", "requires")


@dataclass(frozen=True)
class Instruction:
    """One instruction as written: keyword, its key (parameter name or role) and value."""

    keyword: str
    value: str
    line: int
    key: str | None = None


@dataclass
class Modelfile:
    """What a Modelfile asks for, with the line of each path so later errors can name it."""

    source: str
    base: str
    base_line: int
    template: str | None = None
    template_line: int = 0
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    adapters: list[tuple[str, int]] = field(default_factory=list)
    #: DRAFT: a model name or GGUF path that drafts tokens for this one; "" removes an inherited draft.
    draft: str | None = None
    draft_line: int = 0
    warnings: list[str] = field(default_factory=list)

    def error(self, line: int, message: str) -> ModelfileError:
        return ModelfileError(f"{self.source}:{line}: {clip(message)}")


def clip(message: str, limit: int = 400) -> str:
    """A message cut to `limit` characters, so a 5000-digit value does not become a 5000-character error."""
    return message if len(message) <= limit else message[: limit - 60] + f"... ({len(message)} characters)"


def parse(text: str, source: str = "Modelfile") -> Modelfile:
    """Parse Modelfile text; ModelfileError ("SOURCE:LINE: what is wrong") on any mistake."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return _build(list(_Lexer(text, source).instructions()), source)


def render(modelfile: Modelfile, header: str | None = None) -> str:
    """A Modelfile's text; `parse(render(m))` gives back the same values."""
    out = [f"# {line}".rstrip() for line in header.splitlines()] + [""] if header else []
    out.append(f"FROM {modelfile.base}")
    out += [f"ADAPTER {_quote(path)}" for path, _ in modelfile.adapters]
    if modelfile.draft is not None:
        out.append(f"DRAFT {_quote(modelfile.draft)}")
    if modelfile.template is not None:
        out.append(f"TEMPLATE {_quote(modelfile.template)}")
    if modelfile.system is not None:
        out.append(f"SYSTEM {_quote(modelfile.system)}")
    for name, value in modelfile.parameters.items():
        out += [f"PARAMETER {name} {_quote(_format(item))}" for item in (value if isinstance(value, list) else [value])]
    out += [f"MESSAGE {m['role']} {_quote(m['content'])}" for m in modelfile.messages]
    out += [f"LICENSE {_quote(text)}" for text in modelfile.licenses]
    return "\n".join(out) + "\n"


class _Lexer:
    """Splits Modelfile text into instructions, tracking line numbers."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source
        self.pos, self.line = 0, 1

    def error(self, message: str, line: int | None = None) -> ModelfileError:
        return ModelfileError(f"{self.source}:{line or self.line}: {clip(message)}")

    def instructions(self) -> Any:
        while self._skip_blank():
            if self._peek() == "#":
                self._take_while(lambda c: c != "\n")
                continue
            yield self._instruction()

    def _instruction(self) -> Instruction:
        line = self.line
        word = self._take_while(lambda c: not c.isspace())
        keyword = word.lower()
        if keyword not in INSTRUCTIONS:
            raise self.error(_unknown_instruction(word))
        key = None
        if keyword in ("parameter", "message"):
            self._need_space(word)
            key = self._take_while(lambda c: not c.isspace())
            if keyword == "parameter" and not key.replace("_", "").isalnum():
                raise self.error(f"PARAMETER name {key!r} is not a parameter name; write PARAMETER NAME VALUE")
            if keyword == "message" and key.lower() not in ROLES:
                raise self.error(f"MESSAGE role {key!r} must be one of {', '.join(ROLES)}")
            key = key.lower()
        self._need_space(word if key is None else f"{word} {key}")
        return Instruction(keyword, self._value(keyword.upper()), line, key)

    def _need_space(self, what: str) -> None:
        if self._peek() not in (" ", "\t"):
            raise self.error(f"{what.upper()} needs a value after it")
        self._take_while(lambda c: c in " \t")

    def _value(self, keyword: str) -> str:
        start_line = self.line
        quote, end = _quoted(self.text, self.pos)
        if quote:
            if end is None:
                raise self.error(f"{keyword}: the {quote} opened here is never closed; end the value with {quote}")
            value = self.text[self.pos + len(quote) : end]
            self.line += value.count("\n")
            self.pos = end + len(quote)
            self._take_while(lambda c: c in " \t")
            return value
        value = self._take_while(lambda c: c != "\n").strip()
        if not value:
            raise self.error(f"{keyword} needs a value after it", start_line)
        return value

    def _skip_blank(self) -> bool:
        """Skip whitespace; False at the end of the text."""
        self._take_while(str.isspace)
        return self.pos < len(self.text)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _take_while(self, keep: Any) -> str:
        start = self.pos
        while self.pos < len(self.text) and keep(self.text[self.pos]):
            self.pos += 1
        taken = self.text[start : self.pos]
        self.line += taken.count("\n")
        return taken


def _quoted(text: str, pos: int) -> tuple[str | None, int | None]:
    """The quote a value at `pos` opens with, if any, and where its closing quote is."""
    for quote in ('"""', '"'):
        if text.startswith(quote, pos):
            return quote, _closing(text, pos + len(quote), quote)
    return None, None


_CLOSERS = {q: re.compile(re.escape(q) + r"[ \t]*(?=\n|\Z)") for q in ('"""', '"')}


def _closing(text: str, start: int, quote: str) -> int | None:
    """Index of the first `quote` at or after `start` that only blanks follow on its line.

    One regex scan, so a long line full of quotes stays linear rather than
    re-slicing the rest of the line at every quote.
    """
    m = _CLOSERS[quote].search(text, start)
    return m.start() if m else None


def _unknown_instruction(word: str) -> str:
    known = ", ".join(k.upper() for k in INSTRUCTIONS)
    if word.lower() in _OLLAMA_ONLY:
        return f"{word.upper()} is an Ollama instruction loam does not support; remove the line"
    close = difflib.get_close_matches(word.upper(), [k.upper() for k in INSTRUCTIONS], n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown instruction {word!r}; {hint}instructions are {known}"


def _build(instructions: list[Instruction], source: str) -> Modelfile:
    froms = [i for i in instructions if i.keyword == "from"]
    if not froms:
        raise ModelfileError(f"{source}:1: no FROM instruction; start with FROM and a model name or a .gguf path")
    if len(froms) > 1:
        raise ModelfileError(
            f"{source}:{froms[1].line}: a second FROM (the first is on line {froms[0].line}); one model per Modelfile"
        )
    mf = Modelfile(source, froms[0].value, froms[0].line)
    seen: dict[str, int] = {}
    for ins in instructions:
        if ins.keyword in ("template", "system", "draft"):
            _note_repeat(mf, seen, ins.keyword.upper(), ins.line)
            setattr(mf, ins.keyword, ins.value)
            if ins.keyword != "system":
                setattr(mf, f"{ins.keyword}_line", ins.line)
        elif ins.keyword == "parameter":
            _add_parameter(mf, seen, ins)
        elif ins.keyword == "message":
            mf.messages.append({"role": ins.key or "", "content": ins.value})
        elif ins.keyword == "license":
            mf.licenses.append(ins.value)
        elif ins.keyword == "adapter":
            mf.adapters.append((ins.value, ins.line))
    return mf


def _add_parameter(mf: Modelfile, seen: dict[str, int], ins: Instruction) -> None:
    name = ins.key or ""
    if name in DEPRECATED:
        mf.warnings.append(f"{mf.source}:{ins.line}: parameter {name} is deprecated in Ollama; loam ignores it")
        return
    try:
        value = coerce(name, ins.value)
    except ParameterError as e:
        raise mf.error(ins.line, f"PARAMETER {e}" if name in PARAMETERS else str(e)) from None
    if isinstance(value, list):
        mf.parameters[name] = [*mf.parameters.get(name, []), *value]
        return
    _note_repeat(mf, seen, f"PARAMETER {name}", ins.line)
    mf.parameters[name] = value


def _note_repeat(mf: Modelfile, seen: dict[str, int], what: str, line: int) -> None:
    if what in seen:
        mf.warnings.append(f"{mf.source}:{line}: {what} replaces the one on line {seen[what]}")
    seen[what] = line


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return str(value)


def _quote(value: str) -> str:
    """The shortest spelling of `value` that parses back to it exactly."""
    if value and "\n" not in value and value == value.strip() and not value.startswith('"'):
        return value
    for quote in ('"""', '"') if "\n" in value else ('"', '"""'):
        text = quote + value + quote
        if _quoted(text, 0) == (quote, len(quote) + len(value)):
            return text
    raise ModelfileError(
        'a value with """ at the end of one of its lines cannot be written in a Modelfile; change that line'
    )
