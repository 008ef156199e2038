"""The terminal chart of `loam bench`: aggregate tok/s and TTFT p50 against concurrency, one line per model."""

from __future__ import annotations

import shutil
from typing import Any


def render(runs: list[tuple[str, list[dict[str, Any]]]], width: int | None = None, height: int = 18) -> str:
    """Two side-by-side plots as terminal text (ANSI colours included); "" when nothing has figures to draw.

    `runs` is (model, its level figures) per model; levels without a figure are left out of that line.
    """
    import plotext

    panels = (("aggregate tok/s", "aggregate_tps"), ("TTFT p50 ms", "ttft_p50_ms"))
    levels = sorted({f["concurrency"] for _, table in runs for f in table})
    if not levels or not any(f.get(key) for _, table in runs for f in table for _, key in panels):
        return ""
    fig = plotext.figure
    fig.clear()
    fig.theme("simple")  # signals coloured, the frame in the terminal's own colours
    fig.plot_size(width or min(shutil.get_terminal_size((100, 24)).columns, 120), height)
    fig.subplots(1, 2)
    for col, (title, key) in enumerate(panels, start=1):
        plot = fig.subplot(1, col)
        plot.title(title)
        plot.label("concurrent streams", "x")
        plot.legend(active=col == 1)  # one legend names the lines of both
        plot.ruler("x").ticks(levels, [str(c) for c in levels])
        for model, table in runs:
            points = [(f["concurrency"], f[key]) for f in table if f.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                plot.draw(plot.signal(list(xs), list(ys)).lines().label(model))
    return str(fig.build())
