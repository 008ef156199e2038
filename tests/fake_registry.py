"""A small Ollama-style registry on 127.0.0.1 for tests and benchmarks.

It speaks what loam's registry source speaks: v2 manifest GET behind the
bearer-token handshake, blob HEAD and (ranged) GET. Knobs let a test corrupt a
blob, pause a transfer halfway, or slow it down, and counters say what was sent.
Plain files under `/files/<name>` can be replaced while served; every response
carries an ETag and Last-Modified and honours Range with If-Range, like a CDN.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
TOKEN = "secret-token"
_CHUNK = 1 << 20


@dataclass
class FakeRegistry:
    """Registry state; `start()` serves it on a free loopback port."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    pause_after: int | None = None
    delay_per_chunk: float = 0.0
    drop_once_after: int | None = None
    refuse_head: bool = False
    require_auth: bool = True
    served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    token_requests: int = 0
    requests: list[str] = field(default_factory=list)
    #: Replaceable files served at `/files/<name>`: name -> (bytes, modification time).
    files: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    #: Whether responses carry ETag and Last-Modified validators.
    validators: bool = True
    #: (path, Range header, If-Range header, status) of every GET of bytes.
    gets: list[tuple[str, str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- content -------------------------------------------------------

    def add_blob(self, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    def add_model(self, repository: str, tag: str, model: bytes, extra: dict[str, bytes] | None = None) -> bytes:
        """Publish a model GGUF (plus text layers by media-type suffix); returns the manifest bytes."""
        layers = [{"mediaType": "application/vnd.ollama.image.model", **self.add_blob(model)}]
        for suffix, data in (extra or {}).items():
            layers.append({"mediaType": f"application/vnd.ollama.image.{suffix}", **self.add_blob(data)})
        config = json.dumps(
            {
                "model_format": "gguf",
                "model_family": "llama",
                "model_families": ["llama"],
                "model_type": "tiny",
                "file_type": "F32",
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]},
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **self.add_blob(config)},
            "layers": layers,
        }
        raw = json.dumps(manifest, indent=2).encode()
        self.manifests[(repository, tag)] = raw
        return raw

    def put_file(self, name: str, data: bytes, mtime: float | None = None) -> str:
        """Serve `data` at `/files/<name>` (replacing what was there); returns its URL."""
        self.files[name] = (data, time.time() if mtime is None else mtime)
        return f"http://{self.host}/files/{name}"

    # -- serving -------------------------------------------------------

    def start(self) -> FakeRegistry:
        registry = self

        class Handler(_Handler):
            state = registry

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def total_served(self) -> int:
        with self.lock:
            return sum(self.served.values())


class _Handler(BaseHTTPRequestHandler):
    state: FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        if self.state.refuse_head:
            self.state.requests.append(f"HEAD {urlparse(self.path).path}")
            return self._send(405, b"", head=True)
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlparse(self.path)
        self.state.requests.append(f"{self.command} {url.path}")
        if url.path == "/token":
            self.state.token_requests += 1
            query = parse_qs(url.query)
            if not query.get("scope"):
                return self._send(400, b"no scope")
            return self._send(200, json.dumps({"token": TOKEN}).encode(), "application/json")
        if self.state.require_auth and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            m = re.match(r"^/v2/(.+)/(manifests|blobs)/", url.path)
            scope = f"repository:{m.group(1)}:pull" if m else ""
            realm = f"http://{self.state.host}/token"
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="fake",scope="{scope}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        m = re.match(r"^/v2/(.+)/manifests/([^/]+)$", url.path)
        if m:
            raw = self.state.manifests.get((m.group(1), m.group(2)))
            if raw is None:
                return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', "application/json")
            return self._send(200, raw, MANIFEST_TYPE, head)
        m = re.match(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$", url.path)
        if m and m.group(2) in self.state.blobs:
            return self._blob(m.group(2), head)
        m = re.match(r"^/files/([^/]+)$", url.path)
        if m and m.group(1) in self.state.files:
            data, mtime = self.state.files[m.group(1)]
            return self._bytes(url.path, data, mtime, head)
        self._send(404, b"not found")

    def _blob(self, digest: str, head: bool) -> None:
        data = self.state.blobs[digest]
        if digest in self.state.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self._bytes(digest, data, 0.0, head)

    def _bytes(self, key: str, data: bytes, mtime: float, head: bool) -> None:
        digest = key
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        last_modified = formatdate(mtime, usegmt=True)
        start, end = 0, len(data) - 1
        rng = re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range", "")
        if rng and if_range and if_range not in (etag, last_modified):
            rng = None  # RFC 9110: a stale validator gets the whole representation
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else end, end)
            if start > end:
                return self._send(416, b"")
        if not head:
            with self.state.lock:
                self.state.gets.append((key, self.headers.get("Range", ""), if_range, 206 if rng else 200))
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if self.state.validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if head:
            return
        view = memoryview(data)
        pos = start
        try:
            while pos <= end:
                self._maybe_pause()
                self._maybe_drop()
                chunk = view[pos : min(pos + _CHUNK, end + 1)]
                self.wfile.write(chunk)
                with self.state.lock:
                    self.state.served[digest] += len(chunk)
                pos += len(chunk)
                if self.state.delay_per_chunk:
                    time.sleep(self.state.delay_per_chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _maybe_drop(self) -> None:
        """Cut this connection once, when the served total passes `drop_once_after`."""
        with self.state.lock:
            limit = self.state.drop_once_after
            if limit is None or sum(self.state.served.values()) < limit:
                return
            self.state.drop_once_after = None
        self.close_connection = True
        raise ConnectionResetError("dropped on purpose")

    def _maybe_pause(self) -> None:
        limit = self.state.pause_after
        if limit is not None and self.state.total_served() >= limit:
            self.state.release.wait(60)
            raise BrokenPipeError("paused transfer abandoned")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def main() -> None:
    """Serve one GGUF file as `library/bench:latest` until stdin closes (for benchmarks)."""
    import sys
    from pathlib import Path

    registry = FakeRegistry(require_auth=False)
    registry.add_model("library/bench", "latest", Path(sys.argv[1]).read_bytes())
    registry.start()
    print(registry.host, flush=True)
    sys.stdin.read()
    registry.stop()


if __name__ == "__main__":
    main()
