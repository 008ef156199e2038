"""Slash commands in the chat input: what each line parses to, and the errors people see."""

from __future__ import annotations

import pytest

from app.errors import LoamError
from app.store.parameters import PARAMETERS
from app.tui.slash import (
    COMMANDS,
    HELP,
    SET_HELP,
    SHOW_HELP,
    SHOW_TOPICS,
    Bye,
    Clear,
    Command,
    Help,
    Load,
    Save,
    SetParameter,
    SetSystem,
    SetVerbose,
    Show,
    SlashError,
    UnsetParameter,
    parse,
    unescape,
)


def error_of(line: str) -> str:
    """The message of the SlashError that `line` raises."""
    with pytest.raises(SlashError) as caught:
        parse(line)
    return str(caught.value)


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("/set parameter temperature 0.2", "temperature", 0.2),
        ("/set parameter num_ctx 4096", "num_ctx", 4096),
        ("/set parameter seed -1", "seed", -1),
        ("/set parameter use_mmap false", "use_mmap", False),
        ('/set parameter stop "<|end|>" "###"', "stop", ["<|end|>", "###"]),
        ("/set parameter stop '<|im_end|>'", "stop", ["<|im_end|>"]),
        ('/set parameter stop "User: "', "stop", ["User: "]),
    ],
)
def test_set_parameter_types_the_value(line: str, name: str, value: object) -> None:
    command = parse(line)
    assert command == SetParameter(name, value)
    assert isinstance(command, SetParameter)
    assert type(command.value) is type(value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/set system You are a pirate.", SetSystem("You are a pirate.")),
        ("/set system You're terse;  answer in one line", SetSystem("You're terse;  answer in one line")),
        ('/set system """Answer only in "JSON"."""', SetSystem('Answer only in "JSON".')),
        ('/set system """  padded  """', SetSystem("padded")),
        ("/set verbose", SetVerbose(True)),
        ("/set quiet", SetVerbose(False)),
        ("/show info", Show("info")),
        ("/show license", Show("license")),
        ("/load smollm2:135m", Load("smollm2:135m")),
        ("/load example.com:5000/team/model:q4", Load("example.com:5000/team/model:q4")),
        ("/save my-pirate", Save("my-pirate")),
        ("/clear", Clear()),
        ("/bye", Bye()),
        ("/exit", Bye()),
        ("/help", Help("")),
        ("/?", Help("")),
        ("/? shortcuts", Help("shortcuts")),
        ("/help set", Help("set")),
        ("/help show", Help("show")),
        ("/unset parameter temperature", UnsetParameter("temperature")),
        ("/unset system", SetSystem("")),
        ("/bye   ", Bye()),
    ],
)
def test_commands_parse_to_their_values(line: str, expected: Command) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize("what", SHOW_TOPICS)
def test_every_show_topic_parses(what: str) -> None:
    assert parse(f"/show {what}") == Show(what)


@pytest.mark.parametrize("line", ["hello", "", "  /bye", "what is 1/2?", "//etc/hosts is a file", "//"])
def test_lines_that_are_messages_are_not_commands(line: str) -> None:
    assert parse(line) is None


def test_double_slash_escapes_a_leading_slash() -> None:
    assert unescape("//etc/hosts is a file") == "/etc/hosts is a file"
    assert unescape("//") == "/"
    assert unescape("a // b") == "a // b"
    assert unescape("/bye") == "/bye"


def test_unknown_parameter_suggests_the_close_name() -> None:
    message = error_of("/set parameter temprature 0.5")
    assert "unknown parameter 'temprature'" in message
    assert "did you mean temperature?" in message


def test_unknown_parameter_without_value_is_reported_as_unknown() -> None:
    assert "unknown parameter 'nonsense_knob'" in error_of("/set parameter nonsense_knob")


def test_retired_parameter_is_refused_by_name() -> None:
    assert "'mirostat' is no longer supported" in error_of("/set parameter mirostat 1")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("/set parameter num_ctx 4k", "num_ctx takes a whole number, got '4k'"),
        ("/set parameter top_p 1.5", "top_p must be between 0 and 1, got 1.5"),
        ("/set parameter temperature hot", "temperature takes a number, got 'hot'"),
        ("/set parameter use_mmap maybe", "use_mmap takes true or false"),
        ('/set parameter stop ""', "stop takes non-empty text"),
        ("/set parameter temperature 0.2 0.3", "temperature takes one value, got 2"),
    ],
)
def test_bad_values_are_refused_with_the_reason(line: str, fragment: str) -> None:
    assert fragment in error_of(line)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("/set parameter", "usage: /set parameter NAME VALUE"),
        ("/set parameter temperature", "usage: /set parameter temperature VALUE (sampling temperature"),
        ("/set system", "usage: /set system TEXT"),
        ('/set system """"""', "usage: /set system TEXT"),
        ("/load", "usage: /load MODEL"),
        ("/load one two", "usage: /load MODEL"),
        ("/save", "usage: /save NAME"),
        ("/unset parameter", "usage: /unset parameter NAME"),
    ],
)
def test_missing_arguments_show_the_usage(line: str, fragment: str) -> None:
    assert fragment in error_of(line)


@pytest.mark.parametrize(
    ("line", "listing"),
    [
        ("/set", "/set needs one of: parameter, system, verbose, quiet"),
        ("/set colour red", "use one of: parameter, system, verbose, quiet"),
        ("/show", "/show needs one of: info, modelfile, parameters, system, template, license, measured"),
        ("/show everything", "use one of: info, modelfile, parameters, system, template, license, measured"),
        ("/unset", "/unset needs one of: parameter, system"),
        ("/unset verbose", "use one of: parameter, system"),
    ],
)
def test_missing_or_unknown_subcommands_list_the_valid_ones(line: str, listing: str) -> None:
    assert listing in error_of(line)


def test_misspelt_subcommand_gets_a_suggestion() -> None:
    assert "did you mean parameter?" in error_of("/set paramter temperature 1")


def test_unknown_command_names_itself_and_points_to_help() -> None:
    assert error_of("/foo") == "unknown command '/foo'; type /help for the list"


@pytest.mark.parametrize(("line", "suggestion"), [("/sett", "/set"), ("/SHOW info", "/show"), ("/clea", "/clear")])
def test_unknown_command_close_to_a_known_one_gets_a_suggestion(line: str, suggestion: str) -> None:
    message = error_of(line)
    assert f"did you mean {suggestion}?" in message
    assert message.endswith("type /help for the list")


def test_a_lone_slash_is_an_empty_command() -> None:
    assert "empty command" in error_of("/")


@pytest.mark.parametrize("line", ["/load ../escape", "/save 'bad name!'", "/load model:", "/save a/b/c/d"])
def test_bad_model_names_are_refused(line: str) -> None:
    message = error_of(line)
    assert "model name" in message


def test_bad_model_name_message_is_the_store_s_message() -> None:
    assert error_of("/load model:") == "invalid model name 'model:': empty tag after ':'"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('/set parameter stop "<|end|>', "no closing quotation"),
        ("/load 'smollm2", "no closing quotation"),
        ("/set parameter stop end\\", "no escaped character"),
    ],
)
def test_unbalanced_quotes_are_named(line: str, problem: str) -> None:
    message = error_of(line)
    assert problem in message
    assert "unbalanced quote" in message


def test_unclosed_triple_quotes_in_system_are_refused() -> None:
    assert 'unclosed """' in error_of('/set system """You are a pirate.')


def test_unset_needs_a_known_parameter() -> None:
    assert "did you mean num_ctx?" in error_of("/unset parameter num_cxt")


@pytest.mark.parametrize(
    "line", ["/clear now", "/bye bye", "/set verbose please", "/show info extra", "/help set more"]
)
def test_commands_without_arguments_refuse_extra_words(line: str) -> None:
    assert "takes no further arguments" in error_of(line)


def test_unknown_help_topic_lists_the_topics() -> None:
    message = error_of("/help sett")
    assert "did you mean set?" in message
    assert "topics: shortcuts, set, show" in message


def test_commands_are_case_sensitive() -> None:
    assert "unknown command '/BYE'" in error_of("/BYE")


def test_slash_error_is_a_loam_error_with_one_line() -> None:
    with pytest.raises(LoamError) as caught:
        parse("/set parameter stop 'a")
    assert "\n" not in str(caught.value)


def test_commands_are_frozen() -> None:
    command = parse("/show info")
    with pytest.raises(AttributeError):
        command.what = "license"  # type: ignore[union-attr,misc]


def test_help_texts_cover_every_command_and_parameter() -> None:
    for word in COMMANDS:
        assert word in HELP
    for name in PARAMETERS:
        assert name in SET_HELP
    for topic in SHOW_TOPICS:
        assert f"/show {topic}" in SHOW_HELP
    assert "/set verbose" in SET_HELP and "/unset system" in SET_HELP
