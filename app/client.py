"""An httpx client of the loam server's API (Ollama's), sync for the CLI and async for the TUI.

`ensure_server` is what makes keep-alive work across `loam ask` calls: when
nothing answers at LOAM_HOST it starts `loam serve` in the background, detached
and logging to the state dir, and waits until it answers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from app import config
from app.api import ChatRequest, Stats, describe
from app.errors import LoamError
from app.tools.calls import ToolCall

#: Connecting must be quick; reading may wait through a model load, so it has no limit.
STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)
#: How long an autostarted server may take to answer.
START_TIMEOUT = 30.0


class ServerUnavailable(LoamError):
    """No loam server answers at LOAM_HOST."""


class ServerError(LoamError):
    """The server answered with an error; `status` is its HTTP status."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class RequestError(LoamError):
    """A request loam would send is malformed (a bad option, keep_alive, message)."""


def _unavailable(host: str) -> ServerUnavailable:
    return ServerUnavailable(f"no loam server answers at {host}; start one with `loam serve`")


def _error_of(response: httpx.Response, body: bytes) -> ServerError:
    try:
        message = json.loads(body).get("error") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace") or response.reason_phrase
    return ServerError(str(message).strip(), response.status_code)


def _stream_failure(error: Exception, host: str) -> LoamError:
    """The one-line error for a stream that broke: no server, a dropped connection, or a line that is not JSON."""
    if isinstance(error, httpx.ConnectError):
        return _unavailable(host)
    if isinstance(error, httpx.RemoteProtocolError):
        return ServerError(f"the server closed the connection mid-answer ({error}); see its log")
    if isinstance(error, httpx.HTTPError):
        return ServerError(f"talking to the server at {host} failed: {error or type(error).__name__}")
    return ServerError(f"the server at {host} sent a line that is not JSON: {error}")


def _chunk(line: str) -> dict[str, Any] | None:
    """One NDJSON line as a dict; an `error` line raises, as Ollama's clients do."""
    if not line.strip():
        return None
    item = json.loads(line)
    if isinstance(item, dict) and item.get("error"):
        raise ServerError(str(item["error"]))
    if not isinstance(item, dict):
        raise ValueError(f"{line[:100]!r} is not an object")
    if item.get("done") is True:
        try:
            Stats.model_validate(item)  # the final figures are numbers, or the reply is not Ollama's
        except ValidationError as e:
            raise ServerError(f"the server's final line is malformed: {describe(e)}") from None
    return item


def chat_body(
    model: str,
    messages: list[dict[str, Any]],
    *,
    options: dict[str, Any] | None = None,
    format: str | dict[str, Any] | None = None,
    keep_alive: str | float | None = None,
    stream: bool = True,
    think: bool | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An /api/chat request body with the unset fields left out (the server's defaults apply).

    `tools` are OpenAI/Ollama function specs; an empty list is left out, so the model sees none.

    It is checked against the server's own model (app/api.py) first, so a bad
    option or keep_alive is the same one-line error without a round trip.
    """
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    fields = (("options", options), ("format", format), ("keep_alive", keep_alive), ("think", think), ("tools", tools))
    for key, value in fields:
        if value not in (None, {}, "", []):
            body[key] = value
    try:
        ChatRequest.model_validate(body, context={"client": True})
    except ValidationError as e:
        raise RequestError(describe(e)) from None
    return body


#: Calls one reply may carry; more is a server (or model) gone wrong, and the rest are dropped.
MAX_CALLS_PER_REPLY = 16


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall]:
    """The calls in a reply's `message.tool_calls` (Ollama's shape), arguments as a dict.

    OpenAI-style arguments given as a JSON string are decoded; a call without a name is
    dropped, and arguments that are not an object become {"": value} so the tool can refuse them.
    """
    calls: list[ToolCall] = []
    raw = message.get("tool_calls")
    for item in raw if isinstance(raw, list) else []:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            continue
        arguments: Any = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                pass
        if arguments is None:
            arguments = {}
        calls.append(ToolCall(function["name"], arguments if isinstance(arguments, dict) else {"": arguments}))
    return calls[:MAX_CALLS_PER_REPLY]


class Client:
    """Calls on a loam (or Ollama) server at `host` (LOAM_HOST by default)."""

    def __init__(self, host: str | None = None, timeout: float | None = 30.0) -> None:
        self.host = host or config.host()
        self.http = httpx.Client(base_url=f"http://{self.host}", timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.ConnectError:
            raise _unavailable(self.host) from None
        if response.status_code >= 400:
            raise _error_of(response, response.content)
        return response

    def answers(self) -> bool:
        """Whether a server answers at the host now."""
        try:
            return self.http.get("/api/version", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST `body` and yield the NDJSON chunks; closing the iterator cancels the work on the server."""
        try:
            with self.http.stream("POST", path, json=body, timeout=STREAM_TIMEOUT) as response:
                if response.status_code >= 400:
                    raise _error_of(response, response.read())
                for line in response.iter_lines():
                    item = _chunk(line)
                    if item is not None:
                        yield item
        except (httpx.HTTPError, ValueError) as e:
            raise _stream_failure(e, self.host) from None

    def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> Iterator[dict[str, Any]]:
        """An /api/chat reply, chunk by chunk (one whole chunk with stream=False)."""
        return self.stream("/api/chat", chat_body(model, messages, **kw))

    def pull(self, name: str) -> Iterator[dict[str, Any]]:
        """Progress of a pull done by the server: {status, digest?, total?, completed?}."""
        return self.stream("/api/pull", {"model": name, "stream": True})

    def show(self, name: str) -> dict[str, Any]:
        return self._request("POST", "/api/show", json={"model": name}).json()

    def ps(self) -> list[dict[str, Any]]:
        """The loaded models, as /api/ps lists them."""
        return self._request("GET", "/api/ps").json().get("models", [])

    def stop(self, model: str) -> None:
        """Unload a model now (keep_alive 0 with an empty prompt, as `ollama stop` does)."""
        self._request("POST", "/api/generate", json={"model": model, "keep_alive": 0})

    def tags(self) -> list[dict[str, Any]]:
        """The server's models, as /api/tags lists them."""
        return self._request("GET", "/api/tags").json().get("models", [])

    def delete(self, name: str) -> None:
        """Delete a model from the store through the server, which unloads it at once."""
        self._request("DELETE", "/api/delete", json={"model": name})


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
            raise _unavailable(self.host) from None
        if response.status_code >= 400:
            raise _error_of(response, response.content)
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
                    raise _error_of(response, await response.aread())
                async for line in response.aiter_lines():
                    item = _chunk(line)
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


# -- autostart -------------------------------------------------------------


def is_local(host: str) -> bool:
    """Whether `host:port` names this machine, where loam may start a server."""
    name = host.rpartition(":")[0].strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def server_log() -> Path:
    return config.paths().logs / "server.log"


def pid_file(host: str) -> Path:
    """Where the pid of a server loam started for `host` is kept."""
    return config.paths().state / f"serve-{host.rpartition(':')[2]}.pid"


def ensure_server(host: str | None = None, timeout: float = START_TIMEOUT) -> str:
    """The host, after making sure a server answers there: start `loam serve` when none does."""
    host = host or config.host()
    probe = Client(host)
    try:
        if probe.answers():
            return host
        if not is_local(host):
            raise _unavailable(host)
        process = _spawn_server()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe.answers():
                if process.poll() is None:  # ours answers, not one another client started at the same time
                    config.write_atomic(pid_file(host), f"{process.pid}\n".encode())
                return host
            if process.poll() is not None and not probe.answers():
                raise ServerUnavailable(
                    f"`loam serve` exited ({process.returncode}) before answering at {host}: "
                    f"{_last_line(server_log())}; see {server_log()}"
                )
            time.sleep(0.1)
        raise ServerUnavailable(f"`loam serve` did not answer at {host} within {timeout:.0f}s; see {server_log()}")
    finally:
        probe.close()


def _spawn_server() -> subprocess.Popen[bytes]:
    """`loam serve`, detached from this terminal and process group, logging to the state dir."""
    with config.open_private_log(server_log()) as log:
        log.write(f"--- started by loam at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=os.environ.copy(),
        )


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no output"
