"""The TUI's client of the loam server's API, on asyncio, so the UI never waits on the network.

Short calls go through httpx; streams (answers, pulls, creates) through app/http11_async.py.

It makes the same calls as app/client.py's `Client` and raises the same errors;
request bodies are checked against app/api.py before they are sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from app import __version__, config
from app.client import CONNECT_TIMEOUT, ServerError, broken_stream, chat_body, error_of, parse_chunk, unavailable
from app.http11 import ProtocolError
from app.http11_async import Stream, Unreachable


class AsyncClient:
    """The same calls for the TUI, on asyncio, so the UI never waits on the network."""

    def __init__(self, host: str | None = None, timeout: float | None = 30.0, read_gap: float = 0.0) -> None:
        """`read_gap`: seconds an answer's stream is left alone after each read (app/http11_async.py's Stream)."""
        self.host = host or config.host()
        self.read_gap = read_gap
        self.http = httpx.AsyncClient(base_url=f"http://{self.host}", timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kw)
        except httpx.ConnectError:
            raise unavailable(self.host) from None
        if response.status_code >= 400:
            raise error_of(response.status_code, response.reason_phrase, response.content)
        return response

    async def answers(self) -> bool:
        """Whether a server answers at the host now."""
        try:
            return (await self.http.get("/api/version", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def stream(self, path: str, body: dict[str, Any], read_gap: float = 0.0) -> AsyncIterator[dict[str, Any]]:
        """POST `body` and yield the NDJSON chunks; closing the generator cancels the work on the server.

        Read straight off an asyncio connection (app/http11_async.py): this is the chat's per-token path.
        """
        headers = {"User-Agent": f"loam/{__version__}", "Content-Type": "application/json"}
        payload = json.dumps(body).encode()
        timeouts = {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": None}
        reply = Stream(self.host, "POST", path, payload, headers=headers, read_gap=read_gap, **timeouts)
        try:
            await reply.open()
        except Unreachable:
            raise unavailable(self.host) from None
        except (OSError, ProtocolError) as e:
            raise ServerError(f"talking to the server at {self.host} failed: {e or type(e).__name__}") from None
        try:
            if reply.status >= 400:
                raise error_of(reply.status, reply.reason, await reply.read())
            async for line in reply.lines():
                item = parse_chunk(line)
                if item is not None:
                    yield item
        except (OSError, ProtocolError, ValueError) as e:
            raise broken_stream(e, self.host) from None
        finally:
            reply.close()

    def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> AsyncIterator[dict[str, Any]]:
        return self.stream("/api/chat", chat_body(model, messages, **kw), self.read_gap)

    def pull(self, name: str) -> AsyncIterator[dict[str, Any]]:
        return self.stream("/api/pull", {"model": name, "stream": True})

    def create(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """/api/create's progress, for a body like Ollama's (model, from, system, parameters, messages)."""
        return self.stream("/api/create", {**body, "stream": True})

    async def tags(self) -> list[dict[str, Any]]:
        """The store's models with their details (size, parameter size, quantization)."""
        return (await self._request("GET", "/api/tags")).json().get("models", [])

    async def show(self, name: str) -> dict[str, Any]:
        return (await self._request("POST", "/api/show", json={"model": name})).json()

    async def delete(self, name: str) -> None:
        await self._request("DELETE", "/api/delete", json={"model": name})

    async def ps(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/api/ps")).json().get("models", [])
