"""The chat screen: one session at a time, its conversation, the answer streaming into it, and its keys.

The screen never waits on the network or the disk on its event loop: server
calls are async (httpx), and the chat history is read and written in worker
threads. A server or model error becomes a message in the chat. The slash
commands (app/tui/commands.py) and the turn being streamed (app/tui/turn.py)
act through this screen's methods.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from textual import events, on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import WorkerCancelled, WorkerFailed

from app import config
from app.ask import default_model
from app.async_client import AsyncClient
from app.client import ServerError
from app.errors import LoamError
from app.history import History, Message, Session, export_markdown, pending_calls
from app.stats import Stats, verbose_lines
from app.tools.calls import ToolCall
from app.tools.loop import Decision, StopTurn, Toolbox, run_turn
from app.tui import keys, slash
from app.tui.chat import ChatLog, MessageView, PromptInput, code_blocks
from app.tui.screens import ConfirmScreen, InfoScreen, ModelPicker, PullScreen, SettingsScreen, parameter_defaults
from app.tui.sessions import SessionsScreen
from app.tui.stats_panel import Answer, Context, StatsPanel
from app.tui.tools import ChatTools, ToolCallView, ToolConfirmScreen
from app.tui.turn import ChatEvents

if TYPE_CHECKING:
    from app.tui.app import LoamApp

#: Below this many columns the stats panel keeps only the answer's figures.
NARROW = 100


class ChatScreen(Screen[None]):
    """The chat log, the prompt and the stats panel, over the open session."""

    BINDINGS = [b for b in keys.BINDINGS if b.action != "quit"]
    DEFAULT_CSS = """
    ChatScreen #bar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    ChatScreen #main { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self.model = ""
        self.conversation: list[dict[str, Any]] = []  # the open session's messages, as /api/chat takes them
        self.answering = False
        self.turn_tools = Toolbox()

    @property
    def loam(self) -> LoamApp:
        return self.app  # type: ignore[return-value]

    @property
    def client(self) -> AsyncClient | None:
        return self.loam.client

    @property
    def history(self) -> History | None:
        return self.loam.history

    @property
    def chat_tools(self) -> ChatTools:
        return self.loam.chat_tools

    @property
    def keymap_in_use(self) -> dict[str, str]:
        return self.loam.keymap_in_use

    def on_mount(self) -> None:
        self.query_one(StatsPanel).display = self.loam.verbose
        self.query_one(PromptInput).focus()

    def on_resize(self) -> None:
        self.query_one(StatsPanel).set_narrow(self.size.width < NARROW)

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """With an answer focused the panel shows its figures; elsewhere, the latest answer's."""
        panel = self.query_one(StatsPanel)
        view = event.widget
        if isinstance(view, MessageView) and view.role == "assistant" and view.stats:
            answers = list(self.query_one(ChatLog).query("MessageView.assistant").results(MessageView))
            number = answers.index(view) + 1 if view in answers else 0
            ended = str(view.stats.get("done_reason") or "stop")
            panel.show(Answer(view.author, number, ended, Stats.from_response(view.stats)))
        elif panel.shown is not panel.last and not self.answering:
            panel.show(panel.last)

    def compose(self) -> ComposeResult:
        yield Static("loam", id="bar", markup=False)
        with Horizontal(id="main"):
            yield ChatLog(id="log")
            yield StatsPanel(id="stats")
        yield PromptInput(id="prompt", placeholder="Message (Enter sends, /help for commands)")
        yield Footer(compact=True, show_command_palette=False)  # every key fits 120 columns; Ctrl+P is in /help

    async def refresh_context(self) -> None:
        """The panel's options in effect, context size and placement, from the chat and /api/ps."""
        if self.client is None or self.session is None:
            return
        context = Context(options=dict(self.session.options))
        context.num_ctx = int(self.session.options.get("num_ctx") or 0)
        context.num_predict = int(self.session.options.get("num_predict") or -1)
        try:
            running = await self.client.ps()
        except (LoamError, httpx.HTTPError):
            running = []
        for entry in running:
            if entry.get("name") == self.model or entry.get("model") == self.model:
                context.num_ctx = int(entry.get("context_length") or context.num_ctx)
                size, vram = int(entry.get("size") or 0), int(entry.get("size_vram") or 0)
                context.placement = placement(size, vram)
        self.query_one(StatsPanel).set_context(context)

    async def model_loaded(self) -> bool:
        try:
            running = await self.client.ps() if self.client else []
        except (LoamError, httpx.HTTPError):
            return False
        return any(self.model in (entry.get("name"), entry.get("model")) for entry in running)

    async def open_session(self, session: Session) -> None:
        """Show a session's messages and make it the one new messages go to."""
        assert self.history is not None
        messages = await asyncio.to_thread(self.history.messages, session.id)
        self.session, self.model = session, session.model
        self.conversation = [m.chat_message() for m in messages]
        log = self.query_one(ChatLog)
        await log.remove_children()
        views = self._views(messages)
        if views:
            await log.mount_all(views)
        else:
            await log.mount(Static("Say something. /help lists commands; Ctrl+P opens the palette.", classes="empty"))
        log.scroll_end(animate=False)
        answered = [m for m in messages if m.role == "assistant" and m.content]
        last = None
        if answered:
            m = answered[-1]
            ended = str(m.stats.get("done_reason") or "stop") if m.stats else "cancelled"
            last = Answer(m.model or session.model, len(answered), ended, Stats.from_response(m.stats or {}))
            last = last if m.stats else Answer(last.model, last.number, ended)
        self.query_one(StatsPanel).reset(last, [Stats.from_response(m.stats).eval_rate for m in answered if m.stats])
        prompts = await asyncio.to_thread(self._recent_prompts)
        prompt = self.query_one(PromptInput)
        prompt.remember(prompts)
        prompt.focus()  # typing always lands in the input, whatever had focus in the chat before
        self.update_bar()
        await self.refresh_context()

    def _recent_prompts(self) -> list[str]:
        assert self.history is not None
        out: list[str] = []
        for session in reversed(self.history.sessions()[:20]):
            out += [m.content for m in self.history.messages(session.id) if m.role == "user"]
        return out[-200:]

    def message_view(
        self, role: str, content: str, stats: dict[str, Any] | None = None, model: str | None = None
    ) -> MessageView:
        """A message's widget; an answer is signed by the model that wrote it (else the chat's)."""
        author = {"user": "You", "assistant": model or self.model, "system": "System"}.get(role, role)
        return MessageView(role, author, content, stats)

    def _views(self, messages: list[Message]) -> list[MessageView | ToolCallView]:
        """A stored chat's widgets: its messages, and a block for each tool call with its result."""
        calls = {id(result): call for result, call in pending_calls(messages)}
        views: list[MessageView | ToolCallView] = []
        for m in messages:
            if m.role == "tool":
                call = calls.get(id(m)) or {}
                arguments = (call.get("function") or {}).get("arguments") or {}
                views.append(ToolCallView(m.tool_name or "tool", arguments, m.content, m.content.startswith("Error:")))
            elif m.content or not m.tool_calls:
                view = self.message_view(m.role, m.content, m.stats, m.model)
                view.cut_short = m.role == "assistant" and not m.stats and not m.tool_calls  # stopped or failed
                views.append(view)
        return views

    def update_bar(self) -> None:
        if not self.app.is_running:
            return
        title = self.session.title if self.session else ""
        self.query_one("#bar", Static).update(f"loam · {self.model or '…'} · {title}    {self.app.server_state}")

    async def post_note(self, text: str, kind: str = "note", body: Any = None) -> MessageView:
        """A line from loam itself in the chat: an error, help, or model info. Never stored.

        `body`: a Rich renderable shown instead of `text` (help tables that wrap at any width)."""
        view = MessageView(kind, "loam" if kind == "note" else "error", text, body=body)
        log = self.query_one(ChatLog)
        await log.mount(view)
        log.scroll_end(animate=False)
        return view

    @on(PromptInput.Submitted)
    async def submitted(self, event: PromptInput.Submitted) -> None:
        try:
            command = slash.parse(event.text)
        except slash.SlashError as e:
            await self.post_note(str(e), "error")
            return
        if command is not None:
            await self.run_command(command)
        else:
            self.send(slash.unescape(event.text))

    def send(self, text: str) -> None:
        if self.answering:
            self.notify("an answer is still streaming; Esc stops it", severity="warning")
            return
        if self.client is None or self.session is None:
            self.notify("the server is not ready yet", severity="warning")
            return
        self.answering = True
        self.answer(text)

    @work(exclusive=True, group="answer")
    async def answer(self, text: str) -> None:
        """Stream one answer into the chat, then store both messages with the answer's figures."""
        prompt = self.query_one(PromptInput)
        try:
            prompt.cursor_blink = False  # a blink is a frame, and frames take CPU from the model while it answers
            await self._answer(text)
        finally:
            self.answering = False
            prompt.cursor_blink = True

    async def _answer(self, text: str) -> None:
        history, session = self.require_session()
        log = self.query_one(ChatLog)
        for empty in log.query(".empty"):
            await empty.remove()
        await log.mount(self.message_view("user", text))
        self.conversation.append({"role": "user", "content": text})
        events = ChatEvents(self, session.id, loading=not await self.model_loaded())
        try:
            await asyncio.to_thread(history.add_message, session.id, "user", text)
            self.session = await asyncio.to_thread(history.get, session.id)  # the first message titles it
            self.update_bar()
            try:
                await self._turn(events)
            except ServerError as e:
                if e.status != 404 or events.stored:
                    raise
                await events.failed()
                await self._pull_inline(self.model)
                await self._turn(events)
        except asyncio.CancelledError:
            await events.stopped()
            raise
        except StopTurn:
            await events.stopped()
        except (LoamError, httpx.HTTPError, sqlite3.Error) as e:
            reason = str(e) or type(e).__name__
            lost = self.client is None or not await self.client.answers()  # however the failure showed
            if not await events.failed("the server went away" if lost else "error"):
                await self._unsend(history, session, text)
            await self.post_note(reason, "error")
            if lost and await self.app.restart_server():
                await self.post_note("the server is back; Ctrl+R asks again")

    async def _unsend(self, history: History, session: Session, text: str) -> None:
        """A turn that failed before any answer: the message leaves the chat and goes back to the input,
        so the next request does not carry two user turns in a row."""
        if self.session is None or self.session.id != session.id:
            return
        while self.conversation and self.conversation[-1]["role"] != "user":
            self.conversation.pop()  # tool results of a turn whose next reply never came
        if self.conversation:
            self.conversation.pop()
        await asyncio.to_thread(history.truncate, session.id, len(self.conversation))
        users = list(self.query_one(ChatLog).query("MessageView.user").results(MessageView))
        if users:
            await users[-1].remove()
        prompt = self.query_one(PromptInput)
        if not prompt.text:
            prompt.text = text
            prompt.move_cursor(prompt.document.end)

    async def _turn(self, events: ChatEvents) -> None:
        """One answer, with the calls of this chat's tools that the model makes and the user allows."""
        assert self.client is not None and self.session is not None
        session = self.session
        box = await self.chat_tools.toolbox(self, session.id, self.model, session.tools)
        messages = ([{"role": "system", "content": session.system}] if session.system else []) + list(self.conversation)
        allowed = self.chat_tools.allowed.setdefault(session.id, set())
        self.turn_tools = box
        outcome = await run_turn(
            self.client, self.model, messages, box, self.confirm_tool, allowed=allowed, events=events,
            options=session.options,
        )  # fmt: skip
        if outcome.hit_limit:
            await self.post_note(f"stopped after {outcome.steps} tool steps; ask again to go on", "error")

    async def confirm_tool(self, call: ToolCall) -> Decision:
        """Ask whether a call may run; Esc at the question stops the answer."""
        tool = self.turn_tools.tools.get(call.name)
        screen = ToolConfirmScreen(call, tool.source if tool else "loam")
        try:
            choice = await self.app.push_screen_wait(screen)
        except asyncio.CancelledError:  # the answer was stopped another way: the question goes with it
            if screen.is_active:
                screen.dismiss("stop")
            raise
        if choice not in ("once", "chat", "deny"):
            raise StopTurn("stopped")
        return choice  # type: ignore[return-value]

    async def _pull_inline(self, name: str) -> None:
        assert self.client is not None
        note = await self.post_note(f"{name} is not in the store; pulling it…")
        status = note.query_one(".body", Static)
        async for event in self.client.pull(name):
            total, done = event.get("total"), event.get("completed")
            progress = f" {100 * done // total}%" if total and done is not None else ""
            status.update(f"pulling {name}: {event.get('status', '')}{progress}")
        status.update(f"pulled {name}")

    def action_cancel(self) -> None:
        """Esc: stop the answer that is streaming (the server stops generating it too)."""
        if self.answering:
            self.workers.cancel_group(self, "answer")

    async def stop_answer(self) -> None:
        """Stop a streaming answer and wait until it has been put away, before the chat is changed under it."""
        for worker in self.workers.cancel_group(self, "answer"):
            with suppress(WorkerCancelled, WorkerFailed):
                await worker.wait()

    def require_session(self) -> tuple[History, Session]:
        """The open history and session, or a LoamError when the history could not be opened."""
        if self.history is None or self.session is None:
            raise LoamError("the chat history is not open; see the error above")
        return self.history, self.session

    async def run_command(self, command: slash.Command) -> None:
        from app.tui.commands import execute  # the slash commands' effects, kept apart from the layout

        try:
            await execute(self, command)
        except (LoamError, httpx.HTTPError) as e:
            await self.post_note(str(e) or type(e).__name__, "error")

    async def update_session(self, **fields: Any) -> None:
        history, session = self.require_session()
        self.session = await asyncio.to_thread(history.update, session.id, **fields)
        self.model = self.session.model
        self.update_bar()
        await self.refresh_context()

    async def action_retry(self) -> None:
        """Ctrl+R: forget the last answer (and its tool calls) and ask the last message again."""
        if self.answering or self.history is None or self.session is None:
            return
        last_user = max((i for i, m in enumerate(self.conversation) if m["role"] == "user"), default=None)
        if last_user is None:
            self.notify("nothing to answer again yet", severity="warning")
            return
        text = self.conversation[last_user]["content"]
        del self.conversation[last_user:]
        await asyncio.to_thread(self.history.truncate, self.session.id, last_user)
        log = self.query_one(ChatLog)
        users = list(log.query("MessageView.user").results(MessageView))
        if users:  # the last message and everything after it leave the screen; _answer shows it again
            after = False
            for child in list(log.children):
                after = after or child is users[-1]
                if after:
                    await child.remove()
        self.send(text)

    def action_copy_figures(self) -> None:
        """Copy the shown answer's figures as the eight lines `ollama run --verbose` prints."""
        answer = self.query_one(StatsPanel).shown
        if answer is None or answer.stats is None:
            self.notify("no figures to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard("\n".join(verbose_lines(answer.stats)) + "\n")
        self.notify("copied the answer's figures")

    async def action_new_chat(self) -> None:
        if self.history is None:
            return
        await self.stop_answer()
        session = await asyncio.to_thread(self.history.create, self.model or default_model())
        await self.open_session(session)

    def action_sessions(self) -> None:
        if self.history is None:
            return

        async def chosen(session_id: int | None) -> None:
            if session_id is not None and self.history is not None:
                await self.stop_answer()
                await self.open_session(await asyncio.to_thread(self.history.get, session_id))

        self.app.push_screen(SessionsScreen(self.history, self.session.id if self.session else None), chosen)

    def action_models(self) -> None:
        if self.client is None:
            self.notify("the server is not ready yet", severity="warning")
            return

        async def chosen(name: str | None) -> None:
            if name:
                await self.update_session(model=name)
                await self.post_note(f"now chatting with {name}")

        self.app.push_screen(ModelPicker(self.client, self.model), chosen)

    def action_pull(self) -> None:
        if self.client is None:
            return

        async def pulled(name: str | None) -> None:
            if name:  # the user chose to chat with the model just pulled
                await self.update_session(model=name)
                await self.post_note(f"now chatting with {name}")

        self.app.push_screen(PullScreen(self.client), pulled)

    def action_info(self) -> None:
        if self.client is not None and self.model:
            options = dict(self.session.options) if self.session else {}
            self.app.push_screen(InfoScreen(self.client, self.model, options=options))

    @work(group="settings", exclusive=True)
    async def action_settings(self) -> None:
        """F3: the chat's settings, each empty field showing the value in effect (the model's, else the server's)."""
        if self.session is None:
            return
        defaults: dict[str, Any] = {}
        if self.client is not None and self.model:
            with suppress(LoamError, httpx.HTTPError):
                defaults = parameter_defaults(await self.client.show(self.model))

        async def saved(result: tuple[str, dict[str, Any]] | None) -> None:
            if result is not None:
                system, options = result
                await self.update_session(system=system, options=options)
                self.notify("settings saved for this chat")

        self.app.push_screen(SettingsScreen(self.session.system, dict(self.session.options), defaults=defaults), saved)

    def action_toggle_stats(self) -> None:
        panel = self.query_one(StatsPanel)
        panel.display = not panel.display

    def _selected_message(self) -> MessageView | None:
        """The focused message, else the last answer."""
        if isinstance(self.focused, MessageView):
            return self.focused
        answers = list(self.query_one(ChatLog).query("MessageView.assistant").results(MessageView))
        return answers[-1] if answers else None

    def action_copy_last(self) -> None:
        view = self._selected_message()
        if view is None or not view.content:
            self.notify("nothing to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(view.content)
        self.notify("copied the message")

    def action_copy_code(self) -> None:
        view = self._selected_message()
        blocks = code_blocks(view.content) if view else []
        if not blocks:
            self.notify("no code block in that message", severity="warning")
            return
        self.app.copy_to_clipboard(blocks[-1])
        self.notify("copied the code block")

    @work(group="export", exit_on_error=False)
    async def action_export(self) -> None:
        if self.history is None or self.session is None:
            return
        session = self.session
        try:
            messages = await asyncio.to_thread(self.history.messages, session.id)
            path = Path.cwd() / f"loam-chat-{session.id}.md"
            await asyncio.to_thread(config.write_atomic, path, export_markdown(session, messages).encode())
        except (OSError, LoamError, sqlite3.Error) as e:
            self.notify(f"export failed: {e}", severity="error")
            return
        self.notify(f"exported to {path}")

    def action_delete_model(self) -> None:
        if self.client is None or not self.model:
            return
        client, name = self.client, self.model

        async def confirmed(yes: bool | None) -> None:
            if yes:
                try:
                    await client.delete(name)
                    self.notify(f"deleted {name}")
                except (LoamError, httpx.HTTPError) as e:
                    await self.post_note(str(e) or type(e).__name__, "error")

        self.app.push_screen(ConfirmScreen(f"Delete {name} from the store?"), confirmed)


def placement(size: int, vram: int) -> str:
    """Where a loaded model runs, as `ollama ps` says it, with its size."""
    gib = f"{size / (1 << 30):.1f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MiB"
    if size <= 0:
        return ""
    if vram <= 0:
        return f"100% CPU · {gib}"
    if vram >= size:
        return f"100% GPU · {gib}"
    cpu = round(100 * (size - vram) / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU · {gib}"
