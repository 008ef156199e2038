"""One streamed HTTP/1.1 request over an asyncio connection: the per-token hot paths of server and chat.

Every generated token crosses from a runner to `loam serve`, and from there
to the chat, as one line of a streamed reply. Through httpx each line passed
anyio, h11, httpcore and three decoding layers: about a third of the server's
CPU per token, and a fifth of the chat's, on machines whose cores the model
needs. This reads the same reply with app/http11.py's bounded parsing over an
asyncio stream: one read per packet, chunked framing decoded in place, lines
handed on as bytes.

Errors: Unreachable (a ConnectionError) when nothing accepts the connection,
TimeoutError when the server sends nothing for `read_timeout` seconds, another
ConnectionError when the connection drops, and http11.ProtocolError when the
reply is not HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType

from app.http11 import MAX_LINE, ChunkedDecoder, ProtocolError, body_length, read_head, request, split_host, split_lines

#: The longest line taken from a streamed reply (a final chunk carries every token id of a long answer).
MAX_LINE_BODY = 64 << 20
READ_SIZE = 65536
_TIMEOUT_SCOPE = sys.version_info >= (3, 11)


class Unreachable(ConnectionError):
    """Nothing accepted the connection (nothing listens, a bad address, or the connect timed out)."""


class Stream:
    """One request and its reply: `status` and `headers` on entering, then `lines()` or `read()`.

    `async with Stream(host, "POST", path, body, ...) as reply:`; leaving the
    block closes the connection, which a loam server or runner takes as the
    client going away (the work for it stops).
    """

    def __init__(
        self,
        host: str,
        method: str,
        path: str,
        body: bytes | None,
        *,
        headers: dict[str, str] | None = None,
        connect_timeout: float,
        read_timeout: float | None,
        read_gap: float = 0.0,
    ) -> None:
        """`host` is `name:port`, an IPv6 address in brackets.

        `read_gap`: after a read of the body, leave the socket alone this many
        seconds, so that what arrives meanwhile is taken in one wakeup, not one
        a packet. For a reader that shows tokens in batches anyway, on cores the
        model needs.
        """
        self.host = host
        self._request = request(host, method, path, body, headers or {})
        self.connect_timeout, self.read_timeout, self.read_gap = connect_timeout, read_timeout, read_gap
        self._paused_until = 0.0
        self.status, self.reason = 0, ""
        self.headers: dict[str, str] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Stream:
        await self.open()
        return self

    async def open(self) -> None:
        """Connect, send the request and read the reply's head; the connection is closed if any of it fails."""
        try:
            name, port = split_host(self.host)
            opening = asyncio.open_connection(name, port, limit=MAX_LINE)
            self._reader, self._writer = await asyncio.wait_for(opening, self.connect_timeout)
        except asyncio.TimeoutError:
            raise Unreachable(f"no connection to {self.host} in {self.connect_timeout:g} s") from None
        except (OSError, ValueError) as e:
            raise Unreachable(f"no connection to {self.host}: {e}") from None
        try:
            self._writer.write(self._request)
            await self._writer.drain()
            head = await self._timed(self._reader.readuntil(b"\r\n\r\n"))
            self.status, self.reason, self.headers = read_head(iter(head.split(b"\n")).__next__)
        except asyncio.IncompleteReadError:
            self.close()
            raise ConnectionResetError("the server closed the connection before its reply") from None
        except asyncio.LimitOverrunError:
            self.close()
            raise ProtocolError(f"a reply head longer than {MAX_LINE} bytes") from None
        except BaseException:
            self.close()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    async def _timed(self, read: Awaitable[bytes]) -> bytes:
        """Await a read of the connection; TimeoutError after `read_timeout` seconds without data."""
        try:
            if _TIMEOUT_SCOPE:  # a timer per read, where wait_for would start a task per read
                async with asyncio.timeout(self.read_timeout):
                    return await read
            return await asyncio.wait_for(read, self.read_timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the server sent nothing for {self.read_timeout:g} s") from None

    async def _read(self) -> bytes:
        assert self._reader is not None and self._writer is not None, "use Stream in `async with`"
        if self._paused_until:
            await asyncio.sleep(self._paused_until - asyncio.get_running_loop().time())
            self._paused_until = 0.0
            self._writer.transport.resume_reading()
        if self.read_timeout is None:
            data = await self._reader.read(READ_SIZE)
        else:
            data = await self._timed(self._reader.read(READ_SIZE))
        if self.read_gap > 0 and data:  # the kernel holds what comes next; no wakeup until the gap is over
            self._writer.transport.pause_reading()
            self._paused_until = asyncio.get_running_loop().time() + self.read_gap
        return data

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives, framed by chunks, Content-Length, or the connection's end."""
        length = body_length(self.headers)
        decoder = ChunkedDecoder() if length == "chunked" else None
        left = length if isinstance(length, int) else -1
        while left != 0 and not (decoder and decoder.done):
            data = await self._read()
            if not data:
                if length is None:
                    return
                raise ConnectionResetError("the server closed the connection mid-reply")
            if decoder is not None:
                for piece in decoder.feed(data):
                    yield piece
                continue
            if left > 0:
                data = data[:left]
                left -= len(data)
            yield data

    async def lines(self) -> AsyncIterator[bytes]:
        """The body's lines without their newlines; ProtocolError for one longer than MAX_LINE_BODY."""
        rest = b""
        async for data in self.pieces():
            complete, rest = split_lines(rest, data)
            if len(rest) > MAX_LINE_BODY:
                raise ProtocolError(f"a line longer than {MAX_LINE_BODY} bytes")
            for line in complete:
                yield line
        if rest:
            yield rest

    async def read(self, limit: int = MAX_LINE_BODY) -> bytes:
        """The whole body; ProtocolError past `limit` bytes."""
        body = bytearray()
        async for piece in self.pieces():
            body += piece
            if len(body) > limit:
                raise ProtocolError(f"a reply longer than {limit} bytes")
        return bytes(body)

    def close(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
