"""What each slash command does to the chat app: parameters, system prompt, model, session."""

from __future__ import annotations

import asyncio
import re
from functools import singledispatch
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from app.client import ServerError
from app.errors import LoamError
from app.tui import keys, slash
from app.tui.chat import ChatLog
from app.tui.screens import InfoScreen
from app.tui.stats_panel import StatsPanel

if TYPE_CHECKING:
    from app.tui.app import LoamApp


async def execute(app: LoamApp, command: slash.Command) -> None:
    """Carry out one parsed slash command; LoamError for one that cannot be."""
    await _execute(command, app)


@singledispatch
async def _execute(command: object, app: LoamApp) -> None:  # pragma: no cover - every command is registered
    raise LoamError(f"{command!r} is not a command the chat knows")


@_execute.register(slash.SetParameter)
async def _(command: slash.SetParameter, app: LoamApp) -> None:
    _, session = app.require_session()
    await app.update_session(options={**session.options, command.name: command.value})
    await app.post_note(f"Set parameter '{command.name}' to '{command.value}'")


@_execute.register(slash.UnsetParameter)
async def _(command: slash.UnsetParameter, app: LoamApp) -> None:
    _, session = app.require_session()
    options = {k: v for k, v in session.options.items() if k != command.name}
    await app.update_session(options=options)
    await app.post_note(f"Unset parameter '{command.name}'")


@_execute.register(slash.SetSystem)
async def _(command: slash.SetSystem, app: LoamApp) -> None:
    await app.update_session(system=command.text)
    await app.post_note("Set system message." if command.text else "Cleared system message.")


@_execute.register(slash.SetVerbose)
async def _(command: slash.SetVerbose, app: LoamApp) -> None:
    app.query_one(StatsPanel).display = command.enabled
    await app.post_note("Set 'verbose' mode." if command.enabled else "Set 'quiet' mode.")


@_execute.register(slash.Show)
async def _(command: slash.Show, app: LoamApp) -> None:
    if app.client is None:
        raise LoamError("the server is not ready yet")
    options = dict(app.session.options) if app.session else {}
    app.push_screen(InfoScreen(app.client, app.model, section=command.what, options=options))


@_execute.register(slash.Load)
async def _(command: slash.Load, app: LoamApp) -> None:
    if app.client is None:
        raise LoamError("the server is not ready yet")
    try:
        await app.client.show(command.model)
    except ServerError as e:
        if e.status == 404:
            raise LoamError(f"model '{command.model}' is not in the store; pull it with F5 first") from None
        raise
    await app.update_session(model=command.model)
    await app.post_note(f"Loading model '{command.model}'")


@_execute.register(slash.Save)
async def _(command: slash.Save, app: LoamApp) -> None:
    """Ollama's /save: a new model with this chat's system prompt, parameters and messages."""
    if app.client is None or app.session is None:
        raise LoamError("the server is not ready yet")
    body = {
        "model": command.name,
        "from": app.model,
        "system": app.session.system or None,
        "parameters": dict(app.session.options),
        "messages": [  # a model keeps the words of the chat; tool calls and results stay in the chat
            {"role": m["role"], "content": m["content"]}
            for m in app.conversation
            if m["role"] != "tool" and m["content"]
        ],
    }
    async for _ in app.client.create({k: v for k, v in body.items() if v not in (None, {})}):
        pass
    await app.post_note(f"Created new model '{command.name}'")


@_execute.register(slash.Clear)
async def _(command: slash.Clear, app: LoamApp) -> None:
    history, session = app.require_session()
    await app.stop_answer()
    await asyncio.to_thread(history.clear, session.id)
    app.conversation.clear()
    app.chat_tools.allowed.pop(session.id, None)
    await app.query_one(ChatLog).remove_children()
    app.query_one(StatsPanel).reset()
    await app.post_note("Cleared session context")


@_execute.register(slash.Tools)
async def _(command: slash.Tools, app: LoamApp) -> None:
    from app.tui.tools import tools_command

    await tools_command(app, command.action, command.name)


@_execute.register(slash.Bye)
async def _(command: slash.Bye, app: LoamApp) -> None:
    app.exit()


@_execute.register(slash.Help)
async def _(command: slash.Help, app: LoamApp) -> None:
    shortcuts = keys.key_help(app.keymap_in_use)
    if command.topic == "shortcuts":
        text, rows = "Keys:", shortcuts
    else:
        text = {"set": slash.SET_HELP, "show": slash.SHOW_HELP}.get(command.topic, slash.HELP)
        rows = [] if command.topic else shortcuts
    plain = text + "".join(f"\n  {k}  {v}" for k, v in rows)
    await app.post_note(plain, body=help_body(text, rows))


def help_body(text: str, keys_rows: list[tuple[str, str]]) -> Group:
    """Help text as tables whose second column wraps under itself, at whatever width the chat has.

    Lines of `text` indented by two spaces are "NAME   what it does" rows; other lines stay as they are.
    """
    parts: list[Any] = []
    table: Table | None = None
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip(), maxsplit=1) if line.startswith("  ") else None
        if cells and len(cells) == 2:
            if table is None:
                table = _table()
                parts.append(Padding(table, (0, 0, 0, 2)))
            table.add_row(*cells)
            continue
        table = None
        parts.append(Text(line))
    if keys_rows:
        parts.append(Text("\nKeys:"))
        table = _table()
        for row in keys_rows:
            table.add_row(*row)
        parts.append(Padding(table, (0, 0, 0, 2)))
    return Group(*parts)


def _table() -> Table:
    table = Table.grid(padding=(0, 2), pad_edge=False)
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    return table
