"""Snapshots of the chat TUI (pytest-textual-snapshot): the main screen, the stats panel and the model
picker, each in a dark and a light theme. `pytest --snapshot-update` rewrites them after a deliberate change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from app.history import History
from app.stats import Stats
from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from app.tui.app import LoamApp
from app.tui.chat import ChatLog, MessageView, PromptInput
from app.tui.screens import ModelPicker
from app.tui.stats_panel import Answer, Context, StatsPanel
from tests.server_process import ServerProcess, clone_store

SIZE = (120, 36)
THEMES = ["loam-dark", "loam-paper"]
ANSWER = """The sky looks blue because air scatters short wavelengths more than long ones.

```python
def scattering(wavelength_nm: float) -> float:
    return 1 / wavelength_nm**4  # Rayleigh
```

Blue light is scattered about **5.5 times** more than red."""
FIGURES = {
    "total_duration": 1_596_818_833,
    "load_duration": 575_693_088,
    "prompt_eval_count": 35,
    "prompt_eval_duration": 215_406_607,
    "eval_count": 58,
    "eval_duration": 796_468_114,
}


@pytest.fixture(scope="module")
def server(smollm2_store: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = clone_store(smollm2_store, tmp_path_factory.mktemp("snap") / "models")
    create(Store(root), Catalog({}, "smollm2:135m"), ModelName.parse("tiny"), parse(f"FROM {tiny_gguf}\n"), folder=root)
    with ServerProcess(root, tmp_path_factory.mktemp("home")) as s:
        yield s


def seeded(path: Path) -> Path:
    """A chat history with one exchange, so every snapshot shows the same conversation."""
    with History(path) as history:
        session = history.create("smollm2:135m")
        history.add_message(session.id, "user", "Why is the sky blue?")
        history.add_message(session.id, "assistant", ANSWER, FIGURES)
    return path


def chat_app(tmp_path: Path, theme: str, **kw: Any) -> LoamApp:
    app = LoamApp(history_path=seeded(tmp_path / "chats.sqlite3"), **kw)
    app.user_config["theme"] = theme
    return app


async def settle(pilot: Pilot[Any], ready: Any = lambda app: True) -> None:
    app = pilot.app
    for _ in range(400):
        if app.session is not None and app.query("MessageView") and ready(app):
            break
        await pilot.pause(0.05)
    app.query_one(PromptInput).cursor_blink = False
    await pilot.pause()


@pytest.mark.parametrize("theme", THEMES)
def test_main_screen(snap_compare: Any, loam_home: Path, tmp_path: Path, theme: str) -> None:
    app = chat_app(tmp_path, theme, host="127.0.0.1:9", autostart=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


@pytest.mark.parametrize("theme", THEMES)
def test_stats_panel(snap_compare: Any, loam_home: Path, tmp_path: Path, theme: str) -> None:
    app = chat_app(tmp_path, theme, host="127.0.0.1:9", autostart=False, verbose=True)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        panel = app.query_one(StatsPanel)
        panel.add_rates([61.0, 88.5, 79.2])
        panel.set_context(Context(num_ctx=4096, num_predict=256, options={"temperature": 0.2, "num_predict": 256}))
        panel.show_answer(Answer("smollm2:135m", 2, "stop", Stats(**FIGURES, prompt_cache_count=15), 640_000_000))
        panel.start_live("smollm2:135m", 3)
        panel.show_live(80.4, 12)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("theme", THEMES)
def test_model_picker(snap_compare: Any, server: ServerProcess, loam_home: Path, tmp_path: Path, theme: str) -> None:
    app = chat_app(tmp_path, theme, host=server.host)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot, lambda app: app.client is not None)
        await pilot.press("ctrl+l")
        for _ in range(400):
            screen = app.screen
            if (
                isinstance(screen, ModelPicker)
                and screen.query("DataTable")
                and screen.query_one("DataTable").row_count
            ):
                break
            await pilot.pause(0.05)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("state", ["waiting", "cancelled", "narrow"])
def test_stats_panel_states(snap_compare: Any, loam_home: Path, tmp_path: Path, state: str) -> None:
    """The panel while the first token is awaited, after a stop, and collapsed on a narrow terminal."""
    app = chat_app(tmp_path, "loam-dark", host="127.0.0.1:9", autostart=False, verbose=True)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        panel = app.query_one(StatsPanel)
        panel.set_context(Context(num_ctx=4096, num_predict=256, placement="100% CPU · 118 MiB"))
        if state == "waiting":
            panel.start_live("smollm2:135m", 2)
            panel.show_waiting("loading smollm2:135m", 1.5)
        elif state == "cancelled":
            panel.show_answer(Answer("smollm2:135m", 2, "cancelled"))
        await pilot.pause()

    size = (90, 36) if state == "narrow" else SIZE
    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_help_at_80_columns(snap_compare: Any, loam_home: Path, tmp_path: Path) -> None:
    app = chat_app(tmp_path, "loam-dark", host="127.0.0.1:9", autostart=False)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        prompt = app.query_one(PromptInput)
        prompt.text = "/help"
        await pilot.press("enter")
        for _ in range(100):
            if any("/unset" in v.content for v in app.query("MessageView.note").results(MessageView)):
                break
            await pilot.pause(0.05)
        app.query_one(ChatLog).scroll_end(animate=False)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 40), run_before=run_before)


def test_an_answer_streaming(snap_compare: Any, loam_home: Path, tmp_path: Path) -> None:
    """Mid-answer: the text drawn by Rich into held room (LiveMarkdown), the panel's live figures."""
    from app.tui.turn import ChatEvents

    app = chat_app(tmp_path, "loam-dark", host="127.0.0.1:9", autostart=False, verbose=True)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        assert app.session is not None
        events = ChatEvents(app.chat, app.session.id)
        await events.step_started(0)
        for piece in ANSWER.split(" ")[:40]:
            events.pacer.next = 0.0  # draw every piece, so the picture does not depend on timing
            await events.chunk({"message": {"role": "assistant", "content": piece + " "}})
            await pilot.pause()  # the frame reports, so the next piece may be drawn
        events._stop_ticker()
        panel = app.query_one(StatsPanel)
        panel.live_rates = [52.0, 61.5, 70.2, 74.8, 77.0, 79.1]  # the figures measured above vary with timing
        panel.show_live(80.4, 36)
        app.query_one(ChatLog).scroll_end(animate=False)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
