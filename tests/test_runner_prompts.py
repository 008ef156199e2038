"""The prompt grammar and logit_bias requests carry, parsed against a real vocabulary and fuzzed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.runner.model import Model
from app.runner.options import parse_args
from app.runner.prompts import MAX_PROMPTS, is_multi, parse_logit_bias, split_prompts, tokenize_prompt


@pytest.fixture(scope="module")
def model(tiny_gguf: Path) -> Iterator[Model]:
    m = Model(parse_args(["--model", str(tiny_gguf), "--ctx-size", "256", "--threads", "1"]))
    yield m
    m.close()


def test_prompt_shapes(model: Model) -> None:
    text = model.tokenize("the cat")
    assert tokenize_prompt(model, "the cat") == text
    assert tokenize_prompt(model, {"prompt_string": "the cat"}) == text
    assert tokenize_prompt(model, [5, 6]) == [5, 6]
    assert tokenize_prompt(model, ["the cat", 7]) == [*text, 7]  # specials only where it starts with text
    assert tokenize_prompt(model, [7, "the cat"]) == [7, *model.tokenize("the cat", add_special=False)]
    assert is_multi(["a", [1]]) and not is_multi([1, "a"]) and not is_multi("a")
    assert split_prompts([[1], "a"]) == [[1], "a"] and split_prompts([1, 2]) == [[1, 2]]
    with pytest.raises(ValueError, match="must not be empty"):
        split_prompts([])
    with pytest.raises(ValueError, match="at most"):
        split_prompts(["a"] * (MAX_PROMPTS + 1))
    with pytest.raises(ValueError, match="out of range"):
        tokenize_prompt(model, [model.n_vocab])
    with pytest.raises(ValueError, match="elements must be"):
        tokenize_prompt(model, [[1]])


def test_logit_bias_shapes(model: Model) -> None:
    cat = model.tokenize("cat", add_special=False)
    assert parse_logit_bias(model, [[5, -1.5], [6, False]]) == [(5, -1.5), (6, -math.inf)]
    assert parse_logit_bias(model, {"5": 2, "cat": -100}) == [(5, 2.0), *[(t, -100.0) for t in cat]]
    assert parse_logit_bias(model, [["cat", 1]]) == [(t, 1.0) for t in cat]
    # shapes llama-server skips are skipped: a bad pair, a bias that is not a number, an id out of range
    assert parse_logit_bias(model, [[5], [5, "x"], [model.n_vocab, 1], 7]) == []
    assert parse_logit_bias(model, "nonsense") == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON)
def test_any_json_prompt_parses_or_gets_a_value_error(model: Model, value: object) -> None:
    try:
        for prompt in split_prompts(value):
            assert all(0 <= t < model.n_vocab for t in tokenize_prompt(model, prompt))
    except ValueError:
        pass


@settings(max_examples=300, deadline=None)
@given(value=JSON)
def test_any_json_logit_bias_parses_to_valid_tokens(model: Model, value: object) -> None:
    for token, bias in parse_logit_bias(model, value):
        assert 0 <= token < model.n_vocab and isinstance(bias, float) and not math.isnan(bias) and bias <= 1e30
