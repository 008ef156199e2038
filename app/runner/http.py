"""What every runner endpoint shares: llama-server's error shape, reading a body, queueing a request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse

from app.runner.engine import Engine
from app.runner.slot import Chunk, Request


def error(status: int, message: str, kind: str = "invalid_request_error", **extra: Any) -> JSONResponse:
    """llama-server's error answer: `{"error": {"code", "message", "type", ...}}`."""
    return JSONResponse({"error": {"code": status, "message": message, "type": kind, **extra}}, status_code=status)


def loading() -> JSONResponse:
    """llama-server's answer to anything but /health while the model loads."""
    return error(503, "Loading model", "unavailable_error")


async def read_body(http: HttpRequest) -> dict[str, Any]:
    """The request's JSON object; ValueError says what is wrong with it."""
    try:
        body = await http.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def submit(
    engine: Engine, make: Callable[[Callable[[Chunk], None], asyncio.AbstractEventLoop], Request]
) -> tuple[asyncio.Queue[Chunk | None], Request]:
    """Queue the request `make` builds around a chunk queue's put; the queue and the request."""
    chunks: asyncio.Queue[Chunk | None] = asyncio.Queue()
    request = make(chunks.put_nowait, asyncio.get_running_loop())
    engine.submit(request)
    return chunks, request


async def cancel_on_disconnect(
    http: HttpRequest, engine: Engine, requests: list[Request], chunks: asyncio.Queue[Chunk | None]
) -> None:
    """Free the slots as soon as the client goes, even before the first token."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    for request in requests:
        engine.cancel(request)
    chunks.put_nowait(None)
