"""Go text/template, the part of it that Ollama's model templates use.

A Modelfile TEMPLATE is written for Go's text/template: `{{ .System }}`,
`{{ range .Messages }}...{{ end }}`, `{{- ... -}}` trim markers and a handful of
functions. This module parses such a template into a small tree and runs it
against plain dicts, so Ollama's library templates render the same prompt here.

Data is dicts, lists and scalars only; a field is a dict key, so a template can
reach nothing but the data it is given. A missing key is nil: it prints as ""
(Go prints "<no value>") and is false.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from app.errors import LoamError
from app.server.gofuncs import FUNCS, Fail, as_text, get_field, truth

_WS = " \t\r\n"
_KEYWORDS = frozenset({"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"})
_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n]+)|(?P<close>}})|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)|(?P<char>'(?:[^'\\\n]|\\.)+')
    |(?P<num>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?))
    |(?P<field>(?:\.[A-Za-z_]\w*)+)|(?P<var>\$\w*(?:\.[A-Za-z_]\w*)*)|(?P<dot>\.)|(?P<decl>:=)|(?P<op>[=|(),])
    |(?P<ident>[A-Za-z_]\w*)""",
    re.X,
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)", re.S)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f"}
_MAX_RANGE = 100_000
_NOVALUE = object()
#: The budget of the render running on this thread (renders run in worker threads, several at once).
_LOCAL = threading.local()


class TemplateError(LoamError, ValueError):
    """A template that cannot be parsed or run; the message says where (line:column) and what is wrong."""


class TemplateBudgetExceeded(TemplateError):
    """A template that ran too long, looped too often or wrote too much; the request is refused with a 400."""

    def __init__(self) -> None:
        super().__init__("template exceeded its budget")


#: Most evaluation steps (nodes walked, range iterations) and output characters one render may take.
MAX_STEPS = 1_000_000
MAX_OUTPUT = 4 << 20


def timeout() -> float:
    """Seconds one render may run: LOAM_TEMPLATE_TIMEOUT, 2 by default."""
    try:
        value = float(os.environ.get("LOAM_TEMPLATE_TIMEOUT", "2"))
    except ValueError:
        return 2.0
    return value if value > 0 else 2.0


class Budget:
    """What one render may still spend; `step` is called per node and per loop pass, `wrote` per output piece."""

    def __init__(self) -> None:
        self.steps = 0
        self.size = 0
        self.deadline = time.monotonic() + timeout()

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_STEPS or (self.steps & 255 == 0 and time.monotonic() > self.deadline):
            raise TemplateBudgetExceeded()

    def wrote(self, n: int) -> None:
        self.size += n
        if self.size > MAX_OUTPUT:
            raise TemplateBudgetExceeded()
        self.step()


def check_template(text: str) -> None:
    """Raise a TemplateError ("line L:C: ...", line within `text`) when a Go template does not parse."""
    parse(text)


class _Jump(Exception):
    """`{{ break }}` or `{{ continue }}` unwinding to its range."""


@dataclass
class _Tok:
    kind: str
    text: str
    start: int
    end: int


@dataclass
class _Arg:
    """One operand: kind is lit, dot, field, var, ident (a function) or pipe; chain is `.A.B` after it."""

    kind: str
    value: Any = None
    chain: tuple[str, ...] = ()


@dataclass
class _Pipe:
    offset: int
    cmds: list[list[_Arg]]
    decl: list[str] = field(default_factory=list)
    assign: bool = False


@dataclass
class _Action:
    pipe: _Pipe


@dataclass
class _Branch:
    """`if` or `with`: the first true (pipeline, body) pair runs, else the else body."""

    kind: str
    arms: list[tuple[_Pipe, list[Any]]]
    orelse: list[Any] | None = None


@dataclass
class _Range:
    pipe: _Pipe
    body: list[Any]
    orelse: list[Any] | None = None


@dataclass
class _Loop:
    kind: str


@dataclass
class _Item:
    """A scanned `{{ ... }}` before parsing: its tokens (closing delimiter excluded) and where it starts."""

    toks: list[_Tok]
    offset: int

    @property
    def keyword(self) -> str | None:
        first = self.toks[0] if self.toks else None
        return first.text if first and first.kind == "ident" and first.text in _KEYWORDS else None


def _where(source: str, offset: int) -> str:
    line = source.count("\n", 0, offset) + 1
    return f"line {line}, column {offset - source.rfind(chr(10), 0, offset)}"


def _scan(source: str) -> list[str | _Item]:
    """Split the source into text and actions, applying the `{{-` and `-}}` trim markers."""
    items: list[str | _Item] = []
    pos, trim_next = 0, False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip(_WS)
        if start < 0:
            items.append(text)
            return items
        pos = start + 2
        if source.startswith("-", pos) and source[pos + 1 : pos + 2] in tuple(_WS):
            text, pos = text.rstrip(_WS), pos + 2
        items.append(text)
        if source.startswith("/*", pos):
            end = source.find("*/", pos + 2)
            m = re.compile(r"\*/(?:[ \t\r\n]+(-))?}}").match(source, max(end, 0))
            if end < 0 or not m:
                raise TemplateError(f"{_where(source, start)}: unclosed comment")
            pos, trim_next = m.end(), bool(m.group(1))
            continue
        toks: list[_Tok] = []
        while True:
            m = _TOKEN.match(source, pos)
            if m is None:
                what = "unclosed action" if pos >= len(source) else f"unexpected {source[pos]!r} in action"
                raise TemplateError(f"{_where(source, pos if pos < len(source) else start)}: {what}")
            kind, pos = m.lastgroup or "", m.end()
            if kind == "ws" and source.startswith("-}}", pos):
                pos, trim_next = pos + 3, True
                break
            if kind == "close":
                trim_next = False
                break
            if kind != "ws":
                toks.append(_Tok(m.group() if kind in ("op", "decl") else kind, m.group(), m.start(), m.end()))
        if not toks:
            raise TemplateError(f"{_where(source, start)}: missing value for command")
        items.append(_Item(toks, toks[0].start))


def _unquote(tok: _Tok, source: str) -> str:
    def repl(m: re.Match[str]) -> str:
        esc = m.group(1)
        if len(esc) > 1:
            return chr(int(esc[1:], 16) if esc[0] in "xuU" else int(esc, 8))
        if esc in _SIMPLE_ESCAPES or esc == "v":
            return _SIMPLE_ESCAPES.get(esc, "\v")
        raise TemplateError(f"{_where(source, tok.start)}: unknown escape sequence \\{esc}")

    return _ESCAPE.sub(repl, tok.text[1:-1])


class _Parser:
    """Recursive descent over scanned items; every error names the position in the source."""

    def __init__(self, source: str) -> None:
        self.source, self.items, self.i, self.loops = source, _scan(source), 0, 0

    def fail(self, offset: int, message: str) -> TemplateError:
        return TemplateError(f"{_where(self.source, offset)}: {message}")

    def nodes(self, stop: tuple[str, ...]) -> tuple[list[Any], _Item | None]:
        out: list[Any] = []
        while self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if isinstance(item, str):
                if item:
                    out.append(item)
                continue
            kw = item.keyword
            if kw in ("end", "else"):
                if kw not in stop:
                    raise self.fail(item.offset, f"unexpected {{{{{kw}}}}}")
                if kw == "end" and len(item.toks) > 1:
                    raise self.fail(item.toks[1].start, "unexpected token after end")
                return out, item
            if kw in ("if", "with"):
                out.append(self.branch(kw, item))
            elif kw == "range":
                out.append(self.range(item))
            elif kw in ("break", "continue"):
                if not self.loops or len(item.toks) > 1:
                    raise self.fail(item.offset, f"{{{{{kw}}}}} outside {{{{range}}}}")
                out.append(_Loop(kw))
            elif kw:
                raise self.fail(item.offset, f"{{{{{kw}}}}} is not supported")
            else:
                out.append(_Action(self.pipeline(item.toks, 0, 1)[0]))
        if stop:
            raise self.fail(len(self.source), "unexpected end of template: missing {{end}}")
        return out, None

    def branch(self, kind: str, item: _Item) -> _Branch:
        node = _Branch(kind, [])
        toks = item.toks[1:]
        while True:
            if not toks:
                raise self.fail(item.offset, f"missing value for {kind}")
            pipe = self.pipeline(toks, 0, 1)[0]
            body, end = self.nodes(("end", "else"))
            node.arms.append((pipe, body))
            assert end is not None
            if end.keyword == "end":
                return node
            if len(end.toks) > 1 and end.toks[1].text == kind and end.toks[1].kind == "ident":
                toks, item = end.toks[2:], end
                continue
            if len(end.toks) > 1:
                raise self.fail(end.toks[1].start, "unexpected token after else")
            node.orelse = self.nodes(("end",))[0]
            return node

    def range(self, item: _Item) -> _Range:
        if len(item.toks) < 2:
            raise self.fail(item.offset, "missing value for range")
        pipe = self.pipeline(item.toks, 1, 2)[0]
        self.loops += 1
        body, end = self.nodes(("end", "else"))
        self.loops -= 1
        node = _Range(pipe, body)
        if end is not None and end.keyword == "else":
            if len(end.toks) > 1:
                raise self.fail(end.toks[1].start, "unexpected token after else")
            node.orelse = self.nodes(("end",))[0]
        return node

    def pipeline(self, toks: list[_Tok], j: int, max_vars: int, paren: bool = False) -> tuple[_Pipe, int]:
        pipe = _Pipe(toks[j].start if j < len(toks) else toks[-1].end, [])
        k, names = j, []
        while k < len(toks) and toks[k].kind == "var" and "." not in toks[k].text:
            names.append(toks[k].text)
            k += 1
            if k < len(toks) and toks[k].kind == "," and len(names) < max_vars:
                k += 1
                continue
            break
        if names and k < len(toks) and toks[k].kind in (":=", "="):
            pipe.decl, pipe.assign, j = names, toks[k].kind == "=", k + 1
            if pipe.assign and len(names) > 1:
                raise self.fail(toks[k].start, "only one variable can be assigned")
        while True:
            args: list[_Arg] = []
            while j < len(toks) and toks[j].kind not in ("|", ")"):
                arg, j = self.operand(toks, j)
                args.append(arg)
            if not args:
                raise self.fail(toks[min(j, len(toks) - 1)].start, "missing command in pipeline")
            pipe.cmds.append(args)
            if j < len(toks) and toks[j].kind == "|":
                j += 1
                continue
            break
        if paren != (j < len(toks)):
            raise self.fail(toks[min(j, len(toks) - 1)].start, "unclosed left paren" if paren else "unexpected )")
        return pipe, j + 1 if paren else j

    def operand(self, toks: list[_Tok], j: int) -> tuple[_Arg, int]:
        tok = toks[j]
        kind, text = tok.kind, tok.text
        if kind == "num":
            clean = text.replace("_", "")
            is_hex = clean.lstrip("+-")[:2].lower() == "0x"
            is_float = not is_hex and any(c in clean for c in ".eE")
            arg = _Arg("lit", float(clean) if is_float else int(clean, 16 if is_hex else 10))
        elif kind in ("str", "char"):
            value = _unquote(tok, self.source)
            arg = _Arg("lit", value if kind == "str" else ord(value[0]))
        elif kind == "raw":
            arg = _Arg("lit", text[1:-1])
        elif kind == "ident" and text in ("true", "false", "nil"):
            arg = _Arg("lit", {"true": True, "false": False, "nil": None}[text])
        elif kind == "ident" and text in FUNCS:
            arg = _Arg("ident", text)
        elif kind == "ident":
            raise self.fail(tok.start, f'function "{text}" not defined')
        elif kind == "field":
            arg = _Arg("field", None, tuple(text[1:].split(".")))
        elif kind == "var":
            name, *chain = text.split(".")
            arg = _Arg("var", name, tuple(chain))
        elif kind == "dot":
            arg = _Arg("dot")
        elif kind == "(":
            pipe, j = self.pipeline(toks, j + 1, 1, paren=True)
            arg = _Arg("pipe", pipe)
            if j < len(toks) and toks[j].kind == "field" and toks[j].start == toks[j - 1].end:
                arg.chain, j = tuple(toks[j].text[1:].split(".")), j + 1
            return arg, j
        else:
            raise self.fail(tok.start, f"unexpected {text!r} in operand")
        return arg, j + 1


class GoTemplate:
    """A parsed template: run it with `execute`, ask it which fields it reads with `uses`."""

    def __init__(self, source: str, nodes: list[Any]) -> None:
        self.source = source
        self._nodes = nodes

    def execute(self, data: dict[str, Any]) -> str:
        """Render the template with `data` as both `.` and `$`."""
        out: list[str] = []
        _LOCAL.budget = Budget()
        try:
            self._walk(self._nodes, data, [{"$": data}], out)
        except Fail as e:
            raise TemplateError(f"{_where(self.source, e.offset or 0)}: {e}") from None
        except RecursionError:
            raise TemplateError("template nests too deeply") from None
        return "".join(out)

    def uses(self, name: str) -> bool:
        """Whether a field called `name` appears anywhere (`.Messages`, `$.Messages`, `(x).Messages`...)."""
        return any(_mentions(n, name, True) for n in self._nodes)

    def truncated_at(self, name: str) -> GoTemplate:
        """A copy that ends right after the first action printing field `name` (in source order).

        This is how Ollama renders the last turn of a legacy template: everything the
        template would write after `{{ .Response }}` belongs to a reply not yet written.
        """
        return GoTemplate(self.source, _cut(self._nodes, name, [False]))

    def _walk(self, nodes: list[Any], dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
        budget: Budget = _LOCAL.budget
        for node in nodes:
            budget.step()
            if isinstance(node, str):
                budget.wrote(len(node))
                out.append(node)
            elif isinstance(node, _Action):
                value = self._pipe(node.pipe, dot, scopes)
                if not node.pipe.decl:
                    text = as_text(value)
                    budget.wrote(len(text))
                    out.append(text)
            elif isinstance(node, _Branch):
                scopes.append({})
                try:
                    for pipe, body in node.arms:
                        value = self._pipe(pipe, dot, scopes)
                        if truth(value):
                            self._walk(body, value if node.kind == "with" else dot, scopes, out)
                            break
                    else:
                        if node.orelse is not None:
                            self._walk(node.orelse, dot, scopes, out)
                finally:
                    scopes.pop()
            elif isinstance(node, _Range):
                self._range(node, dot, scopes, out)
            else:
                raise _Jump(node.kind)

    def _range(self, node: _Range, dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
        value = self._pipe(node.pipe, dot, scopes, declare=False)
        if value is None:
            pairs: list[tuple[Any, Any]] = []
        elif isinstance(value, (list, tuple)):
            pairs = list(enumerate(value))
        elif isinstance(value, dict):
            pairs = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, int) and not isinstance(value, bool) and value <= _MAX_RANGE:
            pairs = [(i, i) for i in range(value)]
        else:
            raise Fail(f"range can't iterate over {as_text(value)[:40]}", node.pipe.offset)
        if not pairs:
            if node.orelse is not None:
                scopes.append({})
                try:
                    self._walk(node.orelse, dot, scopes, out)
                finally:
                    scopes.pop()
            return
        names = node.pipe.decl
        for key, elem in pairs:
            _LOCAL.budget.step()
            scopes.append({names[0]: elem} if len(names) == 1 else {names[0]: key, names[1]: elem} if names else {})
            try:
                self._walk(node.body, elem, scopes, out)
            except _Jump as jump:
                if jump.args[0] == "break":
                    break
            finally:
                scopes.pop()

    def _pipe(self, pipe: _Pipe, dot: Any, scopes: list[dict[str, Any]], declare: bool = True) -> Any:
        try:
            value: Any = _NOVALUE
            for cmd in pipe.cmds:
                value = self._command(cmd, dot, scopes, value)
            if declare and pipe.decl:
                name = pipe.decl[0]
                if not pipe.assign:
                    scopes[-1][name] = value
                else:
                    scope = next((s for s in reversed(scopes) if name in s), None)
                    if scope is None:
                        raise Fail(f"undefined variable: {name}")
                    scope[name] = value
            return value
        except Fail as e:
            if e.offset is None:
                e.offset = pipe.offset
            raise

    def _command(self, args: list[_Arg], dot: Any, scopes: list[dict[str, Any]], piped: Any) -> Any:
        head, rest = args[0], args[1:]
        if head.kind != "ident":
            if rest or piped is not _NOVALUE:
                raise Fail("can't give argument to non-function")
            return self._arg(head, dot, scopes)
        name = head.value
        if name in ("and", "or"):
            thunks = [lambda a=a: self._arg(a, dot, scopes) for a in rest]
            if piped is not _NOVALUE:
                thunks.append(lambda: piped)
            if not thunks:
                raise Fail(f"wrong number of args for {name}: want at least 1 got 0")
            for thunk in thunks:
                value = thunk()
                if truth(value) == (name == "or"):
                    return value
            return value
        values = [self._arg(a, dot, scopes) for a in rest] + ([] if piped is _NOVALUE else [piped])
        try:
            return FUNCS[name](*values)
        except TypeError as e:
            raise Fail(f"error calling {name}: wrong number or type of arguments ({e})") from None

    def _arg(self, arg: _Arg, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        if arg.kind == "lit":
            value = arg.value
        elif arg.kind in ("dot", "field"):
            value = dot
        elif arg.kind == "var":
            scope = next((s for s in reversed(scopes) if arg.value in s), None)
            if scope is None:
                raise Fail(f"undefined variable: {arg.value}")
            value = scope[arg.value]
        elif arg.kind == "pipe":
            value = self._pipe(arg.value, dot, scopes)
        else:
            value = self._command([arg], dot, scopes, _NOVALUE)
        for name in arg.chain:
            value = get_field(value, name)
        return value


def parse(source: str) -> GoTemplate:
    """Parse a Go text/template source; a TemplateError names the line and column of what is wrong."""
    try:
        return GoTemplate(source, _Parser(source).nodes(())[0])
    except RecursionError:
        raise TemplateError("template nests too deeply") from None


def _mentions(node: Any, name: str, deep: bool) -> bool:
    """Whether `node` refers to field `name`; with deep=False only an action's own pipeline counts."""
    if isinstance(node, _Pipe):
        return any(
            name in a.chain or (a.kind == "pipe" and _mentions(a.value, name, deep)) for cmd in node.cmds for a in cmd
        )
    if isinstance(node, _Action):
        return _mentions(node.pipe, name, deep)
    if not deep or isinstance(node, (str, _Loop)):
        return False
    if isinstance(node, _Branch):
        parts: list[Any] = [p for arm in node.arms for p in (arm[0], *arm[1])] + (node.orelse or [])
    else:
        parts = [node.pipe, *node.body, *(node.orelse or [])]
    return any(_mentions(p, name, deep) for p in parts)


def _cut(nodes: list[Any], name: str, done: list[bool]) -> list[Any]:
    """Copy `nodes`, dropping everything after the first action that prints field `name`."""
    out: list[Any] = []
    for node in nodes:
        if done[0]:
            break
        if isinstance(node, _Action):
            done[0] = _mentions(node, name, False)
            out.append(node)
        elif isinstance(node, _Branch):
            arms = []
            for pipe, body in node.arms:
                if done[0]:
                    break
                arms.append((pipe, _cut(body, name, done)))
            orelse = None if done[0] or node.orelse is None else _cut(node.orelse, name, done)
            out.append(_Branch(node.kind, arms, orelse))
        elif isinstance(node, _Range):
            body = _cut(node.body, name, done)
            orelse = None if done[0] or node.orelse is None else _cut(node.orelse, name, done)
            out.append(_Range(node.pipe, body, orelse))
        else:
            out.append(node)
    return out
