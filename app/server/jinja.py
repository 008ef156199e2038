"""The GGUF's own chat template (`tokenizer.chat_template`), rendered as Hugging Face does.

A chat template is Jinja code that arrives inside a downloaded model file, so it
runs in jinja2's immutable sandbox: attributes starting with `_` are out of
reach (no `''.__class__.__mro__` walk to Python internals), lists and dicts
cannot be changed, `range` is capped, and this module also caps `*` repetition
and `**`. The environment matches transformers' `apply_chat_template`:
trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `strftime_now` and
a `tojson` that keeps non-ASCII text.
"""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from app.server.gotemplate import _LOCAL, Budget, TemplateBudgetExceeded, TemplateError

#: Longest string or list a template may build with `*`, and largest exponent for `**`.
_MAX_REPEAT = 1 << 20
_MAX_EXPONENT = 256


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for transformers' masks; here it only renders."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _spend(n: int = 1) -> None:
    """Charge the render running on this thread; a TemplateBudgetExceeded once it has run or built too much."""
    budget = getattr(_LOCAL, "budget", None)
    if budget is not None:
        budget.step(n)
        if time.monotonic() > budget.deadline:
            raise TemplateBudgetExceeded()


def _sized(value: Any) -> Any:
    """Refuse a string or list past _MAX_REPEAT items, charging its size to the budget."""
    if isinstance(value, (str, list, tuple, dict)):
        if len(value) > _MAX_REPEAT:
            raise TemplateBudgetExceeded()
        _spend(1 + len(value) // 64)
    return value


def _concat(*parts: Any) -> str:
    """`a ~ b`, with its result's length checked before it is built."""
    texts = [p if isinstance(p, str) else str(p) for p in parts]
    if sum(len(t) for t in texts) > _MAX_REPEAT:
        raise TemplateBudgetExceeded()
    _spend()
    return "".join(texts)


class _Concats(NodeTransformer):
    """Rewrite every `~` into a call of `loam_concat`, since jinja2 offers no sandbox hook for it."""

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:  # noqa: N802
        args = [self.visit(n) for n in node.nodes]
        return nodes.Call(nodes.Name("loam_concat", "load"), args, [], None, None).set_lineno(node.lineno)


def _range(*args: int) -> range:
    """`range`, charged per item so loops over it spend the budget."""
    r = range(*args)
    if len(r) > _MAX_REPEAT:
        raise TemplateBudgetExceeded()
    _spend(len(r))
    return r


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every operator, call and attribute charged to the render's budget."""

    intercepted_binops = frozenset({"*", "**", "+", "~", "-", "/", "//", "%"})
    intercepted_unops = frozenset({"-", "+"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _spend()
        return _sized(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend()
        for side in (left, right):
            if isinstance(side, (str, list, tuple)) and len(side) > _MAX_REPEAT:
                raise TemplateBudgetExceeded()
        if operator in ("+", "~"):
            lengths = sum(len(x) if isinstance(x, (str, list, tuple)) else 20 for x in (left, right))
            if lengths > _MAX_REPEAT:
                raise TemplateBudgetExceeded()
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > _MAX_REPEAT:
                    raise TemplateBudgetExceeded()
        return _sized(super().call_binop(context, operator, left, right))


def _raise_exception(message: str) -> None:
    """What a template calls to refuse a conversation ("roles must alternate user/assistant...")."""
    raise TemplateError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """transformers' tojson: plain json.dumps, non-ASCII kept, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _finalize(value: Any) -> Any:
    """Print callables and classes as nothing rather than as a repr with a memory address."""
    return "" if callable(value) and not isinstance(value, jinja2.Undefined) else value


_ENV = _Sandbox(
    trim_blocks=True,
    lstrip_blocks=True,
    extensions=[_GenerationTag, "jinja2.ext.loopcontrols"],
    finalize=_finalize,
)
_ENV.filters["tojson"] = _tojson
_ENV.globals["raise_exception"] = _raise_exception
_ENV.globals["strftime_now"] = _strftime_now
_ENV.globals["range"] = _range
_ENV.globals["loam_tick"] = _spend
_ENV.globals["loam_concat"] = _concat
for _name, _filter in list(_ENV.filters.items()):
    _ENV.filters[_name] = functools.wraps(_filter)(lambda *a, _f=_filter, **k: _sized(_f(*a, **k)))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def parse_template(source: str) -> nodes.Template:
    """The template's syntax tree, parsed with the extensions rendering uses; jinja2.TemplateSyntaxError if bad."""
    return _ENV.parse(source)


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template, line {e.lineno}: {_one_line(e)}") from None
    tree = _Concats().visit(tree)
    for loop in tree.find_all(nodes.For):  # every pass of every loop, even an empty one, spends the budget
        tick = nodes.ExprStmt(nodes.Call(nodes.Name("loam_tick", "load"), [], [], None, None))
        loop.body.insert(0, tick.set_lineno(loop.lineno))
    return _ENV.from_string(tree)


def render_jinja(
    source: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list | None = None,
    **extra: Any,
) -> str:
    """Render a Jinja chat template; every failure, a refused sandbox escape included, is a TemplateError."""
    template = _compile(source)
    _LOCAL.budget = budget = Budget()
    try:
        pieces: list[str] = []
        for piece in template.generate(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools,
            **extra,
        ):
            budget.wrote(len(piece))
            if time.monotonic() > budget.deadline:
                raise TemplateBudgetExceeded()
            pieces.append(piece)
        return "".join(pieces)
    except TemplateError:
        raise
    except RecursionError:
        raise TemplateBudgetExceeded() from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"chat template: {_one_line(e)}") from None
    except Exception as e:  # a template is code from a model file: any failure in it is the template's
        raise TemplateError(f"chat template failed: {type(e).__name__}: {_one_line(e)}") from None
