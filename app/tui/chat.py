"""The chat pane's widgets: messages that stream Markdown, the log that holds them, and the prompt input."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from rich.console import RenderableType
from rich.markdown import Markdown as RichMarkdown
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.highlight import highlight
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownFence

from app.config import few_cores
from app.history import close_fences
from app.stats import Stats, short_duration
from app.tui.keys import NEWLINE_KEYS
from app.tui.themes import highlight_theme

FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a Markdown text, in order (an unclosed last one included)."""
    return [m.group(1).rstrip("\n") for m in FENCE.finditer(markdown)]


class ThemedFence(MarkdownFence):
    """A code block highlighted by pygments in the current theme's pygments style."""

    def highlight(self, code: str, language: str, ansi: bool = False, dark: bool = False) -> Content:  # type: ignore[override]
        style = getattr(self.app, "pygments_style", "monokai")
        return highlight(code, language=language or None, theme=highlight_theme(style))


class ThemedMarkdown(Markdown):
    """Markdown whose code blocks follow the theme's pygments style."""

    BLOCKS = {**Markdown.BLOCKS, "fence": ThemedFence, "code_block": ThemedFence}


#: Where the model's threads have every core (app.config.few_cores), each frame also stalls a decode step
#: that waits for the thread it displaced: on 2 cores, drawing every 0.25 s held the chat at 0.83x
#: `loam ask`'s eval rate, every 0.5 s at 0.87x, every 1 s at 0.94x (benchmarks/server.py).


def draw_interval(cores: int | None = None) -> float:
    """The shortest time between two draws of a streaming answer on a machine with `cores` cores."""
    return 1.0 if few_cores(cores) else 0.25


def read_gap(cores: int | None = None) -> float:
    """Seconds the chat leaves an answer's stream alone after each read, on a machine with `cores` cores.

    Where the model's threads have every core, waking for each token (a
    hundred times a second or more) takes a core from them each time; paused
    between reads, the stream's tokens wait in the socket and come in one
    wakeup, a tenth of a second's worth, well inside the time between draws.
    """
    return 0.1 if few_cores(cores) else 0.0


#: A streaming answer is drawn at most this often...
DRAW_INTERVAL = draw_interval()
#: ...and at least this often, however long a frame takes...
DRAW_INTERVAL_MAX = 1.0
#: ...and otherwise as often as keeps the drawing's CPU time under this share of the wall time
#: (a frame costs the model more than its own CPU time: see DrawPacer).
DRAW_BUDGET = 0.01
#: Empty lines a streaming answer holds below its text, so that most frames do not change its height.
RESERVE_LINES = 8


class DrawPacer:
    """When a streaming answer may be drawn again.

    A draw lays out and repaints the screen, twice: 10-40 ms of CPU on a small
    machine, more as the chat grows. Where the model's threads have every core, a
    frame costs the model more than its own time, as its threads wait at each step
    for the one that lost its core: on 2 cores, drawing every 0.6 s cost 8% of the
    eval rate, once a second under 5% (benchmarks/server.py). So the pacer times
    what each draw cost, from the new text to the frame on screen, and spaces the
    next one to keep drawing within DRAW_BUDGET of the time, between DRAW_INTERVAL
    and DRAW_INTERVAL_MAX apart: a faster machine or a shorter chat draws more often.
    """

    def __init__(
        self,
        budget: float = DRAW_BUDGET,
        interval: tuple[float, float] = (DRAW_INTERVAL, DRAW_INTERVAL_MAX),
        cpu: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget, self.interval, self.cpu, self.clock = budget, interval, cpu, clock
        self.next = clock() + interval[0]
        self._began: float | None = None  # CPU time when the draw in flight began
        self._began_at = 0.0

    def due(self) -> bool:
        now = self.clock()
        if self._began is not None and now - self._began_at > self.interval[1]:
            self._began = None  # its frame never reported (a screen closed meanwhile drops the callback)
        return self._began is None and now >= self.next

    def drawing(self) -> None:
        """A draw begins now; `drawn` is to be called once its frame is on screen."""
        self._began, self._began_at = self.cpu(), self.clock()

    def drawn(self) -> None:
        cost = self.cpu() - self._began if self._began is not None else 0.0
        self._began = None
        low, high = self.interval
        self.next = self.clock() + min(max(cost / self.budget, low), high)


class LiveMarkdown(Widget):
    """A streaming answer, drawn by Rich from its whole text into a region of fixed height.

    Textual's Markdown widget is a tree of block widgets: each new piece of text
    changed their sizes, and every draw laid out the whole screen again (10-40 ms
    on 2 cores, taken from the model). Here a draw renders the text once into
    lines and repaints this region alone; the height changes a page at a time.
    The answer gets Textual's own Markdown once it ends.
    """

    DEFAULT_CSS = "LiveMarkdown { height: auto; }"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._strips: list[Strip] = []

    def show(self, markdown: str, code_theme: str) -> int:
        """Draw `markdown` at the current width, without a layout; the lines it takes."""
        width = max(self.size.width, 20)
        console = self.app.console
        lines = console.render_lines(
            RichMarkdown(markdown, code_theme=code_theme), console.options.update_width(width), pad=False
        )
        self._strips = [Strip(line) for line in lines]
        self.refresh()
        return len(self._strips)

    def render_line(self, y: int) -> Strip:
        return self._strips[y] if y < len(self._strips) else Strip.blank(self.size.width)


class MessageView(Vertical, can_focus=True):
    """One chat message: who said it, the Markdown body, and for answers a line of figures.

    Messages take focus (Tab), so the copy keys can act on any of them.
    """

    DEFAULT_CSS = """
    MessageView { height: auto; margin: 0 1 1 1; padding: 0 1; }
    MessageView:focus { background: $boost; }
    MessageView.user { border-left: thick $secondary; background: $boost; }
    MessageView.assistant { border-left: thick $primary; }
    MessageView.error { border-left: thick $error; color: $text-error; }
    MessageView.note { border-left: thick $accent; color: $text-muted; }
    MessageView > .who { color: $text-muted; text-style: bold; }
    MessageView > .figures { color: $text-muted; }
    MessageView > .waiting { color: $text-muted; text-style: italic; }
    MessageView ThemedMarkdown { margin: 0; padding: 0; }
    """

    def __init__(
        self,
        role: str,
        author: str,
        content: str = "",
        stats: dict[str, Any] | None = None,
        body: RenderableType | None = None,
    ) -> None:
        """`author`: the model that wrote an answer; `body`: what a note shows instead of its plain text."""
        super().__init__(classes=role)
        self.role = role
        self.author = author
        self.content = content
        self.stats = stats
        self.body = body
        self.stopped = False
        self.ended = ""  # how a streamed answer ended: stop, length, cancelled, error
        self.cut_short = False  # a stored answer that never ended (stopped, or its server went away): marked
        self._reserved = 0  # lines held below a streaming answer (see append)

    def compose(self) -> ComposeResult:
        yield Static(self.author, classes="who", markup=False)
        if self.role in ("error", "note", "user"):  # what the user typed is shown as typed, lines and all
            yield Static(self.body if self.body is not None else self.content, classes="body", markup=False)
        else:
            yield ThemedMarkdown(close_fences(self.content) + "\n\n*[stopped]*" if self.cut_short else self.content)
            live = LiveMarkdown(classes="live")
            live.display = False
            yield live
        waiting = Static("", classes="waiting", markup=False)
        waiting.display = False
        yield waiting
        figures = Static(self._figures_text(), classes="figures", markup=False)
        figures.display = bool(self.stats)
        yield figures

    def _figures_text(self) -> str:
        if not self.stats:
            return ""
        stats = Stats.from_response(self.stats)
        return f"{stats.eval_count} tokens · {stats.eval_rate:.1f} tokens/s · {short_duration(stats.total_duration)}"

    async def append(self, text: str) -> None:
        """Add streamed text and draw the whole answer so far, within the caller's frame.

        The caller paces and batches the text (DrawPacer), because every frame costs
        the model CPU. The text is drawn into a region of fixed height (LiveMarkdown)
        that keeps RESERVE_LINES of room below it: while that holds, nothing on
        screen changes size, so a frame repaints this answer alone, with no layout.
        The room is a page of the log (the answer starts at the top, as in a
        document) and grows by pages.
        """
        self.content += text
        live = self.query_one(LiveMarkdown)
        if not live.display:
            self.query_one(ThemedMarkdown).display = False
            live.display = True
        style = getattr(self.app, "pygments_style", "monokai")
        used = live.show(self.content, style)
        if used + RESERVE_LINES // 2 >= self._reserved:
            page = self.parent.size.height - 3 if isinstance(self.parent, Widget) else 0
            self._reserved = used + max(RESERVE_LINES, page)
            live.styles.height = self._reserved

    def waiting(self, text: str) -> None:
        """A line above the answer until its first text: what the server is doing, and for how long."""
        line = self.query_one(".waiting", Static)
        line.update(text, layout=line.display != bool(text))  # a line that stays is redrawn in place
        line.display = bool(text)

    async def finish(self, stats: dict[str, Any] | None = None, stopped: bool = False, failed: str = "") -> None:
        """End streaming with one full render of the whole text, and show the figures.

        A stopped or failed answer is marked on screen only, below a code block it left
        open; `content` stays what the model wrote.
        """
        if not self.is_attached:  # the chat was cleared or switched while this answer streamed
            return
        self.waiting("")
        self._reserved = 0
        if self.role not in ("error", "note", "user"):
            self.query_one(LiveMarkdown).display = False
            self.query_one(ThemedMarkdown).display = True
        self.stopped = stopped
        mark = "\n\n*[stopped]*" if stopped else f"\n\n*[cut short: {failed}]*" if failed else ""
        if self.role not in ("error", "note", "user"):
            await self.query_one(ThemedMarkdown).update(close_fences(self.content) + mark if mark else self.content)
        self.stats = stats
        figures = self.query_one(".figures", Static)
        figures.update(self._figures_text())
        figures.display = bool(stats)


class ChatLog(VerticalScroll):
    """The conversation; anchored to the bottom while answers stream, until the user scrolls up."""

    DEFAULT_CSS = """
    ChatLog { height: 1fr; scrollbar-gutter: stable; }
    ChatLog > .empty { color: $text-muted; margin: 1 2; }
    """


class PromptInput(TextArea):
    """The message being written: Enter sends, Shift+Enter or Ctrl+J inserts a newline, Up recalls."""

    DEFAULT_CSS = """
    PromptInput { height: auto; max-height: 10; min-height: 3; border: tall $primary 50%; }
    PromptInput:focus { border: tall $primary; }
    """

    class Submitted(Message):
        """The user pressed Enter on a message."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kw: Any) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kw)
        self.recall: list[str] = []
        self._recall_index: int | None = None

    def remember(self, prompts: list[str]) -> None:
        """Prompts that Up brings back, oldest first."""
        self.recall = [p for p in prompts if p.strip()]
        self._recall_index = None

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.prevent_default()
            event.stop()
            text = self.text
            if text.strip():
                self.recall.append(text)
                self._recall_index = None
                self.clear()
                self.post_message(self.Submitted(text))
            return
        if event.key in NEWLINE_KEYS:
            event.prevent_default()
            event.stop()
            self.insert("\n")
            return
        await super()._on_key(event)

    def action_cursor_up(self, select: bool = False) -> None:
        if select or self.cursor_location[0] > 0 or not self.recall:
            super().action_cursor_up(select)
            return
        index = len(self.recall) if self._recall_index is None else self._recall_index
        self._show_recalled(max(0, index - 1))

    def action_cursor_down(self, select: bool = False) -> None:
        last_row = self.document.line_count - 1
        if select or self._recall_index is None or self.cursor_location[0] < last_row:
            super().action_cursor_down(select)
            return
        if self._recall_index + 1 >= len(self.recall):
            self._recall_index = None
            self.clear()
            return
        self._show_recalled(self._recall_index + 1)

    def _show_recalled(self, index: int) -> None:
        self._recall_index = index
        self.text = self.recall[index]
        self.move_cursor(self.document.end)
