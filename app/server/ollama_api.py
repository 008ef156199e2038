"""Ollama's API: the same paths, JSON and NDJSON, so Ollama's clients work unchanged (docs/api.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app import __version__
from app.api import (
    ChatRequest,
    CopyRequest,
    CreateRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Generation,
    NameRequest,
    Sampled,
    clip,
)
from app.errors import ModelNotFound, QuantizeError
from app.server.capabilities import capabilities
from app.server.generate import Call, Done, Piece, check_capabilities, gather, renormalized, resolve
from app.server.http import BadRequest, guarded, ndjson, now_rfc3339, parsed, primed, unless_disconnected
from app.server.state import OLLAMA_API_VERSION, ServerState
from app.store.blobs import digest_hex
from app.store.create import create, modelfile_text
from app.store.modelfile import Modelfile, parse
from app.store.names import ModelName
from app.store.progress import ProgressEvent
from app.store.pull import pull
from app.store.quantize import UNQUANTIZED
from app.store.store import ModelDetails
from app.tools.calls import ToolCall

_FOREVER = datetime(2318, 1, 1, tzinfo=timezone.utc)


def routes(state: ServerState) -> list[Route]:
    def r(path: str, handler: Callable[[ServerState, Request], Any], methods: list[str]) -> Route:
        async def call(request: Request) -> Response:
            return await handler(state, request)

        return Route(path, guarded(call, lambda status, message: {"error": message}), methods=methods)

    return [
        r("/", root, ["GET", "HEAD"]),
        r("/api/version", version, ["GET", "HEAD"]),
        r("/api/tags", tags, ["GET", "HEAD"]),
        r("/api/show", show, ["POST"]),
        r("/api/ps", ps, ["GET"]),
        r("/api/generate", generate, ["POST"]),
        r("/api/chat", chat, ["POST"]),
        r("/api/embed", embed, ["POST"]),
        r("/api/embeddings", embeddings, ["POST"]),
        r("/api/pull", pull_model, ["POST"]),
        r("/api/create", create_model, ["POST"]),
        r("/api/copy", copy, ["POST"]),
        r("/api/delete", delete, ["DELETE"]),
        r("/api/blobs/{digest}", blob, ["HEAD", "POST"]),
    ]


async def root(state: ServerState, request: Request) -> Response:
    return PlainTextResponse("loam is running")


async def version(state: ServerState, request: Request) -> Response:
    return JSONResponse({"version": OLLAMA_API_VERSION, "loam_version": __version__})


# -- models in the store ---------------------------------------------------


def _details(details: ModelDetails) -> dict[str, Any]:
    info = details.info
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": info.parameter_size,
        "quantization_level": info.file_type,
    }


def _time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).astimezone().isoformat()


async def tags(state: ServerState, request: Request) -> Response:
    def listing() -> list[dict[str, Any]]:
        out = []
        for stored in state.store.list():
            try:
                details = state.store.show(stored.name)
            except Exception:  # noqa: BLE001 - a model with a missing blob is left out, as Ollama does
                continue
            out.append(
                {
                    "name": stored.name.display,
                    "model": stored.name.display,
                    "modified_at": _time(stored.modified),
                    "size": stored.manifest.size,
                    "digest": digest_hex(stored.digest),
                    "details": _details(details),
                }
            )
        return out

    return JSONResponse({"models": await asyncio.to_thread(listing)})


def _resolve(state: ServerState, name: str) -> Any:
    """The stored model `name`, or a 404 that echoes at most ~100 characters of it."""
    try:
        return resolve(state.store, name)
    except ModelNotFound:
        raise ModelNotFound(f'model "{clip(name)}" not found, try pulling it first') from None


async def show(state: ServerState, request: Request) -> Response:
    body = await parsed(request, NameRequest)
    model = _resolve(state, body.model_name())
    details = model.details
    info = details.info
    arch = info.architecture
    model_info = {
        "general.architecture": arch,
        "general.parameter_count": info.parameter_count,
        "general.name": info.name,
        f"{arch}.context_length": info.context_length,
        f"{arch}.embedding_length": info.embedding_length,
        f"{arch}.block_count": info.block_count,
    }
    params = "\n".join(
        f"{k:<15} {json.dumps(v) if isinstance(v, str) else v}"
        for k, vs in details.parameters.items()
        for v in (vs if isinstance(vs, list) else [vs])
    )
    out = {
        "modelfile": modelfile_text(state.store, ModelName.parse(model.name)),
        "parameters": params,
        "template": details.template or info.chat_template or "",
        "details": _details(details),
        "model_info": {k: v for k, v in model_info.items() if v is not None},
        "capabilities": capabilities(details),
        "modified_at": _time(details.stored.modified),
    }
    if details.license:
        out["license"] = details.license
    if details.system:
        out["system"] = details.system
    if details.draft:  # loam's own field: the Modelfile DRAFT that proposes tokens for this model
        out["draft"] = {"model": details.draft_name or "", "digest": details.draft.digest, "size": details.draft.size}
    return JSONResponse(out)


async def copy(state: ServerState, request: Request) -> Response:
    body = await parsed(request, CopyRequest)
    source, target = body.source, body.destination
    if not source or not target:
        raise BadRequest("source: is required" if not source else "destination: is required")
    try:
        state.store.copy(ModelName.parse(source), ModelName.parse(target))
    except ModelNotFound:
        raise ModelNotFound(f'model "{clip(source)}" not found') from None
    return Response(status_code=200)


async def delete(state: ServerState, request: Request) -> Response:
    text = (await parsed(request, NameRequest)).model_name()
    try:
        name = ModelName.parse(text)
        await state.scheduler.unload_model(name.display)
        state.store.remove(name)
    except ModelNotFound:
        raise ModelNotFound(f'model "{clip(text)}" not found') from None
    return Response(status_code=200)


async def ps(state: ServerState, request: Request) -> Response:
    models = []
    for loaded in state.scheduler.loaded.values():
        try:
            details = state.store.show(ModelName.parse(loaded.name))
        except Exception:  # noqa: BLE001 - removed from the store while loaded
            continue
        expires = (
            _FOREVER if loaded.expires_at == float("inf") else datetime.fromtimestamp(loaded.expires_at, timezone.utc)
        )
        if loaded.refs and loaded.keep_alive != float("inf"):
            expires = datetime.now(timezone.utc) + timedelta(seconds=loaded.keep_alive)
        models.append(
            {
                "name": loaded.name,
                "model": loaded.name,
                "size": loaded.plan.size,
                "digest": digest_hex(details.stored.digest),
                "details": _details(details),
                "expires_at": expires.astimezone().isoformat(),
                "size_vram": sum(loaded.plan.gpu_bytes),
                "context_length": loaded.context_length,
                "processor": loaded.plan.processor(),
            }
        )
    return JSONResponse({"models": models})


# -- generation ------------------------------------------------------------


def _call(state: ServerState, body: Generation) -> Call:
    """A checked request as the generator's Call (options already coerced by the parameter table)."""
    seconds = state.settings.keep_alive if body.keep_alive is None else body.keep_alive
    call = Call(_resolve(state, body.model), body.options, seconds, body.think, body.format)
    if isinstance(body, Sampled):
        call.logprobs = body.logprob_count()
    return call


def _final(done: Done) -> dict[str, Any]:
    out = {"done": True, "done_reason": done.reason, **done.figures()}
    if done.logprobs:
        out["logprobs"] = logprobs(done.logprobs)
    return out


def _token(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": entry.get("token", ""),
        "logprob": float(entry["logprob"]),
        "bytes": list(entry.get("bytes") or []),
    }


def logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runner's per-token entries in Ollama's shape: {token, logprob, bytes, top_logprobs: [{token, ...}]}."""
    out = []
    for entry in entries:
        item = _token(entry)
        top = entry.get("top_logprobs") or []
        if top:
            item["top_logprobs"] = [_token(t) for t in top]
        out.append(item)
    return out


def _with_logprobs(chunk: dict[str, Any], piece: Piece) -> dict[str, Any]:
    if piece.logprobs:
        chunk["logprobs"] = logprobs(piece.logprobs)
    return chunk


async def generate(state: ServerState, request: Request) -> Response:
    body = await parsed(request, GenerateRequest)
    call = _call(state, body)
    check_capabilities(call, images=bool(body.images))
    prompt = body.prompt or ""
    head = lambda: {"model": call.model.name, "created_at": now_rfc3339()}  # noqa: E731
    if not prompt and not body.suffix:
        done = await state.generator.load_only(call)
        return JSONResponse({**head(), "response": "", **_final(done)})
    items = state.generator.generate(
        call, prompt, system=body.system, template=body.template, suffix=body.suffix or "", raw=body.raw,
        context=body.context,
    )  # fmt: skip

    def shape(item: Piece | Done) -> dict[str, Any]:
        if isinstance(item, Done):
            return {**head(), "response": "", **_final(item), "context": item.context}
        out = {**head(), "response": item.content, "done": False}
        if item.thinking:
            out["thinking"] = item.thinking
        return _with_logprobs(out, item)

    if body.stream:
        return ndjson(_mapped(await primed(items), shape))
    text, thinking, done = await unless_disconnected(request, gather(items))
    final = {**head(), "response": text, **_final(done), "context": done.context}
    if thinking:
        final["thinking"] = thinking
    return JSONResponse(final)


async def chat(state: ServerState, request: Request) -> Response:
    body = await parsed(request, ChatRequest)
    call = _call(state, body)
    messages = [{**m.model_dump(exclude_none=True), "content": m.content or ""} for m in body.messages]
    head = lambda: {"model": call.model.name, "created_at": now_rfc3339()}  # noqa: E731
    if not messages:
        done = await state.generator.load_only(call)
        return JSONResponse({**head(), "message": {"role": "assistant", "content": ""}, **_final(done)})
    call.tools = body.tools or None
    check_capabilities(call, images=any(m.get("images") for m in messages))
    items = state.generator.chat(call, messages)
    numbered = _CallIds()

    def shape(item: Piece | Done) -> dict[str, Any]:
        if isinstance(item, Done):
            return {**head(), "message": {"role": "assistant", "content": ""}, **_final(item)}
        message = {"role": "assistant", "content": item.content}
        if item.thinking:
            message["thinking"] = item.thinking
        if item.tool_calls:
            message["tool_calls"] = numbered(item.tool_calls)
        return _with_logprobs({**head(), "message": message, "done": False}, item)

    if body.stream:
        return ndjson(_mapped(await primed(items), shape))
    text, thinking, done = await unless_disconnected(request, gather(items))
    message = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if done.tool_calls:
        message["tool_calls"] = numbered(done.tool_calls)
    return JSONResponse({**head(), "message": message, **_final(done)})


class _CallIds:
    """Ollama's tool_calls entries, numbered across the reply: {id, function: {index, name, arguments}}."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        out = []
        for call in calls:
            function = {"index": self.count, "name": call.name, "arguments": call.arguments}
            out.append({"id": f"call_{uuid.uuid4().hex[:8]}", "function": function})
            self.count += 1
        return out


async def _mapped(items: AsyncIterator[Any], shape: Callable[[Any], dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    async for item in items:
        yield shape(item)


async def embed(state: ServerState, request: Request) -> Response:
    body = await parsed(request, EmbedRequest)
    call = _call(state, body)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    vectors, count, done = await state.generator.embed(call, inputs, truncate=body.truncate)
    dims = body.dimensions
    if isinstance(dims, int) and dims > 0:
        vectors = [renormalized(v[:dims]) for v in vectors]
    figures = done.figures()
    return JSONResponse(
        {
            "model": call.model.name,
            "embeddings": vectors,
            "total_duration": figures["total_duration"],
            "load_duration": figures["load_duration"],
            "prompt_eval_count": count,
        }
    )


async def embeddings(state: ServerState, request: Request) -> Response:
    body = await parsed(request, EmbeddingsRequest)
    call = _call(state, body)
    prompt = body.prompt
    if not prompt:
        return JSONResponse({"embedding": []})
    vectors, _, _ = await state.generator.embed(call, [prompt], truncate=True)
    return JSONResponse({"embedding": vectors[0]})


# -- store changes -----------------------------------------------------------


async def _progress_stream(work: Callable[[Callable[[ProgressEvent], None]], None]) -> AsyncIterator[dict[str, Any]]:
    """Run store work in a thread and yield its progress events as Ollama's status objects."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

    def run() -> None:
        try:
            work(lambda e: loop.call_soon_threadsafe(queue.put_nowait, e.to_json()))
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except BaseException as e:  # noqa: BLE001 - handed to the stream
            loop.call_soon_threadsafe(queue.put_nowait, e)

    task = loop.run_in_executor(None, run)
    while (item := await queue.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
    await task


async def _progress_response(body: NameRequest, work: Callable[[Callable[[ProgressEvent], None]], None]) -> Response:
    events = _progress_stream(work)
    if body.stream:
        return ndjson(await primed(events))
    async for _ in events:
        pass
    return JSONResponse({"status": "success"})


async def pull_model(state: ServerState, request: Request) -> Response:
    body = await parsed(request, NameRequest)
    name = body.model_name()
    return await _progress_response(
        body, lambda progress: pull(state.store, state.catalog, name, progress, insecure=body.insecure)
    )


async def create_model(state: ServerState, request: Request) -> Response:
    body = await parsed(request, CreateRequest)
    name = ModelName.parse(body.model_name())
    modelfile = _modelfile(state, body)
    quantize = body.quantize or None
    if quantize:
        _check_quantizable(state, modelfile.base)

    def work(progress: Callable[[ProgressEvent], None]) -> None:
        try:
            create(
                state.store, state.catalog, name, modelfile, folder=Path.cwd(), quantize_to=quantize, progress=progress
            )
        except QuantizeError as e:  # a bad `quantize` field, in the API's words
            raise BadRequest(f"quantize: {e}".replace(", or pass --allow-requantize", "")) from None

    return await _progress_response(body, work)


def _check_quantizable(state: ServerState, base: str) -> None:
    """Refuse `quantize` on a stored model that is quantized already, before any work starts."""
    try:
        file_type = state.store.show(ModelName.parse(base)).info.file_type
    except Exception:  # noqa: BLE001 - a path or a blob; create itself checks those
        return
    if file_type not in UNQUANTIZED:
        raise BadRequest(
            f"quantize: {clip(base)} is already quantized ({file_type}); quantizing it again loses quality. "
            "Start from an F16, BF16 or F32 model"
        )


def _modelfile(state: ServerState, body: CreateRequest) -> Modelfile:
    """The Modelfile a create request describes: the legacy `modelfile` text, or the fields of today's API."""
    if body.modelfile is not None:
        return parse(body.modelfile, "modelfile")
    if body.from_:
        base = body.from_
    elif body.files:
        base = str(_blob_path(state, next(iter(body.files.values())), "files"))
    else:
        raise BadRequest("from: create needs `from` (a model name or path) or `files` (uploaded GGUF blobs)")
    license_ = body.license
    return Modelfile(
        source="request",
        base=base,
        base_line=1,
        template=body.template,
        system=body.system,
        parameters=body.parameters,
        messages=[{"role": m.role, "content": m.content or ""} for m in body.messages],
        licenses=[license_] if isinstance(license_, str) else list(license_ or []),
        adapters=[(str(_blob_path(state, d, "adapters")), 1) for d in body.adapters.values()],
    )


def _blob_path(state: ServerState, digest: str, field: str) -> Path:
    shown = clip(digest)
    try:
        known = state.store.blobs.has(digest)
    except Exception:  # noqa: BLE001 - not a digest at all
        known = False
    if not known:
        raise BadRequest(f"{field}: blob {shown} is not on the server; upload it with POST /api/blobs/{shown}")
    return state.store.blobs.path(digest)


async def blob(state: ServerState, request: Request) -> Response:
    """HEAD: whether a blob exists; POST: upload one, kept only if its bytes hash to the digest."""
    digest = request.path_params["digest"].replace("sha256-", "sha256:", 1)
    try:
        digest_hex(digest)
    except Exception:  # noqa: BLE001
        raise BadRequest(f"{digest} is not a sha256 digest") from None
    if request.method == "HEAD":
        return Response(status_code=200 if state.store.blobs.has(digest) else 404)
    tmp = state.store.blobs.temp_path("upload")
    hasher = hashlib.sha256()
    try:
        with tmp.open("wb") as f:
            async for chunk in request.stream():
                f.write(chunk)
                hasher.update(chunk)
        if hasher.hexdigest() != digest_hex(digest):
            raise BadRequest(f"the uploaded bytes hash to sha256:{hasher.hexdigest()}, not {digest}")
        await asyncio.to_thread(state.store.blobs.adopt, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return Response(status_code=201)
