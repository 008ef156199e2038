"""Screens for the models in the store: pick one, read its details, pull one, confirm a deletion.

Every call to the server runs in a worker and the catalog is read in a thread,
so the chat app stays responsive; failures show as one line inside the screen.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
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
from app.server.options import DEFAULT_NUM_CTX
from app.store.catalog import Catalog, CatalogEntry
from app.store.names import ModelName
from app.store.parameters import PARAMETERS, ParameterError, coerce

EMPTY_STORE = "No models yet — press p to pull one"
PULL_PLACEHOLDER = "model name, e.g. smollm2:135m"
#: The tabs of the info screen, in the order `ollama show` offers them.
SECTIONS = ("info", "modelfile", "parameters", "system", "template", "license", "measured")
NOT_MEASURED = "Nothing measured on this machine yet: run `loam bench NAME` or `loam eval NAME --perplexity FILE`."
CURRENT_MARK = "● "
#: What a call to the server may fail with; the screens show it as a line, never a traceback.
FAILURES = (LoamError, httpx.HTTPError)
#: What loam's server uses for a parameter that neither the model nor the request sets: num_ctx from
#: app.server.options (capped at the model's context length), the rest from the runner's SamplingParams.
#: Kept here because importing the runner loads llama.cpp; a test checks that they agree.
SERVER_DEFAULTS: dict[str, Any] = {
    "num_ctx": DEFAULT_NUM_CTX,
    "num_predict": -1,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
}
#: Where a parameter's value comes from, strongest first, as the info screen marks it.
FROM_CHAT, FROM_MODEL, FROM_DEFAULT = "this chat", "model", "default"


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


def model_parameters(show: dict[str, Any]) -> dict[str, Any]:
    """The model's own parameters from /api/show's "parameters" text, typed as PARAMETERS says.

    Each line is `NAME VALUE` (text values JSON-quoted); repeated `stop` lines make a list.
    A name or value the parameter table refuses is kept as its text, so nothing is hidden.
    """
    parameters: dict[str, Any] = {}
    for line in str(show.get("parameters") or "").splitlines():
        name, _, raw = line.strip().partition(" ")
        raw = raw.strip()
        if not name or not raw:
            continue
        value: Any = raw
        if raw.startswith('"'):
            try:
                value = json.loads(raw)
            except ValueError:
                pass
        try:
            value = coerce(name, value)
        except ParameterError:
            value = raw
        earlier = parameters.get(name)
        if isinstance(value, list) and isinstance(earlier, list):
            parameters[name] = [*earlier, *value]
        else:
            parameters[name] = value
    return parameters


def server_defaults(show: dict[str, Any]) -> dict[str, Any]:
    """SERVER_DEFAULTS for this model: num_ctx no larger than the context it was trained for."""
    defaults = dict(SERVER_DEFAULTS)
    info = show.get("model_info") or {}
    trained = info.get(f"{info.get('general.architecture')}.context_length")
    if isinstance(trained, int) and trained > 0:
        defaults["num_ctx"] = min(defaults["num_ctx"], trained)
    return defaults


def parameter_defaults(show: dict[str, Any]) -> dict[str, Any]:
    """What a chat that sets no parameter gets: the model's parameters over the server's defaults."""
    return {**server_defaults(show), **model_parameters(show)}


def effective_parameters(show: dict[str, Any], options: dict[str, Any] | None) -> list[tuple[str, Any, str]]:
    """(name, value, source) of every parameter in effect for a chat with `options`, in PARAMETERS order.

    The chat's options override the model's parameters, which override the server's defaults.
    """
    layers = (
        (FROM_CHAT, {k: v for k, v in (options or {}).items() if v is not None}),
        (FROM_MODEL, model_parameters(show)),
        (FROM_DEFAULT, server_defaults(show)),
    )
    chosen: dict[str, tuple[Any, str]] = {}
    for source, values in layers:
        for name, value in values.items():
            chosen.setdefault(name, (value, source))
    order = {name: i for i, name in enumerate(PARAMETERS)}
    names = sorted(chosen, key=lambda name: (order.get(name, len(order)), name))
    return [(name, *chosen[name]) for name in names]


def parameter_value_text(value: Any) -> str:
    """One value as `ollama show` prints it: text quoted, booleans in lower case."""
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def parameters_text(show: dict[str, Any], options: dict[str, Any] | None) -> str:
    """The parameters tab: one line per value in effect, marked with where it comes from."""
    lines = [
        (name, parameter_value_text(item), source)
        for name, value, source in effective_parameters(show, options)
        for item in (value if isinstance(value, list) else [value])
    ]
    width = max((len(shown) for _, shown, _ in lines), default=0)
    return "\n".join(f"{name:<18} {shown:<{width}}   ({source})" for name, shown, source in lines) or "(none)"


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
    """What `ollama show` tells about a model, one tab per section.

    The parameters tab shows what is in effect for the chat whose `options` are given: those options
    over the model's parameters over the server's defaults, each line marked with where it comes from.
    """

    DEFAULT_CSS = (
        panel_css("InfoScreen", 100)
        + """
    InfoScreen > #panel { height: 85%; }
    InfoScreen TabbedContent, InfoScreen ContentSwitcher, InfoScreen TabPane, InfoScreen TextArea { height: 1fr; }
    InfoScreen #info-scroll { height: 1fr; }
    """
    )
    BINDINGS = [Binding("escape", "close", "Close", id="info.close")]

    def __init__(
        self, client: AsyncClient, name: str, section: str = "info", *, options: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.client = client
        self.model_name = name
        self.section = section if section in SECTIONS else "info"
        self.options = dict(options or {})

    def compose(self) -> ComposeResult:
        with Vertical(id="panel"):
            yield Label(Text(self.model_name), classes="title")
            yield Static("", classes="error")
            with TabbedContent(initial=self.section):
                with TabPane("info", id="info"), VerticalScroll(id="info-scroll"):
                    yield Static("loading…", id="info-rows")
                for section in SECTIONS[1:]:
                    with TabPane(section, id=section):
                        yield TextArea("loading…", read_only=True, id=f"text-{section}")
        yield Footer()

    def on_mount(self) -> None:
        show_error(self, "")
        # The tab's text, not the tab strip, takes the keys: they scroll what the screen was opened to show.
        self.query_one("#info-scroll" if self.section == "info" else f"#text-{self.section}").focus()
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
        self.query_one("#text-parameters", TextArea).text = parameters_text(show, self.options)
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


class CatalogList(OptionList):
    """The catalog's models; a row is highlighted whenever the list has focus, so the keys act on what shows."""

    def on_focus(self, event: events.Focus) -> None:
        self.highlight_first()

    def highlight_first(self) -> None:
        """Highlight the first row when nothing is highlighted."""
        if self.highlighted is None and self.option_count:
            self.highlighted = 0


class PullScreen(ModalScreen[str | None]):
    """Pull a model by name, or by picking one from the catalog.

    Once the pull succeeded the screen says so and offers to switch the chat to the model: it
    dismisses the name if the user takes it ("Use NAME", Enter), None if they close (Escape).
    """

    DEFAULT_CSS = (
        panel_css("PullScreen", 90)
        + """
    PullScreen #ask { height: auto; }
    PullScreen #name { width: 1fr; }
    PullScreen #catalog { height: auto; max-height: 10; }
    PullScreen #catalog > .option-list--option-highlighted { background: $primary 30%; color: $foreground; }
    PullScreen #catalog:focus > .option-list--option-highlighted {
        background: $primary; color: auto 90%; text-style: bold;
    }
    PullScreen #layers { height: auto; }
    PullScreen #done { text-style: bold; color: $success; width: 100%; margin-top: 1; }
    """
    )
    BINDINGS = [
        Binding("enter", "use", "Use model", id="pull.use"),
        Binding("escape", "close", "Close", id="pull.close"),
    ]

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self.client = client
        self.layer_bars: dict[str, LayerProgress] = {}
        #: The model this screen pulled, once its pull succeeded (also after the user closed the offer).
        self.pulled: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="panel"):
            yield Label("Pull a model", classes="title")
            with Horizontal(id="ask"):
                yield Input(placeholder=PULL_PLACEHOLDER, id="name")
                yield Button("Pull", variant="primary", id="pull")
            yield CatalogList(id="catalog")
            yield Static("", id="status")
            yield Static("", classes="error")
            yield Vertical(id="layers")
            yield Static("", id="done")
            with Horizontal(classes="buttons", id="offer"):
                yield Button("Close", id="close")
                yield Button("Use", variant="primary", id="use")
        yield Footer()

    def on_mount(self) -> None:
        show_error(self, "")
        self.query_one("#done").display = False
        self.query_one("#offer").display = False
        self.query_one("#name", Input).focus()
        self.load_catalog()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Enter takes the pulled model only once there is one; before that it belongs to the form."""
        if action == "use":
            return self.pulled is not None
        return True

    @work(group="catalog")
    async def load_catalog(self) -> None:
        try:
            catalog = await asyncio.to_thread(Catalog.load, config.paths().user_catalog)
        except (LoamError, OSError) as e:
            show_error(self, f"catalog: {e}")
            return
        options = [Option(catalog_prompt(name, entry), id=name) for name, entry in sorted(catalog.entries.items())]
        listing = self.query_one(CatalogList)
        listing.add_options(options)
        if listing.has_focus:  # the list got focus before it had rows
            listing.highlight_first()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        """A chosen row only fills in the name: the pull starts from the name field or the Pull button."""
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
        self.pull(display_name(name))

    @on(Button.Pressed, "#use")
    @on(Button.Pressed, "#close")
    def _answered(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "use":
            self.action_use()
        else:
            self.action_close()

    @work(exclusive=True, group="pull")
    async def pull(self, name: str) -> None:
        """Follow the server's progress events; once the pull succeeded, offer the model to the chat."""
        self._begin()
        status = ""
        try:
            async for event in self.client.pull(name):
                status = await self._progress(event)
        except FAILURES as e:
            show_error(self, failure_text(e))
            self._set_busy(False)
            return
        if status == "success":
            self._offer(name)
        else:
            self._set_busy(False)
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

    def _offer(self, name: str) -> None:
        """Say the pull is done and ask whether to chat with the model; the form stays disabled."""
        self.pulled = name
        done = self.query_one("#done", Static)
        done.update(Text(f"pulled {name}"))
        done.display = True
        use = self.query_one("#use", Button)
        use.label = Text(f"Use {name}")
        self.query_one("#offer").display = True
        use.focus()
        self.refresh_bindings()

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

    def action_use(self) -> None:
        """Switch the chat to the pulled model: the screen dismisses its name."""
        if self.pulled is not None:
            self.dismiss(self.pulled)

    def action_close(self) -> None:
        """Close without switching; a pull under way is cancelled, which closes its stream so the server stops it."""
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
        """Pull a model: the picker closes with it if the user takes it for the chat, else highlights it."""
        screen = PullScreen(self.client)
        if name := await self.app.push_screen_wait(screen):
            self.dismiss(name)
        elif screen.pulled:
            self.reload(screen.pulled)
