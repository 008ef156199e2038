"""Measured figures, remembered per model digest and machine.

Each bench or eval run of a model appends one JSON line to
`<data dir>/measurements/<digest>.jsonl`. A line says what was measured
(`kind`: "bench" or "eval"), on which machine, when, with what settings,
and the figures. `loam show`, the chat's model picker and its info screen read
the latest figures of this machine back. A damaged line is skipped, never fatal.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app import config

_MAX_LINE = 1 << 20  # a line longer than this is not one we wrote


@dataclass(frozen=True)
class Measurement:
    """One run's figures for one model."""

    kind: str  # "bench" | "eval"
    digest: str  # the model's manifest digest (as /api/tags lists it), or the GGUF file's sha256 for a path
    name: str
    figures: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    machine: str = ""
    machine_label: str = ""
    time: float = 0.0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def machine_label() -> str:
    """What the figures were measured on, in words: CPU, cores and GPUs (asked once: it runs nvidia-smi)."""
    from app.hardware.devices import nvidia_gpus

    gpus = ", ".join(sorted({g.name for g in nvidia_gpus()}))
    return f"{_cpu_name()}, {os.cpu_count() or 1} cores" + (f", {gpus}" if gpus else "")


def machine_id(label: str | None = None) -> str:
    """A short stable id of this machine: its host name and hardware."""
    text = f"{platform.node()}|{label if label is not None else machine_label()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _folder() -> Path:
    return config.paths().data / "measurements"


def _path(digest: str) -> Path:
    """The file of a model's measurements; a digest may be spelled sha256:HEX, sha256-HEX or HEX."""
    hex_part = digest.removeprefix("sha256:").removeprefix("sha256-")
    if len(hex_part) != 64 or any(c not in "0123456789abcdef" for c in hex_part):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return _folder() / f"sha256-{hex_part}.jsonl"


def record(kind: str, digest: str, name: str, figures: dict[str, Any], settings: dict[str, Any]) -> Measurement:
    """Append a measurement of this machine; returns what was stored."""
    label = machine_label()
    m = Measurement(kind, digest, name, figures, settings, machine_id(label), label, time.time())
    path = _path(digest)
    config.private_dir(path.parent)
    line = json.dumps(asdict(m), ensure_ascii=False, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # one write of one line: readers never see half of it
        f.write(line)
    return m


def history(digest: str, this_machine: bool = True) -> list[Measurement]:
    """Every stored measurement of a model, oldest first."""
    try:
        text = _path(digest).read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return []
    me = machine_id() if this_machine else None
    out: list[Measurement] = []
    for line in text.splitlines():
        if len(line) > _MAX_LINE:
            continue
        try:
            data = json.loads(line)
            m = Measurement(**{k: data[k] for k in Measurement.__dataclass_fields__ if k in data})
        except (ValueError, TypeError, KeyError):
            continue
        if not isinstance(m.figures, dict) or not isinstance(m.settings, dict) or (me and m.machine != me):
            continue
        if isinstance(m.time, bool) or not isinstance(m.time, (int, float)):  # show and the F2 tab format it
            continue
        out.append(m)
    return out


def latest(digest: str) -> dict[str, tuple[Any, Measurement]]:
    """The newest value of every figure measured on this machine, with the run that measured it.

    Runs measure different things (one perplexity, another multiple choice),
    so figures are merged by name, the newest run of each name winning.
    """
    out: dict[str, tuple[Any, Measurement]] = {}
    for m in history(digest):
        for key, value in m.figures.items():
            out[f"{m.kind}.{key}"] = (value, m)
    return out


def _number(last: dict[str, tuple[Any, Measurement]], key: str) -> tuple[float, Measurement] | None:
    value, m = last.get(key, (None, None))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and m is not None:
        return float(value), m
    return None


def summary(digest: str) -> str:
    """One line for `loam show` and the picker, e.g. "178 tok/s generation, PPL 21.3 at ctx 512"; "" if none."""
    last = latest(digest)
    parts: list[str] = []
    if got := _number(last, "bench.gen_tps_1"):
        parts.append(f"{got[0]:.0f} tok/s generation")
    best, level = _number(last, "bench.best_aggregate_tps"), _number(last, "bench.best_concurrency")
    if best and level and level[0] > 1:
        parts.append(f"{best[0]:.0f} tok/s total at {level[0]:.0f} streams")
    if got := _number(last, "eval.ppl"):
        ctx = got[1].settings.get("ctx")
        parts.append(f"PPL {got[0]:.2f}" + (f" at ctx {ctx}" if ctx else ""))
    if got := _number(last, "eval.kld_mean"):
        base = got[1].settings.get("base")
        parts.append(f"KLD {got[0]:.4f}" + (f" vs {base}" if base else ""))
    if got := _number(last, "eval.accuracy"):
        parts.append(f"{got[0]:.1f}% multiple choice")
    return ", ".join(parts)


def generation_rate(digest: str) -> float | None:
    """The latest single-stream generation rate measured here, in tokens per second."""
    got = _number(latest(digest), "bench.gen_tps_1")
    return got[0] if got else None


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def history_lines(digest: str, limit: int = 50) -> list[str]:
    """The newest runs first, one line each: when, what, the scalar figures, the settings."""
    lines = []
    for m in reversed(history(digest)[-limit:]):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.time))
        figures = ", ".join(
            f"{k} {_shown(v)}" for k, v in m.figures.items() if isinstance(v, (int, float, str)) and len(str(v)) < 40
        )
        settings = ", ".join(f"{k}={_shown(v)}" for k, v in m.settings.items() if isinstance(v, (int, float, str)))
        lines.append(f"{when}  {m.kind:<5}  {figures}" + (f"  ({settings})" if settings else ""))
    return lines
