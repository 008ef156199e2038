"""The chats screen: every saved chat session, to reopen or delete."""

from __future__ import annotations

import asyncio
import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from app.display import human_ago
from app.history import History, Session


def session_label(session: Session, now: float | None = None) -> str:
    """One line per chat: its title, model and when it was last used."""
    return f"{session.title}  ·  {session.model}  ·  {human_ago(session.updated, now or time.time())}"


class SessionsScreen(ModalScreen[int | None]):
    """Pick a chat to reopen (dismissed with its id), or delete one with d."""

    DEFAULT_CSS = """
    SessionsScreen { align: center middle; }
    SessionsScreen > Vertical {
        width: 90%; max-width: 110; height: 80%; border: thick $primary; background: $panel; padding: 0 1;
    }
    SessionsScreen .title { text-style: bold; color: $primary; margin-bottom: 1; }
    SessionsScreen OptionList { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "dismiss_none", "Close"),
        Binding("d", "delete", "Delete"),
    ]

    def __init__(self, history: History, current: int | None) -> None:
        super().__init__()
        self.history = history
        self.current = current
        self.sessions: list[Session] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Chats", classes="title")
            yield OptionList(id="sessions")
            yield Footer()

    async def on_mount(self) -> None:
        await self.reload()

    async def reload(self) -> None:
        self.sessions = await asyncio.to_thread(self.history.sessions)
        options = self.query_one(OptionList)
        options.clear_options()
        now = time.time()
        for s in self.sessions:
            marker = "● " if s.id == self.current else "  "
            options.add_option(Option(marker + session_label(s, now), id=str(s.id)))
        if not self.sessions:
            options.add_option(Option("No chats yet", disabled=True))
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(int(event.option.id))

    async def action_delete(self) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is None or not self.sessions:
            return
        option = options.get_option_at_index(options.highlighted)
        if not option.id or int(option.id) == self.current:
            self.notify("this chat is open; switch to another before deleting it", severity="warning")
            return
        await asyncio.to_thread(self.history.delete, int(option.id))
        await self.reload()

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
