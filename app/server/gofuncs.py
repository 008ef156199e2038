"""Values and functions for the Go template executor in gotemplate.py.

Go's rules for printing, truth, field access and comparison, and the functions a
template may call (printf, json, eq, len, index, currentDate...), kept apart from
the parser and executor so each module stays small. The executor imports from
here; nothing here imports the executor.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")
_LAYOUT = re.compile(r"2006|January|Jan|Monday|Mon|01|02|15|03|04|05|06|PM|MST|-0700")
_STRFTIME = {"2006": "%Y", "January": "%B", "Jan": "%b", "Monday": "%A", "Mon": "%a", "01": "%m", "02": "%d"}
_STRFTIME |= {"15": "%H", "03": "%I", "04": "%M", "05": "%S", "06": "%y", "PM": "%p", "MST": "%Z", "-0700": "%z"}


class Fail(Exception):
    """A runtime error; the innermost pipeline it passes through stamps its position on it."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


def truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    return bool(value) if isinstance(value, (bool, int, float, str, list, tuple, dict)) or value is None else True


def get_field(value: Any, name: str) -> Any:
    """`.Name` on a dict; also finds "name" and "snake_name" keys, as request JSON spells them. Nil stays nil."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Fail(f"can't evaluate field {name} in type {_type(value)}")
    for key in (name, name[:1].lower() + name[1:], re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()):
        if key in value:
            return value[key]
    return None


def _type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float64", str: "string", dict: "map", list: "slice", tuple: "slice"}.get(
        type(value), "nil" if value is None else type(value).__name__
    )


def _json(value: Any) -> str:
    """JSON the way Go's encoding/json writes it: compact, UTF-8, with <, > and & escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _float(value: float) -> str:
    """A float as Go's %v prints it: shortest digits, exponent form below 1e-4 and from 1e6 up."""
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    digits = repr(value).lstrip("-").split("e")[0].replace(".", "").lstrip("0") or "0"
    exp = int(f"{value:e}".split("e")[1])
    if exp < -4 or exp >= 6:
        return f"{value:.{max(len(digits.rstrip('0')) - 1, 0)}e}"
    return f"{value:.{max(len(digits.rstrip('0')) - 1 - exp, 0)}f}"


def as_text(value: Any) -> str:
    """How a value prints: nil as "", lists and maps as JSON (as Ollama's Tools and arguments print)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, (dict, list, tuple)):
        return _json(value)
    return str(value)


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "nil" if value is None else "bool"
    return "number" if isinstance(value, (int, float)) else "string" if isinstance(value, str) else "other"


def _eq(a: Any, *others: Any) -> bool:
    """True when `a` equals any of `others`; nil equals only nil, a string never equals a number."""
    if not others:
        raise Fail("missing argument for comparison")
    for b in others:
        if None in (a, b) or _kind(a) == _kind(b):
            if a == b and (a is None) == (b is None):
                return True
        else:
            raise Fail(f"incompatible types for comparison: {_type(a)} and {_type(b)}")
    return False


def _order(a: Any, b: Any) -> tuple[Any, Any]:
    if _kind(a) != _kind(b) or _kind(a) not in ("number", "string"):
        raise Fail(f"incompatible types for comparison: {_type(a)} and {_type(b)}")
    return a, b


def _len(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    raise Fail(f"len of type {_type(value)}")


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict) or value is None:
            value = None if value is None else value.get(key)
        elif isinstance(value, (list, tuple, str)):
            seq = value.encode() if isinstance(value, str) else value
            if _kind(key) != "number" or not isinstance(key, int) or not 0 <= key < len(seq):
                raise Fail(f"error calling index: index out of range: {as_text(key)}")
            value = seq[key]
        else:
            raise Fail(f"can't index item of type {_type(value)}")
    return value


def _slice(value: Any, *bounds: int) -> Any:
    if not isinstance(value, (list, tuple, str)):
        raise Fail(f"can't slice item of type {_type(value)}")
    seq = value.encode() if isinstance(value, str) else list(value)
    if len(bounds) > (2 if isinstance(value, str) else 3):
        raise Fail("too many slice indexes")
    low, high = (list(bounds) + [0, len(seq)][len(bounds) :])[:2]
    if not 0 <= low <= high <= len(seq):
        raise Fail(f"error calling slice: index out of range: {low}:{high}")
    return seq[low:high].decode("utf-8", "replace") if isinstance(seq, bytes) else seq[low:high]


def _print(*args: Any) -> str:
    """Go's fmt.Sprint: a space between two operands when neither is a string."""
    out = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(as_text(arg))
    return "".join(out)


def _printf(fmt: str, *args: Any) -> str:
    """Go's fmt.Sprintf for the verbs templates use: %s %v %d %q %t %f %e %g %x %c and %%."""
    queue = list(args)

    def verb(m: re.Match[str]) -> str:
        flags, width, prec, v = m.groups()
        if v == "%":
            return "%"
        if not queue:
            return f"%!{v}(MISSING)"
        arg = queue.pop(0)
        if int(width or 0) > 4096 or int(prec or 0) > 4096:
            raise Fail("printf width or precision too large")
        spec = ("<" if "-" in flags else "") + ("+" if "+" in flags else "") + ("0" if "0" in flags else "")
        spec += (width or "") + (f".{prec}" if prec else "")
        try:
            if v in "sv":
                return format(as_text(arg), spec.replace("+", "").replace("0", ""))
            if v == "q":
                return format(
                    json.dumps(arg, ensure_ascii=False) if isinstance(arg, str) else as_text(arg), width or ""
                )
            if v == "t" and isinstance(arg, bool):
                return format(as_text(arg), width or "")
            if v in "dxXc" and _kind(arg) == "number" and isinstance(arg, int):
                return chr(arg) if v == "c" else format(arg, spec + ("d" if v == "d" else v))
            if v in "xX" and isinstance(arg, str):
                return format(arg.encode().hex().upper() if v == "X" else arg.encode().hex(), width or "")
            if v in "feEgG" and _kind(arg) == "number":
                return _float(float(arg)) if v == "g" and not prec else format(float(arg), spec + v)
        except (ValueError, OverflowError):
            pass
        return f"%!{v}({_type(arg)}={as_text(arg)})"

    out = _VERB.sub(verb, fmt)
    return out + ("%!(EXTRA " + ", ".join(f"{_type(a)}={as_text(a)}" for a in queue) + ")" if queue else "")


def _html(*args: Any) -> str:
    text = args[0] if len(args) == 1 and isinstance(args[0], str) else _print(*args)
    for char, esc in (("&", "&amp;"), ("'", "&#39;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("\0", "\ufffd")):
        text = text.replace(char, esc)
    return text


def _current_date(layout: str = "2006-01-02") -> str:
    """Today's date in a Go time layout ("2006-01-02" is YYYY-MM-DD)."""
    fmt = _LAYOUT.sub(lambda m: _STRFTIME[m.group()], layout.replace("%", "%%"))
    return datetime.now().astimezone().strftime(fmt)


FUNCS: dict[str, Any] = {
    "and": None,  # and/or are evaluated lazily, argument by argument, by the executor
    "or": None,
    "not": lambda value: not truth(value),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": lambda a, b: _order(a, b)[0] < b,
    "le": lambda a, b: _order(a, b)[0] <= b,
    "gt": lambda a, b: _order(a, b)[0] > b,
    "ge": lambda a, b: _order(a, b)[0] >= b,
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _print,
    "println": lambda *args: " ".join(as_text(a) for a in args) + "\n",
    "printf": _printf,
    "html": _html,
    "json": _json,
    "currentDate": _current_date,
}
