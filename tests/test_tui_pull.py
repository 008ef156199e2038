"""Snapshots of the pull screen (pytest-textual-snapshot): the catalog with its highlighted row, and the
offer to chat with a model once its pull finished. `pytest --snapshot-update` rewrites them after a
deliberate change. The screen runs in the bare host app of the screen tests, so the chat app's theme
and layout do not move these pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import OptionList

from app.async_client import AsyncClient
from app.tui.screens import PullScreen
from tests.server_process import ServerProcess
from tests.test_tui_screens import PULLABLE, Host, server, settle

__all__ = ["server"]  # the module's server fixture: a store to pull `pulled:tiny` into

SIZE = (100, 30)


def test_pull_screen_highlights_the_focused_catalog_row(snap_compare: Any, loam_home: Path) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("tab", "tab", "down")  # past the name and the Pull button, then one row down
        assert pilot.app.screen.query_one(OptionList).highlighted == 1
        await pilot.pause()

    assert snap_compare(Host(PullScreen(AsyncClient("127.0.0.1:9"))), terminal_size=SIZE, run_before=run_before)


def test_pull_screen_offers_the_pulled_model(snap_compare: Any, server: ServerProcess, loam_home: Path) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press(*PULLABLE, "enter")
        await settle(pilot, "pull")
        screen = pilot.app.screen
        assert isinstance(screen, PullScreen) and screen.pulled == PULLABLE
        await pilot.pause()

    assert snap_compare(Host(PullScreen(AsyncClient(server.host))), terminal_size=SIZE, run_before=run_before)
