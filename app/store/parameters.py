"""Model parameters (Ollama's "options"): their names, types and allowed values.

One table serves every place a parameter can come from, so a value that is
refused in a Modelfile is refused the same way in the catalog and, later, in an
API request.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple


class Spec(NamedTuple):
    """A parameter's type and the smallest and largest value it may take.

    A NamedTuple rather than a dataclass: `loam ask` imports this table, and a
    dataclass compiles its methods when the module loads.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    meaning: str = ""


PARAMETERS: dict[str, Spec] = {
    "num_ctx": Spec(int, 1, None, "context window in tokens"),
    "num_batch": Spec(int, 1, None, "tokens per prompt-processing batch"),
    "num_gpu": Spec(int, -1, None, "layers to offload to the GPU; -1 decides from free memory"),
    "main_gpu": Spec(int, 0, None, "GPU that holds small tensors and scratch buffers"),
    "num_thread": Spec(int, 0, None, "CPU threads; 0 picks the number of physical cores"),
    "num_parallel": Spec(int, 1, 64, "slots: requests one loaded model answers at once"),
    "num_keep": Spec(int, -1, None, "prompt tokens kept when the context overflows; -1 keeps all"),
    "seed": Spec(int, None, None, "random seed; -1 picks one per request"),
    "num_predict": Spec(int, -2, None, "most tokens to generate; -1 no limit, -2 fill the context"),
    "top_k": Spec(int, 0, None, "sample from the k most likely tokens; 0 disables"),
    "top_p": Spec(float, 0.0, 1.0, "nucleus sampling probability mass"),
    "min_p": Spec(float, 0.0, 1.0, "drop tokens below this fraction of the top token's probability"),
    "typical_p": Spec(float, 0.0, 1.0, "locally typical sampling; 1.0 disables"),
    "repeat_last_n": Spec(int, -1, None, "tokens looked back on for repeat penalties; -1 the whole context"),
    "temperature": Spec(float, 0.0, None, "sampling temperature; 0 is greedy"),
    "repeat_penalty": Spec(float, 0.0, None, "penalty for repeated tokens; 1.0 disables"),
    "presence_penalty": Spec(float, None, None, "penalty for tokens already present"),
    "frequency_penalty": Spec(float, None, None, "penalty scaled by how often a token appeared"),
    "stop": Spec(list, None, None, "text that ends generation; repeat for several"),
    "use_mmap": Spec(bool, None, None, "map the model file instead of reading it into memory"),
    "ignore_eos": Spec(bool, None, None, "keep generating past end-of-sequence tokens (for benchmarks)"),
    "draft_num_predict": Spec(int, 1, 64, "most tokens the DRAFT model proposes per step"),
    "stream_interval": Spec(float, 0.0, 1.0, "seconds streamed tokens gather to be sent together; 0 sends each alone"),
    "tool_choice": Spec(str, None, None, "auto, none, required, or a tool's name: whether the reply must call a tool"),
}

#: Parameters Ollama once accepted and now ignores with a warning; loam does the same.
DEPRECATED = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
        "numa",
    }
)

_TRUE = {"true", "t", "1", "yes", "on"}
_FALSE = {"false", "f", "0", "no", "off"}


class ParameterError(ValueError):
    """A parameter name that does not exist or a value it cannot take."""


def coerce(name: str, value: Any) -> Any:
    """`value` (text from a Modelfile, or a TOML/JSON value) as the parameter's type.

    `stop` always comes back as a list of strings. Raises ParameterError naming
    the parameter and what it accepts.
    """
    spec = PARAMETERS.get(name)
    if spec is None:
        raise ParameterError(unknown_message(name))
    if spec.kind is list:
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(s, str) and s for s in items):
            raise ParameterError(f"{name} takes non-empty text, got {value!r}")
        return list(items)
    if spec.kind is bool:
        return _bool(name, value)
    if spec.kind is str:
        if not isinstance(value, str) or not value.strip() or len(value) > 256:
            raise ParameterError(f"{name} takes a word of text, got {value!r}")
        return value.strip()
    number = _int(name, value) if spec.kind is int else _float(name, value)
    _check_range(name, number, spec)
    return number


def coerce_all(parameters: dict[str, Any]) -> dict[str, Any]:
    """Every entry of a parameter table coerced; the first bad one raises."""
    return {name: coerce(name, value) for name, value in parameters.items()}


def unknown_message(name: str) -> str:
    import difflib  # only for a name that is wrong

    close = difflib.get_close_matches(name, list(PARAMETERS), n=1)
    hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(PARAMETERS)
    return f"unknown parameter {name!r}; {hint}"


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ParameterError(f"{name} takes true or false, got {value!r}")


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ParameterError(f"{name} takes a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ParameterError(f"{name} takes a whole number, got {value!r}")


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ParameterError(f"{name} takes a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} takes a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ParameterError(f"{name} takes a finite number, got {value!r}")
    return number


def _check_range(name: str, number: float, spec: Spec) -> None:
    low, high = spec.low, spec.high
    if (low is not None and number < low) or (high is not None and number > high):
        if high is None:
            allowed = f"at least {_fmt(low)}"
        elif low is None:
            allowed = f"at most {_fmt(high)}"
        else:
            allowed = f"between {_fmt(low)} and {_fmt(high)}"
        raise ParameterError(f"{name} must be {allowed}, got {_fmt(number)}")


def _fmt(number: float | None) -> str:
    return str(int(number)) if number is not None and float(number).is_integer() else str(number)
