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
    except RecursionError:
        raise ValueError("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def submit_each(
    engine: Engine, http: HttpRequest, requests: list[Callable[[Callable[[Chunk], None]], Request]]
) -> tuple[asyncio.Queue[Chunk | None], list[Request], asyncio.Task[None]]:
    """Queue requests that share one chunk queue, each chunk marked with its request's `index`.

    `requests` builds each request around the function its chunks go to. Also
    returned: the task that cancels them all when the client goes away.
    """
    chunks: asyncio.Queue[Chunk | None] = asyncio.Queue()
    made = []
    for i, make in enumerate(requests):

        def emit(chunk: Chunk, i: int = i) -> None:
            chunk["index"] = i
            chunks.put_nowait(chunk)

        made.append(make(emit))
    for request in made:
        engine.submit(request)
    return chunks, made, asyncio.create_task(cancel_on_disconnect(http, engine, made, chunks))


async def cancel_on_disconnect(
    http: HttpRequest, engine: Engine, requests: list[Request], chunks: asyncio.Queue[Chunk | None]
) -> None:
    """Free the slots as soon as the client goes, even before the first token."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    for request in requests:
        engine.cancel(request)
    chunks.put_nowait(None)
