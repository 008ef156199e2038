"""Tools in the chat: which are on in a chat, the question before each call, and the calls in the log.

A chat's tools (built-in ones and MCP servers from config.toml) are off until
`/tools on NAME`; the choice is kept with the chat. Before a call runs, a dialog
shows the tool and its arguments and asks: allow once, allow for this chat, or
deny. Each call and its result show in the chat as a collapsed block and are kept
in the history with the chat's messages.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Collapsible, Label, Static

from app import config
from app.errors import LoamError
from app.tools.builtin import BUILTINS, builtin_tools
from app.tools.calls import ToolCall
from app.tools.loop import Tool, Toolbox
from app.tools.mcp import McpError, McpManager
from app.tui.models_screen import panel_css

if TYPE_CHECKING:
    from app.tui.chat_screen import ChatScreen

#: Characters of arguments shown in a call block's title.
TITLE_ARGS = 60


def pretty(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, indent=2, ensure_ascii=False, sort_keys=True)


class ToolConfirmScreen(ModalScreen[str]):
    """Asks before a tool runs; dismisses "once", "chat", "deny", or "stop" (Esc: stop the answer)."""

    DEFAULT_CSS = (
        panel_css("ToolConfirmScreen", 80)
        + """
    ToolConfirmScreen #arguments { height: auto; max-height: 20; background: $surface; padding: 0 1; }
    """
    )
    BINDINGS = [
        Binding("o", "answer('once')", "Allow once", id="tool.once"),
        Binding("a", "answer('chat')", "Allow for this chat", id="tool.chat"),
        Binding("d", "answer('deny')", "Deny", id="tool.deny"),
        Binding("escape", "answer('stop')", "Stop the answer", id="tool.stop"),
    ]

    def __init__(self, call: ToolCall, source: str) -> None:
        super().__init__()
        self.call, self.source = call, source

    def compose(self) -> ComposeResult:
        where = "built into loam" if self.source == "loam" else f"from MCP server {self.source}"
        with Vertical(id="panel"):
            yield Label(Text(f"Run the tool {self.call.name} ({where})?"), classes="title")
            with VerticalScroll(id="arguments"):
                yield Static(pretty(self.call.arguments), markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Deny (d)", variant="error", id="deny")
                yield Button("Allow for this chat (a)", id="chat")
                yield Button("Allow once (o)", variant="primary", id="once")

    def on_mount(self) -> None:
        self.query_one("#once", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(str(event.button.id))

    def action_answer(self, choice: str) -> None:
        self.dismiss(choice)


class ToolCallView(Collapsible):
    """One call and its result in the chat, collapsed to a line until opened."""

    DEFAULT_CSS = """
    ToolCallView { margin: 0 1 1 1; border-left: thick $warning; background: $surface; }
    ToolCallView.error { border-left: thick $error; }
    ToolCallView .label { color: $text-muted; text-style: bold; }
    """

    def __init__(self, name: str, arguments: dict[str, Any], result: str, is_error: bool = False) -> None:
        self.tool_name, self.arguments, self.result = name, arguments, result
        shown = json.dumps(arguments, ensure_ascii=False)
        shown = shown if len(shown) <= TITLE_ARGS else shown[: TITLE_ARGS - 1] + "…"
        first = next((line for line in result.splitlines() if line.strip()), "")[:TITLE_ARGS]
        super().__init__(
            Static("arguments", classes="label"),
            Static(pretty(arguments), markup=False, classes="arguments"),
            Static("result", classes="label"),
            Static(result, markup=False, classes="result"),
            title=Content(f"tool {name} {shown} → {first}"),  # type: ignore[arg-type]  # literal: no markup
            classes="error" if is_error else "",
        )


class ChatTools:
    """The app's tools: the built-ins, the configured MCP servers (started when a chat first needs them),
    what each chat allowed for itself, and which models can take tools."""

    def __init__(self) -> None:
        self.error: str | None = None
        try:
            self.servers = config.mcp_servers()
            self.roots = config.read_roots()
        except LoamError as e:
            self.servers, self.roots, self.error = {}, [], str(e)
        self.manager: McpManager | None = None
        self.allowed: dict[int, set[str]] = {}
        self.capable: dict[str, bool] = {}
        self.noted: set[tuple[int, str]] = set()

    def names(self) -> list[str]:
        return [*BUILTINS, *self.servers]

    def describe(self, name: str) -> str:
        if name == "current_time":
            return "built-in: the local date and time"
        if name == "read_file":
            roots = ", ".join(str(r) for r in self.roots) or 'no folder allowed; set [tools] read_roots = ["~/notes"]'
            return f"built-in: read text files under {roots}"
        server = self.servers[name]
        return f"MCP server: {' '.join([server.command, *server.args]) if server.command else server.url}"

    def check(self, name: str) -> None:
        """LoamError when `name` is no tool or server this app knows, or cannot work as configured."""
        if name not in self.names():
            raise LoamError(f"no tool or MCP server named {name!r}; /tools lists them")
        if name == "read_file" and not self.roots:
            raise LoamError('read_file needs a folder to read: add [tools] read_roots = ["~/notes"] to config.toml')

    async def supports_tools(self, app: ChatScreen, model: str) -> bool:
        """Whether /api/show lists "tools" among the model's capabilities (asked once per model)."""
        if model not in self.capable:
            assert app.client is not None
            show = await app.client.show(model)
            self.capable[model] = "tools" in (show.get("capabilities") or [])
        return self.capable[model]

    async def toolbox(self, app: ChatScreen, session_id: int, model: str, enabled: tuple[str, ...]) -> Toolbox:
        """The tools to offer in this turn; nothing for a model without tools (said once per chat and model)."""
        enabled = tuple(name for name in enabled if name in self.names())
        if not enabled:
            return Toolbox()
        if not await self.supports_tools(app, model):
            if (session_id, model) not in self.noted:
                self.noted.add((session_id, model))
                await app.post_note(f"{model} does not support tools, so this chat's tools are not offered to it")
            return Toolbox()
        groups: list[list[Tool]] = [builtin_tools([n for n in enabled if n in BUILTINS], self.roots)]
        for name in (n for n in enabled if n in self.servers):
            if self.manager is None:
                self.manager = McpManager(self.servers)
            try:
                groups.append(await self.manager.tools(name))
            except McpError as e:
                await app.post_note(str(e), "error")
        box = Toolbox.of(groups)
        for note in box.notes:
            await app.post_note(note, "error")
        return box

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()


async def tools_command(app: ChatScreen, action: str, name: str) -> None:
    """/tools (list), /tools on NAME, /tools off NAME: which tools this chat offers the model."""
    tools = app.chat_tools
    if tools.error:
        raise LoamError(tools.error)
    _, session = app.require_session()
    enabled = [n for n in session.tools if n in tools.names()]
    if action == "":
        lines = [f"  {'[on] ' if n in enabled else '[off]'} {n:<14} {tools.describe(n)}" for n in tools.names()]
        await app.post_note("Tools of this chat (/tools on NAME, /tools off NAME):\n" + "\n".join(lines))
        return
    tools.check(name)
    if action == "on":
        enabled = [*enabled, name] if name not in enabled else enabled
    else:
        enabled = [n for n in enabled if n != name]
        tools.allowed.pop(session.id, None)  # turned on again later, its calls are asked about again
    await app.update_session(tools=enabled)
    await app.post_note(f"Tool {name} is {action} in this chat.")
