"""One HTTP/1.1 request per connection, over a plain socket: what the CLI's client needs, and no more.

`loam ask` is a race against Python's start-up, and the standard library's
http.client imports the email package and ssl (about 15 ms here) to parse
headers it never needs. This speaks HTTP/1.1 to a local server: a request with
a JSON body and `Connection: close`, a status line, bounded headers, then a body
by Content-Length, chunked, or until the server closes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

#: Bounds on what a server may send before its body: a longer line or more headers is a protocol error.
MAX_LINE = 65536
MAX_HEADERS = 100
#: The largest chunk of a chunked body this client takes (loam's and Ollama's servers send one line a chunk).
MAX_CHUNK = 1 << 30


class ProtocolError(Exception):
    """The server's reply is not HTTP/1.1 as this client reads it."""


class Response:
    """A reply's status and headers, its body still on the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.status, self.reason, self.headers = read_head(self._line)

    def _line(self) -> bytes:
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
        if not line:
            raise ConnectionResetError("the server closed the connection")
        return line

    def pieces(self) -> Iterator[bytes]:
        """The body as it arrives."""
        length = body_length(self.headers)
        if length == "chunked":
            yield from self._chunked()
        elif length is not None:
            left = length
            while left > 0:
                data = self.file.read1(min(left, 65536))
                if not data:
                    raise ConnectionResetError(f"the server closed the connection {left} bytes short")
                left -= len(data)
                yield data
        else:
            while data := self.file.read1(65536):
                yield data

    def _chunked(self) -> Iterator[bytes]:
        decoder = ChunkedDecoder()
        while not decoder.done:
            data = self.file.read1(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection mid-chunk")
            yield from decoder.feed(data)

    def lines(self) -> Iterator[bytes]:
        """The body's lines (without their newlines), the last one even without a newline."""
        rest = b""
        for data in self.pieces():
            complete, rest = split_lines(rest, data)
            yield from complete
        if rest:
            yield rest

    def read(self) -> bytes:
        return b"".join(self.pieces())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class ChunkedDecoder:
    """The chunked transfer coding, decoded from bytes as they arrive in pieces of any size.

    Bounded: a size or trailer line over MAX_LINE, a chunk over MAX_CHUNK, or
    more than MAX_HEADERS trailers is a ProtocolError. Bytes after the last
    chunk are ignored (this client asks for one reply per connection).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._left = 0  # bytes of the current chunk's data still to come
        self._state = "size"  # size, data, end (the CRLF after data), trailer, done
        self._trailers = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[bytes]:
        """The body bytes that `data` completes, in order."""
        self._buffer += data
        out: list[bytes] = []
        while self._state != "done":
            if self._state == "data":
                if not self._buffer:
                    break
                piece = bytes(self._buffer[: self._left])
                del self._buffer[: len(piece)]
                self._left -= len(piece)
                out.append(piece)
                if self._left == 0:
                    self._state = "end"
                continue
            line = self._line()
            if line is None:
                break
            self._step(line)
        return out

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\n", 0, MAX_LINE + 1)
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
            return None
        line = bytes(self._buffer[:end]).strip()
        del self._buffer[: end + 1]
        return line

    def _step(self, line: bytes) -> None:
        if self._state == "size":
            size = chunk_size(line)
            self._left, self._state = size, ("data" if size else "trailer")
        elif self._state == "end":
            if line:
                raise ProtocolError("a chunk longer than its size said")
            self._state = "size"
        elif not line:
            self._state = "done"
        else:
            self._trailers += 1
            if self._trailers > MAX_HEADERS:
                raise ProtocolError(f"more than {MAX_HEADERS} trailers")


def chunk_size(line: bytes) -> int:
    """The size a chunk's size line gives (extensions after `;` ignored); ProtocolError if it is not one."""
    field = line.split(b";", 1)[0].strip()
    if not field or not all(c in b"0123456789abcdefABCDEF" for c in field) or len(field) > 16:
        raise ProtocolError(f"a chunk size that is not hexadecimal: {field[:20]!r}")
    size = int(field, 16)
    if size > MAX_CHUNK:
        raise ProtocolError(f"a chunk of {size} bytes, more than this client takes")
    return size


def body_length(headers: dict[str, str]) -> int | str | None:
    """How the body ends: "chunked", after Content-Length bytes, or (None) when the server closes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked"
    if "content-length" not in headers:
        return None
    value = headers["content-length"]
    if not (value.isascii() and value.isdigit()):
        raise ProtocolError(f"Content-Length is not a number: {value[:20]!r}")
    return int(value)


def split_lines(rest: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """The lines `data` completes after the partial line `rest`, and the new partial line."""
    *complete, rest = (rest + data).split(b"\n")
    return complete, rest


def read_head(next_line: Callable[[], bytes]) -> tuple[int, str, dict[str, str]]:
    """The status, reason and headers (names lower-cased) from a reply's lines up to the blank one."""
    status, reason = _status_line(next_line())
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = next_line()
        if not line.strip():
            return status, reason, headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProtocolError(f"a header line without a colon: {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    raise ProtocolError(f"more than {MAX_HEADERS} headers")


def _status_line(line: bytes) -> tuple[int, str]:
    version, _, rest = line.decode("latin-1").strip().partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit() and len(code) == 3):
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:60]!r}")
    return int(code), reason


def connect(host: str, timeout: float) -> socket.socket:
    """A connection to `host:port` (an IPv6 address in brackets); OSError when nothing listens."""
    return socket.create_connection(split_host(host), timeout=timeout)


def send(sock: socket.socket, host: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
    """Write one request that asks the server to close the connection after its reply."""
    sock.sendall(request(host, method, path, body, headers))


def request(host: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> bytes:
    """One request's bytes, asking the server to close the connection after its reply."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + (body or b"")


def split_host(host: str) -> tuple[str, int]:
    """`name:port` (an IPv6 address in brackets) as a name and a port; ValueError if it is not one."""
    name, _, port = host.rpartition(":")
    return name.strip("[]"), int(port)
