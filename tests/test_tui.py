"""The chat TUI driven by Textual's Pilot against a real `loam serve` with SmolLM2 and the tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from app import config
from app.history import History
from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from app.tui.app import LoamApp
from app.tui.chat import MessageView, PromptInput
from app.tui.screens import ModelPicker
from app.tui.stats_panel import StatsPanel
from tests.server_process import ServerProcess, clone_store

SMOL = "smollm2:135m"


@pytest.fixture(scope="module")
def server(smollm2_store: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = clone_store(smollm2_store, tmp_path_factory.mktemp("tui") / "models")
    create(
        Store(root), Catalog({}, SMOL), ModelName.parse("tiny"),
        parse(f"FROM {tiny_gguf}\nPARAMETER num_ctx 256\nPARAMETER num_predict 8\n"), folder=root,
    )  # fmt: skip
    with ServerProcess(root, tmp_path_factory.mktemp("home")) as s:
        yield s


def drive(app: LoamApp, steps: Callable[[LoamApp], Awaitable[None]]) -> None:
    """Run `steps` inside the app under Pilot, on a terminal big enough for every panel."""

    async def inner() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            app.pilot = pilot  # type: ignore[attr-defined]
            await until(app, lambda: app.client is not None and app.session is not None)
            await steps(app)

    asyncio.run(inner())


async def until(app: LoamApp, condition: Callable[[], bool], polls: int = 1200) -> None:
    """Wait (a hang guard, not a time limit on speed) until `condition` holds."""
    for _ in range(polls):
        if condition():
            return
        await app.pilot.pause(0.05)  # type: ignore[attr-defined]
    notes = [v.content for v in app.query("MessageView.error").results(MessageView)]
    raise AssertionError(f"the app never reached the expected state; errors shown: {notes}")


async def say(app: LoamApp, text: str) -> None:
    """Type a line into the prompt and press Enter, as a person does."""
    prompt = app.query_one(PromptInput)
    prompt.focus()
    prompt.text = text
    await app.pilot.press("enter")  # type: ignore[attr-defined]


async def ask_and_wait(app: LoamApp, text: str) -> MessageView:
    before = len(app.query("MessageView.assistant"))
    await say(app, text)
    await until(app, lambda: len(app.query("MessageView.assistant")) > before)
    await until(app, lambda: not app.answering)
    return list(app.query("MessageView.assistant").results(MessageView))[-1]


def new_app(server: ServerProcess, tmp_path: Path, **kw: object) -> LoamApp:
    return LoamApp(host=server.host, history_path=tmp_path / "chats.sqlite3", **kw)  # type: ignore[arg-type]


def test_send_stream_stats_and_reopen(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    """Send a message, see it answered with figures, quit, start again and find the session."""
    seen: dict[str, object] = {}

    async def steps(app: LoamApp) -> None:
        await say(app, "/set parameter num_predict 24")
        await until(app, lambda: app.session is not None and app.session.options.get("num_predict") == 24)
        prompt = app.query_one(PromptInput)
        assert prompt.cursor_blink
        await say(app, "Why is the sky blue?")
        await until(app, lambda: app.answering)
        assert not prompt.cursor_blink, "a blink is a frame, taken from the model while it answers"
        await until(app, lambda: not app.answering)
        assert prompt.cursor_blink
        reply = list(app.query("MessageView.assistant").results(MessageView))[-1]
        assert reply.content.strip()
        assert "tokens/s" in str(reply.query_one(".figures").render())
        panel = app.query_one(StatsPanel)
        assert panel.last is not None and panel.last.stats is not None and panel.last.ended in ("stop", "length")
        assert panel.last.stats.eval_rate > 0 and panel.last.stats.prompt_eval_rate > 0
        assert panel.last.first_token_ns > 0
        assert panel.border_title.startswith(f"{SMOL} · answer 1 · ")
        assert panel.rates and panel.rates[-1] > 0
        seen["session"], seen["answer"] = app.session.id if app.session else None, reply.content

    drive(new_app(server, tmp_path, model=SMOL, verbose=True), steps)

    async def reopened(app: LoamApp) -> None:
        assert app.session is not None and app.session.id == seen["session"]
        views = list(app.query(MessageView).results(MessageView))
        assert [v.role for v in views] == ["user", "assistant"]
        assert views[1].content == seen["answer"] and views[1].stats
        assert app.query_one(StatsPanel).rates, "the session's eval rates come back with it"
        assert app.query_one(PromptInput).recall[-1] == "Why is the sky blue?"

    drive(new_app(server, tmp_path), reopened)


def test_switch_model_with_the_picker(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        await app.pilot.press("ctrl+l")  # type: ignore[attr-defined]
        await until(app, lambda: isinstance(app.screen, ModelPicker) and app.screen.query("DataTable"))
        picker = app.screen
        table = picker.query_one("DataTable")
        await until(app, lambda: table.row_count >= 2)
        names = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        table.move_cursor(row=next(i for i, n in enumerate(names) if "tiny" in n))
        await app.pilot.press("enter")  # type: ignore[attr-defined]
        await until(app, lambda: app.model.startswith("tiny"))
        reply = await ask_and_wait(app, "hello")
        assert reply.author.startswith("tiny") and reply.stats and reply.stats["eval_count"] <= 8

    drive(new_app(server, tmp_path, model=SMOL), steps)


def test_escape_stops_an_answer_and_keeps_what_came(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        await say(app, "/set parameter num_predict 100000")
        await say(app, "/set parameter temperature 0")
        await until(app, lambda: app.session is not None and "temperature" in app.session.options)
        await say(app, "What is the capital of France?")  # at temperature 0 SmolLM2 never stops on this one
        await until(app, lambda: len(app.query("MessageView.assistant")) == 1)
        reply = list(app.query("MessageView.assistant").results(MessageView))[0]
        await until(app, lambda: len(reply.content) > 20)
        await app.pilot.press("escape")  # type: ignore[attr-defined]
        await until(app, lambda: not app.answering)
        assert reply.stopped and "[stopped]" not in reply.content
        # The server stopped too: with one slot, this answer would otherwise wait behind 100,000 tokens.
        await say(app, "/set parameter num_predict 4")
        follow = await ask_and_wait(app, "Hi")
        assert follow.stats and follow.stats["eval_count"] <= 4
        assert app.history is not None and app.session is not None
        stored = app.history.messages(app.session.id)
        assert stored[1].content == reply.content

    drive(new_app(server, tmp_path, model=SMOL), steps)


def test_slash_commands_copy_and_export(
    server: ServerProcess, loam_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async def steps(app: LoamApp) -> None:
        await say(app, "/set system You answer in one short sentence.")
        await until(app, lambda: app.session is not None and app.session.system.startswith("You answer"))
        await say(app, "/frobnicate")
        await until(app, lambda: bool(app.query("MessageView.error")))
        assert "unknown command '/frobnicate'" in list(app.query("MessageView.error").results(MessageView))[-1].content
        await say(app, "/help")
        await until(app, lambda: any("/unset" in v.content for v in app.query(MessageView).results(MessageView)))
        reply = await ask_and_wait(app, "Write ```python\nprint(1)\n``` back to me.")
        await app.pilot.press("f8")  # type: ignore[attr-defined]
        assert app.clipboard == reply.content
        await app.pilot.press("ctrl+s")  # type: ignore[attr-defined]
        assert app.session is not None
        exported = tmp_path / f"loam-chat-{app.session.id}.md"
        await until(app, exported.exists)
        text = exported.read_text()
        assert "> You answer in one short sentence." in text and "## You" in text
        await say(app, "/clear")
        await until(app, lambda: not app.query("MessageView.user"))
        assert app.history is not None and app.history.messages(app.session.id) == []
        await say(app, "/bye")

    app = new_app(server, tmp_path, model="tiny")
    drive(app, steps)
    assert app.return_code == 0


def test_no_server_is_a_message_not_a_traceback(loam_home: Path, tmp_path: Path) -> None:
    app = LoamApp(model=SMOL, host="127.0.0.1:9", autostart=False, history_path=tmp_path / "chats.sqlite3")

    async def steps(app: LoamApp) -> None:
        await say(app, "hello?")
        await until(app, lambda: bool(app.query("MessageView.error")))
        error = list(app.query("MessageView.error").results(MessageView))[-1]
        assert "no loam server answers at 127.0.0.1:9" in error.content

    drive(app, steps)


def test_theme_choice_persists_and_keys_remap(loam_home: Path, tmp_path: Path) -> None:
    config.save_config({"keys": {"stats": "f9"}, "default_model": SMOL})

    async def steps(app: LoamApp) -> None:
        assert {"loam-dark", "loam-light", "loam-dusk", "loam-paper"} <= set(app.available_themes)
        app.theme = "loam-paper"
        await until(app, lambda: config.load_config().get("theme") == "loam-paper")
        assert app.pygments_style == "solarized-light"
        panel = app.query_one(StatsPanel)
        shown = panel.display
        await app.pilot.press("f9")  # type: ignore[attr-defined]
        assert panel.display is not shown

    drive(LoamApp(host="127.0.0.1:9", autostart=False, history_path=tmp_path / "c.sqlite3"), steps)
    saved = config.load_config()
    assert saved["keys"] == {"stats": "f9"} and saved["default_model"] == SMOL, "other settings are kept"


def test_history_seeded_session_opens_with_its_messages(loam_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    with History(path) as history:
        old = history.create("tiny")
        history.add_message(old.id, "user", "first question")
        history.add_message(old.id, "assistant", "first answer", {"eval_count": 10, "eval_duration": 10**8})

    async def steps(app: LoamApp) -> None:
        assert app.session is not None and app.session.id != old.id, "--new starts a fresh chat"
        assert not app.query("MessageView.user")
        await app.pilot.press("ctrl+o")  # type: ignore[attr-defined]
        await until(
            app, lambda: app.screen.query("OptionList") and app.screen.query_one("OptionList").option_count >= 2
        )
        options = app.screen.query_one("OptionList")
        index = next(
            i for i in range(options.option_count) if "first question" in str(options.get_option_at_index(i).prompt)
        )
        options.highlighted = index
        await app.pilot.press("enter")  # type: ignore[attr-defined]
        await until(app, lambda: app.session is not None and app.session.id == old.id)
        await until(app, lambda: bool(app.query("MessageView.assistant")))
        assert list(app.query("MessageView.assistant").results(MessageView))[0].content == "first answer"

    drive(LoamApp(host="127.0.0.1:9", autostart=False, history_path=path, new=True), steps)


def test_new_chat_and_clear_while_an_answer_streams(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    """Changing the chat under a streaming answer stops it first: no crash, nothing stale in the history."""

    async def start_long_answer(app: LoamApp) -> MessageView:
        await say(app, "/set parameter num_predict 100000")
        await say(app, "/set parameter temperature 0")
        await until(app, lambda: app.session is not None and "temperature" in app.session.options)
        await say(app, "What is the capital of France?")
        await until(app, lambda: bool(app.query("MessageView.assistant")))
        reply = list(app.query("MessageView.assistant").results(MessageView))[-1]
        await until(app, lambda: len(reply.content) > 10)
        return reply

    async def steps(app: LoamApp) -> None:
        assert app.history is not None and app.session is not None
        first = app.session.id
        await start_long_answer(app)
        await app.pilot.press("ctrl+n")  # type: ignore[attr-defined]
        await until(app, lambda: app.session is not None and app.session.id != first and not app.answering)
        stored = app.history.messages(first)
        assert [m.role for m in stored] == ["user", "assistant"] and stored[1].content
        assert app.conversation == [] and not app.query("MessageView.assistant")

        await start_long_answer(app)
        await say(app, "/clear")
        await until(app, lambda: not app.answering and not app.query("MessageView.assistant"))
        await app.pilot.pause(0.2)  # type: ignore[attr-defined]
        assert app.history.messages(app.session.id) == [] and app.conversation == []

    drive(new_app(server, tmp_path, model=SMOL), steps)
