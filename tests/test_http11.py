"""app/http11.py's chunked decoding and app/http11_async.py's streamed replies, on real sockets."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from app import http11_async
from app.http11 import MAX_CHUNK, MAX_HEADERS, MAX_LINE, ChunkedDecoder, ProtocolError
from app.http11_async import Stream, Unreachable
from tests.runner_process import free_port


def encode(*chunks: bytes, trailers: bytes = b"") -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailers + b"\r\n"


def decode_in_pieces(data: bytes, rng: random.Random) -> tuple[bytes, bool]:
    decoder, out, at = ChunkedDecoder(), [], 0
    while at < len(data):
        step = rng.randint(1, 9)
        out += decoder.feed(data[at : at + step])
        at += step
    return b"".join(out), decoder.done


def test_chunks_decode_the_same_however_the_bytes_are_split() -> None:
    rng = random.Random(3)
    for _ in range(200):
        chunks = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))) for _ in range(rng.randint(0, 6))]
        trailers = b"X-Sum: 1\r\n" * rng.randint(0, 3)
        body, done = decode_in_pieces(encode(*chunks, trailers=trailers) + b"after the end", rng)
        assert body == b"".join(chunks) and done


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"zz\r\n{}\r\n0\r\n\r\n", "not hexadecimal"),
        (b"-1\r\n{}\r\n0\r\n\r\n", "not hexadecimal"),
        (b"\r\n", "not hexadecimal"),
        (b"%x\r\n" % (MAX_CHUNK + 1), "more than this client takes"),
        (b"2\r\n{}xx\r\n0\r\n\r\n", "longer than its size said"),
        (b"1" * (MAX_LINE + 2), "a line longer than"),
        (b"1" * (MAX_LINE + 2) + b"\r\n", "a line longer than"),  # its end in the same piece
        (b"0\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n", "trailers"),
    ],
)
def test_bad_framing_is_a_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        ChunkedDecoder().feed(data)


def test_random_bytes_decode_or_raise_protocol_error() -> None:
    rng = random.Random(11)
    good = encode(b"data: {}\n\n", b"data: {}\n\n")
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 5)):
            at = rng.randrange(len(data))
            data[at : at + rng.randint(0, 3)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 3)))
        try:
            decode_in_pieces(bytes(data), rng)
        except ProtocolError:
            pass


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    """A raw server on a loopback port that reads the request head, then runs `handler`."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def lines_from(handler: Handler, read_timeout: float | None = None) -> tuple[int, list[bytes]]:
    server, host = await serve(handler)
    async with server, Stream(host, "POST", "/x", b"{}", connect_timeout=5, read_timeout=read_timeout) as reply:
        return reply.status, [line async for line in reply.lines()]


def sender(*parts: bytes, pause: float = 0.0) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()

    return handler


HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_events_split_across_chunks_and_packets_arrive_whole() -> None:
    body = encode(b'data: {"a"', b": 1}\n\ndata: {}\n", b"\n: progress\n\n")
    parts = [HEAD + body[:7], body[7:20], body[20:]]
    status, lines = asyncio.run(lines_from(sender(*parts, pause=0.01)))
    assert status == 200 and lines == [b'data: {"a": 1}', b"", b"data: {}", b"", b": progress", b""]


def test_a_content_length_body_stops_at_its_length_and_a_closed_one_at_the_end() -> None:
    sized = b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nab\ncdEXTRA"
    assert asyncio.run(lines_from(sender(sized))) == (400, [b"ab", b"cd"])
    until_close = b"HTTP/1.1 200 OK\r\n\r\none\ntwo"
    assert asyncio.run(lines_from(sender(until_close))) == (200, [b"one", b"two"])


@pytest.mark.parametrize(
    "reply",
    [
        HEAD + b"5\r\nab",  # the connection ends mid-chunk
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-",  # mid-head
    ],
)
def test_a_reply_cut_short_is_a_connection_error(reply: bytes) -> None:
    with pytest.raises(ConnectionError):
        asyncio.run(lines_from(sender(reply)))


def test_a_silent_server_is_a_timeout_and_the_connection_is_closed() -> None:
    closed = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + encode(b"data: 1\n")[:-5])  # one event, then nothing
        await reader.read()  # returns once the client closes
        closed.set()

    async def run() -> list[bytes]:
        got: list[bytes] = []
        server, host = await serve(stall)
        async with server:
            with pytest.raises(TimeoutError, match="sent nothing for 0.2 s"):
                async with Stream(host, "POST", "/", b"", connect_timeout=5, read_timeout=0.2) as reply:
                    async for line in reply.lines():
                        got.append(line)
            await asyncio.wait_for(closed.wait(), 30)
        return got

    assert asyncio.run(run()) == [b"data: 1"]


def test_a_line_past_the_limit_is_a_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http11_async, "MAX_LINE_BODY", 100)
    endless = HEAD + encode(b"x" * 60, b"y" * 60)
    with pytest.raises(ProtocolError, match="longer than 100 bytes"):
        asyncio.run(lines_from(sender(endless)))


@pytest.mark.parametrize("host", [lambda: f"127.0.0.1:{free_port()}", lambda: "127.0.0.1:notaport"])
def test_nothing_listening_is_unreachable(host: Callable[[], str]) -> None:
    async def run() -> None:
        async with Stream(host(), "GET", "/", None, connect_timeout=5, read_timeout=None):
            pass

    with pytest.raises(Unreachable, match="no connection to"):
        asyncio.run(run())


def test_a_read_gap_takes_what_arrived_meanwhile_in_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """With read_gap the socket is left alone between reads: ten lines sent 5 ms apart come in two reads."""
    lines = [b"data: %d" % i for i in range(10)]
    events = [encode(line + b"\n")[:-5] for line in lines]  # one chunk each, the last chunk sent at the end
    handler = sender(HEAD + events[0], *events[1:], b"0\r\n\r\n", pause=0.005)
    reads: list[bytes] = []
    real_read = Stream._read

    async def counted(self: Stream) -> bytes:
        reads.append(await real_read(self))
        return reads[-1]

    monkeypatch.setattr(Stream, "_read", counted)

    async def run(gap: float) -> list[bytes]:
        server, host = await serve(handler)
        async with server, Stream(host, "GET", "/", None, connect_timeout=5, read_timeout=None, read_gap=gap) as r:
            return [line async for line in r.lines()]

    assert asyncio.run(run(2.0)) == lines
    assert len([data for data in reads if data]) <= 2, reads
