"""Tools in the chat TUI, driven by Textual's Pilot against a real `loam serve` with smollm2:135m-tools.

The tiny model does not call a tool by itself, so these chats set the documented tool_choice
parameter to force the first call of each answer (the loop lets the model answer after it).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import date
from pathlib import Path

import pytest

from app import config
from app.history import MIGRATIONS, History
from app.tools.loop import DENIED
from app.tui.app import LoamApp
from app.tui.chat import MessageView, PromptInput
from app.tui.tools import ToolCallView, ToolConfirmScreen
from tests.runner_process import REPO
from tests.server_process import ServerProcess, clone_store
from tests.test_mcp import fixture_children

MODEL = "smollm2:135m-tools"
PLAIN = "smollm2:135m"
FIXTURE = str(REPO / "tests" / "mcp_server_fixture.py")
FORCED = ["/set parameter temperature 0", "/set parameter num_predict 32", "/set parameter tool_choice required"]


@pytest.fixture(scope="module")
def server(tools_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = clone_store(tools_store, tmp_path_factory.mktemp("tui-tools") / "models")
    with ServerProcess(root, tmp_path_factory.mktemp("tui-tools-home")) as s:
        yield s


def drive(app: LoamApp, steps: Callable[[LoamApp], Awaitable[None]]) -> None:
    async def inner() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            app.pilot = pilot  # type: ignore[attr-defined]
            await until(app, lambda: app.client is not None and app.session is not None)
            await steps(app)

    asyncio.run(inner())


async def until(app: LoamApp, condition: Callable[[], bool], polls: int = 2400) -> None:
    """Wait (a hang guard, not a time limit on speed) until `condition` holds."""
    for _ in range(polls):
        if condition():
            return
        await app.pilot.pause(0.05)  # type: ignore[attr-defined]
    notes = [v.content for v in app.query("MessageView.error").results(MessageView)]
    raise AssertionError(f"the app never reached the expected state; errors shown: {notes}")


async def say(app: LoamApp, text: str) -> None:
    prompt = app.query_one(PromptInput)
    prompt.focus()
    prompt.text = text
    await app.pilot.press("enter")  # type: ignore[attr-defined]


async def setup(app: LoamApp, lines: list[str]) -> None:
    for line in lines:
        await say(app, line)
    await until(app, lambda: app.session is not None and "tool_choice" in app.session.options)


async def ask_tool(app: LoamApp, text: str) -> ToolConfirmScreen:
    """Send `text` and wait for the question before the call."""
    await say(app, text)
    # pushed is not yet composed: wait for its widgets, so keys and queries find them
    await until(app, lambda: isinstance(app.screen, ToolConfirmScreen) and bool(app.screen.query("#once")))
    assert isinstance(app.screen, ToolConfirmScreen)
    return app.screen


def new_app(server: ServerProcess, tmp_path: Path, **kw: object) -> LoamApp:
    return LoamApp(host=server.host, history_path=tmp_path / "chats.sqlite3", **kw)  # type: ignore[arg-type]


def stored(tmp_path: Path) -> list[tuple[str, str, str | None, str | None]]:
    with History(tmp_path / "chats.sqlite3") as history:
        session = history.latest()
        assert session is not None
        return [
            (m.role, m.content, m.tool_name, m.tool_calls[0]["function"]["name"] if m.tool_calls else None)
            for m in history.messages(session.id)
        ]


def test_an_allowed_call_runs_shows_survives_a_restart_and_is_exported(
    server: ServerProcess, loam_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the export is written to the working folder
    year = str(date.today().year)

    async def steps(app: LoamApp) -> None:
        await say(app, "/tools on current_time")
        await setup(app, FORCED)
        assert app.session is not None and app.session.tools == ("current_time",)
        screen = await ask_tool(app, "What time is it?")
        assert screen.call.name == "current_time" and screen.call.arguments == {}
        assert "current_time" in str(screen.query_one(".title").render())
        await app.pilot.press("o")  # type: ignore[attr-defined]
        await until(app, lambda: not app.answering)
        (block,) = app.query(ToolCallView).results(ToolCallView)
        assert block.tool_name == "current_time" and year in block.result and block.collapsed
        assert [m["role"] for m in app.conversation][:3] == ["user", "assistant", "tool"]
        await app.pilot.press("ctrl+s")  # type: ignore[attr-defined]
        await until(app, lambda: any(tmp_path.glob("loam-chat-*.md")))

    drive(new_app(server, tmp_path, model=MODEL), steps)
    rows = stored(tmp_path)
    assert rows[0][0] == "user" and rows[1][0] == "assistant" and rows[1][3] == "current_time"
    assert rows[2][0] == "tool" and rows[2][2] == "current_time" and year in rows[2][1]
    (export,) = tmp_path.glob("loam-chat-*.md")
    text = export.read_text()
    assert "### Tool call: `current_time`" in text and "### Tool result: `current_time`" in text
    assert rows[2][1].strip() in text

    async def reopened(app: LoamApp) -> None:
        (block,) = app.query(ToolCallView).results(ToolCallView)
        assert block.tool_name == "current_time" and block.result == rows[2][1]
        assert app.conversation[1]["tool_calls"][0]["function"]["name"] == "current_time"
        assert app.conversation[2] == {"role": "tool", "content": rows[2][1], "tool_name": "current_time"}
        assert app.session is not None and app.session.tools == ("current_time",)

    drive(new_app(server, tmp_path), reopened)


def test_a_denied_call_lets_the_model_go_on(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        await say(app, "/tools on current_time")
        await setup(app, FORCED)
        await ask_tool(app, "What time is it?")
        await app.pilot.press("d")  # type: ignore[attr-defined]
        await until(app, lambda: not app.answering)
        (block,) = app.query(ToolCallView).results(ToolCallView)
        assert block.result == DENIED.format(name="current_time")

    drive(new_app(server, tmp_path, model=MODEL), steps)
    rows = stored(tmp_path)
    assert rows[2] == ("tool", DENIED.format(name="current_time"), "current_time", None)
    assert len(rows) >= 4 and rows[3][0] == "assistant", "the model was asked again after the denial"


def test_escape_at_the_question_ends_the_tool_loop(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        await say(app, "/tools on current_time")
        await setup(app, FORCED)
        await ask_tool(app, "What time is it?")
        await app.pilot.press("escape")  # type: ignore[attr-defined]
        await until(app, lambda: not app.answering)
        assert not isinstance(app.screen, ToolConfirmScreen)
        assert not app.query(ToolCallView)
        # The chat goes on: the next message is answered (and asked about) as usual.
        await ask_tool(app, "And the date?")
        await app.pilot.press("escape")  # type: ignore[attr-defined]
        await until(app, lambda: not app.answering)

    drive(new_app(server, tmp_path, model=MODEL), steps)
    roles = [row[0] for row in stored(tmp_path)]
    assert "tool" not in roles and roles[0] == "user"


def test_allowed_for_the_chat_is_not_asked_again(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        await say(app, "/tools on current_time")
        await setup(app, FORCED)
        await ask_tool(app, "What time is it?")
        await app.pilot.press("a")  # type: ignore[attr-defined]
        await until(app, lambda: not app.answering)
        await say(app, "And now?")
        await until(app, lambda: len(app.query(ToolCallView)) == 2 and not app.answering)
        assert app.session is not None and app.chat_tools.allowed[app.session.id] == {"current_time"}

    drive(new_app(server, tmp_path, model=MODEL), steps)
    assert [row[0] for row in stored(tmp_path)].count("tool") == 2


def test_an_mcp_server_from_config_in_the_chat(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    path = config.paths().config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[mcp.calc]\ncommand = "{sys.executable}"\nargs = ["{FIXTURE}"]\n')

    async def steps(app: LoamApp) -> None:
        await say(app, "/tools on calc")
        lines = [*FORCED[:1], "/set parameter num_predict 64", "/set parameter tool_choice add"]
        await setup(app, lines)
        screen = await ask_tool(app, "What is 2 plus 3?")
        assert screen.source == "calc" and screen.call.name == "add"
        a, b = int(screen.call.arguments["a"]), int(screen.call.arguments["b"])
        await app.pilot.press("o")  # type: ignore[attr-defined]
        await until(app, lambda: not app.answering)
        (block,) = app.query(ToolCallView).results(ToolCallView)
        assert block.tool_name == "add" and block.result == str(a + b)

    drive(new_app(server, tmp_path, model=MODEL), steps)
    assert fixture_children() == [], "the chat app stops the servers it started"


def test_a_model_without_tools_is_told_once(server: ServerProcess, loam_home: Path, tmp_path: Path) -> None:
    async def steps(app: LoamApp) -> None:
        await say(app, "/tools on current_time")
        await say(app, "/set parameter num_predict 4")
        await until(app, lambda: app.session is not None and app.session.options.get("num_predict") == 4)
        for count, text in enumerate(("Hi", "Hello"), start=1):
            await say(app, text)
            await until(app, lambda n=count: len(app.query("MessageView.assistant")) >= n and not app.answering)
        notes = [v.content for v in app.query("MessageView.note").results(MessageView)]
        assert sum("does not support tools" in n for n in notes) == 1
        assert not app.query(ToolCallView)

    drive(new_app(server, tmp_path, model=PLAIN), steps)


def test_tools_command_lists_toggles_and_keeps_the_choice(
    server: ServerProcess, loam_home: Path, tmp_path: Path
) -> None:
    notes_dir = tmp_path / "notes"
    notes_dir.mkdir()

    def notes(app: LoamApp) -> list[str]:
        return [v.content for v in app.query("MessageView.note, MessageView.error").results(MessageView)]

    async def steps(app: LoamApp) -> None:
        await say(app, "/tools")
        await until(app, lambda: any("Tools of this chat" in n for n in notes(app)))
        listing = next(n for n in notes(app) if "Tools of this chat" in n)
        assert "[off] current_time" in listing and "[off] read_file" in listing and "no folder allowed" in listing
        await say(app, "/tools on read_file")
        await until(app, lambda: any("read_roots" in n and "needs a folder" in n for n in notes(app)))
        await say(app, "/tools on clock")
        await until(app, lambda: any("no tool or MCP server named 'clock'" in n for n in notes(app)))
        await say(app, "/tools on current_time")
        await until(app, lambda: app.session is not None and app.session.tools == ("current_time",))

    drive(new_app(server, tmp_path, model=MODEL), steps)
    path = config.paths().config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[tools]\nread_roots = ["{notes_dir}"]\n')

    async def again(app: LoamApp) -> None:
        assert app.session is not None and app.session.tools == ("current_time",)
        await say(app, "/tools on read_file")
        await until(app, lambda: app.session is not None and app.session.tools == ("current_time", "read_file"))
        await say(app, "/tools off current_time")
        await until(app, lambda: app.session is not None and app.session.tools == ("read_file",))
        await say(app, "/tools")
        await until(app, lambda: any(str(notes_dir) in n for n in notes(app)))

    drive(new_app(server, tmp_path), again)


def test_history_migration_keeps_a_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO sessions (title, model, created, updated) VALUES ('old', 'm', 1, 1)")
    db.execute("INSERT INTO messages (session_id, role, content, stats, created) VALUES (1, 'user', 'hi', NULL, 1)")
    db.execute(
        "INSERT INTO messages (session_id, role, content, stats, created) VALUES (1, 'assistant', 'hello', ?, 2)",
        ('{"eval_count": 3}',),
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with History(path) as history:
        assert history.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        (session,) = history.sessions()
        assert session.title == "old" and session.tools == ()
        old = history.messages(session.id)
        assert [(m.role, m.content, m.stats, m.tool_calls) for m in old] == [
            ("user", "hi", None, None),
            ("assistant", "hello", {"eval_count": 3}, None),
        ]
        call = [{"function": {"name": "current_time", "arguments": {}}}]
        history.add_message(session.id, "assistant", "", tool_calls=call)
        history.add_message(session.id, "tool", "noon", tool_name="current_time")
        history.update(session.id, tools=["current_time"])
        copy = history.copy(session.id, "copy")
        assert [m.chat_message() for m in history.messages(copy.id)][2:] == [
            {"role": "assistant", "content": "", "tool_calls": call},
            {"role": "tool", "content": "noon", "tool_name": "current_time"},
        ]
        assert copy.tools == ("current_time",)
