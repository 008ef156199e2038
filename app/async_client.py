"""The TUI's client of the loam server's API, on httpx and asyncio, so the UI never waits on the network.

It makes the same calls as app/client.py's `Client` and raises the same errors;
request bodies are checked against app/api.py before they are sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from app import config
from app.client import CONNECT_TIMEOUT, ServerError, chat_body, error_of, parse_chunk, unavailable
from app.errors import LoamError

#: Connecting must be quick; reading may wait through a model load, so it has no limit.
STREAM_TIMEOUT = httpx.Timeout(CONNECT_TIMEOUT, read=None)


def _stream_failure(error: Exception, host: str) -> LoamError:
    """The one-line error for a stream that broke: no server, a dropped connection, or a line that is not JSON."""
    if isinstance(error, httpx.ConnectError):
        return unavailable(host)
    if isinstance(error, httpx.RemoteProtocolError):
        return ServerError(f"the server closed the connection mid-answer ({error}); see its log")
    if isinstance(error, httpx.HTTPError):
        return ServerError(f"talking to the server at {host} failed: {error or type(error).__name__}")
    return ServerError(f"the server at {host} sent a line that is not JSON: {error}")


class AsyncClient:
    """The same calls for the TUI, on asyncio, so the UI never waits on the network."""

    def __init__(self, host: str | None = None, timeout: float | None = 30.0) -> None:
        self.host = host or config.host()
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

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST `body` and yield the NDJSON chunks; closing the generator cancels the work on the server."""
        try:
            async with self.http.stream("POST", path, json=body, timeout=STREAM_TIMEOUT) as response:
                if response.status_code >= 400:
                    raise error_of(response.status_code, response.reason_phrase, await response.aread())
                async for line in response.aiter_lines():
                    item = parse_chunk(line)
                    if item is not None:
                        yield item
        except (httpx.HTTPError, ValueError) as e:
            raise _stream_failure(e, self.host) from None

    def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> AsyncIterator[dict[str, Any]]:
        return self.stream("/api/chat", chat_body(model, messages, **kw))

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
