"""`loam chat`: the Textual app around the chat screen.

The app holds what outlives one chat: the theme and keymap from config.toml,
the chat history file, the server connection (found or started at start-up,
watched, started again when lost) and the chat tools. Everything about the open
chat is the ChatScreen's.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.screen import Screen
from textual.theme import Theme

from app import config
from app.ask import default_model
from app.async_client import AsyncClient
from app.client import ensure_server
from app.errors import LoamError
from app.history import History, Session
from app.tui import keys
from app.tui.chat import read_gap
from app.tui.chat_screen import ChatScreen
from app.tui.themes import DEFAULT_THEME, discover, save_theme, saved_theme
from app.tui.tools import ChatTools

#: How often the bar's server state is checked while no answer streams.
HEALTH_EVERY = 5.0


class LoamApp(App[None]):
    """The chat TUI: one ChatScreen over the history, the server and the config."""

    TITLE = "loam"
    BINDINGS = [b for b in keys.BINDINGS if b.action == "quit"]

    def __init__(
        self,
        model: str | None = None,
        verbose: bool = False,
        new: bool = False,
        host: str | None = None,
        autostart: bool = True,
        history_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.requested_model = model
        self.verbose = verbose
        self.new_session = new
        self.host = host
        self.autostart = autostart
        self.history_path = history_path
        self.client: AsyncClient | None = None
        self.history: History | None = None
        self.pygments_style = "monokai"
        self.loam_themes, self.theme_warnings = discover()
        self.user_config = config.load_config()
        self.server_state = "starting"
        self.chat_tools = ChatTools()
        self.keymap_in_use: dict[str, str] = {}
        self.chat = ChatScreen()

    # -- layout and start ----------------------------------------------------

    def on_mount(self) -> None:
        for loam_theme in self.loam_themes.values():
            self.register_theme(loam_theme.theme)
        wanted = str(self.user_config.get("theme") or DEFAULT_THEME)
        self.theme = wanted if wanted in self.available_themes else DEFAULT_THEME
        self._apply_pygments(self.current_theme)
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        keymap, warnings = keys.keymap_from_config(self.user_config)
        self.set_keymap(keymap)
        self.keymap_in_use = keymap
        for warning in self.theme_warnings + warnings:
            self.notify(warning, severity="warning", timeout=8)
        self.start()

    @work(exclusive=True, group="start")
    async def start(self) -> None:
        """Open the chat history, reopen or start a session, then find (or start) the server."""
        try:
            self.history = await asyncio.to_thread(History, self.history_path)
            session = await asyncio.to_thread(self._first_session)
        except LoamError as e:
            await self.chat.post_note(str(e), "error")
            return
        # What start-up made (Textual's widgets and styles, the imported modules) lives as long as the
        # chat: frozen, the garbage collector no longer walks it, which took 40-70 ms of CPU an answer.
        # Before the session's messages are mounted: those go when the chat is cleared or switched.
        gc.collect()
        gc.freeze()
        await self.chat.open_session(session)
        try:
            host = await asyncio.to_thread(ensure_server, self.host) if self.autostart else self.host
        except LoamError as e:
            self.server_state = "no server"
            self.chat.update_bar()
            await self.chat.post_note(str(e), "error")
            return
        client = AsyncClient(host, read_gap=read_gap())
        self.server_state = "connected" if await client.answers() else f"no server at {host}"
        self.client = client
        self.chat.update_bar()
        self.set_interval(HEALTH_EVERY, self.check_server)
        await self.chat.refresh_context()
        # The request models (pydantic, 0.17 s on 2 cores) load while the user types, not in the time
        # to the first message's first token.
        await asyncio.to_thread(importlib.import_module, "app.api")

    async def check_server(self) -> None:
        """Keep the bar true to the server: a lost one says so (and is started again on the next turn)."""
        if self.client is None or self.answering:
            return
        state = "connected" if await self.client.answers() else "server lost"
        if state != self.server_state:
            self.server_state = state
            self.chat.update_bar()

    async def restart_server(self) -> bool:
        """After a lost connection: start the server again where this chat may start one; whether it answers."""
        if self.client is None:
            return False
        if await self.client.answers():
            return True
        self.server_state = "server lost"
        self.chat.update_bar()
        if not self.autostart:
            return False
        try:
            await asyncio.to_thread(ensure_server, self.host)
        except LoamError as e:
            await self.chat.post_note(str(e), "error")
            return False
        self.server_state = "connected (restarted)"
        self.chat.update_bar()
        return True

    def _first_session(self) -> Session:
        """The latest chat, unless a new one was asked for or another model was named."""
        assert self.history is not None
        latest = None if self.new_session else self.history.latest()
        if latest is not None and self.requested_model in (None, latest.model):
            return latest
        return self.history.create(self.requested_model or default_model())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for binding in keys.BINDINGS:
            if binding.action not in ("quit",):
                action = getattr(self.chat, f"action_{binding.action}")
                key = keys.key_names(self.keymap_in_use.get(binding.id or "", binding.key))
                yield SystemCommand(binding.description, f"{keys.PURPOSE[binding.id or '']} ({key})", action)
        yield SystemCommand("Delete model", "Remove the current model from the store", self.chat.action_delete_model)

    # -- themes ---------------------------------------------------------------

    def _apply_pygments(self, theme: Theme) -> None:
        loam_theme = self.loam_themes.get(theme.name)
        self.pygments_style = loam_theme.pygments_style if loam_theme else ("monokai" if theme.dark else "default")

    def _theme_changed(self, theme: Theme) -> None:
        self._apply_pygments(theme)
        if theme.name != saved_theme_name(self.user_config):
            self.user_config["theme"] = theme.name
            self.run_worker(lambda: self._save_theme(theme.name), thread=True, group="config")

    def _save_theme(self, name: str) -> None:
        try:
            save_theme(name)
        except (OSError, LoamError) as e:
            self.call_from_thread(self.notify, f"the theme was not saved: {e}", severity="error")

    async def on_unmount(self) -> None:
        gc.unfreeze()  # a process that goes on (a test run) collects what the chat left behind
        await self.chat_tools.close()
        if self.client is not None:
            await self.client.aclose()
        if self.history is not None:
            self.history.close()

    def get_default_screen(self) -> Screen[Any]:
        return self.chat

    # -- the open chat, for whoever drives the app (tests, benchmarks) --------

    @property
    def session(self) -> Session | None:
        return self.chat.session

    @property
    def model(self) -> str:
        return self.chat.model

    @property
    def conversation(self) -> list[dict[str, Any]]:
        return self.chat.conversation

    @property
    def answering(self) -> bool:
        return self.chat.answering

    async def update_session(self, **fields: Any) -> None:
        await self.chat.update_session(**fields)


def saved_theme_name(user_config: dict[str, Any]) -> str:
    return str(user_config.get("theme") or DEFAULT_THEME)


def run_chat(model: str | None = None, verbose: bool = False, new: bool = False) -> int:
    """`loam chat` and `loam run MODEL` without a prompt."""
    saved_theme()  # a broken config.toml is a one-line error before the screen changes
    LoamApp(model=model, verbose=verbose, new=new).run()
    return 0
