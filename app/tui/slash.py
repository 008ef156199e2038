"""Slash commands typed into the chat input, as in `ollama run`.

`parse` turns a line into a command value or raises SlashError with a one-line
message; the chat app carries the command out. A line is a command when its
first character is "/"; a line starting with "//" is an ordinary message whose
leading slash was escaped (`unescape` removes the escape).
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from app.errors import LoamError
from app.store.names import ModelName
from app.store.parameters import DEPRECATED, PARAMETERS, ParameterError, coerce, unknown_message

ParameterValue: TypeAlias = int | float | bool | list[str]


class SlashError(LoamError):
    """A slash command that cannot be carried out as typed; the message says why."""


@dataclass(frozen=True)
class SetParameter:
    """Set a model parameter for this chat; `value` already has the parameter's type."""

    name: str
    value: ParameterValue


@dataclass(frozen=True)
class UnsetParameter:
    """Drop a parameter set in this chat, so the model's own value applies again."""

    name: str


@dataclass(frozen=True)
class SetSystem:
    """Replace the system message; empty text removes it."""

    text: str


@dataclass(frozen=True)
class SetVerbose:
    """Show (True) or hide (False) the generation stats after each reply."""

    enabled: bool


@dataclass(frozen=True)
class Show:
    """Show one piece of model information: info, modelfile, parameters, system, template, license, measured."""

    what: str


@dataclass(frozen=True)
class Load:
    """Switch the chat to another model, or to a session saved under that name."""

    model: str


@dataclass(frozen=True)
class Save:
    """Save the current chat (model, parameters, system message, messages) as a new model."""

    name: str


@dataclass(frozen=True)
class Clear:
    """Forget the conversation so far."""


@dataclass(frozen=True)
class Bye:
    """Leave the chat."""


@dataclass(frozen=True)
class Help:
    """Show help: all commands ("") or one topic ("set", "show", "shortcuts")."""

    topic: str = ""


@dataclass(frozen=True)
class Tools:
    """List this chat's tools (action ""), or turn one on or off ("on"/"off" with the tool or MCP server's name)."""

    action: str = ""
    name: str = ""


Command: TypeAlias = (
    SetParameter | UnsetParameter | SetSystem | SetVerbose | Show | Load | Save | Clear | Bye | Help | Tools
)

SET_SUBCOMMANDS = ("parameter", "system", "verbose", "quiet")
UNSET_SUBCOMMANDS = ("parameter", "system")
SHOW_TOPICS = ("info", "modelfile", "parameters", "system", "template", "license", "measured")
HELP_TOPICS = ("shortcuts", "set", "show")

HELP = """\
Available commands:
  /set            Set a parameter, the system message or verbose mode (/help set)
  /unset          Unset a parameter or the system message
  /show           Show model information (/help show)
  /load MODEL     Load a model or a saved session
  /save NAME      Save the current session as a model
  /clear          Clear the conversation
  /tools          List the tools; /tools on NAME, /tools off NAME for this chat
  /bye, /exit     Leave the chat
  /?, /help       Help for a command: /help set, /help show, /help shortcuts

Start a message with // to send it with a leading /."""


def _parameter_lines() -> str:
    width = max(len(name) for name in PARAMETERS)
    return "\n".join(f"  {name:<{width}}  {spec.meaning}" for name, spec in PARAMETERS.items())


SET_HELP = f"""\
Available commands:
  /set parameter NAME VALUE   Set a parameter (stop takes several values)
  /set system TEXT            Set the system message; \"\"\"TEXT\"\"\" on one line works too
  /set verbose                Show generation stats after each reply
  /set quiet                  Hide generation stats
  /unset parameter NAME       Go back to the model's value for a parameter
  /unset system               Remove the system message

Parameters:
{_parameter_lines()}"""

SHOW_HELP = """\
Available commands:
  /show info         Details about this model
  /show modelfile    The Modelfile of this model
  /show parameters   Parameters of this model and of this chat
  /show system       The system message
  /show template     The prompt template
  /show license      The model's license
  /show measured     What loam bench and loam eval measured of it here"""


def parse(line: str) -> Command | None:
    """The command typed on `line`, or None when the line is a message to send.

    Raises SlashError for a command that is unknown, incomplete or has a bad value.
    """
    text = line.rstrip()
    if not text.startswith("/") or text.startswith("//"):
        return None
    word, rest = _head(text)
    handler = _HANDLERS.get(word)
    if handler is None:
        raise SlashError(_unknown_command(word))
    return handler(rest)


def unescape(line: str) -> str:
    """A message typed with a leading "//" as the text to send, with a single "/"."""
    return line[1:] if line.startswith("//") else line


def _head(text: str) -> tuple[str, str]:
    """The first word of `text` and the rest, with surrounding whitespace removed."""
    parts = text.strip().split(maxsplit=1)
    if not parts:
        return "", ""
    return parts[0], parts[1] if len(parts) > 1 else ""


def _split(text: str, command: str) -> list[str]:
    """Shell-like words of `text`, so quoted values may hold spaces."""
    try:
        return shlex.split(text)
    except ValueError as error:
        problem = str(error).lower()
        raise SlashError(
            f"cannot read {command}: {problem}; check for an unbalanced quote or a trailing backslash"
        ) from None


def _suggest(word: str, choices: tuple[str, ...] | list[str], cutoff: float = 0.6) -> str:
    """A "(did you mean X?)" hint for a near miss, case ignored; "" when nothing is close."""
    lowered = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=cutoff)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def _unknown_command(word: str) -> str:
    if word == "/":
        return "empty command; type /help for the list"
    # Command words are short, so a closer match is asked for: "/foo" is not a near miss of "/tools".
    return f"unknown command {word!r}{_suggest(word, list(_HANDLERS), cutoff=0.7)}; type /help for the list"


def _unknown_choice(command: str, given: str, choices: tuple[str, ...]) -> str:
    listing = ", ".join(choices)
    if not given:
        return f"{command} needs one of: {listing}"
    return f"unknown {command} option {given!r}{_suggest(given, choices)}; use one of: {listing}"


def _parse_set(rest: str) -> Command:
    sub, args = _head(rest)
    if sub == "parameter":
        return _set_parameter(_split(args, "/set parameter"))
    if sub == "system":
        return SetSystem(_system_text(args))
    if sub in ("verbose", "quiet"):
        _no_more(f"/set {sub}", args)
        return SetVerbose(sub == "verbose")
    raise SlashError(_unknown_choice("/set", sub, SET_SUBCOMMANDS))


def _set_parameter(words: list[str]) -> SetParameter:
    if not words:
        raise SlashError("usage: /set parameter NAME VALUE (/help set lists the parameters)")
    name, values = words[0], words[1:]
    _check_parameter_name(name)
    if not values:
        raise SlashError(f"usage: /set parameter {name} VALUE ({PARAMETERS[name].meaning})")
    if len(values) > 1 and PARAMETERS[name].kind is not list:
        raise SlashError(f"{name} takes one value, got {len(values)}; quote a value that holds spaces")
    try:
        value = coerce(name, values if name == "stop" else values[0])
    except ParameterError as error:
        raise SlashError(str(error)) from None
    return SetParameter(name, value)


def _check_parameter_name(name: str) -> None:
    if name in DEPRECATED:
        raise SlashError(f"parameter {name!r} is no longer supported and has no effect")
    if name not in PARAMETERS:
        raise SlashError(unknown_message(name))


def _system_text(args: str) -> str:
    """The system message as typed; \"\"\"...\"\"\" quoting on one line is removed."""
    text = args.strip()
    if text.startswith('"""'):
        if len(text) < 6 or not text.endswith('"""'):
            raise SlashError('unclosed """ in /set system; close it on the same line')
        text = text[3:-3].strip()
    if not text:
        raise SlashError("usage: /set system TEXT (use /unset system to remove it)")
    return text


def _parse_unset(rest: str) -> Command:
    sub, args = _head(rest)
    if sub == "system":
        _no_more("/unset system", args)
        return SetSystem("")
    if sub != "parameter":
        raise SlashError(_unknown_choice("/unset", sub, UNSET_SUBCOMMANDS))
    words = _split(args, "/unset parameter")
    if len(words) != 1:
        raise SlashError("usage: /unset parameter NAME")
    _check_parameter_name(words[0])
    return UnsetParameter(words[0])


def _parse_show(rest: str) -> Command:
    what, args = _head(rest)
    if what not in SHOW_TOPICS:
        raise SlashError(_unknown_choice("/show", what, SHOW_TOPICS))
    _no_more(f"/show {what}", args)
    return Show(what)


def _model_argument(command: str, rest: str, usage: str) -> str:
    """The single model name argument of /load or /save, checked as a store name."""
    words = _split(rest, command)
    if len(words) != 1:
        raise SlashError(f"usage: {command} {usage}")
    try:
        ModelName.parse(words[0])
    except LoamError as error:
        raise SlashError(str(error)) from None
    return words[0]


def _parse_help(rest: str) -> Command:
    topic, args = _head(rest)
    if topic and topic not in HELP_TOPICS:
        raise SlashError(f"no help on {topic!r}{_suggest(topic, HELP_TOPICS)}; topics: {', '.join(HELP_TOPICS)}")
    _no_more(f"/help {topic}".rstrip(), args)
    return Help(topic)


def _parse_tools(rest: str) -> Command:
    words = _split(rest, "/tools")
    if not words:
        return Tools()
    if words[0] not in ("on", "off"):
        raise SlashError(_unknown_choice("/tools", words[0], ("on", "off")))
    if len(words) != 2:
        raise SlashError(f"usage: /tools {words[0]} NAME (/tools lists the names)")
    return Tools(words[0], words[1])


def _no_more(command: str, args: str) -> None:
    if args.strip():
        raise SlashError(f"{command} takes no further arguments, got {args.strip()!r}")


def _bare(command: str, result: Command) -> Callable[[str], Command]:
    """A handler for a command that takes no arguments."""

    def handle(rest: str) -> Command:
        _no_more(command, rest)
        return result

    return handle


_HANDLERS: dict[str, Callable[[str], Command]] = {
    "/set": _parse_set,
    "/unset": _parse_unset,
    "/show": _parse_show,
    "/load": lambda rest: Load(_model_argument("/load", rest, "MODEL")),
    "/save": lambda rest: Save(_model_argument("/save", rest, "NAME")),
    "/clear": _bare("/clear", Clear()),
    "/tools": _parse_tools,
    "/bye": _bare("/bye", Bye()),
    "/exit": _bare("/exit", Bye()),
    "/help": _parse_help,
    "/?": _parse_help,
}

#: Every command word, aliases included, for completion in the chat input.
COMMANDS: tuple[str, ...] = tuple(_HANDLERS)
