"""Colour themes for the chat app: TOML files shipped in `themes/` or dropped into the
user's `themes/` config folder, each pairing a Textual palette with a pygments style
for code blocks.
"""

from __future__ import annotations

import difflib
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pygments.styles import get_all_styles, get_style_by_name
from pygments.util import ClassNotFound
from textual.color import Color, ColorParseError
from textual.highlight import HighlightTheme
from textual.theme import Theme

from app import config
from app.errors import LoamError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_THEME = "loam-dark"
#: Colour keys a theme file may set; `primary` is the one Textual cannot do without.
COLOUR_KEYS = (
    "primary",
    "secondary",
    "accent",
    "background",
    "surface",
    "panel",
    "boost",
    "foreground",
    "success",
    "warning",
    "error",
)
OTHER_KEYS = ("name", "dark", "pygments_style", "variables")
#: The pygments style used when a theme file names none.
DEFAULT_PYGMENTS = {True: "monokai", False: "default"}


class ThemeError(LoamError):
    """A theme file that cannot be used: the message starts with its path."""


@dataclass(frozen=True)
class LoamTheme:
    """A Textual theme, the pygments style for its code blocks, and the file it came from."""

    theme: Theme
    pygments_style: str
    path: Path


def load_theme(path: Path) -> LoamTheme:
    """Read and check one theme file, so a mistake is reported with its file and key."""
    data = _read_toml(path)
    _check_keys(path, data)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeError(f'{path}: no theme name; add a line like name = "my-theme"')
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ThemeError(f"{path}: dark = {dark!r} is not true or false; set dark = true or dark = false")
    colours = _colours(path, data)
    style = data.get("pygments_style", DEFAULT_PYGMENTS[dark])
    _check_pygments_style(path, style)
    theme = Theme(name=name.strip(), dark=dark, variables=_variables(path, data), **colours)
    try:
        theme.to_color_system()
    except (ColorParseError, ValueError) as e:
        raise ThemeError(f"{path}: {e}; fix the colours in the file") from e
    return LoamTheme(theme=theme, pygments_style=style, path=path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ThemeError(f"{path}: cannot be read ({e}); check the file and its permissions") from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ThemeError(f"{path}: not valid TOML ({e}); fix the syntax") from e


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    known = (*OTHER_KEYS, *COLOUR_KEYS)
    for key in data:
        if key not in known:
            raise ThemeError(f"{path}: unknown key {key!r}{_did_you_mean(key, known)}; rename or remove it")


def _colours(path: Path, data: dict[str, Any]) -> dict[str, str]:
    if "primary" not in data:
        raise ThemeError(f'{path}: no primary colour; add a line like primary = "#c08552"')
    colours: dict[str, str] = {}
    for key in COLOUR_KEYS:
        if key in data:
            colours[key] = _colour(path, key, data[key])
    return colours


def _colour(path: Path, key: str, value: object) -> str:
    if isinstance(value, str):
        try:
            Color.parse(value)
            return value
        except ColorParseError:
            pass
    raise ThemeError(f'{path}: {key} = {value!r} is not a colour; use a colour name or "#rrggbb"')


def _variables(path: Path, data: dict[str, Any]) -> dict[str, str]:
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise ThemeError(f"{path}: variables must be a table of strings; write it as [variables] with name = value")
    return variables


def _check_pygments_style(path: Path, style: object) -> None:
    if isinstance(style, str):
        try:
            get_style_by_name(style)
            return
        except ClassNotFound:
            pass
    hint = _did_you_mean(style, list(get_all_styles())) if isinstance(style, str) else ""
    raise ThemeError(f"{path}: pygments_style = {style!r} is not a pygments style{hint}; name an installed one")


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def shipped_themes_dir() -> Path:
    """The themes that come with loam."""
    return config.shipped_file("themes")


def user_themes_dir() -> Path:
    """Where a person puts their own theme files."""
    return config.paths().config / "themes"


def discover() -> tuple[dict[str, LoamTheme], list[str]]:
    """Every usable theme by name (user files replace shipped ones of the same name),
    and one warning line per file that could not be used."""
    themes: dict[str, LoamTheme] = {}
    warnings: list[str] = []
    try:
        folders = [shipped_themes_dir(), user_themes_dir()]
    except FileNotFoundError as e:
        warnings.append(str(e))
        folders = [user_themes_dir()]
    for folder in folders:
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                loaded = load_theme(path)
            except ThemeError as e:
                warnings.append(str(e))
                continue
            themes[loaded.theme.name] = loaded
    return themes, warnings


@functools.cache
def highlight_theme(style_name: str) -> type[HighlightTheme]:
    """A Textual highlight theme that colours code the way the named pygments style does."""
    try:
        style = get_style_by_name(style_name)
    except ClassNotFound as e:
        raise ThemeError(f"{style_name!r} is not a pygments style; name an installed one") from e
    styles = {token: text for token, info in style if (text := _textual_style(info))}
    class_name = "Highlight_" + "".join(c if c.isalnum() else "_" for c in style_name)
    return type(class_name, (HighlightTheme,), {"STYLES": styles, "__doc__": f"Code colours from {style_name}."})


def _textual_style(info: dict[str, Any]) -> str:
    """A Textual style string ("bold #f92672 on #272822") from a resolved pygments token style."""
    words = [flag for flag in ("bold", "italic", "underline") if info.get(flag)]
    if info.get("color"):
        words.append(f"#{info['color']}")
    if info.get("bgcolor"):
        words.append(f"on #{info['bgcolor']}")
    return " ".join(words)


def saved_theme() -> str:
    """The theme name config.toml remembers, or the default."""
    value = config.load_config().get("theme")
    return value if isinstance(value, str) and value else DEFAULT_THEME


def save_theme(name: str) -> None:
    """Remember the chosen theme in config.toml, leaving every other setting as it was."""
    data = config.load_config()
    data["theme"] = name
    config.save_config(data)
