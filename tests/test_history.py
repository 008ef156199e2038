from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.errors import LoamError
from app.history import (
    DEFAULT_TITLE,
    SCHEMA_VERSION,
    History,
    HistoryError,
    Message,
    Session,
    default_path,
    export_markdown,
)


@pytest.fixture
def history(loam_home: Path) -> Iterator[History]:
    with History() as h:
        yield h


def test_default_path_is_in_the_data_dir(loam_home: Path) -> None:
    assert default_path() == loam_home / "data" / "loam" / "chats.sqlite3"
    with History():
        assert default_path().is_file()


def test_sessions_and_messages_round_trip(history: History) -> None:
    session = history.create("llama3.2", system="Be terse.", options={"temperature": 0.2})
    assert session.title == DEFAULT_TITLE
    assert history.get(session.id) == session
    history.add_message(session.id, "user", "Hello")
    reply = history.add_message(session.id, "assistant", "Hi there.\n\n```py\nprint(1)\n```")
    messages = history.messages(session.id)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Hello"),
        ("assistant", "Hi there.\n\n```py\nprint(1)\n```"),
    ]
    assert messages[1] == reply
    again = history.get(session.id)
    assert (again.model, again.system, again.options) == ("llama3.2", "Be terse.", {"temperature": 0.2})


def test_get_missing_session_is_a_history_error(history: History) -> None:
    with pytest.raises(HistoryError, match="no chat session 42"):
        history.get(42)
    assert issubclass(HistoryError, LoamError)


def test_bad_role_is_refused(history: History) -> None:
    session = history.create("m")
    with pytest.raises(ValueError, match="role"):
        history.add_message(session.id, "narrator", "x")
    assert history.messages(session.id) == []


def test_sessions_newest_updated_first(history: History) -> None:
    assert history.latest() is None
    first = history.create("a")
    second = history.create("b")
    assert [s.id for s in history.sessions()] == [second.id, first.id]
    history.add_message(first.id, "user", "bump")
    assert [s.id for s in history.sessions()] == [first.id, second.id]
    history.update(second.id, model="c")
    assert history.latest() == history.get(second.id)
    assert history.get(second.id).updated > history.get(first.id).updated


def test_update_changes_only_given_fields(history: History) -> None:
    session = history.create("m", title="Mine", system="sys", options={"top_k": 5})
    changed = history.update(session.id, options={"top_k": 9})
    assert (changed.title, changed.model, changed.system, changed.options) == ("Mine", "m", "sys", {"top_k": 9})
    assert changed.updated > session.updated
    renamed = history.update(session.id, title="Renamed", system="")
    assert (renamed.title, renamed.system, renamed.options) == ("Renamed", "", {"top_k": 9})
    with pytest.raises(HistoryError):
        history.update(999, title="x")


def test_title_from_first_user_message(history: History) -> None:
    session = history.create("m")
    history.add_message(session.id, "system", "You are a pirate.")
    assert history.get(session.id).title == DEFAULT_TITLE
    history.add_message(session.id, "user", "\n  Why is the sky blue?  \nExplain simply.")
    assert history.get(session.id).title == "Why is the sky blue?"
    history.add_message(session.id, "user", "Another question")
    assert history.get(session.id).title == "Why is the sky blue?"


def test_long_first_line_is_cut_with_ellipsis(history: History) -> None:
    session = history.create("m")
    history.add_message(session.id, "user", "word " * 30)
    title = history.get(session.id).title
    assert len(title) <= 40
    assert title.endswith("…")
    assert title.startswith("word word")


def test_explicit_title_is_kept(history: History) -> None:
    session = history.create("m", title="Planning")
    history.add_message(session.id, "user", "Let us plan")
    assert history.get(session.id).title == "Planning"


def test_stats_json_round_trip(history: History) -> None:
    session = history.create("m")
    stats = {"eval_count": 12, "eval_duration": 142_500_000, "done_reason": "stop", "nested": {"a": [1, 2]}}
    history.add_message(session.id, "assistant", "ok", stats=stats)
    history.add_message(session.id, "user", "no stats")
    saved = history.messages(session.id)
    assert saved[0].stats == stats
    assert saved[1].stats is None


def test_clear_keeps_the_session(history: History) -> None:
    session = history.create("m", system="sys")
    history.add_message(session.id, "user", "one")
    history.clear(session.id)
    assert history.messages(session.id) == []
    assert history.get(session.id).system == "sys"


def test_delete_cascades_to_messages(history: History) -> None:
    keep = history.create("m")
    gone = history.create("m")
    history.add_message(keep.id, "user", "stay")
    history.add_message(gone.id, "user", "go")
    history.delete(gone.id)
    assert [s.id for s in history.sessions()] == [keep.id]
    count = history.db.execute("SELECT count(*) FROM messages WHERE session_id = ?", (gone.id,)).fetchone()[0]
    assert count == 0
    assert [m.content for m in history.messages(keep.id)] == ["stay"]


def test_copy_duplicates_settings_and_messages(history: History) -> None:
    source = history.create("qwen", system="sys", options={"seed": 3})
    history.add_message(source.id, "user", "q")
    history.add_message(source.id, "assistant", "a", stats={"eval_count": 1})
    saved = history.copy(source.id, "mymodel")
    assert saved.id != source.id
    assert (saved.title, saved.model, saved.system, saved.options) == ("mymodel", "qwen", "sys", {"seed": 3})
    copies = history.messages(saved.id)
    assert [(m.role, m.content, m.stats) for m in copies] == [
        ("user", "q", None),
        ("assistant", "a", {"eval_count": 1}),
    ]
    assert all(m.session_id == saved.id for m in copies)
    history.clear(source.id)
    assert len(history.messages(saved.id)) == 2


def test_reopen_finds_everything(loam_home: Path) -> None:
    with History() as first:
        session = first.create("m", options={"num_ctx": 4096})
        first.add_message(session.id, "user", "remember me")
    with History() as second:
        reopened = second.get(session.id)
        assert second.sessions() == [reopened]
        assert reopened.options == {"num_ctx": 4096}
        assert reopened.title == "remember me"
        assert [m.content for m in second.messages(session.id)] == ["remember me"]


def test_schema_version_and_pragmas(history: History) -> None:
    assert history.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert history.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert history.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_newer_schema_asks_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(HistoryError, match="newer loam") as raised:
        History(path)
    message = str(raised.value)
    assert "upgrade loam" in message
    assert "\n" not in message


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    path.write_bytes(b"this is not sqlite at all, just some notes\n" * 100)
    with pytest.raises(HistoryError, match="move it aside") as raised:
        History(path)
    assert str(path) in str(raised.value)


def test_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "chats.sqlite3"
    with History(path) as h:
        h.create("m")
    assert path.is_file()


def test_calls_from_worker_threads(history: History) -> None:
    session = history.create("m")
    errors: list[Exception] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                history.add_message(session.id, "assistant", f"{n}-{i}")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(history.messages(session.id)) == 80


def _session(system: str = "") -> Session:
    return Session(id=1, title="Sky talk", model="llama3.2:1b", system=system, options={}, created=0.0, updated=0.0)


def test_export_markdown() -> None:
    messages = [
        Message(1, 1, "user", "Why is the sky blue?", None, 0.0),
        Message(
            2,
            1,
            "assistant",
            "Rayleigh *scattering*.\n\n- short waves",
            {"eval_count": 12, "eval_duration": 142_517_814},
            0.0,
        ),
    ]
    text = export_markdown(_session("Be brief.\nUse lists."), messages)
    assert text.startswith("# Sky talk\n")
    assert "llama3.2:1b" in text.splitlines()[2]
    assert "> Be brief.\n> Use lists." in text
    assert "## You\n\nWhy is the sky blue?" in text
    assert "## llama3.2:1b\n\nRayleigh *scattering*.\n\n- short waves" in text
    assert "*12 tokens · 84.2 tokens/s*" in text
    assert text.index("## You") < text.index("## llama3.2:1b") < text.index("84.2 tokens/s")


def test_export_markdown_without_system_or_stats() -> None:
    messages = [
        Message(1, 1, "user", "hi", None, 0.0),
        Message(2, 1, "assistant", "hello", None, 0.0),
        Message(3, 1, "assistant", "again", {"eval_count": 3}, 0.0),
    ]
    text = export_markdown(_session(), messages)
    assert ">" not in text
    assert "tokens/s" not in text
    assert "*3 tokens*" in text


def test_the_history_is_private(loam_home: Path) -> None:
    with History() as h:
        h.add_message(h.create("m").id, "user", "a secret")
        files = [p for p in default_path().parent.iterdir() if p.name.startswith("chats.sqlite3")]
        assert len(files) >= 2  # the database and its write-ahead log
        assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o600 for p in files}
