"""How a ladder's result reads: a text table, a terminal chart, and a Markdown report."""

from __future__ import annotations

import re
from typing import Any

from app.display import human_bytes
from app.display import table as layout

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
    ("TOTAL t/s x1", "agg_tps_1", "{:.1f}"),
    ("TOTAL t/s x4", "agg_tps_4", "{:.1f}"),
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
    return layout([header, *body], gap=2)


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
        ("mean KL divergence from the source vs size (MB)", (("kld_mean", "o"),)),
        ("generated tok/s, all streams, vs size (MB): o 1 stream, x 4", (("agg_tps_1", "o"), ("agg_tps_4", "x"))),
    )
    for row, (title, series) in enumerate(panels, start=1):
        plot = fig.subplot(row, 1)
        plot.title(title)
        for key, marker in series:
            points = [(r["size"] / 1e6, r[key], r["type"]) for r in rungs if r.get(key) is not None]
            if not points:
                continue
            if len(series) > 1:
                plot.draw(plot.signal([p[0] for p in points], [p[1] for p in points], marker=marker))
            if len(series) == 1:  # name each point; right of it, or left of it in the right half
                middle = (min(p[0] for p in points) + max(p[0] for p in points)) / 2
                for x, y, label in points:
                    right = len(points) > 1 and x > middle
                    plot.draw(
                        plot.text(x, y, f"{label} o" if right else f"o {label}", alignment="right" if right else "left")
                    )
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
        "SAME TOP is how often both pick the same most likely token. Speeds are through loam's server",
        "(`loam bench`): PROMPT t/s and GEN t/s are one stream's prompt reading and decoding rates; TOTAL t/s",
        "is every generated token over the wall time, prompts included, with 1 and with 4 concurrent streams.",
        "",
        "```",
        chart(result, color=False),
        "```",
        "",
    ]
    return "\n".join(lines)
