"""One turn drawn into the chat: the wait for the first token, the streaming reply, and what is kept.

Replies stream into messages at the pace DrawPacer allows, tool calls become
blocks, and every message is stored with the model that wrote it. A reply cut
short (Esc, a lost server) keeps what arrived, marked, so the conversation
still alternates between the user and the model.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from textual.timer import Timer

from app.errors import LoamError
from app.stats import LiveRate, Stats
from app.tools.calls import ToolCall
from app.tools.loop import Decision, ToolResult, TurnEvents
from app.tui.chat import ChatLog, DrawPacer, MessageView
from app.tui.stats_panel import Answer, StatsPanel
from app.tui.tools import ToolCallView

if TYPE_CHECKING:
    from app.tui.chat_screen import ChatScreen

#: How often the line shown before the first token is redrawn.
WAIT_TICK = 0.5


class ChatEvents(TurnEvents):
    """The tool loop drawn into the chat, for one session and one model."""

    def __init__(self, app: ChatScreen, session_id: int, loading: bool = False) -> None:
        """`loading`: the model was not loaded when the turn began (the wait is its load)."""
        self.app, self.session_id, self.model = app, session_id, app.model
        self.log = app.query_one(ChatLog)
        self.panel = app.query_one(StatsPanel)
        self.reply: MessageView | None = None
        self.pending: list[str] = []
        self.live = LiveRate()
        self.pacer = DrawPacer()
        self.results: list[str] = []
        self.stored = 0
        self.loading = loading
        self.sent = time.monotonic()
        self.first_token = 0.0
        self.number = 1 + sum(1 for m in app.conversation if m["role"] == "assistant" and m.get("content"))
        self._ticker: Timer | None = None

    # -- the hooks of the tool loop -------------------------------------------

    async def step_started(self, step: int) -> None:
        self.reply = self.app.message_view("assistant", "", model=self.model)
        self.pending, self.live, self.pacer = [], LiveRate(), DrawPacer()
        self.sent, self.first_token = time.monotonic(), 0.0
        await self.log.mount(self.reply)
        self.log.anchor()
        self.panel.start_live(self.model, self.number)
        self._tick()
        self._ticker = self.app.set_interval(WAIT_TICK, self._tick)

    def _tick(self) -> None:
        """Before the first token: what the server is doing, with the time it has taken so far."""
        if self.reply is None or self.first_token:
            self._stop_ticker()
            return
        what = f"loading {self.model}" if self.loading else "reading the prompt"
        seconds = time.monotonic() - self.sent
        self.reply.waiting(f"{what} · {seconds:.1f} s")
        self.panel.show_waiting(what, seconds)

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None

    async def chunk(self, chunk: dict[str, Any]) -> None:
        text = (chunk.get("message") or {}).get("content") or ""
        if text:
            if not self.first_token:
                self.first_token = time.monotonic()
                self._stop_ticker()
                if self.reply is not None:
                    self.reply.waiting("")
            self.live.piece()
            self.pending.append(text)
        if self.pending and (chunk.get("done") or self.pacer.due()):
            self.pacer.drawing()
            with self.app.app.batch_update():  # the text and the live figures in one frame
                await self._flush()
                self.panel.show_live(self.live.rate, self.live.pieces + 1)
            # a draw is two frames: the new text's, then the one for the sizes it changed
            self.app.app.call_after_refresh(self.app.app.call_after_refresh, self.pacer.drawn)

    async def _flush(self) -> None:
        if self.reply is not None and self.pending:
            await self.reply.append("".join(self.pending))
        self.pending.clear()

    async def message(self, message: dict[str, Any], final: dict[str, Any] | None) -> None:
        if message["role"] != "assistant":
            self.results.append(message["content"])
            await self._keep(message, None)
            return
        self._stop_ticker()
        await self._flush()
        stats = (
            Stats.from_response(final).to_dict() | {"done_reason": str(final.get("done_reason") or "stop")}
            if final
            else None
        )
        reply, self.reply = self.reply, None
        if reply is not None:
            if message.get("tool_calls") and not message["content"].strip():
                await reply.remove()  # a reply that only calls tools shows as its call blocks
            else:
                await reply.finish(stats)
        if final:
            ended = str(final.get("done_reason") or "stop")
            self.panel.show_answer(self._answer(ended, Stats.from_response(final)))
        await self._keep(message, stats)

    async def tool_result(self, call: ToolCall, decision: Decision, result: ToolResult | None) -> None:
        content = self.results.pop() if self.results else ""
        view = ToolCallView(call.name, call.arguments, content, is_error=result is not None and result.is_error)
        await self.log.mount(view)
        self.log.anchor()

    # -- how a turn ends early ---------------------------------------------------

    async def stopped(self) -> None:
        """The turn was stopped: what the reply had so far is kept, marked stopped on screen."""
        await self._cut_short("cancelled")

    async def failed(self, reason: str = "error") -> bool:
        """The turn failed: a reply that had begun is kept, marked; an empty one goes. Whether one was kept."""
        return await self._cut_short("error", reason)

    async def _cut_short(self, ended: str, reason: str = "") -> bool:
        self._stop_ticker()
        self.panel.show_answer(self._answer(ended, None))
        reply, self.reply = self.reply, None
        if reply is None:
            return False
        if self.pending:
            reply.content += "".join(self.pending)
            self.pending.clear()
        if not reply.content:
            await reply.remove()
            return False
        await reply.finish(stopped=ended == "cancelled", failed=reason)
        await self._keep({"role": "assistant", "content": reply.content}, None)
        return True

    def _answer(self, ended: str, stats: Stats | None) -> Answer:
        first = int((self.first_token - self.sent) * 1e9) if self.first_token else 0
        return Answer(self.model, self.number, ended, stats, first)

    async def _keep(self, message: dict[str, Any], stats: dict[str, Any] | None) -> None:
        """Add a message to the open chat (when it is still this one) and to the history."""
        app = self.app
        if app.session is not None and app.session.id == self.session_id:
            app.conversation.append(message)
        if app.history is None:
            return
        try:
            await asyncio.to_thread(
                app.history.add_message,
                self.session_id,
                message["role"],
                message["content"],
                stats,
                tool_calls=message.get("tool_calls"),
                tool_name=message.get("tool_name"),
                model=self.model if message["role"] == "assistant" else None,
            )
            self.stored += 1
        except (LoamError, sqlite3.Error) as e:
            app.notify(f"the message was not saved: {e}", severity="error")
