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

#: Bindings on keys that a focused text input also uses (end of line, delete to end, redo)
#: are priority bindings, so they work while a message is being typed.
BINDINGS: list[Binding] = [
    Binding("escape", "cancel", "Stop", id="cancel"),
    Binding("ctrl+n", "new_chat", "New chat", id="new_chat"),
    Binding("ctrl+o", "sessions", "Chats", id="sessions"),
    Binding("ctrl+l", "models", "Models", id="models"),
    Binding("f5", "pull", "Pull", id="pull", show=False),
    Binding("f2", "info", "Model info", id="info", show=False),
    Binding("f3", "settings", "Settings", id="settings", show=False),
    Binding("f4", "toggle_stats", "Stats", id="stats", show=False),
    Binding("ctrl+y", "copy_last", "Copy answer", id="copy_last", priority=True),
    Binding("ctrl+k", "copy_code", "Copy code", id="copy_code", show=False, priority=True),
    Binding("ctrl+e", "export", "Export", id="export", show=False, priority=True),
    Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
]

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
