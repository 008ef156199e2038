"""Browser protection for `loam serve`: an ASGI middleware that refuses what a web page could make a browser send.

Any page the user opens can reach 127.0.0.1. This layer refuses, before any route runs: foreign Origins (CSRF and
cross-site reads), foreign Host headers while bound to loopback (DNS rebinding), "simple" content types on routes
that change the store (form posts need no preflight), and bodies over a size limit. It is pure ASGI, so streamed
replies pass through untouched.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from app.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 32 * 1024 * 1024
APP_SCHEMES = ("app://", "file://", "tauri://", "vscode-webview://")
LOOPBACK_ORIGIN = re.compile(r"https?://(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(:\d{1,5})?")
MUTATING = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
GENERATING = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")
SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
SAFE_HEADERS = frozenset({"authorization", "content-type", "user-agent", "accept", "x-requested-with"})
SAFE_HEADER_PREFIXES = ("openai-", "x-stainless-")
ALLOW_METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"
MAX_AGE = "600"


@dataclass(frozen=True)
class GuardSettings:
    """What the guard allows, read once when the app is built."""

    origins: tuple[str, ...] = ()  # LOAM_ORIGINS patterns, beyond the loopback and app-scheme ones
    hosts: tuple[str, ...] = ()
    check_host: bool = True
    max_body: int = DEFAULT_MAX_BODY


def _list(env: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in os.environ.get(env, "").split(",") if part.strip())


def settings_from_env(bind_host: str) -> GuardSettings:
    """LOAM_ORIGINS, LOAM_ALLOWED_HOSTS and LOAM_MAX_BODY; the Host check only while bound to loopback."""
    raw = os.environ.get("LOAM_MAX_BODY", "").strip()
    try:
        max_body = int(raw) if raw else DEFAULT_MAX_BODY
    except ValueError:
        raise ConfigError(f"LOAM_MAX_BODY={raw!r} is not a whole number of bytes") from None
    if max_body < 1:
        raise ConfigError(f"LOAM_MAX_BODY={raw!r} must be at least 1")
    return GuardSettings(
        origins=_list("LOAM_ORIGINS"),
        hosts=tuple(h.lower() for h in _list("LOAM_ALLOWED_HOSTS")),
        check_host=is_loopback_host(bind_host),
        max_body=max_body,
    )


def is_loopback_host(host: str) -> bool:
    """localhost, *.localhost, 127.x and ::1, with or without brackets."""
    host = host.strip().lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:80` -> `::1`, `a.b:1` -> `a.b`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _clip(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


class Guard:
    """The middleware: checks Origin, Host, Content-Type and body size, then hands the request on."""

    def __init__(self, app: ASGIApp, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings

    def origin_allowed(self, origin: str) -> bool:
        """True for a loopback or app-scheme origin, or one LOAM_ORIGINS matches; `null` never."""
        origin = origin.strip().lower()
        if not origin or origin == "null":
            return False
        if LOOPBACK_ORIGIN.fullmatch(origin) or origin.startswith(APP_SCHEMES):
            return True
        # fnmatch reads [..] as a character class; an IPv6 origin's brackets are literal
        return any(
            fnmatch.fnmatchcase(origin, pattern.lower().replace("[", "[[]")) for pattern in self.settings.origins
        )

    def host_allowed(self, host: str) -> bool:
        name = split_host(host)
        return is_loopback_host(name) or name in self.settings.hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin):
            await _reply(send, 403, f"origin not allowed: {_clip(origin)}")
            return
        host = headers.get("host")
        if self.settings.check_host and host is not None and not self.host_allowed(host):
            await _reply(send, 403, f"host not allowed: {_clip(host)}")
            return
        method = scope["method"]
        path = scope["path"]
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            await self.preflight(send, origin, headers.get("access-control-request-headers", ""))
            return
        refusal = self.content_type_refusal(method, path, headers.get("content-type"), origin is not None)
        if refusal:
            await _reply(send, 415, refusal, origin)
            return
        limit = None if path.startswith("/api/blobs/") else self.settings.max_body
        if limit is not None:
            length = headers.get("content-length", "").strip()
            if length.isdigit() and int(length) > limit:
                await _reply(send, 413, f"request body too large: limit {limit} bytes", origin)
                return
        await self.forward(scope, receive, send, origin, limit)

    def content_type_refusal(self, method: str, path: str, content_type: str | None, has_origin: bool) -> str:
        """Why this request's Content-Type is refused, or "" when it may pass."""
        if method not in ("POST", "PUT", "DELETE", "PATCH"):
            return ""
        media = _media_type(content_type) if content_type is not None else None
        if path.startswith("/api/blobs/"):
            # octet-stream as documented; the official client sends its default application/json; curl -T none
            if media in ("application/octet-stream", "application/json") or (media is None and not has_origin):
                return ""
            return "Content-Type must be application/octet-stream"
        if path in MUTATING:
            return "" if media == "application/json" else "Content-Type must be application/json"
        if has_origin and (path in GENERATING or path.startswith("/v1/")) and media in SIMPLE_TYPES:
            return "Content-Type must be application/json"
        return ""

    async def preflight(self, send: Send, origin: str, requested: str) -> None:
        """204 naming what a page at an allowed origin may send; requested headers are echoed from a safe list."""
        names = [h.strip().lower() for h in requested.split(",") if h.strip()]
        allowed = [h for h in names if h in SAFE_HEADERS or h.startswith(SAFE_HEADER_PREFIXES)]
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ", ".join(allowed or sorted(SAFE_HEADERS)).encode("latin-1")),
            (b"access-control-max-age", MAX_AGE.encode()),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def forward(self, scope: Scope, receive: Receive, send: Send, origin: str | None, limit: int | None) -> None:
        """Run the app, counting body bytes as they arrive and adding CORS headers for an allowed origin.

        A body that outgrows the limit reads as a client disconnect to the app, and whatever the app then answers
        is replaced by the 413.
        """
        received = 0
        overflow = False
        answered = False  # the 413 went out, or the app had begun its own reply before the body overflowed

        async def counted() -> Message:
            nonlocal received, overflow
            if overflow:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    overflow = True
                    return {"type": "http.disconnect"}
            return message

        async def too_large() -> None:
            nonlocal answered
            if not answered:
                answered = True
                await _reply(send, 413, f"request body too large: limit {limit} bytes", origin)

        async def sending(message: Message) -> None:
            nonlocal answered
            if overflow:
                await too_large()
                return
            if message["type"] == "http.response.start":
                answered = True
                if origin is not None:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), *_cors(origin)]
            await send(message)

        try:
            await self.app(scope, counted if limit is not None else receive, sending)
        except Exception:
            if not overflow:
                raise
        if overflow:
            await too_large()


def _cors(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


async def _reply(send: Send, status: int, error: str, origin: str | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (_cors(origin) if origin else [])}
    )
    await send({"type": "http.response.body", "body": body})
