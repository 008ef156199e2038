"""Screens for the models in the store: pick one, read its details, pull one, confirm a deletion.

Every call to the server runs in a worker and the catalog is read in a thread,
so the chat app stays responsive; failures show as one line inside the screen.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Input,
    Label,
    OptionList,
    ProgressBar,
    Static,
    TabbedContent,
    TabPane,
    TextArea,
)
from textual.widgets.option_list import Option

from app import config
from app.async_client import AsyncClient
from app.display import human_bytes
from app.errors import InvalidName, LoamError
from app.measure import results
from app.store.catalog import Catalog, CatalogEntry
from app.store.names import ModelName

EMPTY_STORE = "No models yet — press p to pull one"
PULL_PLACEHOLDER = "model name, e.g. smollm2:135m"
#: The tabs of the info screen, in the order `ollama show` offers them.
SECTIONS = ("info", "modelfile", "parameters", "system", "template", "license", "measured")
NOT_MEASURED = "Nothing measured on this machine yet: run `loam bench NAME` or `loam eval NAME --perplexity FILE`."
CURRENT_MARK = "● "
#: What a call to the server may fail with; the screens show it as a line, never a traceback.
FAILURES = (LoamError, httpx.HTTPError)


def panel_css(screen: str, width: int = 80) -> str:
    """CSS for a modal screen that shows one centered, bordered panel with the id `panel`."""
    return f"""
    {screen} {{ align: center middle; }}
    {screen} > #panel {{
        width: {width}; max-width: 95%; height: auto; max-height: 90%;
        background: $panel; border: round $primary; padding: 0 1;
    }}
    {screen} .title {{ text-style: bold; color: $primary; width: 100%; margin-bottom: 1; }}
    {screen} .error {{ color: $error; width: 100%; }}
    {screen} .buttons {{ height: auto; width: 100%; align-horizontal: right; margin-top: 1; }}
    {screen} .buttons Button {{ margin-left: 1; }}
    """


def display_name(name: str) -> str:
    """`name` as the server lists it (`tiny` → `tiny:latest`); text that is no model name stays as typed."""
    try:
        return ModelName.parse(name).display
    except InvalidName:
        return name


def model_row(model: dict[str, Any], current: str | None, rate: float | None = None) -> tuple[str, str, str, str, str]:
    """NAME, SIZE, PARAMS, QUANT and measured SPEED of one /api/tags entry; the current model is marked."""
    name = str(model.get("name", ""))
    details = model.get("details") or {}
    mark = CURRENT_MARK if current and display_name(current) == name else "  "
    size = model.get("size")
    return (
        mark + name,
        human_bytes(size) if isinstance(size, int) else "",
        str(details.get("parameter_size") or ""),
        str(details.get("quantization_level") or ""),
        f"{rate:.0f} tok/s" if rate else "",
    )


def info_rows(show: dict[str, Any]) -> list[tuple[str, str]]:
    """The "Model" rows of `ollama show` from an /api/show answer; unknown values are left out."""
    details = show.get("details") or {}
    model_info = show.get("model_info") or {}
    arch = str(model_info.get("general.architecture") or details.get("family") or "")
    rows = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size")),
        ("context length", model_info.get(f"{arch}.context_length")),
        ("embedding length", model_info.get(f"{arch}.embedding_length")),
        ("quantization", details.get("quantization_level")),
    ]
    return [(key, str(value)) for key, value in rows if value not in (None, "")]


def section_text(show: dict[str, Any], section: str) -> str:
    """The text of one info tab other than "info", or "(none)" when the model has none."""
    return str(show.get(section) or "").strip() or "(none)"


def short_digest(digest: str) -> str:
    """`sha256:abcdef12…`: enough of a layer digest to tell the layers apart."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:8]}…" if hex_part else digest[:15] + "…"


def catalog_prompt(name: str, entry: CatalogEntry) -> Text:
    """One catalog line of the pull screen: name — description (size)."""
    text = Text(name, style="bold")
    extra = " ".join(part for part in (entry.description, f"({human_bytes(entry.size)})" if entry.size else "") if part)
    if extra:
        text.append(f" — {extra}")
    return text


def failure_text(error: Exception) -> str:
    return str(error) or type(error).__name__


def show_error(screen: ModalScreen[Any], message: str) -> None:
    """Put `message` in the screen's error line (hidden while it is empty)."""
    line = screen.query_one(".error", Static)
    line.update(Text(message))
    line.display = bool(message)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses True for yes, False for no (Escape counts as no)."""

    DEFAULT_CSS = panel_css("ConfirmScreen", 50)
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n", "answer(False)", "No", id="confirm.no"),
        Binding("escape", "answer(False)", "Cancel", id="confirm.close"),
    ]

    def __init__(self, question: str, yes: str = "Delete", no: str = "Cancel") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="panel"):
            yield Label(Text(self.question), classes="title")
            with Horizontal(classes="buttons"):
                yield Button(self.no, id="no")
                yield Button(self.yes, variant="error", id="yes")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class InfoScreen(ModalScreen[None]):
    """What `ollama show` tells about a model, one tab per section."""

    DEFAULT_CSS = (
        panel_css("InfoScreen", 100)
        + """
    InfoScreen > #panel { height: 85%; }
    InfoScreen TabbedContent, InfoScreen ContentSwitcher, InfoScreen TabPane, InfoScreen TextArea { height: 1fr; }
    """
    )
    BINDINGS = [Binding("escape", "close", "Close", id="info.close")]

    def __init__(self, client: AsyncClient, name: str, section: str = "info") -> None:
        super().__init__()
        self.client = client
        self.model_name = name
        self.section = section if section in SECTIONS else "info"

    def compose(self) -> ComposeResult:
        with Vertical(id="panel"):
            yield Label(Text(self.model_name), classes="title")
            yield Static("", classes="error")
            with TabbedContent(initial=self.section):
                with TabPane("info", id="info"):
                    yield Static("loading…", id="info-rows")
                for section in SECTIONS[1:]:
                    with TabPane(section, id=section):
                        yield TextArea("loading…", read_only=True, id=f"text-{section}")
        yield Footer()

    def on_mount(self) -> None:
        show_error(self, "")
        self.load()

    @work(exclusive=True)
    async def load(self) -> None:
        try:
            show = await self.client.show(self.model_name)
        except FAILURES as e:
            show_error(self, failure_text(e))
            return
        self.query_one("#info-rows", Static).update(info_text(show))
        for section in SECTIONS[1:-1]:
            self.query_one(f"#text-{section}", TextArea).text = section_text(show, section)
        self.query_one("#text-measured", TextArea).text = await self._measured()

    async def _measured(self) -> str:
        """The runs of `loam bench` and `loam eval` remembered for this model, newest first."""
        try:
            tags = await self.client.tags()
        except FAILURES:
            return NOT_MEASURED
        name = display_name(self.model_name)
        digest = next((str(m.get("digest") or "") for m in tags if m.get("name") == name), "")
        lines = await asyncio.to_thread(results.history_lines, digest) if digest else []
        return "\n".join(lines) or NOT_MEASURED

    def action_close(self) -> None:
        self.dismiss(None)


def info_text(show: dict[str, Any]) -> Text:
    """The info tab: the model rows, then the capabilities, laid out as `ollama show` does."""
    text = Text("Model\n", style="bold")
    for key, value in info_rows(show):
        text.append(f"  {key:<20}{value}\n")
    if show.get("capabilities"):
        text.append("\nCapabilities\n", style="bold").append("".join(f"  {c}\n" for c in show["capabilities"]))
    return text


class LayerProgress(Vertical):
    """The download of one layer: its short digest, sizes, and a bar."""

    DEFAULT_CSS = "LayerProgress { height: auto; } LayerProgress ProgressBar { width: 100%; }"

    def __init__(self, digest: str) -> None:
        super().__init__()
        self.digest = digest

    def compose(self) -> ComposeResult:
        yield Label(short_digest(self.digest))
        yield ProgressBar(show_eta=False)

    def show(self, completed: int, total: int) -> None:
        self.query_one(Label).update(f"{short_digest(self.digest)}  {human_bytes(completed)} / {human_bytes(total)}")
        self.query_one(ProgressBar).update(total=total, progress=completed)


class PullScreen(ModalScreen[str | None]):
    """Pull a model by name, or by picking one from the catalog; dismisses the name once pulled."""

    DEFAULT_CSS = (
        panel_css("PullScreen", 90)
        + """
    PullScreen #ask { height: auto; }
    PullScreen #name { width: 1fr; }
    PullScreen OptionList { height: auto; max-height: 10; }
    PullScreen #layers { height: auto; }
    """
    )
    BINDINGS = [Binding("escape", "close", "Close", id="pull.close")]

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self.client = client
        self.layer_bars: dict[str, LayerProgress] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="panel"):
            yield Label("Pull a model", classes="title")
            with Horizontal(id="ask"):
                yield Input(placeholder=PULL_PLACEHOLDER, id="name")
                yield Button("Pull", variant="primary", id="pull")
            yield OptionList(id="catalog")
            yield Static("", id="status")
            yield Static("", classes="error")
            yield Vertical(id="layers")
        yield Footer()

    def on_mount(self) -> None:
        show_error(self, "")
        self.query_one("#name", Input).focus()
        self.load_catalog()

    @work(group="catalog")
    async def load_catalog(self) -> None:
        try:
            catalog = await asyncio.to_thread(Catalog.load, config.paths().user_catalog)
        except (LoamError, OSError) as e:
            show_error(self, f"catalog: {e}")
            return
        options = [Option(catalog_prompt(name, entry), id=name) for name, entry in sorted(catalog.entries.items())]
        self.query_one(OptionList).add_options(options)

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        name_input = self.query_one("#name", Input)
        name_input.value = event.option.id or ""
        name_input.focus()

    @on(Input.Submitted, "#name")
    @on(Button.Pressed, "#pull")
    def _start(self, event: Input.Submitted | Button.Pressed) -> None:
        event.stop()
        name = self.query_one("#name", Input).value.strip()
        if not name:
            show_error(self, "type a model name or choose one from the list")
            return
        self.pull(name)

    @work(exclusive=True, group="pull")
    async def pull(self, name: str) -> None:
        """Follow the server's progress events; the screen closes once the pull succeeded."""
        self._begin()
        status = ""
        try:
            async for event in self.client.pull(name):
                status = await self._progress(event)
        except FAILURES as e:
            show_error(self, failure_text(e))
            return
        finally:
            self._set_busy(False)
        if status == "success":
            self.dismiss(name)
        else:
            show_error(self, f"the pull of {name} ended without success (last status: {status or 'none'})")

    def _begin(self) -> None:
        show_error(self, "")
        self._set_busy(True)
        self.query_one("#status", Static).update("pulling…")
        self.query_one("#layers").remove_children()
        self.layer_bars.clear()

    def _set_busy(self, busy: bool) -> None:
        for widget in self.query("#name, #pull, #catalog"):
            widget.disabled = busy

    async def _progress(self, event: dict[str, Any]) -> str:
        """Show one progress event: the status line, and the bar of the layer it is about."""
        status = str(event.get("status", ""))
        self.query_one("#status", Static).update(Text(status))
        digest, total = event.get("digest"), event.get("total")
        if isinstance(digest, str) and isinstance(total, int) and total > 0:
            layer = self.layer_bars.get(digest)
            if layer is None:
                layer = self.layer_bars[digest] = LayerProgress(digest)
                await self.query_one("#layers").mount(layer)
            layer.show(int(event.get("completed") or 0), total)
        return status

    def action_close(self) -> None:
        """Close; a pull under way is cancelled, which closes its stream so the server stops it."""
        self.workers.cancel_node(self)
        self.dismiss(None)


class ModelPicker(ModalScreen[str | None]):
    """The store's models in a table; Enter picks the highlighted one for the chat."""

    DEFAULT_CSS = panel_css("ModelPicker", 90) + "ModelPicker DataTable { height: auto; max-height: 70vh; }"
    BINDINGS = [
        Binding("enter", "select", "Select", id="picker.select", priority=True),
        Binding("i", "info", "Info", id="picker.info"),
        Binding("d", "delete", "Delete", id="picker.delete"),
        Binding("p", "pull", "Pull", id="picker.pull"),
        Binding("escape", "close", "Close", id="picker.close"),
    ]

    def __init__(self, client: AsyncClient, current: str | None) -> None:
        super().__init__()
        self.client = client
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="panel"):
            yield Label("Models", classes="title")
            yield DataTable(cursor_type="row", zebra_stripes=True, id="models")
            yield Static(EMPTY_STORE, id="empty")
            yield Static("", classes="error")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("NAME", "SIZE", "PARAMS", "QUANT", "SPEED")
        self.query_one("#empty").display = False
        show_error(self, "")
        self.reload(self.current)

    @work(exclusive=True, group="load")
    async def reload(self, highlight: str | None = None) -> None:
        """List the store again, keeping the cursor on `highlight` (or on the row it was on)."""
        table = self.query_one(DataTable)
        target = highlight or self.highlighted()
        table.loading = True
        try:
            models = await self.client.tags()
        except FAILURES as e:
            show_error(self, failure_text(e))
            return
        finally:
            table.loading = False
        show_error(self, "")
        rates = await asyncio.to_thread(lambda: [results.generation_rate(str(m.get("digest") or "")) for m in models])
        self._fill(sorted(zip(models, rates, strict=True), key=lambda mr: str(mr[0].get("name", ""))), target)

    def _fill(self, rows: list[tuple[dict[str, Any], float | None]], target: str | None) -> None:
        table = self.query_one(DataTable)
        table.clear()
        models = [model for model, _ in rows]
        for model, rate in rows:
            table.add_row(*model_row(model, self.current, rate), key=str(model.get("name", "")))
        table.display = bool(models)
        self.query_one("#empty").display = not models
        names = [str(m.get("name", "")) for m in models]
        if target and display_name(target) in names:
            table.move_cursor(row=names.index(display_name(target)))
        table.focus()

    def highlighted(self) -> str | None:
        """The name on the cursor's row, or None while the table is empty."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dismiss(event.row_key.value)

    def action_select(self) -> None:
        name = self.highlighted()
        if name:
            self.dismiss(name)

    def action_info(self) -> None:
        name = self.highlighted()
        if name:
            self.app.push_screen(InfoScreen(self.client, name))

    def action_delete(self) -> None:
        name = self.highlighted()
        if name:
            self._delete(name)

    def action_pull(self) -> None:
        self._pull()

    def action_close(self) -> None:
        self.dismiss(None)

    @work(group="change")
    async def _delete(self, name: str) -> None:
        if not await self.app.push_screen_wait(ConfirmScreen(f"Delete {name}?")):
            return
        try:
            await self.client.delete(name)
        except FAILURES as e:
            self.notify(failure_text(e), severity="error")
            return
        self.notify(f"deleted {name}")
        self.reload()

    @work(group="change")
    async def _pull(self) -> None:
        name = await self.app.push_screen_wait(PullScreen(self.client))
        if name:
            self.reload(name)
