"""/completion, /completions and /v1/completions, as llama-server answers them.

A request may hold several prompts; each is its own request in the engine, and
the answers come back in a list (or, streamed, interleaved with an `index`).
Streams are server-sent events (`data: {...}`); the OpenAI route ends its
stream with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import llama_cpp
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.runner.engine import Engine
from app.runner.gather import Gatherer
from app.runner.http import error, loading, read_body, submit_each
from app.runner.prompts import exceeds_context, parse_logit_bias, split_prompts, tokenize_prompt
from app.runner.sampling import SamplingParams, check_grammar, trigger_patterns
from app.runner.settings import generation_settings
from app.runner.slot import Chunk, Request
from app.runner.state import RunnerState

#: While a streamed request has no output, a comment line this often says the decode loop is still moving,
#: so the server's no-progress watchdog (LOAM_RUNNER_TIMEOUT) tells a long prompt from a wedged runner.
HEARTBEAT_SECONDS = 1.0
#: llama-server's system_fingerprint names its build; this names the llama.cpp build the runner uses.
FINGERPRINT = f"b{llama_cpp.__version__}"
#: OpenAI completion fields llama-server refuses.
_OAI_REFUSED = ("best_of", "suffix", "echo")


class _Call:
    """One HTTP request: its prompts, its settings, and the engine requests serving them."""

    def __init__(self, state: RunnerState, body: dict[str, Any], oai: bool) -> None:
        model = state.model
        assert model is not None
        self.state, self.body, self.oai = state, body, oai
        prompt = body.get("prompt", body.get("tokens"))
        if prompt is None:
            raise ValueError('"prompt" must be provided')
        self.prompts = [tokenize_prompt(model, p) for p in split_prompts(prompt)]
        self.params = SamplingParams.from_json(body, state.defaults)
        if "logit_bias" in body:
            self.params.logit_bias = parse_logit_bias(model, body["logit_bias"])
        if self.params.grammar:
            lazy = trigger_patterns(self.params.grammar_triggers) if self.params.grammar_lazy else None
            check_grammar(model.vocab, self.params.grammar, lazy)
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_name = body["model"] if isinstance(body.get("model"), str) else state.options.model_name
        self.requests: list[Request] = []

    def settings(self) -> dict[str, Any]:
        """generation_settings as llama-server reports them: ignore_eos shows as -inf biases on every EOG token."""
        settings = generation_settings(self.params)
        if self.params.ignore_eos:
            assert self.state.model is not None
            settings["logit_bias"] += [{"bias": None, "token": t} for t in self.state.model.eog_tokens]
        return settings

    def final(self, index: int, chunk: Chunk) -> Chunk:
        """The last chunk of prompt `index`, with what llama-server adds to it."""
        model = self.state.model
        assert model is not None
        chunk = {"index": index, **chunk, "model": self.model_name}
        chunk["generation_settings"] = self.settings()
        chunk["prompt"] = b"".join(model.piece(t, special=True) for t in self.prompts[index]).decode("utf-8", "replace")
        if not self.params.return_tokens or self.params.stream:
            chunk["tokens"] = []
        if fields := self.params.response_fields:
            chunk = _pick(chunk, fields)
        return chunk


def _pick(chunk: Chunk, paths: list[str]) -> Chunk:
    """Only the asked-for fields; `a/b` is looked up nested and answered under that literal key."""
    out: Chunk = {}
    for path in paths:
        value: Any = chunk
        for key in path.split("/"):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            out[path] = value
    return out


async def completion(state: RunnerState, http: HttpRequest, oai: bool = False) -> Response:
    """Continue one prompt or several; the answers whole, or streamed as server-sent events."""
    engine, model = state.engine, state.model
    if engine is None or model is None:
        return loading()
    try:
        body = await read_body(http)
        refused = [k for k in _OAI_REFUSED if oai and body.get(k) not in (None, False, 1)]
        if refused:
            raise ValueError(f'"{refused[0]}" is not supported')
        call = _Call(state, body, oai)
    except ValueError as e:
        return error(400, str(e))
    for tokens in call.prompts:
        if not tokens:
            return error(400, "the prompt is empty")
        if len(tokens) >= model.n_ctx_slot and not state.options.truncate_prompts:
            n_ctx = model.n_ctx_slot
            message = exceeds_context(len(tokens), n_ctx)
            return error(400, message, "exceed_context_size_error", n_prompt_tokens=len(tokens), n_ctx=n_ctx)
    loop = asyncio.get_running_loop()
    makers = [partial(Request, tokens, call.params, loop=loop, stream=call.params.stream) for tokens in call.prompts]
    chunks, call.requests, watcher = submit_each(engine, http, makers)
    if not call.params.stream:
        try:
            return await _whole(call, chunks, engine)
        finally:
            watcher.cancel()
    return StreamingResponse(_stream(call, chunks, engine, watcher), media_type="text/event-stream")


async def _whole(call: _Call, chunks: asyncio.Queue[Chunk | None], engine: Engine) -> Response:
    """Every prompt's final chunk, formatted; the first error is the answer if there is one."""
    finals: dict[int, Chunk] = {}
    while len(finals) < len(call.requests):
        chunk = await chunks.get()
        if chunk is None:
            return error(499, "the client went away")
        if "error" in chunk:
            for request in call.requests:
                engine.cancel(request)
            return error(500, chunk["error"], "server_error")
        if chunk.get("stop"):
            finals[chunk["index"]] = chunk
    results = [finals[i] for i in range(len(call.requests))]
    if call.oai:
        return JSONResponse(_oai_whole(call, results))
    shaped = [call.final(i, chunk) for i, chunk in enumerate(results)]
    return JSONResponse(shaped[0] if len(shaped) == 1 else shaped)


#: Put in a stream's queue by its heartbeat: nothing came for a while, but the decode loop moved.
_BEAT: Chunk = {"heartbeat": True}
#: Put in a stream's queue when its gathering interval ends (app/runner/gather.py).
_FLUSH: Chunk = {"flush": True}


async def _stream(
    call: _Call, chunks: asyncio.Queue[Chunk | None], engine: Engine, watcher: asyncio.Task[None]
) -> AsyncIterator[bytes]:
    """The chunks as server-sent events; one task beats beside it, so each chunk costs a plain queue get."""
    sent = [0]
    beat = asyncio.create_task(_heartbeat(chunks, engine, sent))
    interval = call.params.stream_interval if len(call.requests) == 1 else 0.0  # prompts interleave: none gather
    gatherer = Gatherer(interval, lambda: chunks.put_nowait(_FLUSH)) if interval > 0 else None
    open_prompts = len(call.requests)
    try:
        while open_prompts:
            chunk = await chunks.get()
            if chunk is _BEAT:
                yield b": progress\n\n"
                continue
            if chunk is None:
                return
            if chunk is _FLUSH:
                ready = gatherer.flush() if gatherer else []
            else:
                sent[0] += 1
                if "error" in chunk:
                    yield _event({"error": {"code": 500, "message": chunk["error"], "type": "server_error"}})
                    return
                ready = gatherer.take(chunk) if gatherer else [chunk]
            for out in ready:
                if out.get("stop"):
                    open_prompts -= 1
                for event in _oai_chunks(call, out) if call.oai else [_shaped(call, out)]:
                    yield _event(event)
        if call.oai:
            yield b"data: [DONE]\n\n"
    finally:
        beat.cancel()
        if gatherer:
            gatherer.close()
        for request in call.requests:
            engine.cancel(request)
        watcher.cancel()


def _shaped(call: _Call, chunk: Chunk) -> Chunk:
    return call.final(chunk["index"], chunk) if chunk.get("stop") else chunk


def _event(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _heartbeat(chunks: asyncio.Queue[Chunk | None], engine: Engine, sent: list[int]) -> None:
    """Every HEARTBEAT_SECONDS without a chunk sent, while the decode loop moves, queue a beat."""
    progress, count = engine.progress, sent[0]
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        if sent[0] == count and engine.progress != progress:
            chunks.put_nowait(_BEAT)
        progress, count = engine.progress, sent[0]


# -- OpenAI's shape ----------------------------------------------------------


def _finish_reason(chunk: Chunk) -> str:
    return "length" if chunk.get("stop_type") == "limit" else "stop"


def _logprobs(chunk: Chunk) -> dict[str, Any] | None:
    probs = chunk.get("completion_probabilities")
    return {"content": probs} if probs else None


def _envelope(call: _Call, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "choices": choices,
        "created": call.created,
        "model": call.model_name,
        "system_fingerprint": FINGERPRINT,
        "object": "text_completion",
        "id": call.id,
    }


def _usage(finals: list[Chunk]) -> dict[str, Any]:
    prompt = sum(c.get("tokens_evaluated", 0) for c in finals)
    completion = sum(c.get("tokens_predicted", 0) for c in finals)
    cached = sum(c.get("timings", {}).get("cache_n", 0) for c in finals)
    return {
        "completion_tokens": completion,
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _oai_whole(call: _Call, finals: list[Chunk]) -> dict[str, Any]:
    choices = [
        {"text": c["content"], "index": i, "logprobs": _logprobs(c), "finish_reason": _finish_reason(c)}
        for i, c in enumerate(finals)
    ]
    answer = _envelope(call, choices)
    answer["usage"] = _usage(finals)
    answer["timings"] = finals[0].get("timings", {})
    return answer


def _oai_chunks(call: _Call, chunk: Chunk) -> list[dict[str, Any]]:
    """One engine chunk as OpenAI stream chunks: text with a null finish_reason, then the ending."""
    if "prompt_progress" in chunk and not chunk.get("stop"):
        return []
    index = chunk["index"]
    out = []
    if chunk.get("content") or not chunk.get("stop"):
        choice = {"text": chunk.get("content", ""), "index": index, "logprobs": _logprobs(chunk), "finish_reason": None}
        out.append(_envelope(call, [choice]))
    if chunk.get("stop"):
        last = _envelope(call, [{"text": "", "index": index, "logprobs": None, "finish_reason": _finish_reason(chunk)}])
        last["usage"], last["timings"] = _usage([chunk]), chunk.get("timings", {})
        out.append(last)
    return out
