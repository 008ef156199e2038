"""The TUI's modal screens driven with Textual's Pilot, the model screens against a real `loam serve`."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Button, DataTable, Input, OptionList, Static, TabbedContent, TextArea

from app.async_client import AsyncClient
from app.display import human_bytes
from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from app.tui.models_screen import SERVER_DEFAULTS, model_row, short_digest
from app.tui.screens import (
    ConfirmScreen,
    InfoScreen,
    ModelPicker,
    PullScreen,
    SettingsScreen,
    info_rows,
    model_parameters,
    parameter_defaults,
    parse_field,
)
from tests.ggufmaker import write_tiny_llama
from tests.server_process import ServerProcess

PULLABLE = "pulled:tiny"

Scenario = Callable[[Pilot[None], "Host"], Awaitable[None]]


class Host(App[None]):
    """A bare app that shows one screen and records what it dismisses with."""

    def __init__(self, screen: Screen[Any]) -> None:
        super().__init__()
        self.tested = screen
        self.results: list[Any] = []

    def on_mount(self) -> None:
        self.push_screen(self.tested, callback=self.results.append)


def drive(screen: Screen[Any], scenario: Scenario) -> Host:
    """Run `scenario` against a Host showing `screen`; the host comes back for its results."""
    host = Host(screen)

    async def inner() -> None:
        async with host.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            await scenario(pilot, host)

    asyncio.run(inner())
    return host


async def settle(pilot: Pilot[None], *groups: str) -> None:
    """Wait until the app's workers (those of `groups` when given) are done and their messages handled."""
    for _ in range(100):
        await pilot.pause()
        running = [w for w in pilot.app.workers if not w.is_finished and (not groups or w.group in groups)]
        if not running:
            return
        await pilot.app.workers.wait_for_complete(running)


def text_of(widget: Static) -> str:
    return str(widget.content)


def table_names(table: DataTable[Any]) -> list[str]:
    return [str(row.key.value) for row in table.ordered_rows]


# -- a server with a store of tiny models ----------------------------------------


@pytest.fixture(scope="module")
def server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`loam serve` over a store holding `tiny` and its copy `tiny-copy`, with a catalog
    whose `pulled:tiny` comes from a file on this machine (a pull that needs no network)."""
    base = tmp_path_factory.mktemp("tui")
    root = base / "models"
    store = Store(root)
    tiny = ModelName.parse("tiny")
    create(store, Catalog({}, ""), tiny, parse(f"FROM {tiny_gguf}\nPARAMETER num_ctx 256\n"), folder=root)
    store.copy(tiny, ModelName.parse("tiny-copy"))
    pullable = write_tiny_llama(base / "pullable.gguf", seed=3)
    catalog = base / "home" / "config" / "loam" / "models.toml"
    catalog.parent.mkdir(parents=True)
    catalog.write_text(
        f'[models."{PULLABLE}"]\nsha256 = "{sha256_of(pullable)}"\nsize = {pullable.stat().st_size}\n'
        f'sources = [{{ path = "{pullable}" }}]\n'
    )
    with ServerProcess(root, base / "home") as process:
        yield process


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tags(server: ServerProcess) -> dict[str, dict[str, Any]]:
    models = httpx.get(server.url + "/api/tags").json()["models"]
    return {m["name"]: m for m in models}


# -- the model picker -------------------------------------------------------------


def test_picker_lists_models_and_enter_picks_the_highlighted_one(server: ServerProcess, loam_home: Path) -> None:
    listed = tags(server)

    async def scenario(pilot: Pilot[None], host: Host) -> None:
        table = pilot.app.screen.query_one(DataTable)
        names = table_names(table)
        assert names == sorted(listed) and {"tiny:latest", "tiny-copy:latest"} <= set(names)
        tiny = listed["tiny:latest"]
        assert table.get_row("tiny:latest") == [
            "● tiny:latest",
            human_bytes(tiny["size"]),
            tiny["details"]["parameter_size"],
            tiny["details"]["quantization_level"],
            "",  # nothing measured in this home
        ]
        assert table.get_row("tiny-copy:latest")[0] == "  tiny-copy:latest"
        assert tiny["details"]["quantization_level"] and table.get_row("tiny:latest")[3]
        # The cursor starts on the chat's model; moving it changes what Enter picks.
        assert names[table.cursor_row] == "tiny:latest"
        table.move_cursor(row=names.index("tiny-copy:latest"))
        await pilot.press("enter")
        await pilot.pause()
        assert host.results == ["tiny-copy:latest"]

    drive(ModelPicker(AsyncClient(server.host), "tiny"), scenario)


def test_picker_delete_asks_then_removes_the_model(server: ServerProcess) -> None:
    copied = httpx.post(server.url + "/api/copy", json={"source": "tiny", "destination": "doomed"})
    assert copied.status_code == 200
    client = AsyncClient(server.host)

    async def scenario(pilot: Pilot[None], host: Host) -> None:
        table = pilot.app.screen.query_one(DataTable)
        table.move_cursor(row=table_names(table).index("doomed:latest"))
        await pilot.press("d")
        await pilot.pause()
        confirm = pilot.app.screen
        assert isinstance(confirm, ConfirmScreen) and confirm.question == "Delete doomed:latest?"
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(pilot.app.screen, ModelPicker) and host.results == []
        assert "doomed:latest" not in table_names(table) and "tiny:latest" in table_names(table)
        assert "doomed:latest" not in {m["name"] for m in await client.tags()}

    drive(ModelPicker(client, None), scenario)


def test_confirm_answers_by_key_button_and_escape() -> None:
    async def by_key(pilot: Pilot[None], host: Host) -> None:
        await pilot.press("n")
        await pilot.pause()

    async def by_button(pilot: Pilot[None], host: Host) -> None:
        await pilot.click("#yes")
        await pilot.pause()

    async def by_escape(pilot: Pilot[None], host: Host) -> None:
        await pilot.press("escape")
        await pilot.pause()

    assert drive(ConfirmScreen("Delete tiny:latest?"), by_key).results == [False]
    assert drive(ConfirmScreen("Delete tiny:latest?"), by_button).results == [True]
    assert drive(ConfirmScreen("Delete tiny:latest?"), by_escape).results == [False]


def test_picker_info_key_opens_the_highlighted_model(server: ServerProcess) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        await pilot.press("i")
        await settle(pilot)
        info = pilot.app.screen
        assert isinstance(info, InfoScreen) and info.model_name == "tiny:latest"
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ModelPicker)
        await pilot.press("escape")
        await pilot.pause()
        assert host.results == [None]

    drive(ModelPicker(AsyncClient(server.host), "tiny:latest"), scenario)


def test_picker_without_a_server_shows_the_error_line(loam_home: Path) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        error = pilot.app.screen.query_one(".error", Static)
        assert error.display and "no loam server answers at 127.0.0.1:9" in text_of(error)
        assert isinstance(pilot.app.screen, ModelPicker) and host.results == []

    drive(ModelPicker(AsyncClient("127.0.0.1:9"), None), scenario)


class EmptyStore:
    """A client whose server has no models."""

    async def tags(self) -> list[dict[str, Any]]:
        return []


def test_picker_of_an_empty_store_says_how_to_pull(loam_home: Path) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        screen = pilot.app.screen
        empty = screen.query_one("#empty", Static)
        assert empty.display and text_of(empty) == "No models yet — press p to pull one"
        assert not screen.query_one(DataTable).display
        await pilot.press("enter", "d")
        await pilot.pause()
        assert pilot.app.screen is screen and host.results == []

    drive(ModelPicker(EmptyStore(), None), scenario)  # type: ignore[arg-type]


def test_model_row_without_details() -> None:
    assert model_row({"name": "x:latest"}, None) == ("  x:latest", "", "", "", "")
    assert model_row({"name": "x:latest", "size": 2500}, "x")[:2] == ("● x:latest", "2.5 KB")


# -- the info screen ----------------------------------------------------------------


def test_info_shows_architecture_and_the_chosen_tab(server: ServerProcess) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        screen = pilot.app.screen
        assert screen.query_one(TabbedContent).active == "parameters"
        rows = text_of(screen.query_one("#info-rows", Static))
        assert "architecture" in rows and "llama" in rows and "context length" in rows
        assert "num_ctx" in screen.query_one("#text-parameters", TextArea).text
        assert screen.query_one("#text-system", TextArea).text == "(none)"
        assert "FROM " in screen.query_one("#text-modelfile", TextArea).text

    drive(InfoScreen(AsyncClient(server.host), "tiny", section="parameters"), scenario)


def test_info_and_picker_show_what_was_measured_here(server: ServerProcess, loam_home: Path) -> None:
    from app.measure import results

    digest = Store(Path(server.env["LOAM_MODELS"])).show(ModelName.parse("tiny")).stored.digest
    results.record("bench", digest, "tiny", {"gen_tps_1": 321.0}, {"gen": 64})

    async def info(pilot: Pilot[None], host: Host) -> None:
        text = pilot.app.screen.query_one("#text-measured", TextArea).text
        assert "bench  gen_tps_1 321  (gen=64)" in text

    async def picker(pilot: Pilot[None], host: Host) -> None:
        table = pilot.app.screen.query_one(DataTable)
        rows = {str(row[0]).strip(): row[4] for row in (table.get_row_at(i) for i in range(table.row_count))}
        assert rows["tiny:latest"] == "321 tok/s" and rows["tiny-copy:latest"] == "321 tok/s"  # same manifest

    drive(InfoScreen(AsyncClient(server.host), "tiny", section="measured"), info)
    drive(ModelPicker(AsyncClient(server.host), None), picker)


def test_info_of_a_missing_model_shows_the_error(server: ServerProcess) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        error = pilot.app.screen.query_one(".error", Static)
        assert error.display and "not found" in text_of(error)

    drive(InfoScreen(AsyncClient(server.host), "missing-model"), scenario)


def test_info_parameters_show_the_chat_over_the_model_over_the_defaults(server: ServerProcess) -> None:
    chat = {"temperature": 0.2, "stop": ["<end>", "User:"], "num_gpu": None}

    async def scenario(pilot: Pilot[None], host: Host) -> None:
        lines = pilot.app.screen.query_one("#text-parameters", TextArea).text.splitlines()
        marks = {" ".join(line.split()) for line in lines}
        assert "num_ctx 256 (model)" in marks
        assert "temperature 0.2 (this chat)" in marks
        assert {'stop "<end>" (this chat)', 'stop "User:" (this chat)'} <= marks
        assert "top_k 40 (default)" in marks
        assert not any(line.startswith(("temperature", "num_gpu")) and "(this chat)" not in line for line in lines)

    async def chat_over_model(pilot: Pilot[None], host: Host) -> None:
        text = pilot.app.screen.query_one("#text-parameters", TextArea).text
        assert [" ".join(line.split()) for line in text.splitlines() if line.startswith("num_ctx")] == [
            "num_ctx 1024 (this chat)"
        ]

    drive(InfoScreen(AsyncClient(server.host), "tiny", section="parameters", options=chat), scenario)
    drive(
        InfoScreen(AsyncClient(server.host), "tiny", section="parameters", options={"num_ctx": 1024}), chat_over_model
    )


def test_info_opens_with_the_tab_text_focused(server: ServerProcess) -> None:
    async def parameters(pilot: Pilot[None], host: Host) -> None:
        text = pilot.app.screen.query_one("#text-parameters", TextArea)
        assert text.has_focus and text.cursor_location == (0, 0)
        await pilot.press("down")
        assert text.cursor_location == (1, 0)

    async def info(pilot: Pilot[None], host: Host) -> None:
        assert pilot.app.focused is pilot.app.screen.query_one("#info-scroll")

    drive(InfoScreen(AsyncClient(server.host), "tiny", section="parameters"), parameters)
    drive(InfoScreen(AsyncClient(server.host), "tiny"), info)


def test_model_parameters_are_typed_and_stop_lines_gather() -> None:
    show = {
        "parameters": 'num_ctx         256\ntemperature     0.7\nstop            "<|im_end|>"\n'
        'stop            "User: \\"x\\""\nuse_mmap        False\nmystery         9\n',
        "model_info": {"general.architecture": "llama", "llama.context_length": 2048},
    }
    parameters = model_parameters(show)
    assert parameters == {
        "num_ctx": 256,
        "temperature": 0.7,
        "stop": ["<|im_end|>", 'User: "x"'],
        "use_mmap": False,
        "mystery": "9",
    }
    assert type(parameters["num_ctx"]) is int and type(parameters["temperature"]) is float
    assert model_parameters({}) == {}
    defaults = parameter_defaults(show)
    assert defaults["num_ctx"] == 256 and defaults["temperature"] == 0.7 and defaults["top_k"] == 40
    assert parameter_defaults({"model_info": show["model_info"]})["num_ctx"] == 2048, "capped at the trained context"


def test_server_defaults_are_what_the_server_uses() -> None:
    from app.runner.sampling import SamplingParams
    from app.server.options import LoadOptions

    sampling, load = SamplingParams(), LoadOptions()
    runner_names = {"num_predict": "n_predict"}
    for name, value in SERVER_DEFAULTS.items():
        source = load if name == "num_ctx" else sampling
        assert getattr(source, runner_names.get(name, name)) == value, name


def test_info_rows_follow_ollama_show() -> None:
    show = {
        "details": {"family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192, "llama.embedding_length": 576},
    }
    assert info_rows(show) == [
        ("architecture", "llama"),
        ("parameters", "135M"),
        ("context length", "8192"),
        ("embedding length", "576"),
        ("quantization", "Q4_1"),
    ]
    assert info_rows({}) == []


# -- the pull screen --------------------------------------------------------------


def test_pull_of_an_unknown_name_shows_the_error_and_stays(server: ServerProcess) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        screen = pilot.app.screen
        screen.query_one("#name", Input).value = "nonexistent-model-xyz"
        await pilot.press("enter")
        await settle(pilot)
        error = screen.query_one(".error", Static)
        assert error.display and "nonexistent-model-xyz" in text_of(error)
        assert pilot.app.screen is screen and host.results == []
        assert not screen.query_one("#name", Input).disabled, "the name can be fixed and pulled again"

    drive(PullScreen(AsyncClient(server.host)), scenario)
    assert "nonexistent-model-xyz:latest" not in tags(server)


def test_pull_from_the_picker_shows_layers_then_highlights_the_model(server: ServerProcess) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        picker = pilot.app.screen
        await pilot.press("p")
        await settle(pilot, "catalog")
        pull = pilot.app.screen
        assert isinstance(pull, PullScreen)
        pull.query_one("#name", Input).value = PULLABLE
        await pilot.press("enter")
        await settle(pilot, "pull")
        assert pilot.app.screen is pull and [short_digest(d) for d in pull.layer_bars] == [
            f"sha256:{sha256_of(server.home.parent / 'pullable.gguf')[:8]}…"
        ]
        # Closing the offer keeps the chat's model; the picker highlights the new one.
        await pilot.press("escape")
        await settle(pilot)
        table = picker.query_one(DataTable)
        assert pilot.app.screen is picker and table_names(table)[table.cursor_row] == PULLABLE
        assert host.results == []

    drive(ModelPicker(AsyncClient(server.host), "tiny"), scenario)
    assert PULLABLE in tags(server)


def test_pull_ends_with_an_offer_and_enter_takes_the_model(server: ServerProcess) -> None:
    """A finished pull says so and offers the model: Enter dismisses its name, Escape None."""

    async def pull(pilot: Pilot[None]) -> PullScreen:
        screen = pilot.app.screen
        assert isinstance(screen, PullScreen)
        await pilot.press(*PULLABLE, "enter")
        await settle(pilot, "pull")
        assert pilot.app.screen is screen and screen.pulled == PULLABLE
        done = screen.query_one("#done", Static)
        assert done.display and text_of(done) == f"pulled {PULLABLE}"
        use = screen.query_one("#use", Button)
        assert use.has_focus and str(use.label) == f"Use {PULLABLE}" and screen.query_one("#close", Button).display
        assert screen.query_one("#name", Input).disabled, "Enter answers the offer, it does not pull again"
        return screen

    async def take(pilot: Pilot[None], host: Host) -> None:
        await pull(pilot)
        await pilot.press("enter")
        await pilot.pause()

    async def close(pilot: Pilot[None], host: Host) -> None:
        screen = await pull(pilot)
        await pilot.click("#close")
        await pilot.pause()
        assert screen.pulled == PULLABLE

    assert drive(PullScreen(AsyncClient(server.host)), take).results == [PULLABLE]
    assert drive(PullScreen(AsyncClient(server.host)), close).results == [None]


def test_taking_the_pulled_model_in_the_picker_picks_it(server: ServerProcess) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        await pilot.press("p")
        await settle(pilot, "catalog")
        await pilot.press(*PULLABLE, "enter")
        await settle(pilot, "pull")
        await pilot.click("#use")
        await settle(pilot)
        assert host.results == [PULLABLE]

    drive(ModelPicker(AsyncClient(server.host), "tiny"), scenario)


def test_catalog_highlights_a_row_on_focus_and_choosing_only_fills_the_name(
    loam_home: Path, user_catalog: Path
) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        screen = pilot.app.screen
        options = screen.query_one(OptionList)
        assert options.highlighted is None, "no row shows as chosen while the name field has focus"
        await pilot.press("tab", "tab")  # past the Pull button
        assert options.has_focus and options.highlighted == 0
        await pilot.press("down", "enter")
        await pilot.pause()
        name = screen.query_one("#name", Input)
        assert name.value == options.get_option_at_index(1).id and name.has_focus
        # Choosing started nothing: no pull ran, the screen is still open with its form enabled.
        assert not [w for w in pilot.app.workers if w.group == "pull"]
        assert text_of(screen.query_one("#status", Static)) == "" and not name.disabled
        assert pilot.app.screen is screen and host.results == []
        # Focus leaving and coming back keeps the row the user was on.
        options.focus()
        await pilot.pause()
        assert options.highlighted == 1

    drive(PullScreen(AsyncClient("127.0.0.1:9")), scenario)


def test_choosing_a_catalog_entry_fills_the_name(loam_home: Path, user_catalog: Path) -> None:
    user_catalog.write_text(
        '[models."mine:1b"]\ndescription = "My own model"\nsize = 2500\nsources = [{ path = "x.gguf" }]\n'
    )

    async def scenario(pilot: Pilot[None], host: Host) -> None:
        screen = pilot.app.screen
        options = screen.query_one(OptionList)
        ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
        assert "mine:1b" in ids and "smollm2:135m" in ids
        prompt = str(options.get_option("mine:1b").prompt)
        assert prompt == "mine:1b — My own model (2.5 KB)"
        options.focus()
        options.highlighted = ids.index("mine:1b")
        await pilot.press("enter")
        await pilot.pause()
        name = screen.query_one("#name", Input)
        assert name.value == "mine:1b" and name.has_focus
        await pilot.press("escape")
        await pilot.pause()
        assert host.results == [None]

    drive(PullScreen(AsyncClient("127.0.0.1:9")), scenario)


def test_short_digest() -> None:
    assert short_digest("sha256:abcdef1234567890") == "sha256:abcdef12…"


# -- the settings screen ------------------------------------------------------------


def field(pilot: Pilot[None], name: str) -> Input:
    return pilot.app.screen.query_one(f"#opt-{name}", Input)


def test_settings_round_trip_with_types(loam_home: Path) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        assert field(pilot, "temperature").value == "0.7" and field(pilot, "stop").value == "<end>"
        pilot.app.screen.query_one("#system", TextArea).text = "Answer in French."
        field(pilot, "num_ctx").value = "4096"
        field(pilot, "top_p").value = "0.9"
        field(pilot, "stop").value = "User:, ###"
        field(pilot, "seed").focus()
        await pilot.press(*"42")
        await pilot.press("ctrl+s")
        await pilot.pause()

    host = drive(SettingsScreen("Be brief.", {"temperature": 0.7, "stop": ["<end>"], "num_gpu": 0}), scenario)
    system, options = host.results[0]
    assert system == "Answer in French."
    assert options == {
        "temperature": 0.7,
        "num_gpu": 0,
        "num_ctx": 4096,
        "top_p": 0.9,
        "stop": ["User:", "###"],
        "seed": 42,
    }
    assert type(options["num_ctx"]) is int and type(options["top_p"]) is float


def test_settings_invalid_temperature_blocks_save(loam_home: Path) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        temperature = field(pilot, "temperature")
        temperature.value = "-1"
        await pilot.pause()
        error = pilot.app.screen.query_one("#error-temperature", Static)
        assert temperature.has_class("-invalid") and error.display
        assert text_of(error) == "temperature must be at least 0, got -1"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert host.results == [] and temperature.has_focus
        temperature.value = "0.2"
        await pilot.pause()
        assert not temperature.has_class("-invalid") and not error.display
        await pilot.click("#save")
        await pilot.pause()

    host = drive(SettingsScreen("", {}), scenario)
    assert host.results == [("", {"temperature": 0.2})]


def test_settings_cleared_field_unsets_and_cancel_returns_none(loam_home: Path) -> None:
    async def clear_seed(pilot: Pilot[None], host: Host) -> None:
        field(pilot, "seed").value = ""
        await pilot.press("ctrl+s")
        await pilot.pause()

    host = drive(SettingsScreen("s", {"seed": 42, "temperature": 0.5}), clear_seed)
    assert host.results == [("s", {"temperature": 0.5})]

    async def cancel(pilot: Pilot[None], host: Host) -> None:
        field(pilot, "seed").value = "7"
        await pilot.press("escape")
        await pilot.pause()

    assert drive(SettingsScreen("s", {"seed": 42}), cancel).results == [None]


def test_settings_placeholders_show_the_defaults_and_save_keeps_them_unset(loam_home: Path) -> None:
    defaults = {"temperature": 0.8, "num_ctx": 256, "stop": ["<|im_end|>", "User:"]}

    async def scenario(pilot: Pilot[None], host: Host) -> None:
        assert field(pilot, "temperature").placeholder == "0.8 (default)"
        assert field(pilot, "num_ctx").placeholder == "256 (default)"
        assert field(pilot, "stop").placeholder == "<|im_end|>, User: (default)"
        assert field(pilot, "top_k").placeholder == "unset"
        assert field(pilot, "seed").value == "42"
        assert field(pilot, "temperature").value == ""
        await pilot.press("ctrl+s")
        await pilot.pause()

    host = drive(SettingsScreen("s", {"seed": 42}, defaults=defaults), scenario)
    assert host.results == [("s", {"seed": 42})]


def test_settings_opens_with_the_system_prompt_taking_the_keys(loam_home: Path) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        system = pilot.app.screen.query_one("#system", TextArea)
        assert system.has_focus
        await pilot.press(*"Be kind.")
        assert system.text == "Be kind."
        await pilot.press("ctrl+s")
        await pilot.pause()

    assert drive(SettingsScreen("", {}), scenario).results == [("Be kind.", {})]


def test_pull_opens_with_the_name_taking_the_keys(loam_home: Path) -> None:
    async def scenario(pilot: Pilot[None], host: Host) -> None:
        await pilot.press(*"smollm2")
        assert pilot.app.screen.query_one("#name", Input).value == "smollm2"

    drive(PullScreen(AsyncClient("127.0.0.1:9")), scenario)


def test_parse_field() -> None:
    assert parse_field("stop", " a ,, b ") == ["a", "b"]
    assert parse_field("num_predict", " ") is None
    assert parse_field("repeat_last_n", "-1") == -1
