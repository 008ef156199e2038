"""One question, one answer: `loam ask` and the one-shot form of `loam run`.

The answer goes to stdout as it streams and nothing else does, so the command
works in pipelines; progress, thinking and the timing figures go to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from app import config
from app.client import Client, ServerError, ensure_server
from app.display import ProgressDisplay
from app.errors import LoamError
from app.stats import Stats, verbose_lines
from app.store.catalog import Catalog
from app.store.parameters import ParameterError, coerce
from app.store.progress import ProgressEvent


@dataclass
class Question:
    """What `loam ask` was asked, after reading its arguments and stdin."""

    prompt: str
    model: str
    system: str | None = None
    format: str | None = None
    keep_alive: str | None = None
    stream: bool = True
    verbose: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.prompt}]


def default_model() -> str:
    """config.toml's `default_model`, else the catalog's default."""
    return config.default_model(Catalog.load(config.paths().user_catalog).default)


def combined_prompt(prompt: str | None, stdin: TextIO) -> str:
    """The piped input (when stdin is not a terminal) followed by the prompt, as `ollama run` joins them."""
    parts = []
    if not stdin.isatty():
        piped = stdin.read()
        if piped.strip():
            parts.append(piped.rstrip("\n"))
    if prompt:
        parts.append(prompt)
    if not parts:
        raise LoamError('nothing to ask: give a prompt (loam ask "...") or pipe text into loam ask')
    return "\n\n".join(parts)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`-o NAME=VALUE` flags as typed model options; a bad one is a one-line error."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise LoamError(f"-o {pair!r} is not NAME=VALUE; write e.g. -o temperature=0.2")
        try:
            typed = coerce(name.strip(), value.strip())
        except ParameterError as e:
            raise LoamError(f"-o {pair}: {e}") from None
        if isinstance(typed, list):
            options[name.strip()] = options.get(name.strip(), []) + typed
        else:
            options[name.strip()] = typed
    return options


def answer(question: Question, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Ask the server (starting one if needed), stream the answer to `out`, and figures to `err`."""
    out, err = out or sys.stdout, err or sys.stderr
    client = Client(ensure_server())
    try:
        try:
            final = _write_answer(_chunks(client, question), out, err)
        except ServerError as e:
            if e.status != 404:
                raise
            pull_with_progress(client, question.model, err)
            final = _write_answer(_chunks(client, question), out, err)
    finally:
        client.close()
    if question.verbose and final is not None:
        err.write("\n" + "\n".join(verbose_lines(Stats.from_response(final))) + "\n")
        err.flush()
    return 0


def _chunks(client: Client, question: Question) -> Iterator[dict[str, Any]]:
    return client.chat(
        question.model,
        question.messages(),
        options=question.options,
        format=question.format,
        keep_alive=question.keep_alive,
        stream=question.stream,
    )


def _write_answer(chunks: Iterator[dict[str, Any]], out: TextIO, err: TextIO) -> dict[str, Any] | None:
    """Copy content to `out` as it arrives; thinking goes to a terminal's stderr, dimmed, or nowhere."""
    final, ended_with_newline, wrote = None, True, False
    thinking_shown = err.isatty()
    try:
        for chunk in chunks:
            message = chunk.get("message") or {}
            if message.get("thinking") and thinking_shown:
                err.write(f"\x1b[2m{message['thinking']}\x1b[0m")
                err.flush()
            text = message.get("content") or ""
            if text:
                out.write(text)
                out.flush()
                wrote, ended_with_newline = True, text.endswith("\n")
            if chunk.get("done"):
                final = chunk
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()  # on Ctrl+C this drops the connection, and the server cancels the generation
    if wrote and not ended_with_newline:
        out.write("\n")
        out.flush()
    return final


def pull_with_progress(client: Client, name: str, err: TextIO) -> None:
    """Have the server pull a model, drawing its progress on `err`."""
    err.write(f"{name} is not in the store; pulling it\n")
    display = ProgressDisplay(err)
    try:
        for chunk in client.pull(name):
            display(
                ProgressEvent(
                    str(chunk.get("status", "")), chunk.get("digest"), chunk.get("total"), chunk.get("completed")
                )
            )
    finally:
        display.close()
