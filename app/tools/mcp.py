"""MCP servers from config.toml as tools, through the official `mcp` SDK (2.x `Client`).

A `McpManager` starts a configured server the first time its tools are wanted, keeps
it running for the rest of the chat, and closes every server it started. Each server
lives in a task of its own that enters and leaves the SDK's client context, because
anyio's scopes must be left in the task that entered them; calls come from any task.

Everything a server sends is bounded: how long it may take to start and to answer a
call, how many tools it may list (and how large their schemas and descriptions are),
and how much result text goes back to the model. A failure of any kind is a result
marked as an error, never an exception out of `call`.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from app import config
from app.config import McpServer
from app.errors import LoamError
from app.tools.loop import MAX_DESCRIPTION_CHARS, Tool, ToolResult, capped, clean_schema

#: Seconds a server may take to start and answer the handshake.
START_TIMEOUT = 30.0
#: Seconds listing a server's tools may take.
LIST_TIMEOUT = 30.0
#: Tools taken from one server at most, and pages of a tools listing read at most.
MAX_SERVER_TOOLS = 64
MAX_LIST_PAGES = 8
_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class McpError(LoamError):
    """An MCP server could not be started or listed; the message names it."""


def tool_name(name: str) -> str:
    """A server's tool name as the model may see it: letters, digits, _ and -, 64 at most."""
    return _NAME.sub("_", name)[:64] or "tool"


def result_text(result: Any) -> ToolResult:
    """A CallToolResult as text: its text blocks, other blocks named, structured content as JSON when no text."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(str(block.text))
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {getattr(block, 'mime_type', '')} not shown]")
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(block, 'uri', '')}]")
        elif kind == "resource":
            resource = getattr(block, "resource", None)
            text = getattr(resource, "text", None)
            parts.append(str(text) if text is not None else f"[resource {getattr(resource, 'uri', '')}]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False, default=str))
    text = capped("\n".join(parts)) or "(no output)"
    return ToolResult(text, is_error=bool(getattr(result, "is_error", False)))


class _Running:
    """One started server: the task that holds its connection, and the client once it is up."""

    def __init__(self, server: McpServer, log: Path) -> None:
        self.server = server
        self.log = log
        self.client: Any = None
        self.error: str | None = None
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.tools: list[Tool] | None = None
        self.task = asyncio.create_task(self._hold(), name=f"mcp:{server.name}")

    async def _hold(self) -> None:
        """Enter the SDK client, say it is ready, and leave it (in this same task) when told to stop."""
        try:
            async with AsyncExitStack() as stack:
                self.client = await self._connect(stack)
                self.ready.set()
                await self.stop.wait()
        except asyncio.CancelledError:
            self.error = self.error or f"MCP server {self.server.name} was stopped"
        except Exception as e:  # noqa: BLE001 - a stranger's server can fail in any way; it is reported, not raised
            self.error = f"MCP server {self.server.name} failed to start: {_describe(e)}; see {self.log}"
        finally:
            self.client = None
            self.ready.set()

    async def _connect(self, stack: AsyncExitStack) -> Any:
        """The SDK's Client, entered on `stack`: a child process over stdio, or streamable HTTP."""
        from mcp import Client, StdioServerParameters  # the SDK's import is heavy; only tool users pay for it

        server = self.server
        if server.command:
            from mcp.client.stdio import stdio_client

            # The server's stderr goes to a log: on a terminal it would draw over the chat.
            errlog = stack.enter_context(io.TextIOWrapper(config.open_private_log(self.log), write_through=True))
            params = StdioServerParameters(command=server.command, args=list(server.args), env=dict(server.env) or None)
            target: Any = stdio_client(params, errlog=errlog)
        else:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=dict(server.headers), timeout=httpx2.Timeout(30.0, read=server.timeout))
            )
            target = streamable_http_client(server.url, http_client=http)
        # The handshake and every request are bounded by the server's timeout.
        return await stack.enter_async_context(Client(target, read_timeout_seconds=server.timeout))


def _describe(error: BaseException) -> str:
    """One line for an error from the SDK or a transport, groups unwrapped."""
    while isinstance(getattr(error, "exceptions", None), tuple) and error.exceptions:  # an exception group
        error = error.exceptions[0]
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]


class McpManager:
    """The configured MCP servers of one app run: started on demand, listed, called and closed."""

    def __init__(self, servers: Mapping[str, McpServer] | None = None, log_dir: Path | None = None) -> None:
        self.servers = dict(config.mcp_servers() if servers is None else servers)
        self.log_dir = log_dir or config.paths().logs
        self._running: dict[str, _Running] = {}
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return list(self.servers)

    async def _start(self, name: str) -> _Running:
        if name not in self.servers:
            known = ", ".join(self.servers) or "none configured"
            raise McpError(f"no MCP server named {name!r} in config.toml (servers: {known})")
        async with self._lock:
            running = self._running.get(name)
            if running is None or (running.ready.is_set() and running.client is None):
                running = _Running(self.servers[name], self.log_dir / f"mcp-{name}.log")
                self._running[name] = running
        try:
            await asyncio.wait_for(running.ready.wait(), START_TIMEOUT)
        except asyncio.TimeoutError:
            running.error = f"MCP server {name} did not start within {START_TIMEOUT:.0f}s; see {running.log}"
            running.task.cancel()
            raise McpError(running.error) from None
        if running.client is None:
            raise McpError(running.error or f"MCP server {name} is not running")
        return running

    async def tools(self, name: str) -> list[Tool]:
        """The tools of server `name` (started if need be), as loam Tools; McpError when it cannot be reached."""
        running = await self._start(name)
        if running.tools is not None:
            return running.tools
        try:
            listed = await asyncio.wait_for(self._list(running), LIST_TIMEOUT)
        except asyncio.TimeoutError:
            raise McpError(f"MCP server {name} did not list its tools within {LIST_TIMEOUT:.0f}s") from None
        except Exception as e:  # noqa: BLE001 - see _Running._hold
            raise McpError(f"MCP server {name} could not list its tools: {_describe(e)}") from None
        running.tools = [self._tool(running, item) for item in listed]
        running.tools = [tool for tool in running.tools if tool is not None]
        return running.tools

    async def _list(self, running: _Running) -> list[Any]:
        items: list[Any] = []
        cursor = None
        for _ in range(MAX_LIST_PAGES):
            page = await running.client.list_tools(cursor=cursor)
            items += list(page.tools)
            cursor = page.next_cursor
            if not cursor or len(items) >= MAX_SERVER_TOOLS:
                break
        return items[:MAX_SERVER_TOOLS]

    def _tool(self, running: _Running, item: Any) -> Tool | None:
        schema = clean_schema(getattr(item, "input_schema", None))
        if schema is None:
            return None  # a schema too big or not an object would only confuse the model
        original = str(item.name)
        description = str(item.description or getattr(item, "title", None) or original)[:MAX_DESCRIPTION_CHARS]

        async def run(arguments: dict[str, Any]) -> ToolResult:
            return await self.call(running.server.name, original, arguments)

        return Tool(tool_name(original), description, schema, run, source=running.server.name)

    async def call(self, name: str, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """Call `tool` on server `name`; a timeout, a dead server or the tool's own error is an error result."""
        try:
            running = await self._start(name)
        except McpError as e:
            return ToolResult(str(e), is_error=True)
        timeout = running.server.timeout
        try:
            result = await asyncio.wait_for(running.client.call_tool(tool, arguments), timeout)
        except asyncio.TimeoutError:
            return ToolResult(f"{tool} on {name} did not answer within {timeout:g}s", is_error=True)
        except Exception as e:  # noqa: BLE001 - see _Running._hold
            return ToolResult(f"{tool} on {name} failed: {_describe(e)}", is_error=True)
        return result_text(result)

    async def close(self) -> None:
        """Stop every server this manager started, each inside its own task."""
        running, self._running = list(self._running.values()), {}
        for item in running:
            item.stop.set()
        for item in running:
            try:
                await asyncio.wait_for(asyncio.shield(item.task), 10.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                item.task.cancel()
