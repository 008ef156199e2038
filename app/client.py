"""A client of the loam server's API (Ollama's) for the command line, on a plain socket.

`loam ask` is a start-up race: the answer cannot begin before Python has
imported what the client needs, so this module takes nothing beyond the
standard library (a socket, app/http11.py) and pydantic only when a body is checked.
The TUI's client, on httpx and asyncio, is app/async_client.py.

`ensure_server` is what makes keep-alive work across `loam ask` calls: when
nothing answers at LOAM_HOST it starts `loam serve` in the background, detached
and logging to the state dir, and waits until it answers.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import __version__, config, http11
from app.errors import LoamError
from app.http11 import Response

if TYPE_CHECKING:
    import subprocess
from app.stats import FIELDS

#: Connecting must be quick; reading may wait through a model load, so a stream has no read limit.
CONNECT_TIMEOUT = 10.0
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


def unavailable(host: str) -> ServerUnavailable:
    return ServerUnavailable(f"no loam server answers at {host}; start one with `loam serve`")


def error_of(status: int, reason: str, body: bytes) -> ServerError:
    """The server's `{"error": ...}` body (or its text) as a ServerError with the status."""
    try:
        message = json.loads(body).get("error") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace") or reason
    return ServerError(str(message).strip(), status)


def broken_stream(error: Exception, host: str) -> ServerError:
    """The one-line error for a stream that broke: a dropped connection, or a line that is not JSON (ValueError)."""
    if isinstance(error, ValueError):
        return ServerError(f"the server at {host} sent a line that is not JSON: {error}")
    return ServerError(f"the server closed the connection mid-answer ({error or type(error).__name__}); see its log")


def parse_chunk(line: str | bytes) -> dict[str, Any] | None:
    """One NDJSON line as a dict; an `error` line raises, as Ollama's clients do."""
    if not line.strip():
        return None
    item = json.loads(line)
    if isinstance(item, dict) and item.get("error"):
        raise ServerError(str(item["error"]))
    if not isinstance(item, dict):
        raise ValueError(f"{line[:100]!r} is not an object")
    if item.get("done") is True:  # the final figures are numbers, or the reply is not Ollama's
        for name in FIELDS:
            value = item.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ServerError(f"the server's final line is malformed: {name}: not a number ({value!r:.40})")
    return item


def request_body(
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
    """
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    fields = (("options", options), ("format", format), ("keep_alive", keep_alive), ("think", think), ("tools", tools))
    for key, value in fields:
        if value not in (None, {}, "", []):
            body[key] = value
    return body


def chat_body(model: str, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """`request_body`, checked against the server's own model (app/api.py) first.

    A bad option or keep_alive is then the same one-line error without a round
    trip. The TUI checks; `loam ask` leaves it to the server, which says the same
    in its 400, rather than import pydantic before every answer.
    """
    from pydantic import ValidationError

    from app.api import ChatRequest, describe

    body = request_body(model, messages, **kw)
    try:
        ChatRequest.model_validate(body, context={"client": True})
    except ValidationError as e:
        raise RequestError(describe(e)) from None
    return body


class Client:
    """Calls on a loam (or Ollama) server at `host` (LOAM_HOST by default), one connection a call."""

    def __init__(self, host: str | None = None, timeout: float | None = 30.0) -> None:
        self.host = host or config.host()
        self.timeout = timeout

    def close(self) -> None:
        """Nothing stays open between calls; kept so callers need not know."""

    def _send(self, method: str, path: str, body: dict[str, Any] | None, read_timeout: float | None) -> Response:
        """Send one request; an error status raises ServerError, no server ServerUnavailable."""
        try:
            sock = http11.connect(self.host, CONNECT_TIMEOUT)
        except (OSError, ValueError) as e:
            raise unavailable(self.host) from e
        try:
            sock.settimeout(read_timeout)
            headers = {"User-Agent": f"loam/{__version__}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            payload = None if body is None else json.dumps(body).encode()
            http11.send(sock, self.host, method, path, payload, headers)
            response = Response(sock)
            if response.status >= 400:
                raise error_of(response.status, response.reason, response.read())
        except (OSError, ValueError, http11.ProtocolError) as e:
            sock.close()
            raise ServerError(f"talking to the server at {self.host} failed: {e or type(e).__name__}") from None
        except ServerError:
            sock.close()
            raise
        return response

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._send(method, path, body, self.timeout)
        try:
            data = response.read()
        except (OSError, http11.ProtocolError) as e:
            raise ServerError(f"the server at {self.host} closed the connection mid-reply ({e})") from None
        finally:
            response.close()
        try:
            return json.loads(data) if data.strip() else {}
        except ValueError:
            raise ServerError(f"the server at {self.host} answered {path} with something that is not JSON") from None

    def answers(self) -> bool:
        """Whether a server answers at the host now."""
        try:
            sock = http11.connect(self.host, 2.0)
        except (OSError, ValueError):
            return False
        try:
            http11.send(sock, self.host, "GET", "/api/version", None, {})
            return Response(sock).status == 200
        except (OSError, ValueError, http11.ProtocolError):
            return False
        finally:
            sock.close()

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST `body` and yield the NDJSON chunks; closing the iterator cancels the work on the server."""
        response = self._send("POST", path, body, None)  # a model load may hold the first line
        try:
            for line in response.lines():
                item = parse_chunk(line)
                if item is not None:
                    yield item
        except (OSError, http11.ProtocolError, ValueError) as e:
            raise broken_stream(e, self.host) from None
        finally:
            response.close()

    def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> Iterator[dict[str, Any]]:
        """An /api/chat reply, chunk by chunk (one whole chunk with stream=False)."""
        return self.stream("/api/chat", request_body(model, messages, **kw))

    def pull(self, name: str) -> Iterator[dict[str, Any]]:
        """Progress of a pull done by the server: {status, digest?, total?, completed?}."""
        return self.stream("/api/pull", {"model": name, "stream": True})

    def show(self, name: str) -> dict[str, Any]:
        return self._json("POST", "/api/show", {"model": name})

    def ps(self) -> list[dict[str, Any]]:
        """The loaded models, as /api/ps lists them."""
        return self._json("GET", "/api/ps").get("models", [])

    def stop(self, model: str) -> None:
        """Unload a model now (keep_alive 0 with an empty prompt, as `ollama stop` does)."""
        self._json("POST", "/api/generate", {"model": model, "keep_alive": 0})

    def tags(self) -> list[dict[str, Any]]:
        """The server's models, as /api/tags lists them."""
        return self._json("GET", "/api/tags").get("models", [])

    def delete(self, name: str) -> None:
        """Delete a model from the store through the server, which unloads it at once."""
        self._json("DELETE", "/api/delete", {"model": name})


# -- autostart -------------------------------------------------------------


def is_local(host: str) -> bool:
    """Whether `host:port` names this machine, where loam may start a server."""
    import ipaddress

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
            raise unavailable(host)
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
    import subprocess

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
