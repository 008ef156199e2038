"""Model parameters: one typed table for Modelfiles, the catalog and (later) API options."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import CatalogError
from app.store.catalog import Catalog
from app.store.parameters import PARAMETERS, ParameterError, coerce


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("num_ctx", "4096", 4096),
        ("num_gpu", "-1", -1),
        ("seed", "-1", -1),
        ("num_predict", "-2", -2),
        ("temperature", "0.7", 0.7),
        ("temperature", "1", 1.0),
        ("top_p", "1", 1.0),
        ("repeat_penalty", " 1.1 ", 1.1),
        ("presence_penalty", "-1.5", -1.5),
        ("use_mmap", "false", False),
        ("use_mmap", "TRUE", True),
        ("stop", "<|im_end|>", ["<|im_end|>"]),
    ],
)
def test_text_values_take_their_type(name: str, text: str, expected: object) -> None:
    value = coerce(name, text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("num_ctx", "4k", "num_ctx takes a whole number, got '4k'"),
        ("num_ctx", "0", "num_ctx must be at least 1, got 0"),
        ("num_ctx", "2048.5", "whole number"),
        ("top_k", "-3", "top_k must be at least 0"),
        ("top_p", "1.5", "top_p must be between 0 and 1, got 1.5"),
        ("temperature", "hot", "temperature takes a number"),
        ("temperature", "nan", "finite"),
        ("temperature", "-0.1", "at least 0"),
        ("use_mmap", "maybe", "use_mmap takes true or false"),
        ("stop", "", "stop takes non-empty text"),
        ("num_thread", True, "whole number"),
    ],
)
def test_bad_values_name_the_parameter(name: str, value: object, message: str) -> None:
    with pytest.raises(ParameterError, match=message.replace("(", r"\(")):
        coerce(name, value)


def test_unknown_parameter_suggests_the_close_one() -> None:
    with pytest.raises(ParameterError, match="unknown parameter 'temprature'; did you mean temperature"):
        coerce("temprature", "1")


def test_json_and_toml_values_are_accepted_as_typed() -> None:
    assert coerce("num_ctx", 2048.0) == 2048
    assert coerce("stop", ["a", "b"]) == ["a", "b"]
    assert coerce("use_mmap", True) is True


def test_every_issue_parameter_is_known() -> None:
    expected = (
        "num_ctx num_batch num_gpu main_gpu num_thread num_keep seed num_predict top_k top_p min_p typical_p "
        "repeat_last_n temperature repeat_penalty presence_penalty frequency_penalty stop use_mmap num_parallel "
        "ignore_eos tool_choice draft_num_predict stream_interval"
    ).split()
    assert sorted(PARAMETERS) == sorted(expected)


def test_tool_choice_is_a_word() -> None:
    assert coerce("tool_choice", " required ") == "required"
    with pytest.raises(ParameterError, match="tool_choice takes a word of text"):
        coerce("tool_choice", 3)


def test_catalog_parameters_are_checked_with_the_same_table(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[models."x:1"]\nsources = [{ path = "x.gguf" }]\nparameters = { top_p = 3 }\n')
    with pytest.raises(CatalogError, match=r"\[models.'x:1'\]: parameters: top_p must be between 0 and 1"):
        Catalog.from_file(path)
    path.write_text('[models."x:1"]\nsources = [{ path = "x.gguf" }]\nparameters = { stop = "END", num_ctx = 512 }\n')
    entry = next(iter(Catalog.from_file(path).entries.values()))
    assert entry.parameters == {"stop": ["END"], "num_ctx": 512}


def test_num_parallel_is_a_load_option_over_the_servers_slot_count() -> None:
    from app.server.options import load_options, merged

    assert load_options(merged({}, {}), None, 2).parallel == 2
    assert load_options(merged({}, {"num_parallel": 8}), None, 2).parallel == 8
    with pytest.raises(ValueError, match="num_parallel"):
        merged({}, {"num_parallel": 0})
