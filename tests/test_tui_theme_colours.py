"""How loam's themes look in terminals without truecolour: in 256 colours (and 16) Textual's
colours go through rich's nearest-palette pick, which turned loam-dark's warm grey bar dark red.
Every shipped theme must keep its hues and readable text there, a theme that does not is
reported (as a warning), and snapshots show each theme as a 256-colour terminal draws it."""

from __future__ import annotations

import asyncio
import functools
import re
from pathlib import Path
from typing import Any

import pytest
from rich.color import EIGHT_BIT_PALETTE
from rich.color import Color as RichColor
from rich.color import ColorSystem as TerminalColours
from rich.segment import Segment
from rich.style import Style
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.containers import Horizontal, VerticalScroll
from textual.filter import LineFilter
from textual.widgets import Footer, Static

from app.tui import themes

#: The window frame rich draws round every SVG export (title bar, buttons, default text).
SVG_FRAME = {"#292929", "#c5c8c6", "#ff5f57", "#febc2e", "#28c840"}
SHIPPED = ["loam-dark", "loam-dusk", "loam-light", "loam-paper"]
EIGHT_BIT = TerminalColours.EIGHT_BIT
#: The reported bug: loam-dark's old panel, a warm grey whose nearest palette colour is #5f0000.
OLD_DARK_PANEL = "#312a24"
#: A dark slate blue whose derived darker shades and scrollbar land on teal and navy.
BAD_THEME = f"""# a stranger's theme that degrades badly
name = "muddy"
dark = true
primary = "#336699"
background = "#1e1a17"
panel = "{OLD_DARK_PANEL}"
"""


def shipped(name: str) -> themes.LoamTheme:
    return themes.load_theme(themes.shipped_themes_dir() / f"{name}.toml")


def shown(colour: Color) -> Color:
    return themes.palette_colour(colour, EIGHT_BIT)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_theme_keeps_hues_in_256_colours(name: str) -> None:
    theme = shipped(name).theme
    variables = themes.theme_variables(theme)
    background = Color.parse(variables["background"])
    for variable in themes.HUE_VARIABLES:
        colour = themes.painted_colour(variables, variable, background)
        assert not themes.changes_hue(colour, shown(colour)), f"{name}: {variable} {colour.hex} -> {shown(colour).hex}"
    # The theme's greys (its grounds and bars) must stay greys: the reported bug.
    for ground in ("background", "surface", "panel"):
        colour = themes.painted_colour(variables, ground, background)
        if themes.hue_family(colour) == "grey":
            assert themes.hue_family(shown(colour)) == "grey", f"{name}: {ground} {colour.hex} -> {shown(colour).hex}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_theme_text_stays_readable_in_256_colours(name: str) -> None:
    variables = themes.theme_variables(shipped(name).theme)
    background = Color.parse(variables["background"])
    for ground in ("background", "surface", "panel"):
        behind = themes.painted_colour(variables, ground, background)
        for text, least in (("foreground", 4.5), ("text", 4.5), ("text-muted", 3.0), ("primary", 3.0)):
            colour = themes.painted_colour(variables, text, behind)
            ratio = themes.contrast(shown(colour), shown(behind))
            assert ratio >= least, f"{name}: {text} on {ground} has contrast {ratio:.2f} in 256 colours"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_theme_has_no_colour_problems(name: str) -> None:
    theme = shipped(name)
    assert theme.colour_problems == ()
    assert themes.degradation_problems(theme.theme, TerminalColours.STANDARD) == []


def test_loam_dark_bar_is_grey_not_red() -> None:
    panel = shipped("loam-dark").theme.panel
    assert panel is not None
    assert shown(Color.parse(panel)).hex == "#262626"
    assert shown(Color.parse(OLD_DARK_PANEL)).hex == "#5F0000"


def test_hue_family_and_contrast() -> None:
    family = themes.hue_family
    assert [family(Color.parse(c)) for c in ("#1c1c1c", "#e8ddd0", "#ffffff")] == ["grey"] * 3
    assert family(Color.parse("#5f0000")) == "red"
    assert family(Color.parse("#005f87")) == "blue"
    assert family(Color.parse("#5f8700")) == "green"
    assert family(Color.parse("#008787")) == "cyan"
    assert themes.contrast(Color(0, 0, 0), Color(255, 255, 255)) == pytest.approx(21.0)
    assert themes.contrast(Color(90, 90, 90), Color(90, 90, 90)) == 1.0


def test_bad_theme_is_flagged_but_loads(loam_home: Path) -> None:
    path = themes.user_themes_dir() / "muddy.toml"
    path.parent.mkdir(parents=True)
    path.write_text(BAD_THEME)
    loaded = themes.load_theme(path)
    problems = "\n".join(loaded.colour_problems)
    assert f"panel {OLD_DARK_PANEL.upper()} (grey) shows as #5F0000 (red) in 256 colours" in problems
    assert "primary-darken-2 #004272 (blue) shows as #005F5F (cyan) in 256 colours" in problems
    assert "primary on panel has contrast 2.3 (under 3.0) in 256 colours" in problems
    found, warnings = themes.discover()
    assert found["muddy"].path == path
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: panel {OLD_DARK_PANEL.upper()} (grey) shows as #5F0000 (red)")
    assert f"and {len(loaded.colour_problems) - 3} more; " in warnings[0] and "\n" not in warnings[0]


def test_contrast_lost_in_256_colours_is_flagged(tmp_path: Path) -> None:
    # Plum text on white reads at 6.3 in truecolour, but its nearest palette colour only at 4.1.
    path = tmp_path / "plum.toml"
    path.write_text(
        'name = "plum"\ndark = false\nprimary = "#2f5d7c"\nbackground = "#ffffff"\nforeground = "#9d319d"\n'
    )
    theme = themes.load_theme(path).theme
    assert themes.contrast(Color.parse("#9d319d"), Color.parse("#ffffff")) > 6
    assert "foreground on background has contrast 4.1 (under 4.5) in 256 colours" in themes.degradation_problems(theme)


# -- snapshots of a 256-colour terminal ---------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _eight_bit_colour(colour: RichColor | None) -> RichColor | None:
    if colour is None or colour.triplet is None:
        return colour
    palette = shown(Color(*colour.triplet))
    return RichColor.from_rgb(palette.r, palette.g, palette.b)


@functools.lru_cache(maxsize=4096)
def _eight_bit_style(style: Style | None) -> Style | None:
    if style is None:
        return None
    return style + Style(color=_eight_bit_colour(style.color), bgcolor=_eight_bit_colour(style.bgcolor))


class EightBit(LineFilter):
    """Paints every colour as the palette colour a 256-colour terminal shows for it, picked
    as rich picks it: Textual's SVG export is always truecolour, so this is how a snapshot
    can show a 256-colour terminal."""

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        return [Segment(text, _eight_bit_style(style), control) for text, style, control in segments]


class ThemeSample(App[None]):
    """The theme colours loam paints with, laid out like its chat screen: the bar ($panel),
    messages with coloured edges, a stats side panel ($surface), a scrollbar and the footer."""

    BINDINGS = [Binding("f2", "noop", "Models"), Binding("f3", "noop", "Stats"), Binding("ctrl+n", "noop", "New chat")]
    CSS = """
    #bar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    #log { width: 1fr; scrollbar-size-vertical: 2; }
    .message { margin: 0 1 1 1; padding: 0 1; }
    .user { border-left: thick $secondary; background: $boost; }
    .assistant { border-left: thick $primary; }
    .note { border-left: thick $accent; color: $text-muted; }
    .error { border-left: thick $error; color: $text-error; }
    .tool { border-left: thick $warning; background: $surface; }
    #stats { width: 30; border-left: solid $panel-lighten-2; padding: 0 1; background: $surface; }
    #stats .title { text-style: bold; color: $primary; }
    #stats .live { color: $accent; }
    #stats .ok { color: $success; }
    """

    def __init__(self, theme: themes.LoamTheme) -> None:
        super().__init__()
        self.loam_theme = theme
        self._filters.append(EightBit())

    def compose(self) -> ComposeResult:
        yield Static(f"loam · smollm2:135m · {self.loam_theme.theme.name} in 256 colours", id="bar")
        with Horizontal():
            with VerticalScroll(id="log"):
                yield Static("you\nWhy is the sky blue?", classes="message user")
                for n in range(3):
                    yield Static(
                        f"smollm2\nAir scatters short wavelengths more than long ones ({n}).",
                        classes="message assistant",
                    )
                yield Static("Switched to the paper theme.", classes="message note")
                yield Static("The server stopped answering.", classes="message error")
                yield Static("tool: read_file path=notes.txt", classes="message tool")
            with VerticalScroll(id="stats"):
                yield Static("Last answer", classes="title")
                yield Static("58 tokens · 72.8 tok/s")
                yield Static("80.4 tok/s live", classes="live")
                yield Static("server ready", classes="ok")
        yield Footer()

    def on_mount(self) -> None:
        self.register_theme(self.loam_theme.theme)
        self.theme = self.loam_theme.theme.name

    def action_noop(self) -> None:
        """The footer's keys only need to be shown."""


@pytest.mark.parametrize("name", SHIPPED)
def test_theme_in_256_colours(snap_compare: Any, name: str) -> None:
    assert snap_compare(ThemeSample(shipped(name)), terminal_size=(80, 20))


def test_sample_renders_only_palette_colours() -> None:
    """The filter the snapshots use really leaves only 256-colour palette colours, and the
    bar is grey."""

    async def screenshot() -> str:
        app = ThemeSample(shipped("loam-dark"))
        async with app.run_test(size=(80, 20)) as pilot:
            await pilot.pause()
            return app.export_screenshot()

    svg = asyncio.run(screenshot())
    palette = {Color(*EIGHT_BIT_PALETTE[n]).hex.lower() for n in range(256)}
    painted = set(re.findall(r"fill: (#[0-9a-f]{6})", svg)) | set(re.findall(r'fill="(#[0-9a-f]{6})"', svg))
    assert painted - palette <= SVG_FRAME
    bar = Color.parse(themes.theme_variables(shipped("loam-dark").theme)["panel"])
    assert shown(bar).hex.lower() in painted
