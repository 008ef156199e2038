"""The Modelfile parser and writer: Ollama's syntax, typed parameters, line-numbered errors."""

from __future__ import annotations

import pytest

from app.errors import ModelfileError
from app.store.modelfile import Modelfile, parse, render
from tests.conftest import USER_NOTES


def test_the_users_modelfile_parses() -> None:
    mf = parse(USER_NOTES)
    assert mf.base == "./model.gguf"
    assert mf.template == "{{ .System }}\n<human>: {{ .Prompt }}\n<bot>:\n"
    assert mf.system == "A conversation between a curious human and an AI bot."
    assert mf.parameters == {"stop": ["<human>:", "<bot>:"]}
    assert mf.warnings == []


def test_case_comments_bare_and_quoted_values() -> None:
    mf = parse(
        "# a comment line\n"
        "from smollm2:135m\n"
        "\n"
        "  Parameter temperature 0.2\n"
        "PARAMETER num_ctx   4096  \n"
        "parameter use_mmap false\n"
        "system You are terse.   \n"
        'MESSAGE user "What is 2 + 2?"\n'
        'message Assistant """4\n"""\n'
        "License MIT\n"
        'LICENSE """Second\nlicense"""\n'
    )
    assert mf.base == "smollm2:135m"
    assert mf.parameters == {"temperature": 0.2, "num_ctx": 4096, "use_mmap": False}
    assert mf.system == "You are terse."
    assert mf.messages == [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4\n"}]
    assert mf.licenses == ["MIT", "Second\nlicense"]


def test_a_quoted_value_may_span_lines_and_keeps_inner_quotes() -> None:
    mf = parse('FROM x\nSYSTEM "Say \\"hi\\" and\nthen stop"\nTEMPLATE """He said "no"."""\n')
    assert mf.system == 'Say \\"hi\\" and\nthen stop'
    assert mf.template == 'He said "no".'


def test_crlf_and_a_byte_order_mark_are_read() -> None:
    mf = parse('\ufeffFROM x\r\nSYSTEM """a\r\nb"""\r\n')
    assert mf.system == "a\nb"


def test_repeats_replace_with_a_warning_that_names_both_lines() -> None:
    mf = parse("FROM x\nSYSTEM one\nPARAMETER top_k 10\nSYSTEM two\nPARAMETER top_k 20\n", "MF")
    assert mf.system == "two" and mf.parameters == {"top_k": 20}
    assert mf.warnings == [
        "MF:4: SYSTEM replaces the one on line 2",
        "MF:5: PARAMETER top_k replaces the one on line 3",
    ]


def test_ollama_deprecated_parameters_are_ignored_with_a_warning() -> None:
    mf = parse("FROM x\nPARAMETER mirostat 2\n")
    assert mf.parameters == {}
    assert "deprecated" in mf.warnings[0] and mf.warnings[0].startswith("Modelfile:2:")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("SYSTEM hi\n", "Modelfile:1: no FROM instruction"),
        ("# only a comment\n", "Modelfile:1: no FROM instruction"),
        ("FROM x\n\nFORM y\n", "Modelfile:3: unknown instruction 'FORM'; did you mean FROM?"),
        ("FROM x\nRUN make\n", "Modelfile:2: unknown instruction 'RUN'"),
        ("FROM x\nREQUIRES 0.5\n", "Modelfile:2: REQUIRES is an Ollama instruction loam does not support"),
        ("FROM x\nPARAMETER temperature hot\n", "Modelfile:2: PARAMETER temperature takes a number, got 'hot'"),
        ("FROM x\nPARAMETER num_ctx 0\n", "Modelfile:2: PARAMETER num_ctx must be at least 1"),
        ("FROM x\nPARAMETER tempreature 1\n", "Modelfile:2: unknown parameter 'tempreature'; did you mean temperature"),
        ("FROM x\nPARAMETER temperature\n", "Modelfile:2: PARAMETER TEMPERATURE needs a value"),
        ('FROM x\nSYSTEM """never\nclosed\n', 'Modelfile:2: SYSTEM: the """ opened here is never closed'),
        ('FROM x\nPARAMETER stop "<end>\n', 'Modelfile:2: PARAMETER: the " opened here is never closed'),
        ("FROM x\nSYSTEM\n", "Modelfile:2: SYSTEM needs a value"),
        ("FROM x\nMESSAGE bot hello\n", "Modelfile:2: MESSAGE role 'bot' must be one of system, user, assistant"),
        ("FROM x\nTEMPLATE ok\nFROM y\n", "Modelfile:3: a second FROM (the first is on line 1)"),
    ],
)
def test_bad_modelfiles_name_the_line(text: str, error: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse(text)
    assert str(caught.value).startswith(error), str(caught.value)


def test_an_error_after_a_multiline_value_counts_its_lines() -> None:
    with pytest.raises(ModelfileError, match="^MF:6: unknown instruction"):
        parse('FROM x\nTEMPLATE """a\nb\nc\n"""\nOOPS 1\n', "MF")


TRICKY = [
    "plain",
    "  leading and trailing spaces  ",
    "ends with a newline\n",
    '"starts with a quote',
    'ends with a quote"',
    'has "inner" quotes\nand two lines',
    'a line ending in a quote"\nnext',
    '""',
    "",
    "# not a comment",
    'triple """ in the middle of a line',
]


@pytest.mark.parametrize("value", TRICKY)
def test_written_values_parse_back_exactly(value: str) -> None:
    mf = Modelfile(
        source="Modelfile",
        base="/store/blobs/sha256-ab",
        base_line=1,
        template=value,
        system=value,
        parameters={"stop": [value or "x", "<|end|>"], "temperature": 0.1, "num_ctx": 8, "use_mmap": True},
        messages=[{"role": "user", "content": value}],
        licenses=[value],
    )
    again = parse(render(mf, "generated\nby a test"))
    for attr in ("base", "template", "system", "parameters", "messages", "licenses"):
        assert getattr(again, attr) == getattr(mf, attr), attr


def test_a_value_that_cannot_be_written_says_so() -> None:
    mf = Modelfile(source="", base="x", base_line=1, system='ends in """\nmore')
    with pytest.raises(ModelfileError, match="cannot be written in a Modelfile"):
        render(mf)
