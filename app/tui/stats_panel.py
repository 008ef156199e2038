"""The stats panel: where an answer's time went, how much context it used, and the session's rates.

Everything shown comes from the server's own figures (the final chunk, /api/ps);
the only figures timed here are the live rate and the first token's wait, as
the user saw them. While an answer streams, only one line and the live
sparkline change, without a layout, so the panel costs the model little.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from app.stats import Stats, short_duration

#: Width of the stacked time bar and the gauges, in cells.
BAR = 28
#: The context gauge warns from this share of num_ctx on: the next turns may cut the history.
CONTEXT_WARN = 0.8
#: Parts of an answer's time, in the stacked bar's order, with their style and key letter.
PARTS = (("queue", "grey50", "·"), ("load", "yellow", "L"), ("prompt", "cyan", "P"), ("generation", "green", "G"))
#: Answers the session chart shows, newest last.
HISTORY = 24


@dataclass
class Answer:
    """What the panel knows of one answer: the server's figures and what the chat saw of it."""

    model: str
    number: int  # the answer's place in this chat, from 1
    ended: str  # stop, length, cancelled, error
    stats: Stats | None = None
    first_token_ns: int = 0  # from sending to the first text, as the chat saw it (0: unknown)


@dataclass
class Context:
    """The settings in effect for the chat, for the gauges and the options list."""

    num_ctx: int = 0  # 0: unknown
    num_predict: int = -1
    options: dict[str, Any] = field(default_factory=dict)
    placement: str = ""  # from /api/ps: "CPU", "GPU 100%", "48% GPU"...


def time_parts(stats: Stats) -> dict[str, int]:
    """Nanoseconds spent queued (and anything else the server did), loading, reading the prompt, generating."""
    known = stats.load_duration + stats.prompt_eval_duration + stats.eval_duration
    return {
        "queue": max(0, stats.total_duration - known),
        "load": stats.load_duration,
        "prompt": stats.prompt_eval_duration,
        "generation": stats.eval_duration,
    }


def stacked_bar(parts: dict[str, int], width: int = BAR) -> Text:
    """One bar, `width` cells, split in proportion to `parts`; every part above zero gets a cell."""
    total = sum(parts.values())
    text = Text()
    if total <= 0:
        return text.append("─" * width, style="grey50")
    shown = [(name, style, parts[name]) for name, style, _ in PARTS if parts.get(name, 0) > 0]
    cells = [max(1, round(width * value / total)) for _, _, value in shown]
    while sum(cells) > width:  # the rounding up of tiny parts is taken from the largest
        cells[cells.index(max(cells))] -= 1
    cells[cells.index(max(cells))] += width - sum(cells)
    for (_, style, _), n in zip(shown, cells, strict=True):
        text.append("█" * n, style=style)
    return text


def gauge(used: int, whole: int, width: int = BAR, warn: float = 1.1) -> Text:
    """A filled bar of used / whole; red from `warn` of the whole on."""
    share = min(max(used / whole, 0.0), 1.0) if whole > 0 else 0.0
    filled = round(share * width)
    style = "red" if share >= warn else "green"
    return Text("█" * filled, style=style).append("─" * (width - filled), style="grey50")


def count(n: int) -> str:
    """A token count the way oterm shows it: 950, 1.7k, 41k."""
    if n < 1000:
        return str(n)
    return f"{n / 1000:.1f}k" if n < 10_000 else f"{n // 1000}k"


def rate_bars(rates: list[float], width: int = HISTORY, empty: str = "no answers yet") -> Text:
    """Rates as one column each on a fixed scale from zero, newest last (the session's answers, or
    an answer's rate as it streams): one value is one column, not a block across the panel."""
    shown = rates[-width:]
    if not shown:
        return Text(empty, style="grey50")
    top = max(shown)
    levels = " ▁▂▃▄▅▆▇█"
    return Text("".join(levels[max(1, round(8 * r / top))] if top > 0 else levels[0] for r in shown), style="green")


def rates_summary(rates: list[float]) -> str:
    if not rates:
        return ""
    if len(rates) == 1:
        return f"1 answer · {rates[0]:.1f} tok/s"
    mean = sum(rates) / len(rates)
    return f"{len(rates)} answers · {min(rates):.0f}–{max(rates):.0f} tok/s, mean {mean:.0f}"


def answer_text(answer: Answer | None, context: Context) -> Text:
    """The figures of one answer: first token, where the time went, prompt and eval, context used."""
    if answer is None or answer.stats is None:
        why = "no answer yet" if answer is None else f"answer {answer.number}: {answer.ended}, no figures"
        return Text(why, style="grey50")
    s = answer.stats
    text = Text()
    row = lambda name, value: text.append(f"{name:<12}", style="bold").append(f"{value}\n")  # noqa: E731
    first = answer.first_token_ns or (s.total_duration - s.eval_duration)
    row("first token", short_duration(first))
    parts = time_parts(s)
    text.append_text(stacked_bar(parts)).append("\n")
    shown = [(name, style, value) for (name, style, _), value in zip(PARTS, parts.values(), strict=True) if value]
    for i, (name, style, value) in enumerate(shown):
        text.append("█ ", style=style).append(f"{name} {short_duration(value)}")
        text.append("\n" if i % 2 or i == len(shown) - 1 else "  ")
    prompt = f"{s.prompt_eval_count + s.prompt_cache_count} tok"
    if s.prompt_cache_count:
        prompt += f", {s.prompt_cache_count} cached"
    row("prompt", prompt)
    if s.prompt_eval_count:
        row("", f"{s.prompt_eval_rate:.1f} tok/s in {short_duration(s.prompt_eval_duration)}")
    row("eval", f"{s.eval_count} tok · {s.eval_rate:.1f} tok/s")
    if s.draft_count:
        row("drafted", f"{s.draft_count}, accepted {s.draft_accepted_count}")
    row("total", short_duration(s.total_duration))
    used = s.prompt_eval_count + s.prompt_cache_count + s.eval_count
    if context.num_ctx:
        share = used / context.num_ctx
        text.append(f"{'context':<12}", style="bold").append(f"{count(used)}/{count(context.num_ctx)}\n")
        text.append_text(gauge(used, context.num_ctx, warn=CONTEXT_WARN)).append("\n")
        if share >= CONTEXT_WARN:
            text.append("the next turns may cut the oldest messages\n", style="red")
    return text


def options_text(context: Context) -> Text:
    text = Text()
    if context.placement:
        text.append(f"{'runs on':<12}", style="bold").append(f"{context.placement}\n")
    if not context.options:
        return text.append("model defaults", style="grey50")
    for name, value in sorted(context.options.items()):
        text.append(f"{name:<16}", style="bold").append(f"{value}\n")
    return text


class StatsPanel(VerticalScroll):
    """Ollama's verbose figures, drawn: the last (or focused) answer, a live view while one streams,
    the options in effect and where the model runs, and the session's eval rates on a fixed scale."""

    DEFAULT_CSS = """
    StatsPanel {
        width: 40; dock: right; border: round $panel-lighten-2; border-title-color: $primary;
        border-title-style: bold; padding: 0 1; background: $surface; scrollbar-size-vertical: 1;
    }
    StatsPanel > Static { height: auto; }
    StatsPanel > .caption { margin-top: 1; color: $text-muted; text-style: bold; }
    StatsPanel > #live { color: $accent; height: 2; }
    StatsPanel > #live-rates { height: 1; }
    StatsPanel.-narrow > .full { display: none; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.rates: list[float] = []
        self.last: Answer | None = None  # the latest answer, whatever the focus
        self.shown: Answer | None = None  # the answer whose figures are on screen
        self.context = Context()
        self.live_rates: list[float] = []

    def compose(self) -> ComposeResult:
        yield Static(answer_text(None, self.context), id="figures")
        yield Static("", id="live")
        yield Static("", id="live-rates")
        yield Static("options in effect", classes="caption full")
        yield Static(options_text(self.context), id="options", classes="full")
        yield Static("eval rate, this chat", classes="caption full")
        yield Static(rate_bars([]), id="rates", classes="full")
        yield Static("", id="rates-summary", classes="full")

    def on_mount(self) -> None:
        self.border_title = "Stats"

    # -- an answer -------------------------------------------------------------

    def show(self, answer: Answer | None) -> None:
        """Show one answer's figures, titled with its model, number and how it ended."""
        self.shown = answer
        if answer is None:
            self.border_title = "Stats"
        else:
            self.border_title = f"{answer.model} · answer {answer.number} · {answer.ended}"
        self.query_one("#figures", Static).update(answer_text(answer, self.context))

    def show_answer(self, answer: Answer) -> None:
        """An answer ended (or stopped, or failed): it becomes the one shown; its rate joins the chart."""
        self.last = answer
        self.end_live()
        self.show(answer)
        if answer.stats is not None and answer.stats.eval_count:
            self.add_rates([answer.stats.eval_rate])

    def set_context(self, context: Context) -> None:
        self.context = context
        self.query_one("#options", Static).update(options_text(context))
        self.show(self.shown)

    # -- while one streams -----------------------------------------------------

    def start_live(self, model: str, number: int) -> None:
        self.border_title = f"{model} · answer {number} · streaming"
        self.live_rates = []

    def show_live(self, rate: float, pieces: int) -> None:
        """While an answer streams: its rate so far, its length against num_predict, the rate over time."""
        line = Text(f"live {rate:6.1f} tok/s  {pieces} tok")
        if self.context.num_predict > 0:
            line.append(f" of {self.context.num_predict}\n").append_text(gauge(pieces, self.context.num_predict))
        self.query_one("#live", Static).update(line, layout=False)
        self.live_rates.append(rate)
        self.query_one("#live-rates", Static).update(rate_bars(self.live_rates, BAR, ""), layout=False)

    def show_waiting(self, what: str, seconds: float) -> None:
        self.query_one("#live", Static).update(Text(f"{what} · {seconds:.1f} s"), layout=False)

    def end_live(self) -> None:
        self.query_one("#live", Static).update("")
        self.query_one("#live-rates", Static).update("")

    # -- the session -----------------------------------------------------------

    def add_rates(self, rates: list[float]) -> None:
        self.rates.extend(rates)
        self.query_one("#rates", Static).update(rate_bars(self.rates))
        self.query_one("#rates-summary", Static).update(rates_summary(self.rates))

    def reset(self, last: Answer | None = None, rates: list[float] | None = None) -> None:
        """A chat opened or cleared: its own last answer and rates, nothing of the one before."""
        self.rates = []
        self.last = last
        self.end_live()
        self.show(last)
        self.add_rates(rates or [])

    def set_narrow(self, narrow: bool) -> None:
        """On a narrow terminal only the answer's figures stay."""
        self.set_class(narrow, "-narrow")
