"""MCP servers as tools: config.toml's [mcp.NAME] tables, the manager against real SDK servers
(tests/mcp_server_fixture.py over stdio and streamable HTTP), and the built-in tools."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from app import config
from app.config import McpServer
from app.errors import ConfigError
from app.tools.builtin import MAX_READ_BYTES, builtin_tools, current_time, read_file
from app.tools.calls import ToolCall
from app.tools.loop import MAX_RESULT_CHARS, MAX_TOOLS, Toolbox
from app.tools.mcp import MAX_SERVER_TOOLS, McpError, McpManager
from tests.runner_process import REPO, free_port

FIXTURE = str(REPO / "tests" / "mcp_server_fixture.py")
T = TypeVar("T")


def stdio(name: str, *variant: str, timeout: float = 60.0) -> McpServer:
    return McpServer(name, command=sys.executable, args=(FIXTURE, *variant), timeout=timeout)


def with_manager(servers: dict[str, McpServer], tmp: Path, steps: Callable[[McpManager], Awaitable[T]]) -> T:
    """Run `steps` with a manager of `servers`, closing it (and its servers) afterwards."""

    async def inner() -> T:
        manager = McpManager(servers, log_dir=tmp)
        try:
            return await steps(manager)
        finally:
            await manager.close()

    return asyncio.run(inner())


def fixture_children() -> list[int]:
    """Processes of this test run that are the fixture server."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            stat = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and FIXTURE.encode() in args:
            pids.append(int(cmdline.parent.name))
    return pids


# -- config ---------------------------------------------------------------------


def test_config_reads_stdio_and_http_servers() -> None:
    servers = config.mcp_servers(
        {
            "mcp": {
                "files": {"command": "npx", "args": ["-y", "server"], "env": {"ROOT": "/tmp"}, "timeout": 5},
                "web": {"url": "https://example.test/mcp", "headers": {"Authorization": "Bearer x"}},
            }
        }
    )
    assert servers["files"] == McpServer("files", "npx", ("-y", "server"), (("ROOT", "/tmp"),), timeout=5.0)
    assert servers["files"].transport == "stdio" and servers["web"].transport == "http"
    assert servers["web"].headers == (("Authorization", "Bearer x"),)
    assert config.mcp_servers({}) == {}


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"a": {}}, "needs either command"),
        ({"a": {"command": "x", "url": "http://h/mcp"}}, "not both"),
        ({"a": {"command": "x", "args": "-y"}}, "args must be a list of strings"),
        ({"a": {"command": "x", "env": {"A": 1}}}, "env must be a table of strings"),
        ({"a": {"command": "x", "cmd": "y"}}, "unknown key 'cmd'"),
        ({"a": {"url": "ftp://h"}}, "must start with http"),
        ({"a": {"url": "http://h", "args": []}}, "args and env go with command"),
        ({"a": {"command": "x", "headers": {}}}, "headers go with url"),
        ({"a": {"command": "x", "timeout": 0}}, "timeout"),
        ({"a": {"command": "x", "timeout": True}}, "timeout"),
        ({"a b": {"command": "x"}}, "server name"),
        ({"read_file": {"command": "x"}}, "built-in tool's name"),
        ({"a": "x"}, "must be a table"),
    ],
)
def test_bad_mcp_config_is_one_clear_line(table: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as raised:
        config.mcp_servers({"mcp": table})
    assert "\n" not in str(raised.value) and "config.toml" in str(raised.value)


def test_read_roots_config(tmp_path: Path) -> None:
    assert config.read_roots({}) == []
    assert config.read_roots({"tools": {"read_roots": ["~/notes"]}}) == [Path("~/notes").expanduser()]
    for bad, needle in (({"read_roots": "~/notes"}, "list of strings"), ({"roots": []}, "unknown key"), ([], "table")):
        with pytest.raises(ConfigError, match=needle):
            config.read_roots({"tools": bad})


def test_config_file_tables_reach_the_manager(loam_home: Path) -> None:
    path = config.paths().config_file
    path.parent.mkdir(parents=True)
    path.write_text(f'[mcp.t]\ncommand = "{sys.executable}"\nargs = ["{FIXTURE}"]\n')
    manager = McpManager()
    assert manager.names() == ["t"] and manager.servers["t"].args == (FIXTURE,)
    path.write_text('[mcp.t]\ncommand = "x"\nurl = "http://h"\n')
    with pytest.raises(ConfigError, match=r"\[mcp.t\] needs either command"):
        McpManager()


# -- the manager over stdio ------------------------------------------------------


def test_tools_are_listed_as_function_specs_and_called(tmp_path: Path) -> None:
    async def steps(manager: McpManager) -> dict[str, Any]:
        tools = {tool.name: tool for tool in await manager.tools("t")}
        seen: dict[str, Any] = {"specs": {name: tool.spec() for name, tool in tools.items()}}
        seen["add"] = await tools["add"].run({"a": 2, "b": 3})
        seen["odd"] = await tools["odd_name_with_chars"].run({})
        seen["fail"] = await manager.call("t", "fail", {"reason": "because"})
        seen["missing"] = await manager.call("t", "nope", {})
        seen["bad"] = await manager.call("t", "add", {"a": "two"})
        seen["flood"] = await manager.call("t", "flood", {"n": MAX_RESULT_CHARS * 3})
        seen["children"] = fixture_children()
        return seen

    seen = with_manager({"t": stdio("t")}, tmp_path, steps)
    add = seen["specs"]["add"]
    assert add["type"] == "function"
    assert add["function"]["name"] == "add" and add["function"]["description"] == "Add two whole numbers."
    assert add["function"]["parameters"]["type"] == "object"
    assert add["function"]["parameters"]["properties"]["a"]["type"] == "integer"
    assert set(seen["specs"]) == {"echo", "add", "fail", "flood", "sleep", "odd_name_with_chars"}
    assert seen["add"].text == "5" and not seen["add"].is_error
    assert seen["odd"].text == "odd", "a renamed tool is still called by its own name"
    assert seen["fail"].is_error and seen["missing"].is_error and seen["bad"].is_error
    assert seen["fail"].content().startswith("Error: ")
    assert len(seen["flood"].text) < MAX_RESULT_CHARS + 100 and "cut by loam" in seen["flood"].text
    assert len(seen["children"]) == 1, "the server is started once and kept"
    assert fixture_children() == [], "closing the manager ends the server"
    assert (tmp_path / "mcp-t.log").exists(), "the server's stderr goes to a log, not the terminal"


def test_a_slow_call_times_out_and_the_server_still_answers(tmp_path: Path) -> None:
    async def steps(manager: McpManager) -> tuple[Any, Any]:
        slow = await manager.call("t", "sleep", {"seconds": 30})
        return slow, await manager.call("t", "add", {"a": 1, "b": 1})

    slow, after = with_manager({"t": stdio("t", timeout=1.0)}, tmp_path, steps)
    assert slow.is_error and "did not answer within 1s" in slow.text
    assert after.text == "2"


def test_names_two_servers_share_are_prefixed_and_reach_their_server(tmp_path: Path) -> None:
    async def steps(manager: McpManager) -> tuple[Toolbox, list[str]]:
        box = Toolbox.of([builtin_tools(["current_time"], []), await manager.tools("one"), await manager.tools("two")])
        results = [(await box.call(ToolCall(name, {"text": "hi"}))).text for name in ("one_echo", "two_echo")]
        return box, results

    box, results = with_manager({"one": stdio("one"), "two": stdio("two", "clash")}, tmp_path, steps)
    assert "echo" not in box.tools and {"one_echo", "two_echo", "current_time", "add"} <= set(box.tools)
    assert results == ["echo: hi", "clash: hi"]
    assert len({spec["function"]["name"] for spec in box.specs()}) == len(box.specs())


def test_tool_counts_are_capped(tmp_path: Path) -> None:
    async def steps(manager: McpManager) -> tuple[int, Toolbox]:
        many = await manager.tools("many")
        return len(many), Toolbox.of([many, many[:20]])

    count, box = with_manager({"many": stdio("many", "many")}, tmp_path, steps)
    assert count == MAX_SERVER_TOOLS
    assert len(box.tools) == MAX_TOOLS and box.notes and "only the first" in box.notes[0]


def test_a_server_that_cannot_start_is_a_one_line_error(tmp_path: Path) -> None:
    async def steps(manager: McpManager) -> tuple[str, Any, Any]:
        with pytest.raises(McpError) as raised:
            await manager.tools("bad")
        missing = await manager.call("gone", "x", {})
        return str(raised.value), await manager.call("bad", "echo", {"text": "x"}), missing

    broken = {"bad": stdio("bad", "crash"), "gone": McpServer("gone", command=str(tmp_path / "no-such-program"))}
    message, call, missing = with_manager(broken, tmp_path, steps)
    assert "MCP server bad" in message and "\n" not in message
    assert call.is_error and "MCP server bad" in call.text
    assert missing.is_error and "gone" in missing.text
    with pytest.raises(McpError, match="no MCP server named 'nope'"):
        with_manager({}, tmp_path, lambda m: m.tools("nope"))


# -- the manager over streamable HTTP ----------------------------------------------


@pytest.fixture
def http_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, FIXTURE, "http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        for _ in range(600):
            try:
                httpx.get(url, timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_streamable_http_server(http_server: str, tmp_path: Path) -> None:
    async def steps(manager: McpManager) -> tuple[list[str], Any]:
        tools = await manager.tools("web")
        return [tool.name for tool in tools], await manager.call("web", "add", {"a": 20, "b": 22})

    server = McpServer("web", url=http_server, headers=(("X-Loam-Test", "1"),))
    names, result = with_manager({"web": server}, tmp_path, steps)
    assert "add" in names and result.text == "42"


# -- built-in tools ----------------------------------------------------------------


def test_current_time_is_local_and_now() -> None:
    text = current_time().text
    now = datetime.now().astimezone()
    assert now.strftime("%Y-%m-%d") in text or (now.hour == 0 and now.minute == 0)
    assert now.strftime("%z") in text and now.strftime("%A") in text


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "todo.md").write_text("buy milk\n")
    (root / "sub" / "deep.txt").write_text("deep\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    return root


def test_read_file_reads_inside_the_allowed_folder(notes: Path) -> None:
    assert read_file(str(notes / "todo.md"), [notes]).text == "buy milk\n"
    assert read_file("sub/deep.txt", [notes]).text == "deep\n", "a relative path starts in the first folder"
    (notes / "inner-link.md").symlink_to(notes / "todo.md")
    assert read_file("inner-link.md", [notes]).text == "buy milk\n", "a link that stays inside is fine"


def test_read_file_refuses_everything_outside(notes: Path, tmp_path: Path) -> None:
    (notes / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (notes / "up").symlink_to(tmp_path)
    for path in (
        str(tmp_path / "secret.txt"),
        "../secret.txt",
        "sub/../../secret.txt",
        "escape.txt",
        "up/secret.txt",
        "/etc/passwd",
    ):
        result = read_file(path, [notes])
        assert result.is_error, path
        assert "secret" not in result.text.replace("secret.txt", ""), path
    assert "outside" in read_file("../secret.txt", [notes]).text


def test_read_file_limits(notes: Path) -> None:
    (notes / "big.txt").write_text("a" * (MAX_READ_BYTES + 10))
    big = read_file("big.txt", [notes]).text
    body, _, note = big.partition("\n[")
    assert body == "a" * MAX_READ_BYTES and note.startswith("... cut at")
    (notes / "blob.bin").write_bytes(b"\x00\x01\x02")
    assert "not a text file" in read_file("blob.bin", [notes]).text
    assert "not a regular file" in read_file("sub", [notes]).text
    assert "no such file" in read_file("missing.md", [notes]).text
    assert read_file("~no-such-user-here/x.md", [notes]).is_error, "an unknown ~user is a result, not an exception"
    assert "read_roots" in read_file("todo.md", []).text and read_file("todo.md", []).is_error


def test_builtin_tools_are_only_the_ones_named(notes: Path) -> None:
    assert [tool.name for tool in builtin_tools(["read_file"], [notes])] == ["read_file"]
    assert builtin_tools([], [notes]) == []
    (tool,) = builtin_tools(["read_file"], [notes])
    assert str(notes) in tool.description
    assert asyncio.run(tool.run({"path": "todo.md"})).text == "buy milk\n"
    assert asyncio.run(tool.run({"file": "todo.md"})).is_error
