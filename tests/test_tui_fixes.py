"""The chat's rough edges that users hit, each driven as they met it (Pilot, a real `loam serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Input, Static, TextArea

from app.history import History, close_fences, export_markdown
from app.stats import Stats
from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from app.tui import keys
from app.tui.app import LoamApp
from app.tui.chat import MessageView, PromptInput, ThemedMarkdown
from app.tui.commands import help_body
from app.tui.stats_panel import StatsPanel, rate_bars, rates_summary
from app.tui.turn import ChatEvents
from tests.runner_process import free_port
from tests.server_process import ServerProcess, clone_store
from tests.test_tui import ask_and_wait, drive, new_app, say, until

SMOL = "smollm2:135m"


@pytest.fixture(scope="module")
def server(smollm2_store: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = clone_store(smollm2_store, tmp_path_factory.mktemp("fixes") / "models")
    modelfile = parse(f"FROM {tiny_gguf}\nPARAMETER num_ctx 256\nPARAMETER num_predict 8\n")
    create(Store(root), Catalog({}, SMOL), ModelName.parse("tiny"), modelfile, folder=root)
    with ServerProcess(root, tmp_path_factory.mktemp("home")) as s:
        yield s


def offline_app(tmp_path: Path, **kw: object) -> LoamApp:
    return LoamApp(host="127.0.0.1:9", autostart=False, history_path=tmp_path / "chats.sqlite3", **kw)  # type: ignore[arg-type]


def drive_offline(app: LoamApp, steps: object) -> None:
    """Like `drive`, for an app with no server: waits for the session only."""

    async def inner() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            app.pilot = pilot  # type: ignore[attr-defined]
            await until(app, lambda: app.session is not None and app.client is not None)
            await steps(app)  # type: ignore[operator]

    asyncio.run(inner())


# 1. pasted lines keep their breaks


def test_a_users_lines_are_shown_as_typed(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    lines = "\n".join(f"line {i}: *not* markdown" for i in range(60))

    async def steps(app: LoamApp) -> None:
        await ask_and_wait(app, lines)
        user = list(app.query("MessageView.user").results(MessageView))[-1]
        shown = str(user.query_one(".body", Static).render())
        assert shown.count("\n") == 59 and "*not*" in shown

    drive(new_app(server, tmp_path, model="tiny"), steps)


# 2. a stop inside a code block


def test_close_fences_closes_only_what_is_open() -> None:
    assert close_fences("text\n```python\nx = 1") == "text\n```python\nx = 1\n```"
    assert close_fences("```\na\n```\nb") == "```\na\n```\nb"
    assert close_fences("~~~~\n```\nx") == "~~~~\n```\nx\n~~~~"
    assert close_fences("inline ``` not a fence") == "inline ``` not a fence"


def test_a_stopped_answer_is_marked_outside_its_code_block(loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        assert app.session is not None
        events = ChatEvents(app.chat, app.session.id)
        await events.step_started(0)
        reply = events.reply
        assert reply is not None
        await events.chunk({"message": {"role": "assistant", "content": "Here:\n```python\nprint(1)\n"}})
        await events.stopped()
        source = reply.query_one(ThemedMarkdown).source
        assert source.endswith("print(1)\n```\n\n*[stopped]*"), source
        assert reply.content == "Here:\n```python\nprint(1)\n", "the stored answer stays what the model wrote"
        assert app.history is not None
        session = app.history.get(app.session.id)
        exported = export_markdown(session, app.history.messages(session.id))
        assert exported.rstrip().endswith("print(1)\n```"), exported

    drive_offline(offline_app(tmp_path, model="tiny"), steps)


# 3. and 14. keys: nothing shadows editing, the footer holds still


def test_no_binding_shadows_a_text_editing_key() -> None:
    editing = {k.strip() for widget in (TextArea, Input) for b in widget.BINDINGS for k in b.key.split(",")}
    for binding in keys.BINDINGS:
        assert binding.key not in editing, f"{binding.key} ({binding.id}) is an editing key of Textual's inputs"
        assert binding.id and keys.PURPOSE[binding.id] != binding.description


def test_ctrl_e_and_ctrl_k_edit_the_message(loam_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    async def steps(app: LoamApp) -> None:
        prompt = app.query_one(PromptInput)
        prompt.focus()
        prompt.text = "hello world"
        prompt.move_cursor((0, 0))
        await app.pilot.press("ctrl+e")  # type: ignore[attr-defined]
        assert prompt.cursor_location == (0, 11), "Ctrl+E goes to the end of the line"
        prompt.move_cursor((0, 5))
        await app.pilot.press("ctrl+k")  # type: ignore[attr-defined]
        assert prompt.text == "hello"
        assert not list(tmp_path.glob("loam-chat-*.md")), "nothing was exported"

    drive_offline(offline_app(tmp_path), steps)


def test_the_footer_shows_every_key_in_the_same_order_whatever_has_focus(loam_home: Path, tmp_path: Path) -> None:
    def footer_keys(app: LoamApp) -> list[str]:
        return [b.key for (_, b, enabled, _) in app.screen.active_bindings.values() if b.show and enabled]

    async def steps(app: LoamApp) -> None:
        await app.chat.post_note("a message to focus")
        app.query_one(PromptInput).focus()
        await app.pilot.pause()  # type: ignore[attr-defined]
        with_input = footer_keys(app)
        app.query(MessageView).last().focus()
        await app.pilot.pause()  # type: ignore[attr-defined]
        assert footer_keys(app) == with_input
        for key in ("f2", "f3", "f4", "f5", "f8", "ctrl+s", "ctrl+r"):
            assert key in with_input

    drive_offline(offline_app(tmp_path), steps)


# 4. answers keep the name of the model that wrote them


def test_answers_are_signed_by_their_model_after_a_switch(
    server: ServerProcess, loam_home: Path, tmp_path: Path
) -> None:
    async def steps(app: LoamApp) -> None:
        await ask_and_wait(app, "hello")
        await say(app, f"/load {SMOL}")
        await until(app, lambda: app.model == SMOL)

    drive(new_app(server, tmp_path, model="tiny"), steps)

    async def reopened(app: LoamApp) -> None:
        answer = list(app.query("MessageView.assistant").results(MessageView))[0]
        assert answer.author == "tiny" and app.model == SMOL
        assert app.history is not None and app.session is not None
        text = export_markdown(app.session, app.history.messages(app.session.id))
        assert "## tiny" in text and f"Model: `{SMOL}`" in text

    drive(new_app(server, tmp_path), reopened)


# 5. focus always lands where typing goes


def test_new_chat_after_focusing_a_message_puts_typing_in_the_input(loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        await app.chat.post_note("focus me")
        app.query(MessageView).last().focus()
        await app.pilot.pause()  # type: ignore[attr-defined]
        first = app.session
        await app.pilot.press("ctrl+n")  # type: ignore[attr-defined]
        await until(app, lambda: app.session is not first)
        await app.pilot.press("h", "i")  # type: ignore[attr-defined]
        assert app.query_one(PromptInput).text == "hi"

    drive_offline(offline_app(tmp_path), steps)


# 6. the wait for the first token says what is happening


def test_the_wait_before_the_first_token_is_shown(loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        assert app.session is not None
        events = ChatEvents(app.chat, app.session.id, loading=True)
        await events.step_started(0)
        reply = events.reply
        assert reply is not None
        await app.pilot.pause(0.6)  # type: ignore[attr-defined]
        line = reply.query_one(".waiting", Static)
        assert line.display and str(line.render()).startswith("loading tiny · ")
        await events.chunk({"message": {"role": "assistant", "content": "Hi"}})
        assert not line.display

    drive_offline(offline_app(tmp_path, model="tiny"), steps)


# 7. the stats panel tells the truth about the chat on screen


def test_rate_chart_and_summary_for_one_answer() -> None:
    assert rates_summary([3.0]) == "1 answer · 3.0 tok/s"
    assert rates_summary([2.0, 4.0]) == "2 answers · 2–4 tok/s, mean 3"
    assert str(rate_bars([3.0])) == "█", "one answer is one column, not a block across the panel"
    assert str(rate_bars([50.0, 100.0])) == "▄█", "the scale starts at zero"


def test_the_panel_follows_reopen_stop_and_clear(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    with History(path) as history:
        session = history.create(SMOL)
        history.add_message(session.id, "user", "q")
        figures = {"eval_count": 10, "eval_duration": 10**9, "total_duration": 2 * 10**9}
        history.add_message(session.id, "assistant", "a", figures, model=SMOL)

    def streaming(app: LoamApp) -> bool:
        answers = list(app.query("MessageView.assistant").results(MessageView))
        return app.answering and len(answers) == 2 and len(answers[-1].content) > 3

    async def steps(app: LoamApp) -> None:
        panel = app.query_one(StatsPanel)
        assert panel.shown is not None and panel.shown.stats == Stats.from_response(figures)
        assert panel.border_title == f"{SMOL} · answer 1 · stop"
        assert panel.rates == [10.0]
        await say(app, "/set parameter num_predict 100000")
        await say(app, "/set parameter temperature 0")
        await until(app, lambda: app.session is not None and "temperature" in app.session.options)
        await say(app, "Tell me a long story about a lighthouse keeper who finds a message in a bottle.")
        await until(app, lambda: streaming(app))
        await app.pilot.press("escape")  # type: ignore[attr-defined]
        await until(app, lambda: not app.answering)
        assert panel.border_title == f"{SMOL} · answer 2 · cancelled"
        assert "no figures" in str(panel.query_one("#figures", Static).render())
        await say(app, "/clear")
        await until(app, lambda: panel.shown is None)
        assert panel.rates == [] and panel.border_title == "Stats"

    drive(LoamApp(host=server.host, history_path=path, verbose=True), steps)


# 10. help fits 80 columns


def test_help_wraps_under_its_columns_at_80_columns() -> None:
    from app.tui import slash

    console = Console(width=60, record=True, color_system=None)
    console.print(help_body(slash.SET_HELP, keys.key_help({})))
    for line in console.export_text().splitlines():
        assert not line or line.startswith(("  ", "Available", "Parameters", "Keys")), repr(line)


# 12. and 13. a lost server, a retry


def test_retry_answers_the_last_message_again(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        first = await ask_and_wait(app, "hello there")
        await app.pilot.press("ctrl+r")  # type: ignore[attr-defined]
        answers = lambda: list(app.query("MessageView.assistant").results(MessageView))  # noqa: E731
        await until(app, lambda: not app.answering and bool(answers()) and answers()[-1] is not first)
        await until(app, lambda: len(app.conversation) == 2)
        assert [m["role"] for m in app.conversation] == ["user", "assistant"]
        assert [v.role for v in app.query(MessageView).results(MessageView)] == ["user", "assistant"]
        assert app.history is not None and app.session is not None
        assert [m.role for m in app.history.messages(app.session.id)] == ["user", "assistant"]

    drive(new_app(server, tmp_path, model="tiny"), steps)


def test_a_lost_server_says_so_and_leaves_no_dangling_turn(
    smollm2_store: Path, tiny_gguf: Path, loam_home: Path, tmp_path: Path
) -> None:
    root = clone_store(smollm2_store, tmp_path / "models")
    create(Store(root), Catalog({}, SMOL), ModelName.parse("tiny"), parse(f"FROM {tiny_gguf}\n"), folder=root)
    own = ServerProcess(root, tmp_path / "home").wait_ready()

    async def steps(app: LoamApp) -> None:
        own.stop()
        await say(app, "are you there?")
        await until(app, lambda: bool(app.query("MessageView.error")) and not app.answering)
        assert app.conversation == [] and not app.query("MessageView.user")
        assert app.query_one(PromptInput).text == "are you there?", "the message goes back to the input"
        assert app.history is not None and app.session is not None
        assert app.history.messages(app.session.id) == []
        await until(app, lambda: app.server_state == "server lost")
        assert "server lost" in str(app.query_one("#bar", Static).render())

    try:
        drive(LoamApp(host=own.host, autostart=False, model="tiny", history_path=tmp_path / "c.sqlite3"), steps)
    finally:
        own.stop()


def test_a_partial_answer_cut_short_is_kept_and_marked(loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        assert app.session is not None
        app.conversation.append({"role": "user", "content": "q"})
        events = ChatEvents(app.chat, app.session.id)
        await events.step_started(0)
        reply = events.reply
        assert reply is not None
        await events.chunk({"message": {"role": "assistant", "content": "The first half"}})
        assert await events.failed("the server went away")
        assert reply.content == "The first half"
        assert reply.query_one(ThemedMarkdown).source.endswith("*[cut short: the server went away]*")
        assert app.conversation[-1] == {"role": "assistant", "content": "The first half"}
        panel = app.query_one(StatsPanel)
        shown = panel.shown
        assert shown is not None and (shown.model, shown.number, shown.ended, shown.stats) == ("tiny", 1, "error", None)
        assert shown.first_token_ns > 0

    drive_offline(offline_app(tmp_path, model="tiny"), steps)


def test_a_focused_answer_shows_its_own_figures(loam_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    with History(path) as history:
        session = history.create(SMOL)
        for n, reason in ((1, "length"), (2, "stop")):
            history.add_message(session.id, "user", f"q{n}")
            figures = {"eval_count": 10 * n, "eval_duration": 10**9, "total_duration": 2 * 10**9, "done_reason": reason}
            history.add_message(session.id, "assistant", f"a{n}", figures, model="tiny" if n == 1 else SMOL)

    async def steps(app: LoamApp) -> None:
        panel = app.query_one(StatsPanel)
        assert panel.border_title == f"{SMOL} · answer 2 · stop"
        app.query("MessageView.assistant").first().focus()
        await app.pilot.pause()  # type: ignore[attr-defined]
        assert panel.border_title == "tiny · answer 1 · length"
        assert panel.shown is not None and panel.shown.stats is not None and panel.shown.stats.eval_count == 10
        app.query_one(PromptInput).focus()
        await app.pilot.pause()  # type: ignore[attr-defined]
        assert panel.border_title == f"{SMOL} · answer 2 · stop"

    drive_offline(LoamApp(host="127.0.0.1:9", autostart=False, history_path=path, verbose=True), steps)


def test_a_chat_starts_again_the_server_it_started(
    smollm2_store: Path, tiny_gguf: Path, loam_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server the chat started dies; the next message finds it gone, starts it again, and is answered."""
    root = clone_store(smollm2_store, loam_home / "models")
    create(Store(root), Catalog({}, SMOL), ModelName.parse("tiny"), parse(f"FROM {tiny_gguf}\n"), folder=root)
    port = free_port()
    monkeypatch.setenv("LOAM_HOST", f"127.0.0.1:{port}")
    pid_file = loam_home / "state" / "loam" / f"serve-{port}.pid"

    def kill_server() -> None:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)

    async def steps(app: LoamApp) -> None:
        await until(app, lambda: app.server_state == "connected")
        first = int(pid_file.read_text())
        kill_server()
        await say(app, "hello")
        # The failed turn ends after the restart: Enter before then is refused as "still streaming".
        await until(app, lambda: app.server_state == "connected (restarted)" and not app.answering)
        assert int(pid_file.read_text()) != first, "a new server runs"
        assert app.query_one(PromptInput).text == "hello" and app.conversation == []
        await ask_and_wait(app, "hello")
        assert [m["role"] for m in app.conversation] == ["user", "assistant"]

    try:
        drive(LoamApp(model="tiny", history_path=tmp_path / "c.sqlite3"), steps)
    finally:
        kill_server()


def test_a_reopened_answer_that_never_ended_is_still_marked(loam_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    with History(path) as history:
        session = history.create(SMOL)
        history.add_message(session.id, "user", "q")
        history.add_message(session.id, "assistant", "Here:\n```python\nx = 1", None, model=SMOL)

    async def steps(app: LoamApp) -> None:
        await until(app, lambda: bool(app.query("MessageView.assistant")))
        view = list(app.query("MessageView.assistant").results(MessageView))[0]
        assert view.query_one(ThemedMarkdown).source == "Here:\n```python\nx = 1\n```\n\n*[stopped]*"
        assert view.content == "Here:\n```python\nx = 1"

    drive_offline(LoamApp(host="127.0.0.1:9", autostart=False, history_path=path), steps)
