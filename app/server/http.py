"""HTTP plumbing shared by the Ollama and OpenAI routes: bodies, errors, NDJSON and SSE streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.errors import InvalidName, LoamError, ModelfileError, ModelNotFound
from app.server.runners import RunnerError
from app.server.scheduler import QueueFull

T = TypeVar("T")


class BadRequest(LoamError):
    """A request the API refuses (HTTP 400)."""


def status_of(error: BaseException) -> int:
    """Ollama's status code for an error."""
    if isinstance(error, ModelNotFound):
        return 404
    if isinstance(error, (BadRequest, ValueError, InvalidName, ModelfileError)):
        return 400
    if isinstance(error, QueueFull):
        return 503
    return 500


def message_of(error: BaseException) -> str:
    if isinstance(error, (LoamError, ValueError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


async def body_of(request: Request) -> dict[str, Any]:
    """The JSON object a POST carries; BadRequest otherwise. An empty body is an empty object."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def guarded(
    handler: Callable[[Request], Awaitable[Response]], shape: Callable[[int, str], dict[str, Any]]
) -> Callable[[Request], Awaitable[Response]]:
    """Turn any error a handler raises into `shape(status, message)` JSON with the right status."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as e:  # noqa: BLE001 - every failure becomes an HTTP error, never a traceback page
            status = status_of(e)
            return JSONResponse(shape(status, message_of(e)), status_code=status)

    return endpoint


async def primed(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Start `items` in a task of its own and wait for its first item, so errors before it get a status code.

    The generator runs start to end in that one task (httpx streams must close
    in the task that opened them); the response reads from a queue, and
    closing the response (a client that left) cancels the task.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for item in items:
                queue.put_nowait(("item", item))
            queue.put_nowait(("end", None))
        except Exception as e:  # noqa: BLE001 - handed to the reader
            queue.put_nowait(("error", e))

    task = asyncio.create_task(produce())
    kind, first = await queue.get()
    if kind == "error":
        raise first

    async def rest() -> AsyncIterator[Any]:
        try:
            entry = (kind, first)
            while entry[0] == "item":
                yield entry[1]
                entry = await queue.get()
            if entry[0] == "error":
                raise entry[1]
        finally:
            task.cancel()

    return rest()


def ndjson(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """An NDJSON stream; an error after the first line becomes a final `{"error": ...}` line."""

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield (json.dumps(chunk, ensure_ascii=False) + "\n").encode()
        except Exception as e:  # noqa: BLE001 - the status is sent already; the error goes in the stream
            yield (json.dumps({"error": message_of(e)}) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def sse(chunks: AsyncIterator[dict[str, Any]], error_shape: Callable[[int, str], dict[str, Any]]) -> StreamingResponse:
    """Server-sent events ending in `data: [DONE]`, as OpenAI streams."""

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
        except Exception as e:  # noqa: BLE001 - headers are sent; report in the stream
            yield f"data: {json.dumps(error_shape(status_of(e), message_of(e)))}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


__all__ = ["BadRequest", "RunnerError", "body_of", "guarded", "ndjson", "now_rfc3339", "primed", "sse", "status_of"]


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first (a non-streamed reply has no other sign)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone("the client went away")
    return task.result()


class ClientGone(LoamError):
    """The client disconnected before its reply was ready."""
