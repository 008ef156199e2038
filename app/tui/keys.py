"""The chat app's key bindings, and the `[keys]` table of config.toml that remaps them.

Each binding has an id; config.toml maps ids to Textual key strings, with commas
between alternatives, e.g. `stats = "f4,ctrl+s"`.
"""

from __future__ import annotations

import difflib
from typing import Any

from textual.binding import Binding

#: Keys that put a newline into the message being written (handled by the input itself).
NEWLINE_KEYS = ("shift+enter", "ctrl+j")

#: Every key here is free in Textual's text inputs (TextArea, Input): none of them shadows an editing
#: key (Ctrl+E end of line, Ctrl+K delete to end, Ctrl+Y redo, F6/F7 selection) while a message is typed.
#: Only quit has priority; the rest act wherever the focused widget leaves the key unused, so the
#: footer's order does not change with focus.
BINDINGS: list[Binding] = [
    Binding("escape", "cancel", "Stop", id="cancel"),
    Binding("ctrl+n", "new_chat", "New", id="new_chat", tooltip="Start a new chat"),
    Binding("ctrl+o", "sessions", "Chats", id="sessions", tooltip="Open an earlier chat"),
    Binding("ctrl+l", "models", "Models", id="models", tooltip="Pick the model for this chat"),
    Binding("ctrl+r", "retry", "Retry", id="retry", tooltip="Answer the last message again"),
    Binding("f2", "info", "Info", id="info", tooltip="What the model is: details, template, parameters"),
    Binding("f3", "settings", "Setup", id="settings", tooltip="This chat's system prompt and parameters"),
    Binding("f4", "toggle_stats", "Stats", id="stats", tooltip="Show or hide the stats panel"),
    Binding("f5", "pull", "Pull", id="pull", tooltip="Download a model into the store"),
    Binding("f8", "copy_last", "Copy", id="copy_last", tooltip="Copy the focused message, else the last answer"),
    Binding("f9", "copy_code", "Code", id="copy_code", tooltip="Copy the last code block of that message"),
    Binding("ctrl+s", "export", "Save", id="export", tooltip="Write this chat to a Markdown file here"),
    Binding("ctrl+g", "copy_figures", "Figures", id="copy_figures", tooltip="Copy the answer's --verbose lines"),
    Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
]

#: What each binding does, in words, for the palette and /help (the footer shows the short names).
PURPOSE: dict[str, str] = {
    "cancel": "Stop the answer that is streaming, and its tool calls",
    "quit": "Leave the chat",
    **{b.id: b.tooltip for b in BINDINGS if b.id and b.tooltip},
}

BINDING_IDS = tuple(b.id for b in BINDINGS if b.id)


def keymap_from_config(config: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The keymap for `App.set_keymap` from config.toml's `[keys]`, and one warning line
    per entry that was ignored or clashes; a bad entry never stops the app."""
    table = config.get("keys", {})
    if not isinstance(table, dict):
        return {}, ['config.toml: keys must be a table; write it as [keys] with lines like stats = "f4"']
    keymap: dict[str, str] = {}
    warnings: list[str] = []
    for binding_id, value in table.items():
        problem = _problem(binding_id, value)
        if problem:
            warnings.append(problem)
        else:
            keymap[binding_id] = value.strip()
    warnings.extend(_clashes(keymap))
    return keymap, warnings


def _problem(binding_id: str, value: object) -> str | None:
    """Why a `[keys]` entry cannot be used, or None when it can."""
    if binding_id not in BINDING_IDS:
        close = difflib.get_close_matches(binding_id, BINDING_IDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"config.toml [keys]: unknown key binding {binding_id!r}{hint}; known ones: {', '.join(BINDING_IDS)}"
    if not isinstance(value, str) or not value.strip():
        return f'config.toml [keys]: {binding_id} = {value!r} is not a key; write it like {binding_id} = "f4"'
    return None


def _clashes(keymap: dict[str, str]) -> list[str]:
    """Warnings for a key that ends up bound to two actions."""
    owners: dict[str, str] = {}
    warnings: list[str] = []
    for binding in BINDINGS:
        keys = keymap.get(binding.id or "", binding.key)
        for key in (k.strip() for k in keys.split(",")):
            if key in owners:
                warnings.append(f"config.toml [keys]: {key} is bound to both {owners[key]} and {binding.id}")
            owners[key] = binding.id or binding.action
    return warnings


def key_names(keys: str) -> str:
    """Textual key strings as a person reads them: "ctrl+n,f4" -> "Ctrl+N or F4"."""
    words = []
    for key in keys.split(","):
        parts = [p.capitalize() if len(p) > 1 else p.upper() for p in key.strip().split("+")]
        words.append("+".join(parts).replace("Escape", "Esc"))
    return " or ".join(words)


def key_help(keymap: dict[str, str]) -> list[tuple[str, str]]:
    """(keys, what they do) for every binding under `keymap`, and the input's own keys, for /help."""
    rows = [
        ("Enter", "Send the message"),
        ("Shift+Enter, Ctrl+J", "Add a line to the message"),
        ("Up, Down", "Recall earlier messages"),
        ("Tab", "Move between the input and the messages"),
        ("Ctrl+P", "Command palette"),
    ]
    for binding in BINDINGS:
        rows.append((key_names(keymap.get(binding.id or "", binding.key)), PURPOSE[binding.id or ""]))
    return rows
