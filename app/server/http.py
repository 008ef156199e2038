"""HTTP plumbing shared by the Ollama and OpenAI routes: bodies, errors, NDJSON and SSE streams."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.api import describe
from app.errors import InvalidName, LoamError, ModelfileError, ModelNotFound, QuantizeError, Unsupported
from app.server.runners import RunnerError
from app.server.scheduler import QueueFull

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("loam.server")
#: How deep a request body's arrays and objects may nest; no API field needs more.
MAX_DEPTH = 64
#: The last line of a stream cut by the server's shutdown.
SHUTTING_DOWN = "server shutting down"
_LOCAL_URL = re.compile(r"(?:https?://)?(?:127\.0\.0\.1|localhost|\[::1\]):\d+\S*")


class BadRequest(LoamError):
    """A request the API refuses (HTTP 400)."""


def status_of(error: BaseException) -> int:
    """Ollama's status code for an error."""
    if isinstance(error, ModelNotFound):
        return 404
    if isinstance(error, (BadRequest, ValueError, InvalidName, ModelfileError, QuantizeError, Unsupported)):
        return 400
    if isinstance(error, QueueFull):
        return 503
    if isinstance(error, RunnerError) and error.kind == "request":
        return 400  # the runner refused what the request asked for (a token id, a sampling value)
    return 500


def message_of(error: BaseException) -> str:
    """The one line a client sees: loam's own message (runner addresses removed), or "internal error"."""
    if isinstance(error, (LoamError, ValueError)):
        return _LOCAL_URL.sub("the runner", str(error))
    log.error("internal error", exc_info=(type(error), error, error.__traceback__))
    return "internal error"


def _constant(name: str) -> Any:
    raise BadRequest(f"the request body is not JSON: {name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in `value`, found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


async def body_of(request: Request) -> dict[str, Any]:
    """The JSON object a POST carries; BadRequest otherwise. An empty body is an empty object."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the request body is not UTF-8 text (bad byte at {e.start})") from None
    try:
        body = json.loads(text, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise BadRequest(f"the request body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise BadRequest("request body nests too deeply") from None
    if _depth(body) > MAX_DEPTH:
        raise BadRequest("request body nests too deeply")
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


async def parsed(request: Request, model: type[M]) -> M:
    """The POST body checked against `model`; BadRequest naming the first bad field otherwise."""
    body = await body_of(request)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise BadRequest(describe(e)) from None


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
        except asyncio.CancelledError:  # uvicorn's shutdown cancels a reply still being worked on
            return JSONResponse(shape(503, SHUTTING_DOWN), status_code=503)

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
        except asyncio.CancelledError:
            # uvicorn cancels open requests once its graceful shutdown times out; say so instead of a silent
            # cut (when the client is the one who left, the line goes nowhere)
            yield (json.dumps({"error": SHUTTING_DOWN}) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def sse(chunks: AsyncIterator[dict[str, Any]], error_shape: Callable[[int, str], dict[str, Any]]) -> StreamingResponse:
    """Server-sent events ending in `data: [DONE]`, as OpenAI streams."""

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
        except Exception as e:  # noqa: BLE001 - headers are sent; report in the stream
            yield f"data: {json.dumps(error_shape(status_of(e), message_of(e)))}\n\n".encode()
        except asyncio.CancelledError:  # the server's shutdown, as in ndjson
            yield f"data: {json.dumps(error_shape(503, SHUTTING_DOWN))}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


__all__ = [
    "BadRequest",
    "RunnerError",
    "body_of",
    "guarded",
    "ndjson",
    "now_rfc3339",
    "parsed",
    "primed",
    "sse",
    "status_of",
]


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
