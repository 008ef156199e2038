"""Durations as Ollama's API writes them: a number of seconds or a Go duration such as 5m or 1h30m.

It sits at the bottom of the package, so the wire models (app/api.py) and the
server's settings (LOAM_KEEP_ALIVE) read keep-alive values the same way.
"""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float:
    """Seconds a model stays loaded after a request: Ollama's number of seconds or Go duration.

    Negative means forever (returned as math.inf); 0 unloads at once.
    """
    if isinstance(value, bool):
        raise ValueError(f"keep_alive {value!r} is not a duration; use e.g. 5m, 1h, 0 or -1")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text.replace("+", ""):
                raise ValueError(f"keep_alive {value!r} is not a duration; use e.g. 5m, 1h30m, 0 or -1") from None
            sign = -1.0 if text.startswith("-") else 1.0
            seconds = sign * sum(abs(float(n)) * _UNIT[u] for n, u in parts)
    else:
        raise ValueError(f"keep_alive {value!r} is not a duration; use e.g. 5m, 1h, 0 or -1")
    return math.inf if seconds < 0 else seconds
