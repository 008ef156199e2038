"""What each slash command does to the chat screen: parameters, system prompt, model, session."""

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
    from app.tui.chat_screen import ChatScreen


async def execute(chat: ChatScreen, command: slash.Command) -> None:
    """Carry out one parsed slash command; LoamError for one that cannot be."""
    await _execute(command, chat)


@singledispatch
async def _execute(command: object, chat: ChatScreen) -> None:  # pragma: no cover - every command is registered
    raise LoamError(f"{command!r} is not a command the chat knows")


@_execute.register(slash.SetParameter)
async def _(command: slash.SetParameter, chat: ChatScreen) -> None:
    _, session = chat.require_session()
    await chat.update_session(options={**session.options, command.name: command.value})
    await chat.post_note(f"Set parameter '{command.name}' to '{command.value}'")


@_execute.register(slash.UnsetParameter)
async def _(command: slash.UnsetParameter, chat: ChatScreen) -> None:
    _, session = chat.require_session()
    options = {k: v for k, v in session.options.items() if k != command.name}
    await chat.update_session(options=options)
    await chat.post_note(f"Unset parameter '{command.name}'")


@_execute.register(slash.SetSystem)
async def _(command: slash.SetSystem, chat: ChatScreen) -> None:
    await chat.update_session(system=command.text)
    await chat.post_note("Set system message." if command.text else "Cleared system message.")


@_execute.register(slash.SetVerbose)
async def _(command: slash.SetVerbose, chat: ChatScreen) -> None:
    chat.query_one(StatsPanel).display = command.enabled
    await chat.post_note("Set 'verbose' mode." if command.enabled else "Set 'quiet' mode.")


@_execute.register(slash.Show)
async def _(command: slash.Show, chat: ChatScreen) -> None:
    if chat.client is None:
        raise LoamError("the server is not ready yet")
    options = dict(chat.session.options) if chat.session else {}
    chat.push_screen(InfoScreen(chat.client, chat.model, section=command.what, options=options))


@_execute.register(slash.Load)
async def _(command: slash.Load, chat: ChatScreen) -> None:
    if chat.client is None:
        raise LoamError("the server is not ready yet")
    try:
        await chat.client.show(command.model)
    except ServerError as e:
        if e.status == 404:
            raise LoamError(f"model '{command.model}' is not in the store; pull it with F5 first") from None
        raise
    await chat.update_session(model=command.model)
    await chat.post_note(f"Loading model '{command.model}'")


@_execute.register(slash.Save)
async def _(command: slash.Save, chat: ChatScreen) -> None:
    """Ollama's /save: a new model with this chat's system prompt, parameters and messages."""
    if chat.client is None or chat.session is None:
        raise LoamError("the server is not ready yet")
    body = {
        "model": command.name,
        "from": chat.model,
        "system": chat.session.system or None,
        "parameters": dict(chat.session.options),
        "messages": [  # a model keeps the words of the chat; tool calls and results stay in the chat
            {"role": m["role"], "content": m["content"]}
            for m in chat.conversation
            if m["role"] != "tool" and m["content"]
        ],
    }
    async for _ in chat.client.create({k: v for k, v in body.items() if v not in (None, {})}):
        pass
    await chat.post_note(f"Created new model '{command.name}'")


@_execute.register(slash.Clear)
async def _(command: slash.Clear, chat: ChatScreen) -> None:
    history, session = chat.require_session()
    await chat.stop_answer()
    await asyncio.to_thread(history.clear, session.id)
    chat.conversation.clear()
    chat.chat_tools.allowed.pop(session.id, None)
    await chat.query_one(ChatLog).remove_children()
    chat.query_one(StatsPanel).reset()
    await chat.post_note("Cleared session context")


@_execute.register(slash.Tools)
async def _(command: slash.Tools, chat: ChatScreen) -> None:
    from app.tui.tools import tools_command

    await tools_command(chat, command.action, command.name)


@_execute.register(slash.Bye)
async def _(command: slash.Bye, chat: ChatScreen) -> None:
    chat.app.exit()


@_execute.register(slash.Help)
async def _(command: slash.Help, chat: ChatScreen) -> None:
    shortcuts = keys.key_help(chat.keymap_in_use)
    if command.topic == "shortcuts":
        text, rows = "Keys:", shortcuts
    else:
        text = {"set": slash.SET_HELP, "show": slash.SHOW_HELP}.get(command.topic, slash.HELP)
        rows = [] if command.topic else shortcuts
    plain = text + "".join(f"\n  {k}  {v}" for k, v in rows)
    await chat.post_note(plain, body=help_body(text, rows))


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
