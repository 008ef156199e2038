"""How a ladder's result reads: a text table, a terminal chart, and a Markdown report."""

from __future__ import annotations

import re
from typing import Any

from app.display import human_bytes

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: (header, key, format) of each table column; a rung without the figure shows "-".
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("MODEL", "name", "{}"),
    ("TYPE", "type", "{}"),
    ("SIZE", "size", "bytes"),
    ("BPW", "bpw", "{:.2f}"),
    ("MEMORY", "memory", "bytes"),
    ("PROMPT t/s", "prompt_tps_1", "{:.0f}"),
    ("GEN t/s", "gen_tps_1", "{:.1f}"),
    ("GEN t/s x4", "gen_tps_4", "{:.1f}"),
    ("PPL", "ppl", "{:.3f}"),
    ("±", "ppl_err", "{:.3f}"),
    ("KLD", "kld_mean", "{:.5f}"),
    ("SAME TOP", "same_top", "{:.1f}%"),
    ("ACC", "accuracy", "{:.1f}%"),
)


def _cell(rung: dict[str, Any], key: str, fmt: str) -> str:
    value = rung.get(key)
    if value is None or value == "":
        return "-"
    if fmt == "bytes":
        return human_bytes(int(value))
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _columns(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Columns with at least one value: a ladder without --choices has no ACC column."""
    rungs = result["rungs"]
    return [c for c in COLUMNS if any(r.get(c[1]) not in (None, "") for r in rungs)]


def rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    columns = _columns(result)
    return [c[0] for c in columns], [[_cell(r, key, fmt) for _, key, fmt in columns] for r in result["rungs"]]


def table(result: dict[str, Any]) -> str:
    """The ladder as aligned text columns, the source first."""
    header, body = rows(result)
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]
    ]
    return "\n".join(lines)


def chart(result: dict[str, Any], width: int = 100, height: int = 30, color: bool = True) -> str:
    """KL divergence and generation speed against file size (MB), one point per rung labelled with its type."""
    import plotext

    rungs = result["rungs"]
    fig = plotext.figure
    fig.clear()
    fig.theme("simple" if color else "colorless")
    fig.plot_size(width, height)
    fig.subplots(2, 1)
    panels = (
        ("mean KL divergence from the source vs size (MB)", (("kld_mean", "KLD"),)),
        ("generated tok/s vs size (MB)", (("gen_tps_1", "1 stream"), ("gen_tps_4", "4 streams"))),
    )
    for row, (title, series) in enumerate(panels, start=1):
        plot = fig.subplot(row, 1)
        plot.title(title)
        for key, name in series:
            points = [(r["size"] / 1e6, r[key], r["type"]) for r in rungs if r.get(key) is not None]
            if not points:
                continue
            plot.draw(plot.signal([p[0] for p in points], [p[1] for p in points]).label(name))
            if len(series) == 1:
                for x, y, label in points:
                    plot.draw(plot.text(x, y, label))
    text = str(fig.build())
    return text if color else _ANSI.sub("", text)


def markdown(result: dict[str, Any]) -> str:
    """The whole ladder as a Markdown document: command, table, recommendation, chart."""
    header, body = rows(result)
    lines = [
        f"# Quantization ladder of {result['source']}",
        "",
        "Made with:",
        "",
        f"    {result['command']}",
        "",
        f"on {result.get('machine', 'this machine')}, in {result['seconds']:.0f} s.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(row) + " |" for row in body),
        "",
        f"**Recommended: {result['recommended'] or 'none'}**, by the rule: {result['rule']}.",
        "",
        "PPL is llama-perplexity's figure on the text (windows of the context, second half scored); KLD is the",
        "mean KL divergence of each type's next-token distribution from the source's over the same windows;",
        "SAME TOP is how often both pick the same most likely token. Speeds are through loam's server:",
        "GEN t/s is one stream, GEN t/s x4 the aggregate of four concurrent streams.",
        "",
        "```",
        chart(result, color=False),
        "```",
        "",
    ]
    return "\n".join(lines)
