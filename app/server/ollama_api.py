"""Ollama's API: the same paths, JSON and NDJSON, so Ollama's clients work unchanged (docs/api.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app import __version__
from app.errors import ModelNotFound
from app.server.generate import Call, Done, Piece, gather, renormalized, resolve
from app.server.http import BadRequest, body_of, guarded, ndjson, now_rfc3339, primed, unless_disconnected
from app.server.options import parse_keep_alive
from app.server.state import OLLAMA_API_VERSION, ServerState
from app.store.blobs import digest_hex
from app.store.create import create, modelfile_text
from app.store.modelfile import Modelfile, parse
from app.store.names import ModelName
from app.store.parameters import coerce_all
from app.store.progress import ProgressEvent
from app.store.pull import pull
from app.store.store import ModelDetails

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


def _name(body: dict[str, Any], *keys: str) -> str:
    for key in keys or ("model", "name"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    raise BadRequest(f"{(keys or ('model',))[0]} is required")


async def show(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    model = resolve(state.store, _name(body))
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
    capabilities = ["completion"]
    if model.spec().template is None and info.chat_template and "<think>" in info.chat_template:
        capabilities.append("thinking")
    out = {
        "modelfile": modelfile_text(state.store, ModelName.parse(model.name)),
        "parameters": params,
        "template": details.template or info.chat_template or "",
        "details": _details(details),
        "model_info": {k: v for k, v in model_info.items() if v is not None},
        "capabilities": capabilities,
        "modified_at": _time(details.stored.modified),
    }
    if details.license:
        out["license"] = details.license
    if details.system:
        out["system"] = details.system
    return JSONResponse(out)


async def copy(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    source, target = _name(body, "source"), _name(body, "destination")
    try:
        state.store.copy(ModelName.parse(source), ModelName.parse(target))
    except ModelNotFound:
        raise ModelNotFound(f'model "{source}" not found') from None
    return Response(status_code=200)


async def delete(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    text = _name(body)
    try:
        name = ModelName.parse(text)
        await state.scheduler.unload_model(name.display)
        state.store.remove(name)
    except ModelNotFound:
        raise ModelNotFound(f'model "{text}" not found') from None
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


def _call(state: ServerState, body: dict[str, Any]) -> Call:
    model = resolve(state.store, _name(body))
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    keep_alive = body.get("keep_alive")
    seconds = state.settings.keep_alive if keep_alive is None else parse_keep_alive(keep_alive)
    think = body.get("think")
    return Call(model, options, seconds, think if isinstance(think, bool) else None, json_schema(body.get("format")))


def json_schema(format: Any) -> dict[str, Any] | None:
    """Ollama's `format`: "json" for any JSON object, or a JSON schema the reply must match."""
    if format in (None, ""):
        return None
    if format == "json":
        return {"type": "object"}
    if isinstance(format, dict):
        return format
    raise BadRequest('format must be "json" or a JSON schema object')


def _final(done: Done) -> dict[str, Any]:
    return {"done": True, "done_reason": done.reason, **done.figures()}


async def generate(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    call = _call(state, body)
    prompt = body.get("prompt") or ""
    head = lambda: {"model": call.model.name, "created_at": now_rfc3339()}  # noqa: E731
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if not prompt and not body.get("suffix"):
        done = await state.generator.load_only(call)
        return JSONResponse({**head(), "response": "", **_final(done)})
    context = body.get("context")
    items = state.generator.generate(
        call, prompt, system=body.get("system"), template=body.get("template"), suffix=body.get("suffix") or "",
        raw=bool(body.get("raw")), context=context if isinstance(context, list) else None,
    )  # fmt: skip

    def shape(item: Piece | Done) -> dict[str, Any]:
        if isinstance(item, Done):
            return {**head(), "response": "", **_final(item), "context": item.context}
        out = {**head(), "response": item.content, "done": False}
        if item.thinking:
            out["thinking"] = item.thinking
        return out

    if body.get("stream", True):
        return ndjson(_mapped(await primed(items), shape))
    text, thinking, done = await unless_disconnected(request, gather(items))
    final = {**head(), "response": text, **_final(done), "context": done.context}
    if thinking:
        final["thinking"] = thinking
    return JSONResponse(final)


async def chat(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    call = _call(state, body)
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages must be a list of objects with role and content")
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"message role {m.get('role')!r} is not system, user, assistant or tool")
        m["content"] = m.get("content") or ""
    head = lambda: {"model": call.model.name, "created_at": now_rfc3339()}  # noqa: E731
    if not messages:
        done = await state.generator.load_only(call)
        return JSONResponse({**head(), "message": {"role": "assistant", "content": ""}, **_final(done)})
    items = state.generator.chat(call, messages, body.get("tools"))

    def shape(item: Piece | Done) -> dict[str, Any]:
        if isinstance(item, Done):
            return {**head(), "message": {"role": "assistant", "content": ""}, **_final(item)}
        message = {"role": "assistant", "content": item.content}
        if item.thinking:
            message["thinking"] = item.thinking
        return {**head(), "message": message, "done": False}

    if body.get("stream", True):
        return ndjson(_mapped(await primed(items), shape))
    text, thinking, done = await unless_disconnected(request, gather(items))
    message = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    return JSONResponse({**head(), "message": message, **_final(done)})


async def _mapped(items: AsyncIterator[Any], shape: Callable[[Any], dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    async for item in items:
        yield shape(item)


async def embed(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    call = _call(state, body)
    inputs = body.get("input", "")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise BadRequest("input must be a string or a list of strings")
    vectors, count, done = await state.generator.embed(call, inputs, truncate=body.get("truncate", True) is not False)
    dims = body.get("dimensions")
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
    body = await body_of(request)
    call = _call(state, body)
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
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


async def _progress_response(body: dict[str, Any], work: Callable[[Callable[[ProgressEvent], None]], None]) -> Response:
    events = _progress_stream(work)
    if body.get("stream", True):
        return ndjson(await primed(events))
    async for _ in events:
        pass
    return JSONResponse({"status": "success"})


async def pull_model(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    name = _name(body)
    insecure = bool(body.get("insecure"))
    return await _progress_response(
        body, lambda progress: pull(state.store, state.catalog, name, progress, insecure=insecure)
    )


async def create_model(state: ServerState, request: Request) -> Response:
    body = await body_of(request)
    name = ModelName.parse(_name(body))
    modelfile = _modelfile(state, body)
    quantize = body.get("quantize") or None

    def work(progress: Callable[[ProgressEvent], None]) -> None:
        create(state.store, state.catalog, name, modelfile, folder=Path.cwd(), quantize_to=quantize, progress=progress)

    return await _progress_response(body, work)


def _modelfile(state: ServerState, body: dict[str, Any]) -> Modelfile:
    """The Modelfile a create request describes: the legacy `modelfile` text, or the fields of today's API."""
    if isinstance(body.get("modelfile"), str):
        return parse(body["modelfile"], "modelfile")
    files = body.get("files") or {}
    if body.get("from"):
        base = str(body["from"])
    elif isinstance(files, dict) and files:
        base = str(_blob_path(state, next(iter(files.values()))))
    else:
        raise BadRequest("create needs `from` (a model name or path) or `files` (uploaded GGUF blobs)")
    adapters = body.get("adapters") or {}
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict) or not isinstance(adapters, dict):
        raise BadRequest("parameters and adapters must be objects")
    license_ = body.get("license")
    return Modelfile(
        source="request",
        base=base,
        base_line=1,
        template=body.get("template"),
        system=body.get("system"),
        parameters=coerce_all(parameters),
        messages=[{"role": m["role"], "content": m.get("content", "")} for m in body.get("messages") or []],
        licenses=[license_] if isinstance(license_, str) else list(license_ or []),
        adapters=[(str(_blob_path(state, d)), 1) for d in adapters.values()],
    )


def _blob_path(state: ServerState, digest: Any) -> Path:
    if not isinstance(digest, str) or not state.store.blobs.has(digest):
        raise BadRequest(f"blob {digest} is not on the server; upload it with POST /api/blobs/{digest}")
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
