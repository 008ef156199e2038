"""The tool loop against a real `loam serve` with smollm2:135m-tools (a Hermes <tool_call> template),
and `loam ask --tools/--mcp` as a person runs it.

SmolLM2 135M does not call a tool on its own (asked for the time at temperature 0 it writes
Python instead), so the tests force the first call with the documented tool_choice option;
the loop lets the model answer freely after that first request.
"""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from app.async_client import AsyncClient
from app.config import McpServer
from app.tools.builtin import builtin_tools
from app.tools.calls import ToolCall
from app.tools.loop import DENIED, NOT_RUN, Decision, Tool, Toolbox, ToolResult, run_turn
from app.tools.mcp import McpManager
from tests.conftest import run_loam
from tests.runner_process import REPO
from tests.server_process import ServerProcess, clone_store

MODEL = "smollm2:135m-tools"
FIXTURE = str(REPO / "tests" / "mcp_server_fixture.py")
#: Deterministic and short: every test waits on a real model on a small machine.
FORCED = {"temperature": 0, "num_predict": 32, "tool_choice": "required"}
TIME_QUESTION = [{"role": "user", "content": "What time is it? Use the current_time tool."}]


@pytest.fixture(scope="module")
def server(tools_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = clone_store(tools_store, tmp_path_factory.mktemp("loop") / "models")
    with ServerProcess(root, tmp_path_factory.mktemp("loop-home")) as s:
        yield s


class Recorder:
    """A confirm callback that answers `decision` and remembers what it was asked."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.asked: list[ToolCall] = []

    async def __call__(self, call: ToolCall) -> Decision:
        self.asked.append(call)
        return self.decision


def clock_box(runs: list[dict[str, Any]]) -> Toolbox:
    """current_time, counting its runs."""
    (real,) = builtin_tools(["current_time"], [])

    async def run(arguments: dict[str, Any]) -> ToolResult:
        runs.append(arguments)
        return await real.run(arguments)

    return Toolbox.of([[Tool(real.name, real.description, real.parameters, run)]])


def turn(server: ServerProcess, messages: list[dict[str, Any]], box: Toolbox, confirm: Any, **kw: Any) -> Any:
    async def inner() -> Any:
        client = AsyncClient(server.host)
        try:
            return await run_turn(client, MODEL, messages, box, confirm, **kw)
        finally:
            await client.aclose()

    return asyncio.run(inner())


def test_an_allowed_call_runs_and_its_result_goes_back(server: ServerProcess) -> None:
    runs: list[dict[str, Any]] = []
    messages = [dict(m) for m in TIME_QUESTION]
    confirm = Recorder("once")
    outcome = turn(server, messages, clock_box(runs), confirm, options=FORCED)
    assert confirm.asked[0].name == "current_time" and runs, "the allowed call ran"
    call, result = messages[1], messages[2]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "current_time"
    assert result["role"] == "tool" and result["tool_name"] == "current_time"
    assert str(date.today().year) in result["content"]
    assert messages[-1]["role"] == "assistant" and outcome.final is not None
    assert outcome.steps >= 2, "the model was asked again with the result"


def test_a_denied_call_does_not_run_and_the_model_goes_on(server: ServerProcess) -> None:
    runs: list[dict[str, Any]] = []
    messages = [dict(m) for m in TIME_QUESTION]
    confirm = Recorder("deny")
    outcome = turn(server, messages, clock_box(runs), confirm, options=FORCED)
    assert confirm.asked and runs == []
    assert messages[2] == {"role": "tool", "content": DENIED.format(name="current_time"), "tool_name": "current_time"}
    assert outcome.steps >= 2 and messages[3]["role"] == "assistant"


def test_allowed_for_the_chat_is_not_asked_again(server: ServerProcess) -> None:
    runs: list[dict[str, Any]] = []
    box, allowed = clock_box(runs), set[str]()
    messages = [dict(m) for m in TIME_QUESTION]
    first = Recorder("chat")
    turn(server, messages, box, first, options=FORCED, allowed=allowed, max_steps=2)
    assert len(first.asked) >= 1 and allowed == {"current_time"}
    messages.append({"role": "user", "content": "And now? Use the current_time tool again."})
    second = Recorder("deny")
    turn(server, messages, box, second, options=FORCED, allowed=allowed, max_steps=2)
    assert second.asked == [] and len(runs) >= 2, "the second call ran without a question"


def test_the_step_limit_ends_a_turn_without_running_more(server: ServerProcess) -> None:
    runs: list[dict[str, Any]] = []
    messages = [dict(m) for m in TIME_QUESTION]
    confirm = Recorder("once")
    outcome = turn(server, messages, clock_box(runs), confirm, options=FORCED, max_steps=1)
    assert outcome.hit_limit and outcome.steps == 1
    assert confirm.asked == [] and runs == []
    assert messages[-1]["content"] == NOT_RUN.format(name="current_time", steps=1)


def test_cancelling_stops_the_loop_at_the_question(server: ServerProcess) -> None:
    runs: list[dict[str, Any]] = []
    messages = [dict(m) for m in TIME_QUESTION]

    async def inner() -> None:
        asked = asyncio.Event()

        async def confirm(call: ToolCall) -> Decision:
            asked.set()
            await asyncio.Event().wait()  # nobody answers
            return "once"

        client = AsyncClient(server.host)
        try:
            task = asyncio.create_task(run_turn(client, MODEL, messages, clock_box(runs), confirm, options=FORCED))
            await asked.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await client.aclose()

    asyncio.run(inner())
    assert runs == [] and [m["role"] for m in messages] == ["user", "assistant"]


def test_cancelling_stops_a_tool_that_is_running(server: ServerProcess) -> None:
    messages = [dict(m) for m in TIME_QUESTION]
    ended: list[str] = []

    async def inner() -> None:
        running = asyncio.Event()

        async def stuck(arguments: dict[str, Any]) -> ToolResult:
            running.set()
            try:
                await asyncio.Event().wait()
            finally:
                ended.append("stopped")
            return ToolResult("never")

        (real,) = builtin_tools(["current_time"], [])
        box = Toolbox.of([[Tool(real.name, real.description, real.parameters, stuck)]])
        client = AsyncClient(server.host)
        try:
            task = asyncio.create_task(run_turn(client, MODEL, messages, box, Recorder("once"), options=FORCED))
            await running.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await client.aclose()

    asyncio.run(inner())
    assert ended == ["stopped"] and [m["role"] for m in messages] == ["user", "assistant"]


def test_an_mcp_tool_through_the_loop(server: ServerProcess, tmp_path: Path) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is 2 plus 3? Use the add tool."}]

    async def inner() -> Any:
        manager = McpManager({"calc": McpServer("calc", command=sys.executable, args=(FIXTURE,))}, log_dir=tmp_path)
        client = AsyncClient(server.host)
        try:
            box = Toolbox.of([[t for t in await manager.tools("calc") if t.name == "add"]])
            options = {**FORCED, "tool_choice": "add", "num_predict": 64}  # room for the whole call
            return await run_turn(client, MODEL, messages, box, Recorder("once"), options=options)
        finally:
            await client.aclose()
            await manager.close()

    asyncio.run(inner())
    call = messages[1]["tool_calls"][0]["function"]
    assert call["name"] == "add" and set(call["arguments"]) == {"a", "b"}
    expected = str(int(call["arguments"]["a"]) + int(call["arguments"]["b"]))
    assert messages[2] == {"role": "tool", "content": expected, "tool_name": "add"}


class ScriptedModel:
    """A stand-in for the server, for replies a real model cannot be made to give on demand:
    a call of a tool that was never offered, and arguments that are not an object."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = replies
        self.requests: list[dict[str, Any]] = []

    async def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> AsyncIterator[dict[str, Any]]:
        self.requests.append({"messages": [dict(m) for m in messages], **kw})
        yield {"message": self.replies.pop(0), "done": True}


def test_made_up_tools_and_bad_arguments_are_error_results_without_a_question() -> None:
    runs: list[dict[str, Any]] = []
    model = ScriptedModel(
        [
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "launch", "arguments": {}}}]},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "current_time", "arguments": "7"}}]},  # noqa: E501
            {"role": "assistant", "content": "done"},
        ]
    )  # fmt: skip
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    confirm = Recorder("once")
    outcome = asyncio.run(run_turn(model, "m", messages, clock_box(runs), confirm))  # type: ignore[arg-type]
    assert outcome.text == "done" and outcome.steps == 3
    tool_results = [m["content"] for m in messages if m["role"] == "tool"]
    assert tool_results[0].startswith("Error: there is no tool named 'launch'") and "current_time" in tool_results[0]
    assert tool_results[1] == "Error: the arguments of current_time must be a JSON object"
    assert runs == [] and [c.name for c in confirm.asked] == ["current_time"]
    assert model.requests[0]["tools"][0]["function"]["name"] == "current_time"


# -- loam ask ---------------------------------------------------------------------------


def ask_env(server: ServerProcess, tmp_path: Path, config_toml: str = "") -> dict[str, str]:
    config_dir = tmp_path / "config" / "loam"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.toml").write_text(config_toml)
    return {
        **os.environ,
        "LOAM_HOST": server.host,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }


def loam_ask(*args: str, env: dict[str, str]) -> Any:
    """`loam ask ARGS` with nothing on stdin and no terminal, as a script runs it."""
    return run_loam("ask", *args, env=env, stdin=subprocess.DEVNULL)


def forced_flags(choice: str = "required") -> list[str]:
    return ["-o", "temperature=0", "-o", "num_predict=64", "-o", f"tool_choice={choice}"]


def test_ask_without_yes_and_without_a_terminal_is_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "LOAM_HOST": "127.0.0.1:9"}
    result = loam_ask("--tools", "current_time", "what time is it?", env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "--yes" in result.stderr
    unknown = loam_ask("--tools", "clock", "--yes", "hi", env=env)
    assert unknown.returncode == 2 and "current_time, read_file" in unknown.stderr
    missing = loam_ask("--mcp", "files", "--yes", "hi", env=env)
    assert missing.returncode == 2 and "[mcp.files]" in missing.stderr


def test_ask_with_tools_prints_calls_on_stderr_and_only_the_answer_on_stdout(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = ask_env(server, tmp_path)
    result = loam_ask("-m", MODEL, "--tools", "current_time", "--yes", *forced_flags(), "What time is it?", env=env)
    assert result.returncode == 0, result.stderr
    year = str(date.today().year)
    assert "tool current_time {} -> " in result.stderr and year in result.stderr
    assert "tool current_time" not in result.stdout and "<tool_call>" not in result.stdout
    plain = loam_ask("-m", MODEL, "-o", "temperature=0", "-o", "num_predict=8", "Hi", env=env)
    assert plain.returncode == 0 and "tool " not in plain.stderr


def test_ask_on_a_terminal_asks_before_each_call(server: ServerProcess, tmp_path: Path) -> None:
    """With a terminal and no --yes, the question is on stderr and the answer read from stdin."""
    main, child = pty.openpty()
    args = ["-m", MODEL, "--tools", "current_time", *forced_flags(), "What time is it?"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "ask", *args],
        cwd=REPO, env=ask_env(server, tmp_path), stdin=child, stderr=child, stdout=subprocess.PIPE,
    )  # fmt: skip
    os.close(child)
    seen = b""
    while b"[d]eny: " not in seen:
        chunk = os.read(main, 1024)
        assert chunk, f"ask ended before asking: {seen!r}"
        seen += chunk
    os.write(main, b"d\n")
    stdout, _ = proc.communicate()
    while True:
        try:
            chunk = os.read(main, 1024)
        except OSError:  # the terminal closes with the last process on it
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.returncode == 0, seen
    assert b"run tool current_time {}?" in seen and b"tool current_time {} -> not run" in seen
    assert b"tool current_time" not in stdout


def test_ask_with_an_mcp_server(server: ServerProcess, tmp_path: Path) -> None:
    env = ask_env(server, tmp_path, f'[mcp.calc]\ncommand = "{sys.executable}"\nargs = ["{FIXTURE}"]\n')
    result = loam_ask("-m", MODEL, "--mcp", "calc", "--yes", *forced_flags("add"), "What is 2 plus 3?", env=env)
    assert result.returncode == 0, result.stderr
    assert "tool add {" in result.stderr and "tool add" not in result.stdout


def test_ask_with_tools_on_a_model_without_them_says_so(server: ServerProcess, tmp_path: Path) -> None:
    env = ask_env(server, tmp_path)
    result = loam_ask("-m", "smollm2:135m", "--tools", "current_time", "--yes", "hi", env=env)
    assert result.returncode == 1 and "does not support tools" in result.stderr and result.stdout == ""
