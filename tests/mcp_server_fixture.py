"""A small MCP server for the tests, on the official SDK, run as `python tests/mcp_server_fixture.py [VARIANT]`.

Variants: "" (the usual tools), "clash" (a second server whose `echo` clashes with the first's),
"many" (more tools than loam takes from one server), "crash" (exits before the handshake),
"http PORT" (the usual tools over streamable HTTP on 127.0.0.1:PORT).
"""

from __future__ import annotations

import sys
import time

from mcp.server.mcpserver import MCPServer

VARIANT = sys.argv[1] if len(sys.argv) > 1 else ""
server = MCPServer("loam-test" + (f"-{VARIANT}" if VARIANT else ""))


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return f"{VARIANT or 'echo'}: {text}"


if VARIANT in ("", "http"):

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two whole numbers."""
        return str(a + b)

    @server.tool()
    def fail(reason: str) -> str:
        """Always fails, with the reason given."""
        raise ValueError(f"failed on purpose: {reason}")

    @server.tool()
    def flood(n: int) -> str:
        """Return n characters."""
        return "x" * n

    @server.tool()
    def sleep(seconds: float) -> str:
        """Sleep, then answer."""
        time.sleep(seconds)
        return "slept"

    @server.tool(name="odd name.with:chars")
    def odd() -> str:
        """A tool whose name the model could not use as is."""
        return "odd"


if VARIANT == "many":
    for i in range(80):
        server.tool(name=f"t{i}", description=f"tool {i}")(lambda: "ok")


if __name__ == "__main__":
    if VARIANT == "crash":
        sys.exit(3)
    if VARIANT == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
