"""The clients on faults a real loam server does not produce on demand: a raw socket server stands in.

Each streaming case runs against both clients: the CLI's (app/client.py, a
plain socket) and the TUI's (app/async_client.py, an asyncio connection).
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from app.async_client import AsyncClient
from app.client import Client, ServerError, ServerUnavailable
from app.errors import LoamError
from tests.runner_process import free_port


class RawServer:
    """Answers every connection with `reply` (bytes, sent as is) after reading the request head."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                self.requests.append(data)
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[type[RawServer]]:
    servers: list[RawServer] = []

    def make(reply: bytes) -> RawServer:
        servers.append(RawServer(reply))
        return servers[-1]

    yield make  # type: ignore[misc]
    for server in servers:
        server.close()


CLIENTS = ["sync", "async"]


def answer(kind: str, host: str, model: str = "m", **kw: Any) -> tuple[list[dict[str, Any]], LoamError | None]:
    """The chunks one client yields for a chat, and the error that ended them (None when none did)."""
    chunks: list[dict[str, Any]] = []
    messages = [{"role": "user", "content": "hi"}]
    if kind == "sync":
        try:
            chunks.extend(Client(host).chat(model, messages, **kw))
        except LoamError as e:
            return chunks, e
        return chunks, None

    async def run() -> LoamError | None:
        client = AsyncClient(host)
        try:
            async for chunk in client.chat(model, messages, **kw):
                chunks.append(chunk)
        except LoamError as e:
            return e
        finally:
            await client.aclose()
        return None

    return chunks, asyncio.run(run())


def chunked(*lines: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)


@pytest.mark.parametrize("kind", CLIENTS)
def test_streamed_lines_arrive_as_chunks_and_the_body_is_json(raw, kind: str) -> None:
    done = b'{"done": true, "eval_count": 2, "eval_duration": 1e6}\n'
    server = raw(chunked(b'{"message": {"content": "a"}}\n{"message"', b': {"content": "b"}}\n', done, b""))
    chunks, error = answer(kind, server.host, options={"seed": 1})
    assert error is None
    assert [c.get("message", {}).get("content") for c in chunks] == ["a", "b", None]
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/chat HTTP/1.1") and b"Content-Type: application/json" in head
    assert f"Host: {server.host}".encode() in head


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_connection_dropped_mid_answer_is_one_line(raw, kind: str) -> None:
    server = raw(chunked(b'{"message": {"content": "a"}}\n')[:-2])  # no last chunk: the server went away
    chunks, error = answer(kind, server.host)
    assert [c["message"]["content"] for c in chunks] == ["a"]
    assert isinstance(error, ServerError) and "closed the connection mid-answer" in str(error)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"<html>oops</html>\n", "sent a line that is not JSON"),
        (b'{"error": "the runner crashed"}\n', "^the runner crashed$"),
        (b'{"done": true, "eval_count": "many"}\n', "final line is malformed: eval_count"),
        (b'{"done": true, "eval_duration": 1e999}\n', "final line is malformed: eval_duration"),
        (b"[1, 2]\n", "not JSON"),
    ],
)
@pytest.mark.parametrize("kind", CLIENTS)
def test_bad_lines_are_one_line_errors(raw, line: bytes, message: str, kind: str) -> None:
    server = raw(chunked(line, b""))
    _, error = answer(kind, server.host)
    assert isinstance(error, ServerError)
    assert re.search(message, str(error)), error


def test_an_error_status_carries_the_servers_message(raw) -> None:
    body = b'{"error": "model \\"x\\" not found, try pulling it first"}'
    reply = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    server = raw(reply)
    for kind in CLIENTS:
        _, error = answer(kind, server.host, "x")
        assert isinstance(error, ServerError) and str(error).startswith('model "x" not found'), error
        assert error.status == 404
    with pytest.raises(ServerError) as shown:
        Client(server.host).show("x")
    assert shown.value.status == 404


def test_no_server_is_unavailable_and_answers_is_false() -> None:
    host = f"127.0.0.1:{free_port()}"
    assert not Client(host).answers()
    for kind in CLIENTS:
        _, error = answer(kind, host)
        assert isinstance(error, ServerUnavailable) and f"no loam server answers at {host}" in str(error)
    with pytest.raises(ServerUnavailable):
        Client(host).tags()


@pytest.mark.parametrize(
    "reply",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}",
        "HTTP/1.1 ²00 OK\r\n\r\n".encode("latin-1"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}xx\r\n0\r\n\r\n",
        b"",
    ],
)
def test_a_reply_that_is_not_http_is_a_one_line_server_error(raw, reply: bytes) -> None:
    server = raw(reply)
    assert Client(server.host).answers() in (True, False)  # whatever came back, no exception
    for kind in CLIENTS:
        _, error = answer(kind, server.host)
        assert isinstance(error, ServerError) and "\n" not in str(error), (kind, error)
    with pytest.raises(ServerError):
        Client(server.host).tags()


def test_fuzzed_replies_end_in_chunks_or_a_server_error(raw) -> None:
    """Random damage to a good reply: the client yields what parses and raises ServerError, nothing else."""
    good = chunked(b'{"message": {"content": "a"}}\n', b'{"done": true, "eval_count": 1}\n', b"")
    rng = random.Random(7)
    for _ in range(150):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[at] = rng.randrange(256)
            elif choice < 0.7:
                del data[at : at + rng.randint(1, 8)]
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        server = raw(bytes(data))
        for kind in CLIENTS:
            chunks, error = answer(kind, server.host)
            assert all(isinstance(chunk, dict) for chunk in chunks)
            assert error is None or (isinstance(error, ServerError) and "\n" not in str(error)), (kind, error)
