"""One question, one answer: `loam ask` and the one-shot form of `loam run`.

The answer goes to stdout as it streams and nothing else does, so the command
works in pipelines; progress, thinking and the timing figures go to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, NamedTuple, TextIO

from app import config
from app.client import Client, ServerError, ensure_server
from app.errors import LoamError
from app.stats import Stats, verbose_lines
from app.store.parameters import ParameterError, coerce


class Question(NamedTuple):
    """What `loam ask` was asked, after reading its arguments and stdin (a NamedTuple: see app.stats.Stats)."""

    prompt: str
    model: str
    system: str | None = None
    format: str | None = None
    keep_alive: str | None = None
    stream: bool = True
    verbose: bool = False
    options: dict[str, Any] = {}  # the defaults are shared: never changed in place
    tools: list[str] = []
    mcp: list[str] = []
    yes: bool = False

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.prompt}]


def default_model() -> str:
    """config.toml's `default_model`, else the catalog's default."""
    from app.store.catalog import Catalog

    return config.default_model(Catalog.default_name(config.paths().user_catalog))


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
    if question.tools or question.mcp:
        return answer_with_tools(question, out, err)
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
    from app.display import ProgressDisplay
    from app.store.progress import ProgressEvent

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


# -- tools: --tools NAME,... and --mcp NAME ------------------------------------------


class ToolFlagError(LoamError):
    """--tools, --mcp or --yes cannot be used as given (a usage error, so exit code 2)."""

    exit_code = 2


def parse_tools(value: str | None) -> list[str]:
    """`--tools current_time,read_file` as a list of built-in tool names; an unknown one is a one-line error."""
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    for name in names:
        if name not in config.BUILTIN_TOOL_NAMES:
            known = ", ".join(config.BUILTIN_TOOL_NAMES)
            raise ToolFlagError(f"--tools: there is no built-in tool {name!r}; the built-in tools are {known}")
    return list(dict.fromkeys(names))


def check_tools(question: Question, stdin: TextIO, err: TextIO) -> None:
    """Refuse tools without --yes when there is no terminal to ask on, and names config.toml does not know."""
    if not (question.tools or question.mcp):
        return
    if not question.yes and not (stdin.isatty() and err.isatty()):
        raise ToolFlagError("tools need someone to allow each call, and there is no terminal to ask on; add --yes")
    servers = config.mcp_servers()
    for name in question.mcp:
        if name not in servers:
            known = ", ".join(servers) or "none configured"
            raise ToolFlagError(f"--mcp: no [mcp.{name}] table in config.toml (servers: {known})")
    if "read_file" in question.tools and not config.read_roots():
        raise ToolFlagError('--tools read_file needs a folder: add [tools] read_roots = ["~/notes"] to config.toml')


def summary(text: str, limit: int = 100) -> str:
    """The first line of a tool result, cut to `limit`, with the size of the rest."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "(empty)")
    short = first if len(first) <= limit else first[: limit - 1] + "…"
    return short + (f" ({len(text)} characters)" if len(text) > len(short) + 1 else "")


def answer_with_tools(question: Question, out: TextIO, err: TextIO, stdin: TextIO | None = None) -> int:
    """Answer with the tools named, their calls and results summed up on `err`; `out` gets the final answer."""
    import asyncio

    host = ensure_server()
    client = Client(host)
    try:
        try:
            show = client.show(question.model)
        except ServerError as e:
            if e.status != 404:
                raise
            pull_with_progress(client, question.model, err)
            show = client.show(question.model)
    finally:
        client.close()
    if "tools" not in (show.get("capabilities") or []):
        raise LoamError(f'"{question.model}" does not support tools; drop --tools and --mcp, or pick another model')
    final = asyncio.run(_tool_turn(question, host, out, err, stdin or sys.stdin))
    if question.verbose and final is not None:
        err.write("\n" + "\n".join(verbose_lines(Stats.from_response(final))) + "\n")
        err.flush()
    return 0


async def _tool_turn(question: Question, host: str, out: TextIO, err: TextIO, stdin: TextIO) -> dict[str, Any] | None:
    import asyncio
    import json

    from app.async_client import AsyncClient
    from app.tools.builtin import builtin_tools
    from app.tools.calls import ToolCall
    from app.tools.loop import Decision, Toolbox, ToolResult, TurnEvents, run_turn
    from app.tools.mcp import McpManager

    class Events(TurnEvents):
        async def chunk(self, chunk: dict[str, Any]) -> None:
            thinking = (chunk.get("message") or {}).get("thinking")
            if thinking and err.isatty():
                err.write(f"\x1b[2m{thinking}\x1b[0m")
                err.flush()

        async def message(self, message: dict[str, Any], final: dict[str, Any] | None) -> None:
            text = message["content"] if message["role"] == "assistant" else ""
            if text and message.get("tool_calls"):
                err.write(text.rstrip("\n") + "\n")  # words said on the way to a call are not the answer
            elif text:
                out.write(text if text.endswith("\n") else text + "\n")
                out.flush()

        async def tool_result(self, call: ToolCall, decision: Decision, result: ToolResult | None) -> None:
            shown = json.dumps(call.arguments, ensure_ascii=False)
            outcome = "not run" if result is None else ("error: " if result.is_error else "") + summary(result.text)
            err.write(f"tool {call.name} {shown} -> {outcome}\n")
            err.flush()

    async def confirm(call: ToolCall) -> Decision:
        if question.yes:
            return "chat"
        shown = json.dumps(call.arguments, ensure_ascii=False)
        err.write(f"run tool {call.name} {shown}? [o]nce, [a]lways in this answer, [d]eny: ")
        err.flush()
        line = (await asyncio.to_thread(stdin.readline)).strip().lower()
        return {"o": "once", "once": "once", "a": "chat", "always": "chat"}.get(line, "deny")  # type: ignore[return-value]

    client = AsyncClient(host)
    manager = McpManager({name: config.mcp_servers()[name] for name in question.mcp}) if question.mcp else None
    try:
        groups = [builtin_tools(question.tools, config.read_roots())]
        for name in question.mcp:
            assert manager is not None
            groups.append(await manager.tools(name))
        box = Toolbox.of(groups)
        for note in box.notes:
            err.write(f"note: {note}\n")
        chat: dict[str, Any] = {"format": question.format, "keep_alive": question.keep_alive, "stream": question.stream}
        outcome = await run_turn(
            client, question.model, question.messages(), box, confirm, events=Events(), options=question.options, **chat
        )
    finally:
        await client.aclose()
        if manager is not None:
            await manager.close()
    if outcome.hit_limit:
        raise LoamError(f"the model was still calling tools after {outcome.steps} steps, so there is no answer")
    return outcome.final
