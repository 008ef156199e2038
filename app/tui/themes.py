"""Colour themes for the chat app: TOML files shipped in `themes/` or dropped into the
user's `themes/` config folder, each pairing a Textual palette with a pygments style
for code blocks.
"""

from __future__ import annotations

import difflib
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pygments.styles import get_all_styles, get_style_by_name
from pygments.util import ClassNotFound
from rich.color import EIGHT_BIT_PALETTE, STANDARD_PALETTE
from rich.color import ColorSystem as TerminalColours
from textual.color import Color, ColorParseError, rgb_to_lab
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
    #: How the theme degrades in terminals with fewer colours (see `degradation_problems`).
    colour_problems: tuple[str, ...] = ()


def load_theme(path: Path) -> LoamTheme:
    """Read and check one theme file, so a mistake is reported with its file and key; how
    it degrades with fewer colours goes in `colour_problems`, which never stops it loading."""
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
    problems = (*degradation_problems(theme), *degradation_problems(theme, TerminalColours.STANDARD))
    return LoamTheme(theme=theme, pygments_style=style, path=path, colour_problems=problems)


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
    and one warning line per file that could not be used or loses hues or contrast in
    256 or 16 colours (see `degradation_problems`)."""
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
            if loaded.colour_problems:
                warnings.append(colour_warning(loaded))
    return themes, warnings


def colour_warning(loaded: LoamTheme, shown: int = 3) -> str:
    """One warning line for a usable theme that degrades badly with fewer colours: a
    stranger's theme is still worth using in truecolour, so this never stops it loading."""
    problems = list(loaded.colour_problems)
    listed = ", ".join(problems[:shown]) + (f" and {len(problems) - shown} more" if len(problems) > shown else "")
    return (
        f"{loaded.path}: {listed}; nudge those colours so a terminal's nearest palette colours "
        "keep their hue and contrast"
    )


#: CIELAB chroma below which a colour reads as grey, the most a grey may gain (a pale
#: beige must not turn pink), and from which a colour clearly has a hue it must not lose.
GREY_CHROMA = 10.0
TINTED_CHROMA = 12.0
CLEAR_CHROMA = 20.0
#: The most a coloured colour's hue may move (CIE ΔH*, which weighs the turn by chroma:
#: a vivid red turning orange moves further than a dull brown turning pink).
HUE_SHIFT = 20.0
#: The least contrast (WCAG ratio) for body text and for muted text and accents, by palette:
#: 16-colour shades are the terminal's own (rich's are a guess) and too few for more.
LEAST_CONTRAST = {TerminalColours.EIGHT_BIT: (4.5, 3.0), TerminalColours.STANDARD: (3.0, 2.0)}
#: The theme's own colours and those Textual derives from them that loam and Textual's
#: widgets paint with: each should keep its hue family in a 256-colour terminal.
HUE_VARIABLES = (
    *COLOUR_KEYS,
    "primary-darken-1",
    "primary-darken-2",
    "primary-lighten-1",
    "panel-lighten-1",
    "panel-lighten-2",
    "surface-active",
    "text-primary",
    "text-secondary",
    "text-accent",
    "text-warning",
    "text-error",
    "text-success",
    "scrollbar",
    "scrollbar-hover",
    "scrollbar-active",
    "scrollbar-background",
    "footer-background",
    "footer-key-foreground",
    "block-cursor-background",
    "input-selection-background",
)
#: (text, background) pairs that must stay readable with fewer colours: body text first,
#: then muted text and accents. "text" and "text-muted" are Textual's "auto" colours,
#: worked out on each background.
BODY_TEXT = ("foreground", "text")
CONTRAST_PAIRS = (
    *(
        (text, background)
        for text in (*BODY_TEXT, "text-muted", "primary", "accent", "error", "text-error", "warning", "success")
        for background in ("background", "surface", "panel")
    ),
    ("footer-key-foreground", "footer-background"),
)
AUTO_TEXT = {"text": 0.87, "text-muted": 0.6, "text-disabled": 0.38}
_PALETTES = {TerminalColours.EIGHT_BIT: EIGHT_BIT_PALETTE, TerminalColours.STANDARD: STANDARD_PALETTE}
_SYSTEM_NAMES = {TerminalColours.EIGHT_BIT: "256 colours", TerminalColours.STANDARD: "16 colours"}
#: CIELAB hue angles where each named hue family starts, for messages.
_HUE_NAMES = (
    (0, "pink"),
    (20, "red"),
    (50, "orange"),
    (75, "yellow"),
    (105, "green"),
    (165, "cyan"),
    (230, "blue"),
    (315, "violet"),
    (340, "pink"),
)


def palette_colour(colour: Color, system: TerminalColours) -> Color:
    """The palette colour a terminal with `system` colours shows for a truecolour `colour`,
    picked the way rich (and so Textual) picks it."""
    number = colour.rich_color.downgrade(system).number
    assert number is not None
    red, green, blue = _PALETTES[system][number]
    return Color(red, green, blue)


def theme_variables(theme: Theme) -> dict[str, str]:
    """The CSS variables a theme gives the app: the ones Textual derives from its colours,
    with the theme's own [variables] laid over them, as the app does."""
    return {**theme.to_color_system().generate(), **theme.variables}


def hue_family(colour: Color) -> str:
    """A colour's hue family by its CIELAB hue ("grey" when it has too little chroma)."""
    lab = rgb_to_lab(colour)
    if math.hypot(lab.a, lab.b) < GREY_CHROMA:
        return "grey"
    angle = math.degrees(math.atan2(lab.b, lab.a)) % 360
    return next(name for start, name in reversed(_HUE_NAMES) if angle >= start)


def contrast(text: Color, background: Color) -> float:
    """WCAG contrast ratio of two opaque colours, 1 to 21."""
    lighter, darker = sorted((_luminance(text), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def degradation_problems(theme: Theme, system: TerminalColours = TerminalColours.EIGHT_BIT) -> list[str]:
    """What goes wrong with `theme` in a terminal of `system` colours: colours whose nearest
    palette colour has another hue family (256 colours only: 16 entries, whose shades each
    terminal picks itself, cannot keep hues), and text whose contrast falls below its minimum.
    A theme that passes looks like itself in 256 colours and stays readable in 16."""
    variables = theme_variables(theme)
    background = Color.parse(variables["background"])
    where = _SYSTEM_NAMES[system]
    problems: list[str] = []
    if system == TerminalColours.EIGHT_BIT:
        for name in HUE_VARIABLES:
            try:
                colour = painted_colour(variables, name, background)
            except ColorParseError:  # a [variables] value Textual may read some other way
                continue
            shown = palette_colour(colour, system)
            if changes_hue(colour, shown):
                problems.append(
                    f"{name} {colour.hex} ({hue_family(colour)}) shows as {shown.hex} ({hue_family(shown)}) in {where}"
                )
    body, muted = LEAST_CONTRAST[system]
    for text, under in CONTRAST_PAIRS:
        least = body if text in BODY_TEXT else muted
        try:
            behind = painted_colour(variables, under, background)
            colour = painted_colour(variables, text, behind)
        except ColorParseError:
            continue
        before = contrast(colour, behind)
        after = contrast(palette_colour(colour, system), palette_colour(behind, system))
        if after < least and after < before:
            problems.append(f"{text} on {under} has contrast {after:.1f} (under {least}) in {where}")
    return problems


def changes_hue(colour: Color, shown: Color) -> bool:
    """Whether `shown` reads as a different hue from `colour`: a grey gains a clear hue,
    a clear hue goes grey, or the hue moves more than HUE_SHIFT."""
    before, after = rgb_to_lab(colour), rgb_to_lab(shown)
    chroma_before, chroma_after = math.hypot(before.a, before.b), math.hypot(after.a, after.b)
    if chroma_before < GREY_CHROMA:
        return chroma_after >= TINTED_CHROMA
    if chroma_after < GREY_CHROMA:
        return chroma_before >= CLEAR_CHROMA
    turn = math.atan2(before.b, before.a) - math.atan2(after.b, after.a)
    return 2 * math.sqrt(chroma_before * chroma_after) * abs(math.sin(turn / 2)) > HUE_SHIFT


def painted_colour(variables: dict[str, str], name: str, background: Color) -> Color:
    """The opaque colour the theme variable `name` paints over `background`, with Textual's
    "auto" text colours and any transparency worked out."""
    if name in AUTO_TEXT and variables[name].startswith("auto"):
        return background + background.get_contrast_text(AUTO_TEXT[name])
    return (background + Color.parse(variables[name])).clamped


def _luminance(colour: Color) -> float:
    def linear(channel: int) -> float:
        value = channel / 255
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    return 0.2126 * linear(colour.r) + 0.7152 * linear(colour.g) + 0.0722 * linear(colour.b)


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
