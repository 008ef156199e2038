"""Theme files, code highlighting colours, the saved theme choice, and remappable keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pygments.styles import get_style_by_name
from pygments.token import Error, Keyword, Name
from textual.app import App, ComposeResult
from textual.highlight import highlight
from textual.widgets import Static

from app import config
from app.tui import keys, themes

SHIPPED = {"loam-dark", "loam-light", "loam-dusk", "loam-paper"}
#: A person's own theme; its blue keeps its hue in 256 colours, so it loads without warnings.
USER_THEME = """# a person's own theme
name = "loam-dark"
dark = true
pygments_style = "nord"
primary = "#6a8caf"
"""


def write_user_theme(name: str, text: str) -> Path:
    path = themes.user_themes_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_shipped_themes_load(loam_home: Path) -> None:
    found, warnings = themes.discover()
    assert warnings == []
    assert SHIPPED <= set(found)
    loaded = [themes.load_theme(p) for p in sorted(themes.shipped_themes_dir().glob("*.toml"))]
    assert len({t.theme.name for t in loaded}) == len(loaded) == 4
    assert {t.theme.dark for t in loaded} == {True, False}
    for theme in loaded:
        assert get_style_by_name(theme.pygments_style)
        assert theme.path.read_text().startswith("# ")


def test_user_theme_replaces_shipped_one(loam_home: Path) -> None:
    path = write_user_theme("mine.toml", USER_THEME)
    found, warnings = themes.discover()
    assert warnings == []
    assert found["loam-dark"].path == path
    assert found["loam-dark"].theme.primary == "#6a8caf"
    assert found["loam-dark"].pygments_style == "nord"
    assert "loam-light" in found


def test_missing_pygments_style_defaults_by_darkness(tmp_path: Path) -> None:
    light = tmp_path / "light.toml"
    light.write_text('name = "pale"\ndark = false\nprimary = "red"\n')
    assert themes.load_theme(light).pygments_style == "default"
    dark = tmp_path / "dark.toml"
    dark.write_text('name = "night"\nprimary = "red"\n')
    assert themes.load_theme(dark).pygments_style == "monokai"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (USER_THEME.replace('"#6a8caf"', '"#6a8ca"'), "primary = '#6a8ca' is not a colour"),
        (USER_THEME.replace('"nord"', '"nordd"'), "did you mean 'nord'"),
        (USER_THEME.replace('name = "loam-dark"', "name = "), "not valid TOML"),
        (USER_THEME.replace("primary", "primay"), "did you mean 'primary'"),
        (USER_THEME.replace('name = "loam-dark"\n', ""), "no theme name"),
    ],
)
def test_broken_user_theme_is_a_warning(loam_home: Path, text: str, fragment: str) -> None:
    path = write_user_theme("broken.toml", text)
    found, warnings = themes.discover()
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: ")
    assert fragment in warnings[0]
    assert "; " in warnings[0] and "\n" not in warnings[0]
    assert found["loam-dark"].path.parent == themes.shipped_themes_dir()
    with pytest.raises(themes.ThemeError):
        themes.load_theme(path)


def test_highlight_theme_uses_pygments_colours() -> None:
    monokai = get_style_by_name("monokai")
    theme = themes.highlight_theme("monokai")
    assert themes.highlight_theme("monokai") is theme
    keyword = monokai.style_for_token(Keyword)["color"]
    assert theme.STYLES[Keyword] == f"#{keyword}"
    error = monokai.style_for_token(Error)
    assert theme.STYLES[Error] == f"#{error['color']} on #{error['bgcolor']}"
    content = highlight("def f(): pass", language="python", theme=theme)
    styles = {content.plain[span.start : span.end]: span.style for span in content.spans}
    assert styles["def"] == f"#{keyword}"
    assert styles["f"] == f"#{monokai.style_for_token(Name.Function)['color']}"


def test_highlight_theme_keeps_bold_and_italic() -> None:
    theme = themes.highlight_theme("nord")
    assert theme.STYLES[Keyword].split()[0] == "bold"
    with pytest.raises(themes.ThemeError):
        themes.highlight_theme("no-such-style")


def test_save_theme_keeps_other_settings(loam_home: Path) -> None:
    assert themes.saved_theme() == themes.DEFAULT_THEME
    config.save_config({"default_model": "smollm2:135m", "keys": {"stats": "f9"}})
    themes.save_theme("loam-paper")
    assert themes.saved_theme() == "loam-paper"
    assert config.load_config() == {"default_model": "smollm2:135m", "keys": {"stats": "f9"}, "theme": "loam-paper"}


def test_keymap_from_config() -> None:
    keymap, warnings = keys.keymap_from_config({"keys": {"stats": "f4,ctrl+t", "models": " f6 "}})
    assert keymap == {"stats": "f4,ctrl+t", "models": "f6"}
    assert warnings == []
    keymap, warnings = keys.keymap_from_config({"keys": {"stat": "f9", "quit": 5, "export": ""}})
    assert keymap == {}
    assert len(warnings) == 3
    assert "did you mean 'stats'" in warnings[0]
    assert "quit = 5 is not a key" in warnings[1]
    assert "export = '' is not a key" in warnings[2]


def test_keymap_warns_about_clashes_and_bad_tables() -> None:
    keymap, warnings = keys.keymap_from_config({"keys": {"stats": "ctrl+n"}})
    assert keymap == {"stats": "ctrl+n"}
    assert warnings == ["config.toml [keys]: ctrl+n is bound to both new_chat and stats"]
    assert keys.keymap_from_config({})[0] == {}
    keymap, warnings = keys.keymap_from_config({"keys": "f4"})
    assert keymap == {} and "must be a table" in warnings[0]


def test_binding_ids_are_unique() -> None:
    ids = [b.id for b in keys.BINDINGS]
    assert None not in ids and len(set(ids)) == len(ids)
    assert "enter" not in {b.key for b in keys.BINDINGS}
    assert keys.NEWLINE_KEYS == ("shift+enter", "ctrl+j")


class ThemedApp(App[None]):
    """A minimal app with loam's bindings and themes."""

    BINDINGS = keys.BINDINGS

    def __init__(self) -> None:
        super().__init__()
        self.stats_toggles = 0

    def compose(self) -> ComposeResult:
        yield Static("hello")

    def action_toggle_stats(self) -> None:
        self.stats_toggles += 1


def test_app_switches_themes_and_remaps_keys(loam_home: Path) -> None:
    found, _ = themes.discover()

    async def inner() -> tuple[list[str], int, int]:
        app = ThemedApp()
        async with app.run_test() as pilot:
            for loaded in found.values():
                app.register_theme(loaded.theme)
            seen = []
            for name in found:
                app.theme = name
                await pilot.pause()
                seen.append(app.theme)
            await pilot.press("f4")
            before = app.stats_toggles
            app.set_keymap({"stats": "f9"})
            await pilot.press("f9")
            await pilot.press("f4")
            return seen, before, app.stats_toggles

    seen, before, after = asyncio.run(inner())
    assert seen == list(found)
    assert (before, after) == (1, 2)
