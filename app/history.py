"""Chat sessions, kept in a SQLite file in the data dir (the chat TUI's; kept apart from it for other clients).

The schema is versioned with `PRAGMA user_version`: each entry of MIGRATIONS
moves the file one version forward, and all pending ones run in a single
transaction on open. Every write is a transaction too, so a crash never leaves
half a message behind. One connection is shared by the TUI's worker threads,
one call at a time, behind a lock.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from app import config
from app.errors import LoamError

DEFAULT_TITLE = "New chat"
#: Longest title taken from a first user message, "…" included.
TITLE_LENGTH = 40
ROLES = ("system", "user", "assistant", "tool")

#: SQL scripts; entry N-1 brings a file from user_version N-1 to N.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL,
        system TEXT NOT NULL DEFAULT '',
        options TEXT NOT NULL DEFAULT '{}',
        created REAL,
        updated REAL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        stats TEXT,
        created REAL
    );
    CREATE INDEX messages_session ON messages(session_id);
    """,
    # Tools: a reply's calls and a tool's results are messages too, and each chat keeps which tools are on.
    # SQLite cannot widen a CHECK in place, so the messages table is rebuilt with its rows (ids kept).
    """
    CREATE TABLE messages_v2 (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
        content TEXT NOT NULL,
        stats TEXT,
        created REAL,
        tool_calls TEXT,
        tool_name TEXT
    );
    INSERT INTO messages_v2 (id, session_id, role, content, stats, created)
        SELECT id, session_id, role, content, stats, created FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v2 RENAME TO messages;
    CREATE INDEX messages_session ON messages(session_id);
    ALTER TABLE sessions ADD COLUMN tools TEXT NOT NULL DEFAULT '[]';
    """,
    # The model that wrote each answer: a chat can switch models, and its old answers keep their author.
    """
    ALTER TABLE messages ADD COLUMN model TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_SESSION_COLUMNS = "id, title, model, system, options, created, updated, tools"
_MESSAGE_COLUMNS = "id, session_id, role, content, stats, created, tool_calls, tool_name, model"


class HistoryError(LoamError):
    """The chat history file cannot be used, or a session is not in it."""


@dataclass(frozen=True)
class Session:
    """One conversation: its model, system prompt, parameter options, and the tools turned on in it."""

    id: int
    title: str
    model: str
    system: str
    options: dict[str, Any]
    created: float
    updated: float
    tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class Message:
    """One turn of a conversation; `stats` holds the timings of a reply.

    A reply that called tools has `tool_calls` (Ollama's shape); a tool's result has role "tool"
    and the tool's `tool_name`.
    """

    id: int
    session_id: int
    role: str
    content: str
    stats: dict[str, Any] | None
    created: float
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    model: str | None = None  # the model that wrote an answer (None in chats from before it was kept)

    def chat_message(self) -> dict[str, Any]:
        """The message as /api/chat takes it."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_name:
            message["tool_name"] = self.tool_name
        return message


def default_path() -> Path:
    """Where the chat history lives unless told otherwise."""
    return config.paths().data / "chats.sqlite3"


def _create_private(path: Path) -> None:
    """Create the history 0600 before SQLite opens it; SQLite gives its -wal and -shm files the same mode.

    Its folder is left alone: by default it also holds the model store, which stays shareable.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, config.PRIVATE_FILE_MODE)
    except OSError as exc:
        raise HistoryError(f"cannot open chat history {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, config.PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


def title_from(content: str) -> str | None:
    """A session title from a first user message: its first non-blank line, cut to fit."""
    line = next((ln.strip() for ln in content.splitlines() if ln.strip()), "")
    if not line:
        return None
    if len(line) <= TITLE_LENGTH:
        return line
    return line[: TITLE_LENGTH - 1].rstrip() + "…"


def _session(row: sqlite3.Row) -> Session:
    return Session(
        id=row["id"],
        title=row["title"],
        model=row["model"],
        system=row["system"],
        options=json.loads(row["options"]),
        created=row["created"],
        updated=row["updated"],
        tools=tuple(json.loads(row["tools"] or "[]")),
    )


def _message(row: sqlite3.Row) -> Message:
    stats, calls = row["stats"], row["tool_calls"]
    return Message(
        id=row["id"],
        session_id=row["session_id"],
        role=row["role"],
        content=row["content"],
        stats=json.loads(stats) if stats is not None else None,
        created=row["created"],
        tool_calls=json.loads(calls) if calls else None,
        tool_name=row["tool_name"],
        model=row["model"],
    )


class History:
    """The chat sessions and their messages, read and written through one connection."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        self._lock = threading.Lock()
        self._last_stamp = 0.0
        self.db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        try:
            self._open()
        except sqlite3.OperationalError as exc:
            self.db.close()
            raise HistoryError(f"cannot open chat history {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise HistoryError(
                f"{self.path} is not a chat history database; move it aside and loam will start a new one"
            ) from exc
        except HistoryError:
            self.db.close()
            raise

    def _open(self) -> None:
        """Refuse files from a newer loam, then switch on WAL and foreign keys and migrate."""
        version = self._version()
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"the chat history in {self.path} was written by a newer loam "
                f"(schema {version}, this one knows {SCHEMA_VERSION}); upgrade loam to open it"
            )
        self.db.execute("PRAGMA journal_mode = WAL").fetchone()
        self.db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Apply pending migrations in one transaction; retry when another process got there first."""
        while (version := self._version()) < SCHEMA_VERSION:
            script = "\n".join(MIGRATIONS[version:])
            try:
                self.db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
            except sqlite3.Error:
                if self.db.in_transaction:
                    self.db.rollback()
                if self._version() == version:
                    raise

    def close(self) -> None:
        """Close the connection; further calls fail."""
        with self._lock:
            self.db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _now(self) -> float:
        """Wall-clock seconds, strictly increasing within this History so ordering is stable."""
        self._last_stamp = max(time.time(), self._last_stamp + 1e-6)
        return self._last_stamp

    def _get(self, session_id: int) -> Session:
        row = self.db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise HistoryError(f"no chat session {session_id} in the history")
        return _session(row)

    def create(
        self, model: str, title: str = DEFAULT_TITLE, system: str = "", options: dict[str, Any] | None = None
    ) -> Session:
        """Start a new, empty session."""
        with self._lock, self.db:
            now = self._now()
            cur = self.db.execute(
                "INSERT INTO sessions (title, model, system, options, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
                (title, model, system, json.dumps(options or {}), now, now),
            )
            return self._get(int(cur.lastrowid or 0))

    def sessions(self) -> list[Session]:
        """Every session, the most recently touched first."""
        with self._lock:
            rows = self.db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY updated DESC, id DESC")
            return [_session(row) for row in rows]

    def get(self, session_id: int) -> Session:
        """One session; HistoryError when there is none with that id."""
        with self._lock:
            return self._get(session_id)

    def latest(self) -> Session | None:
        """The most recently touched session, if there is any."""
        with self._lock:
            row = self.db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY updated DESC, id DESC LIMIT 1"
            ).fetchone()
            return _session(row) if row is not None else None

    def update(
        self,
        session_id: int,
        *,
        title: str | None = None,
        model: str | None = None,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        tools: list[str] | tuple[str, ...] | None = None,
    ) -> Session:
        """Change only the given fields of a session, and mark it as just touched."""
        fields: dict[str, Any] = {"title": title, "model": model, "system": system}
        if options is not None:
            fields["options"] = json.dumps(options)
        if tools is not None:
            fields["tools"] = json.dumps(list(tools))
        changes = {name: value for name, value in fields.items() if value is not None}
        assignments = "".join(f"{name} = ?, " for name in changes)
        with self._lock, self.db:
            self._get(session_id)
            self.db.execute(
                f"UPDATE sessions SET {assignments}updated = ? WHERE id = ?",
                (*changes.values(), self._now(), session_id),
            )
            return self._get(session_id)

    def add_message(
        self,
        session_id: int,
        role: str,
        content: str,
        stats: dict[str, Any] | None = None,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_name: str | None = None,
        model: str | None = None,
    ) -> Message:
        """Append a message (an answer with the `model` that wrote it); the first user message
        names a session still called "New chat"."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        title = title_from(content) if role == "user" else None
        with self._lock, self.db:
            self._get(session_id)
            now = self._now()
            cur = self.db.execute(
                "INSERT INTO messages (session_id, role, content, stats, created, tool_calls, tool_name, model) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    role,
                    content,
                    json.dumps(stats) if stats is not None else None,
                    now,
                    json.dumps(tool_calls) if tool_calls else None,
                    tool_name,
                    model,
                ),
            )
            self.db.execute(
                "UPDATE sessions SET updated = ?, title = CASE WHEN title = ? AND ? IS NOT NULL THEN ? ELSE title END "
                "WHERE id = ?",
                (now, DEFAULT_TITLE, title, title, session_id),
            )
            row = self.db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (cur.lastrowid,))
            return _message(row.fetchone())

    def messages(self, session_id: int) -> list[Message]:
        """A session's messages in the order they were added."""
        with self._lock:
            rows = self.db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
            )
            return [_message(row) for row in rows]

    def clear(self, session_id: int) -> None:
        """Forget a session's messages but keep the session and its settings."""
        with self._lock, self.db:
            self.db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            self.db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (self._now(), session_id))

    def truncate(self, session_id: int, keep: int) -> None:
        """Keep a session's first `keep` messages and forget the rest (an answer to give again, a failed turn)."""
        with self._lock, self.db:
            self.db.execute(
                "DELETE FROM messages WHERE session_id = ? AND id NOT IN "
                "(SELECT id FROM messages WHERE session_id = ? ORDER BY id LIMIT ?)",
                (session_id, session_id, max(keep, 0)),
            )
            self.db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (self._now(), session_id))

    def delete(self, session_id: int) -> None:
        """Remove a session and, through the foreign key, its messages; a missing one is ignored."""
        with self._lock, self.db:
            self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def copy(self, session_id: int, title: str) -> Session:
        """A new session named `title` with this one's model, system prompt, options and messages."""
        with self._lock, self.db:
            source = self._get(session_id)
            now = self._now()
            cur = self.db.execute(
                "INSERT INTO sessions (title, model, system, options, created, updated, tools) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (title, source.model, source.system, json.dumps(source.options), now, now, json.dumps(source.tools)),
            )
            new_id = int(cur.lastrowid or 0)
            self.db.execute(
                "INSERT INTO messages (session_id, role, content, stats, created, tool_calls, tool_name) "
                "SELECT ?, role, content, stats, created, tool_calls, tool_name FROM messages "
                "WHERE session_id = ? ORDER BY id",
                (new_id, session_id),
            )
            return self._get(new_id)


def rate_line(stats: dict[str, Any] | None) -> str | None:
    """`*12 tokens · 84.2 tokens/s*` from a reply's eval_count and eval_duration (ns), when known."""
    if not stats or stats.get("eval_count") is None:
        return None
    count = int(stats["eval_count"])
    parts = [f"{count} token" + ("" if count == 1 else "s")]
    duration = stats.get("eval_duration")
    if duration:
        parts.append(f"{count / (duration / 1e9):.1f} tokens/s")
    return "*" + " · ".join(parts) + "*"


def _fenced(text: str, info: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def open_fence(markdown: str) -> str | None:
    """The fence of a code block left open at the end of `markdown` (an answer cut short), else None."""
    fence: str | None = None
    for line in markdown.splitlines():
        m = _FENCE_LINE.match(line)
        if not m:
            continue
        marks, rest = m.group(1), m.group(2)
        if fence is None:
            if not (marks[0] == "`" and "`" in rest):  # a backtick fence's info string has no backticks
                fence = marks
        elif marks[0] == fence[0] and len(marks) >= len(fence) and not rest.strip():
            fence = None
    return fence


def close_fences(markdown: str) -> str:
    """`markdown` with a code block it leaves open closed, so what follows is not read as code."""
    fence = open_fence(markdown)
    return markdown if fence is None else f"{markdown.rstrip(chr(10))}\n{fence}"


def pending_calls(messages: list[Message]) -> list[tuple[Message, dict[str, Any] | None]]:
    """Each tool result with the call it answers (from the reply before it, matched by name in order)."""
    out: list[tuple[Message, dict[str, Any] | None]] = []
    pending: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "assistant":
            pending = list(message.tool_calls or [])
        elif message.role == "tool":
            index = next(
                (i for i, c in enumerate(pending) if (c.get("function") or {}).get("name") == message.tool_name), None
            )
            out.append((message, pending.pop(index) if index is not None else None))
    return out


def export_markdown(session: Session, messages: list[Message]) -> str:
    """The conversation as a Markdown document, message contents verbatim, tool calls and results fenced."""
    blocks = [f"# {session.title}", f"Model: `{session.model}`"]
    if session.system:
        blocks.append("\n".join(f"> {line}".rstrip() for line in session.system.splitlines()))
    headings = {"user": "You", "system": "System"}
    for message in messages:
        if message.role == "tool":
            blocks.append(f"### Tool result: `{message.tool_name}`")
            blocks.append(_fenced(message.content))
            continue
        if message.content or not message.tool_calls:
            author = message.model or session.model if message.role == "assistant" else None
            blocks.append(f"## {author or headings.get(message.role, message.role)}")
            blocks.append(close_fences(message.content) if message.role == "assistant" else message.content)
        for call in message.tool_calls or []:
            function = call.get("function", {})
            blocks.append(f"### Tool call: `{function.get('name')}`")
            blocks.append(_fenced(json.dumps(function.get("arguments", {}), indent=2, ensure_ascii=False), "json"))
        line = rate_line(message.stats) if message.role == "assistant" else None
        if line:
            blocks.append(line)
    return "\n\n".join(blocks) + "\n"
