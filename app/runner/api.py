"""The runner's HTTP API, wire-compatible with llama-server's: health, completions, embeddings,
tokens, slots, props, models and metrics, behind llama-server's API-key check.

Plus loam's /score: log-probabilities of given token windows, evaluated in full batches.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.runner.completion_api import FINGERPRINT, completion
from app.runner.embeddings_api import embeddings
from app.runner.http import error, loading, read_body, submit_each
from app.runner.metrics import render
from app.runner.sampling import SamplingParams
from app.runner.scoring import ScoreJob
from app.runner.settings import generation_settings
from app.runner.slot import Request
from app.runner.state import RunnerState

#: Paths anyone may read, key or not (llama-server's public endpoints).
PUBLIC = ("/health", "/v1/health")


def build_app(state: RunnerState) -> ASGIApp:
    endpoints = [
        ("/health", health, "GET"),
        ("/v1/health", health, "GET"),
        ("/completion", completion, "POST"),
        ("/completions", completion, "POST"),
        ("/v1/completions", partial(completion, oai=True), "POST"),
        ("/tokenize", tokenize, "POST"),
        ("/detokenize", detokenize, "POST"),
        ("/embedding", embeddings, "POST"),
        ("/embeddings", embeddings, "POST"),
        ("/v1/embeddings", partial(embeddings, oai=True), "POST"),
        ("/score", score, "POST"),
        ("/slots", slots, "GET"),
        ("/props", props, "GET"),
        ("/models", models, "GET"),
        ("/v1/models", models, "GET"),
        ("/metrics", metrics, "GET"),
    ]
    routes = [Route(path, partial(fn, state), methods=[method]) for path, fn, method in endpoints]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    return ApiKeys(app, state.options.api_keys) if state.options.api_keys else app


async def _not_found(http: HttpRequest, exc: Exception) -> Response:
    return error(404, "File Not Found", "not_found_error")


async def _not_allowed(http: HttpRequest, exc: Exception) -> Response:
    return error(405, f"{http.method} is not allowed on {http.url.path}", "invalid_request_error")


class ApiKeys:
    """llama-server's --api-key: every path but /health needs `Authorization: Bearer KEY` or `X-Api-Key: KEY`.

    Plain ASGI, so a streamed answer still hears the client leave (http.disconnect).
    """

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app, self.keys = app, [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC or scope["method"] == "OPTIONS" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = {"error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}}
        await JSONResponse(body, status_code=401)(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return any(hmac.compare_digest(given, key) for key in self.keys)


async def health(state: RunnerState, http: HttpRequest) -> Response:
    if state.engine is None:
        return JSONResponse({"status": "loading model", "progress": round(state.progress, 3)}, status_code=503)
    if state.engine.failure:
        return JSONResponse({"status": "error", "error": state.engine.failure}, status_code=500)
    return JSONResponse({"status": "ok"})


async def tokenize(state: RunnerState, http: HttpRequest) -> Response:
    model = state.model
    if model is None:
        return loading()
    try:
        body = await read_body(http)
        content = body.get("content")
        if not isinstance(content, str):
            raise ValueError("content must be a string")
    except ValueError as e:
        return error(400, str(e))
    tokens = model.tokenize(content, bool(body.get("add_special", False)), bool(body.get("parse_special", True)))
    if body.get("with_pieces"):
        return JSONResponse({"tokens": [{"id": t, "piece": _piece_json(model.piece(t, special=True))} for t in tokens]})
    return JSONResponse({"tokens": tokens})


def _piece_json(data: bytes) -> str | list[int]:
    """A piece as text, or as its bytes where it is not whole UTF-8 (as llama-server sends it)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


async def detokenize(state: RunnerState, http: HttpRequest) -> Response:
    if state.model is None:
        return loading()
    try:
        body = await read_body(http)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and state.model.valid_token(t) for t in tokens):
            raise ValueError("tokens must be a list of token ids in the vocabulary")
    except ValueError as e:
        return error(400, str(e))
    return JSONResponse({"content": state.model.detokenize(tokens)})


async def score(state: RunnerState, http: HttpRequest) -> Response:
    """Log-probabilities of each window's tokens from its `from` on: JSON, or float32 rows of the whole vocabulary."""
    engine, model = state.engine, state.model
    if engine is None or model is None:
        return loading()
    try:
        body = await read_body(http)
        job = await asyncio.to_thread(ScoreJob.from_json, body, model.n_vocab, model.n_ctx_slot)
    except ValueError as e:
        return error(400, str(e))
    loop = asyncio.get_running_loop()
    chunks, _, watcher = submit_each(engine, http, [partial(Request, [], SamplingParams(), loop=loop, score=job)])
    try:
        result = await chunks.get()
    finally:
        watcher.cancel()
    if result is None:
        return error(499, "the client went away")
    if "error" in result:
        return error(500, result["error"], "server_error")
    if job.dist is not None:
        headers = {"X-Score-Rows": str(job.n_rows), "X-Score-Vocab": str(job.n_vocab)}
        return Response(memoryview(job.dist).cast("B"), media_type="application/octet-stream", headers=headers)
    return Response(await asyncio.to_thread(job.answer_json), media_type="application/json")


async def slots(state: RunnerState, http: HttpRequest) -> Response:
    if not state.options.slots:
        message = "This server does not support slots endpoint. Start it with `--slots`"
        return error(501, message, "not_supported_error")
    if state.engine is None or state.model is None:
        return loading()
    return JSONResponse([slot.describe(state.model.n_ctx_slot) for slot in state.engine.slots])


async def props(state: RunnerState, http: HttpRequest) -> Response:
    """What llama-server reports about itself, plus the whole context's size and what llama.cpp allocated."""
    model, options = state.model, state.options
    if model is None:
        return loading()
    return JSONResponse(
        {
            "default_generation_settings": {
                "params": generation_settings(state.defaults, only_metrics=True),
                "n_ctx": model.n_ctx_slot,
            },
            "total_slots": options.parallel,
            "model_alias": options.model_name,
            "model_path": str(options.model),
            "modalities": {"vision": False, "video": False, "audio": False},
            "endpoint_slots": options.slots,
            "endpoint_props": True,
            "endpoint_metrics": options.metrics,
            "ui": False,
            "build_info": FINGERPRINT,
            "is_sleeping": False,
            "n_ctx": model.n_ctx,
            "memory": model.allocated,
        }
    )


async def models(state: RunnerState, http: HttpRequest) -> Response:
    """The one model served, in llama-server's /models shape (OpenAI's list with its metadata)."""
    model, options = state.model, state.options
    if model is None:
        return loading()
    name = options.model_name
    info: dict[str, Any] = {
        "id": name,
        "aliases": options.aliases,
        "tags": options.tags,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "llamacpp",
        "meta": {"n_vocab": model.n_vocab, "n_ctx": model.n_ctx_slot, "n_embd": model.n_embd},
    }
    return JSONResponse({"models": [{"name": name, "model": name}], "object": "list", "data": [info]})


async def metrics(state: RunnerState, http: HttpRequest) -> Response:
    if not state.options.metrics:
        message = "This server does not support metrics endpoint. Start it with `--metrics`"
        return error(501, message, "not_supported_error")
    if state.engine is None:
        return loading()
    response = PlainTextResponse(render(state.engine), media_type="text/plain; version=0.0.4")
    # spelled as llama-server spells it: some clients look the header up by its exact case
    response.raw_headers.append((b"Process-Start-Time-Unix", str(int(state.started)).encode()))
    return response
