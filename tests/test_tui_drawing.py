"""How the chat draws a streaming answer: paced by what frames cost, in a message that keeps room below its text."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from app.tui import turn
from app.tui.app import LoamApp
from app.tui.chat import RESERVE_LINES, ChatLog, DrawPacer, LiveMarkdown, MessageView, ThemedMarkdown


class Clocks:
    def __init__(self) -> None:
        self.cpu_time = 0.0
        self.wall = 100.0

    def cpu(self) -> float:
        return self.cpu_time

    def clock(self) -> float:
        return self.wall


def test_the_first_draw_waits_for_the_shortest_interval() -> None:
    c = Clocks()
    pacer = DrawPacer(budget=0.05, interval=(0.25, 1.0), cpu=c.cpu, clock=c.clock)
    assert not pacer.due()
    c.wall += 0.25
    assert pacer.due()


@pytest.mark.parametrize(
    ("cost", "gap"),
    [(0.001, 0.25), (0.02, 0.4), (0.2, 1.0)],  # cheap frames: the floor; dear ones: the ceiling
)
def test_the_next_draw_is_spaced_by_what_the_last_one_cost(cost: float, gap: float) -> None:
    c = Clocks()
    pacer = DrawPacer(budget=0.05, interval=(0.25, 1.0), cpu=c.cpu, clock=c.clock)
    c.wall += 0.3
    pacer.drawing()
    assert not pacer.due(), "a draw still on its way to the screen"
    c.cpu_time += cost
    pacer.drawn()
    c.wall += gap - 0.01
    assert not pacer.due()
    c.wall += 0.02
    assert pacer.due()


def test_a_draw_whose_frame_never_reports_does_not_stop_drawing() -> None:
    c = Clocks()
    pacer = DrawPacer(budget=0.05, interval=(0.25, 1.0), cpu=c.cpu, clock=c.clock)
    c.wall += 0.3
    pacer.drawing()
    c.wall += 0.9
    assert not pacer.due()
    c.wall += 0.2
    assert pacer.due()


def test_a_streamed_answer_shows_before_it_ends_and_gives_back_its_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks go straight into the chat's event handler: drawing is what is tested, not the server."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(turn, "DrawPacer", lambda: DrawPacer(budget=1.0, interval=(0.05, 0.05)))
    app = LoamApp(model="smollm2:135m", verbose=True, new=True, autostart=False, host="127.0.0.1:9")
    seen_while_streaming: list[str] = []
    words = [f"word{i} " for i in range(40)] + ["\n\n```python\nprint(1)\n```\n"]

    async def run() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            while app.client is None:
                await pilot.pause(0.05)
            assert gc.get_freeze_count() > 0, "start-up's objects are frozen out of the collector's walks"
            events = turn.ChatEvents(app.chat, app.session.id)
            await events.step_started(0)
            reply = events.reply
            assert reply is not None
            log = app.query_one(ChatLog)
            sizes = []
            for word in words:
                await events.chunk({"message": {"role": "assistant", "content": word}})
                await asyncio.sleep(0.01)
                sizes.append(log.virtual_size)
            await pilot.pause(0.2)
            live = reply.query_one(LiveMarkdown)
            body = reply.query_one(ThemedMarkdown)
            assert live.display and not body.display, "while it streams, the answer is drawn without Textual's tree"
            seen_while_streaming.append("".join(live.render_line(y).text for y in range(3)))
            held = live.styles.height
            assert held is not None and held.value > 2 + RESERVE_LINES // 2, "it holds room below its text"
            assert len(set(sizes[5:])) == 1, "within its room, a draw changes no size on screen (no layout)"
            final = {"done": True, "eval_count": 41, "eval_duration": 10**9, "total_duration": 2 * 10**9}
            await events.message({"role": "assistant", "content": "".join(words)}, final)
            await pilot.pause(0.2)
            assert body.display and not live.display
            assert reply.size.height <= body.size.height + 3  # the author's line and the figures
            assert body.source == "".join(words)
            assert len(app.query_one(ChatLog).query(MessageView)) >= 1

    asyncio.run(run())
    assert seen_while_streaming[0].startswith("word0 word1"), seen_while_streaming


def test_few_cores_draw_once_a_second_more_cores_four_times() -> None:
    """Where the model's threads have every core, frames cost it a decode step each: fewer of them."""
    from app.tui.chat import draw_interval

    assert draw_interval(2) == 1.0 and draw_interval(4) == 1.0
    assert draw_interval(8) == 0.25


def test_few_cores_take_an_answers_tokens_in_batches_more_cores_as_they_come() -> None:
    """On few cores the chat reads its stream a tenth of a second apart, not waking for every token."""
    from app.tui.chat import read_gap

    assert read_gap(2) == 0.1 and read_gap(4) == 0.1
    assert read_gap(8) == 0.0
