"""One HTTP/1.1 request per connection, over a plain socket: what the CLI's client needs, and no more.

`loam ask` is a race against Python's start-up, and the standard library's
http.client imports the email package and ssl (about 15 ms here) to parse
headers it never needs. This speaks HTTP/1.1 to a local server: a request with
a JSON body and `Connection: close`, a status line, bounded headers, then a body
by Content-Length, chunked, or until the server closes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

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
        self.status, self.reason = _status_line(self._line())
        self.headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if not line.strip():
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"a header line without a colon: {line[:60]!r}")
            self.headers[name.strip().lower()] = value.strip()
        else:
            raise ProtocolError(f"more than {MAX_HEADERS} headers")

    def _line(self) -> bytes:
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
        if not line:
            raise ConnectionResetError("the server closed the connection")
        return line

    def pieces(self) -> Iterator[bytes]:
        """The body as it arrives."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            yield from self._chunked()
        elif "content-length" in self.headers:
            try:
                left = int(self.headers["content-length"])
            except ValueError:
                raise ProtocolError("Content-Length is not a number") from None
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
        while True:
            size_field = self._line().split(b";", 1)[0].strip()
            if not size_field or not all(c in b"0123456789abcdefABCDEF" for c in size_field) or len(size_field) > 16:
                raise ProtocolError(f"a chunk size that is not hexadecimal: {size_field[:20]!r}")
            size = int(size_field, 16)
            if size > MAX_CHUNK:
                raise ProtocolError(f"a chunk of {size} bytes, more than this client takes")
            if size == 0:
                while self._line().strip():  # trailers, then the blank line
                    pass
                return
            while size > 0:
                data = self.file.read1(min(size, 65536))
                if not data:
                    raise ConnectionResetError("the server closed the connection mid-chunk")
                size -= len(data)
                yield data
            if self._line().strip():
                raise ProtocolError("a chunk longer than its size said")

    def lines(self) -> Iterator[bytes]:
        """The body's lines (without their newlines), the last one even without a newline."""
        rest = b""
        for data in self.pieces():
            *complete, rest = (rest + data).split(b"\n")
            yield from complete
        if rest:
            yield rest

    def read(self) -> bytes:
        return b"".join(self.pieces())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _status_line(line: bytes) -> tuple[int, str]:
    version, _, rest = line.decode("latin-1").strip().partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit() and len(code) == 3):
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:60]!r}")
    return int(code), reason


def connect(host: str, timeout: float) -> socket.socket:
    """A connection to `host:port` (an IPv6 address in brackets); OSError when nothing listens."""
    name, _, port = host.rpartition(":")
    return socket.create_connection((name.strip("[]"), int(port)), timeout=timeout)


def send(sock: socket.socket, host: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
    """Write one request that asks the server to close the connection after its reply."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + (body or b""))
