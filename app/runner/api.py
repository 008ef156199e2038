"""The runner's HTTP API, wire-compatible with llama-server's: health, completion, tokens, slots, metrics.

Plus loam's /score: log-probabilities of given token windows, evaluated in full batches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from app.runner.engine import Engine
from app.runner.sampling import SamplingParams, check_grammar, trigger_patterns
from app.runner.scoring import ScoreJob
from app.runner.slot import Chunk, Request
from app.runner.state import RunnerState

#: While a streamed request has no output, a blank line this often says the decode loop is still moving,
#: so the server's no-progress watchdog (LOAM_RUNNER_TIMEOUT) tells a long prompt from a wedged runner.
HEARTBEAT_SECONDS = 1.0


def build_app(state: RunnerState) -> Starlette:
    endpoints = [
        ("/health", health, "GET"),
        ("/completion", completion, "POST"),
        ("/completions", completion, "POST"),
        ("/tokenize", tokenize, "POST"),
        ("/detokenize", detokenize, "POST"),
        ("/embedding", embedding, "POST"),
        ("/score", score, "POST"),
        ("/slots", slots, "GET"),
        ("/props", props, "GET"),
        ("/metrics", metrics, "GET"),
    ]
    return Starlette(routes=[Route(path, partial(fn, state), methods=[method]) for path, fn, method in endpoints])


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status_code=status)


def _loading() -> JSONResponse:
    """llama-server's answer to anything but /health while the model loads."""
    return error(503, "Loading model", "unavailable_error")


async def health(state: RunnerState, http: HttpRequest) -> Response:
    if state.engine is None:
        return JSONResponse({"status": "loading model", "progress": round(state.progress, 3)}, status_code=503)
    if state.engine.failure:
        return JSONResponse({"status": "error", "error": state.engine.failure}, status_code=500)
    return JSONResponse({"status": "ok"})


async def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def _prompt_tokens(state: RunnerState, prompt: Any) -> list[int]:
    """A prompt as llama-server takes it: a string, a list of token ids, or a mix of both."""
    model = state.model
    assert model is not None
    if isinstance(prompt, str):
        return model.tokenize(prompt, add_special=True, parse_special=True)
    if isinstance(prompt, list):
        tokens: list[int] = []
        for i, part in enumerate(prompt):
            if isinstance(part, bool) or not isinstance(part, (int, str)):
                raise ValueError("prompt lists hold token ids and strings")
            if isinstance(part, str):
                tokens += model.tokenize(part, add_special=i == 0, parse_special=True)
            elif not model.valid_token(part):
                raise ValueError(f"token id {part} is out of range (vocabulary of {model.n_vocab})")
            else:
                tokens.append(part)
        return tokens
    raise ValueError("prompt must be a string or a list of token ids")


async def completion(state: RunnerState, http: HttpRequest) -> Response:
    engine = state.engine
    if engine is None:
        return _loading()
    try:
        body = await _body(http)
        prompt = body.get("prompt", body.get("tokens"))
        tokens = _prompt_tokens(state, prompt)
        params = SamplingParams.from_json(body)
        if params.grammar:
            lazy = trigger_patterns(params.grammar_triggers) if params.grammar_lazy else None
            check_grammar(state.model.vocab, params.grammar, lazy)
    except ValueError as e:
        return error(400, str(e))
    if not tokens or prompt == "":
        return error(400, "the prompt is empty")
    chunks, request = _submit(engine, tokens, params, stream=bool(body.get("stream")))
    watcher = asyncio.create_task(_cancel_on_disconnect(http, engine, request, chunks))
    if not body.get("stream"):
        try:
            return _whole(await _collect(chunks))
        finally:
            watcher.cancel()
    sse = "text/event-stream" in http.headers.get("accept", "") or body.get("stream_format") == "sse"
    return StreamingResponse(
        _stream(chunks, engine, request, watcher, sse),
        media_type="text/event-stream" if sse else "application/x-ndjson",
    )


def _submit(
    engine: Engine, tokens: list[int], params: SamplingParams, embedding: bool = False, stream: bool = True
) -> tuple[asyncio.Queue[Chunk | None], Request]:
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[Chunk | None] = asyncio.Queue()
    request = Request(tokens, params, chunks.put_nowait, loop, embedding=embedding, stream=stream)
    engine.submit(request)
    return chunks, request


async def _cancel_on_disconnect(
    http: HttpRequest, engine: Engine, request: Request, chunks: asyncio.Queue[Chunk | None]
) -> None:
    """Free the slot as soon as the client goes, even before the first token."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    engine.cancel(request)
    chunks.put_nowait(None)


async def _collect(chunks: asyncio.Queue[Chunk | None]) -> list[Chunk]:
    out: list[Chunk] = []
    while (chunk := await chunks.get()) is not None:
        out.append(chunk)
        if chunk.get("stop"):
            break
    return out


def _whole(chunks: list[Chunk]) -> Response:
    if not chunks:
        return error(499, "the client went away")
    final = chunks[-1]
    if "error" in final:
        return error(500, final["error"], "server_error")
    return JSONResponse(final)


#: Put in a stream's queue by its heartbeat: nothing came for a while, but the decode loop moved.
_BEAT: Chunk = {"heartbeat": True}


async def _stream(
    chunks: asyncio.Queue[Chunk | None], engine: Engine, request: Request, watcher: asyncio.Task[None], sse: bool
) -> AsyncIterator[bytes]:
    """The chunks as NDJSON or SSE lines; one task beats beside it, so each chunk costs a plain queue get."""
    sent = [0]
    beat = asyncio.create_task(_heartbeat(chunks, engine, sent))
    try:
        while True:
            chunk = await chunks.get()
            if chunk is _BEAT:  # a blank line: no output yet, but not stuck
                yield b": progress\n\n" if sse else b"\n"
                continue
            if chunk is None:
                return
            sent[0] += 1
            data = json.dumps(chunk, ensure_ascii=False)
            yield (f"data: {data}\n\n" if sse else data + "\n").encode()
            if chunk.get("stop"):
                return
    finally:
        beat.cancel()
        engine.cancel(request)
        watcher.cancel()


async def _heartbeat(chunks: asyncio.Queue[Chunk | None], engine: Engine, sent: list[int]) -> None:
    """Every HEARTBEAT_SECONDS without a chunk sent, while the decode loop moves, queue a beat."""
    progress, count = engine.progress, sent[0]
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        if sent[0] == count and engine.progress != progress:
            chunks.put_nowait(_BEAT)
        progress, count = engine.progress, sent[0]


async def tokenize(state: RunnerState, http: HttpRequest) -> Response:
    if state.model is None:
        return _loading()
    try:
        body = await _body(http)
        content = body.get("content")
        if not isinstance(content, str):
            raise ValueError("content must be a string")
    except ValueError as e:
        return error(400, str(e))
    model = state.model
    tokens = model.tokenize(content, bool(body.get("add_special", False)), bool(body.get("parse_special", True)))
    if body.get("with_pieces"):
        pieces = [{"id": t, "piece": model.piece(t, special=True).decode("utf-8", "replace")} for t in tokens]
        return JSONResponse({"tokens": pieces})
    return JSONResponse({"tokens": tokens})


async def detokenize(state: RunnerState, http: HttpRequest) -> Response:
    if state.model is None:
        return _loading()
    try:
        body = await _body(http)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and state.model.valid_token(t) for t in tokens):
            raise ValueError("tokens must be a list of token ids in the vocabulary")
    except ValueError as e:
        return error(400, str(e))
    return JSONResponse({"content": state.model.detokenize(tokens)})


async def embedding(state: RunnerState, http: HttpRequest) -> Response:
    engine = state.engine
    if engine is None:
        return _loading()
    if not state.options.embedding:
        return error(501, "this runner was started without --embedding", "not_supported_error")
    try:
        body = await _body(http)
        tokens = _prompt_tokens(state, body.get("content", body.get("input")))
    except ValueError as e:
        return error(400, str(e))
    if not tokens:
        return error(400, "the content is empty")
    chunks, _ = _submit(engine, tokens, SamplingParams(), embedding=True)
    result = await chunks.get()
    if not result or "error" in result:
        return error(500, (result or {}).get("error", "no result"), "server_error")
    return JSONResponse({"embedding": result["embedding"], "tokens_evaluated": result["tokens_evaluated"]})


async def score(state: RunnerState, http: HttpRequest) -> Response:
    """Log-probabilities of each window's tokens from its `from` on: JSON, or float32 rows of the whole vocabulary."""
    engine, model = state.engine, state.model
    if engine is None or model is None:
        return _loading()
    try:
        body = await _body(http)
        job = await asyncio.to_thread(ScoreJob.from_json, body, model.n_vocab, model.n_ctx_slot)
    except ValueError as e:
        return error(400, str(e))
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[Chunk | None] = asyncio.Queue()
    request = Request([], SamplingParams(), chunks.put_nowait, loop, score=job)
    engine.submit(request)
    watcher = asyncio.create_task(_cancel_on_disconnect(http, engine, request, chunks))
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
    if state.engine is None:
        return _loading()
    return JSONResponse([slot.describe() for slot in state.engine.slots])


async def props(state: RunnerState, http: HttpRequest) -> Response:
    """What llama-server reports about itself: the slot context size, the slot count, the model."""
    if state.model is None:
        return _loading()
    return JSONResponse(
        {
            "default_generation_settings": {"n_ctx": state.model.n_ctx_slot},
            "total_slots": state.options.parallel,
            "model_path": str(state.options.model),
            "n_ctx": state.model.n_ctx,
            "memory": state.model.allocated,
        }
    )


async def metrics(state: RunnerState, http: HttpRequest) -> Response:
    engine = state.engine
    if engine is None:
        return _loading()
    m, sec = engine.metrics, engine.metrics_seconds
    lines = [
        ("counter", "llamacpp:prompt_tokens_total", m["prompt_tokens_total"], "prompt tokens processed"),
        ("counter", "llamacpp:prompt_seconds_total", sec["prompt_seconds_total"], "prompt processing time"),
        ("counter", "llamacpp:tokens_predicted_total", m["tokens_predicted_total"], "generated tokens"),
        ("counter", "llamacpp:tokens_predicted_seconds_total", sec["tokens_predicted_seconds_total"], "time"),
        ("counter", "llamacpp:n_decode_total", m["n_decode_total"], "llama_decode calls"),
        ("gauge", "llamacpp:requests_processing", sum(s.busy for s in engine.slots), "busy slots"),
        ("gauge", "llamacpp:requests_deferred", engine.queued, "requests waiting for a slot"),
        ("gauge", "loam:state_cache_bytes", engine.cache.bytes, "bytes of saved conversation states"),
        ("gauge", "loam:state_cache_entries", len(engine.cache), "saved conversation states"),
        ("counter", "loam:state_cache_hits_total", engine.cache.hits, "saved states restored into a slot"),
        ("counter", "loam:scored_tokens_total", m["scored_tokens_total"], "tokens evaluated for /score"),
        (
            "counter",
            "loam:draft_tokens_total",
            m["draft_tokens_total"],
            "tokens drafted (lookup or draft model)",
        ),
        ("counter", "loam:draft_accepted_total", m["draft_accepted_total"], "drafted tokens the model agreed with"),
    ]
    if disk := engine.cache.disk:
        lines += [
            ("gauge", "loam:disk_cache_bytes", disk.bytes, "bytes of this model's states on disk"),
            ("gauge", "loam:disk_cache_entries", len(disk.entries), "this model's states on disk"),
            ("counter", "loam:disk_cache_hits_total", disk.hits, "states restored from disk"),
            ("counter", "loam:disk_cache_writes_total", disk.writes, "states written to disk"),
        ]
    text = "".join(f"# HELP {n} {h}\n# TYPE {n} {k}\n{n} {v}\n" for k, n, v, h in lines)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
