"""Keep-alive values as Ollama takes them: seconds, Go durations, negative for forever."""

from __future__ import annotations

import math

import pytest

from app.durations import parse_keep_alive


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (300, 300.0), ("300", 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("250ms", 0.25)],
)
def test_numbers_and_go_durations(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [-1, "-1", "-5m"])
def test_negative_means_forever(value: object) -> None:
    assert parse_keep_alive(value) == math.inf


@pytest.mark.parametrize("value", [True, "soon", "5 minutes", "5m3", None, [5], "m"])
def test_anything_else_is_refused_in_words(value: object) -> None:
    with pytest.raises(ValueError, match="is not a duration; use e.g. 5m"):
        parse_keep_alive(value)
