"""One generation, route-independent: resolve the model, load it, render the prompt, stream the runner's reply.

The Ollama and OpenAI routes both call `chat` and `generate` and only reshape
what comes out: text pieces (content or thinking) and a final `Done` with the
timing figures, which keep Ollama's meanings (see docs/api.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.errors import ModelNotFound
from app.server.options import load_options, merged, sampling_fields
from app.server.prompt import PromptSpec, render_chat, render_generate
from app.server.runners import RunnerError
from app.server.scheduler import Loaded, LoadRequest, Scheduler
from app.server.thinking import ThinkingSplitter, prompt_opens_thinking
from app.store.names import ModelName
from app.store.store import ModelDetails, Store
from app.tools.calls import MAX_CALLS, CallParser, ToolCall, detect_format
from app.tools.grammar import MAX_GRAMMAR_CALLS, tool_grammar, tool_names


@dataclass
class Resolved:
    """A model name looked up in the store: what loading and prompting it needs."""

    name: str
    details: ModelDetails
    path: Path
    adapters: tuple[Path, ...]
    draft: Path | None = None  # the Modelfile DRAFT's GGUF

    @property
    def digest(self) -> str:
        return self.details.stored.digest

    def call_format(self) -> str:
        """How this model writes tool calls, from the template that renders its prompts."""
        return detect_format(self.details.template or self.details.info.chat_template)

    def spec(self) -> PromptSpec:
        info = self.details.info
        return PromptSpec(
            template=self.details.template,
            chat_template=info.chat_template,
            system=self.details.system,
            messages=list(self.details.messages),
        )


def resolve(store: Store, text: str) -> Resolved:
    """ModelNotFound (a 404) when the store has no such model."""
    try:
        name = ModelName.parse(text)
    except Exception as e:  # noqa: BLE001 - any unparsable name is a missing model to the API
        raise ModelNotFound(f'model "{text}" not found, try pulling it first') from e
    try:
        details = store.show(name)
        path = store.model_path(name)
    except ModelNotFound:
        raise ModelNotFound(f'model "{text}" not found, try pulling it first') from None
    adapters = tuple(store.blobs.path(layer.digest) for layer in details.adapters)
    return Resolved(name.display, details, path, adapters, store.draft_path(details))


@dataclass
class Done:
    """The end of a reply, with Ollama's timing figures in seconds (ns on the wire)."""

    reason: str  # stop | length | load | unload
    total: float = 0.0
    load: float = 0.0
    prompt_eval_count: int = 0  # prompt tokens evaluated for this reply (cached ones are not)
    prompt_eval: float = 0.0
    prompt_tokens: int = 0  # the whole prompt, cached tokens included
    eval_count: int = 0
    eval: float = 0.0
    draft_count: int = 0  # tokens guessed (prompt lookup or the DRAFT model) and verified in batches
    draft_accepted_count: int = 0  # of those, the ones the model agreed with
    context: list[int] = field(default_factory=list)
    #: The runner's per-token entries not yet sent with a Piece (all of them, after `gather`).
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    stop_word: str = ""  # the stop text that ended the reply, when one did
    #: Tool calls: none while streaming (they come in Pieces); after `gather`, every call of the reply.
    tool_calls: list[ToolCall] = field(default_factory=list)

    def figures(self) -> dict[str, int]:
        """Ollama's figures, plus loam's draft counts when the reply was drafted and its cached prompt tokens."""
        ns = lambda s: int(round(s * 1e9))  # noqa: E731
        out = {
            "total_duration": ns(self.total),
            "load_duration": ns(self.load),
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": ns(self.prompt_eval),
            "eval_count": self.eval_count,
            "eval_duration": ns(self.eval),
        }
        if self.draft_count:
            out |= {"draft_count": self.draft_count, "draft_accepted_count": self.draft_accepted_count}
        if self.prompt_tokens > self.prompt_eval_count:  # loam's: the prompt tokens a slot already held
            out["prompt_cache_count"] = self.prompt_tokens - self.prompt_eval_count
        return out


@dataclass
class Piece:
    """Text of a reply, with the runner's entries for the tokens it came from (when logprobs were asked for).

    An entry is llama-server's: {id, token, bytes, logprob, top_logprobs: [{id, token, bytes, logprob}]}.
    """

    content: str = ""
    thinking: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)  # each call arrives whole, in one Piece


@dataclass
class Call:
    """What a route asks for, after parsing its body."""

    model: Resolved
    options: dict[str, Any]
    keep_alive: float
    think: bool | None = None
    json_schema: dict[str, Any] | None = None  # constrain the reply to JSON (Ollama's `format`)
    logprobs: int | None = None  # per-token log-probabilities with this many alternatives; None: none
    tools: list[dict[str, Any]] | None = None  # function tools offered to the model ({type, function: {...}})
    tool_choice: str | None = None  # "auto" (None), "none", "required", or the one function's name
    parallel_calls: bool = True  # more than one call in a reply (OpenAI's parallel_tool_calls)
    started: float = field(default_factory=time.perf_counter)
    acquired: float | None = None  # when the scheduler handed over a loaded runner


def check_capabilities(call: Call, *, images: bool = False) -> None:
    """Unsupported (a 400 on every API) when the request needs tools, thinking or images the model lacks."""
    from app.server.capabilities import require

    tools = bool(call.tools) and (call.tool_choice or call.options.get("tool_choice")) != "none"
    require(call.model.name, call.model.details, tools=tools, thinking=bool(call.think), images=images)


class Generator:
    """Runs chat and generate calls against the scheduler."""

    def __init__(self, scheduler: Scheduler, parallel: int) -> None:
        self.scheduler = scheduler
        self.parallel = parallel

    def load_request(self, call: Call) -> LoadRequest:
        options = merged(call.model.details.parameters, call.options)
        opts = load_options(options, call.model.details.info.context_length, self.parallel)
        model = call.model
        return LoadRequest(model.name, model.digest, model.path, opts, model.adapters, model.draft)

    async def _acquire(self, call: Call) -> Loaded:
        loaded = await self.scheduler.acquire(self.load_request(call), call.keep_alive)
        call.acquired = time.perf_counter()
        return loaded

    async def load_only(self, call: Call) -> Done:
        """An empty prompt: load the model (or, with keep_alive 0, unload it)."""
        if call.keep_alive <= 0:
            await self.scheduler.unload(call.model.name)
            return Done("unload", total=time.perf_counter() - call.started)
        loaded = await self._acquire(call)
        self.scheduler.release(loaded)
        return Done("load", total=time.perf_counter() - call.started, load=self._load_time(call))

    async def chat(
        self, call: Call, messages: list[dict[str, Any]], tools: list[Any] | None = None
    ) -> AsyncIterator[Piece | Done]:
        """A chat reply; with `call.tools` (or `tools`) the model may answer with tool calls (see app/tools)."""
        if tools is not None:
            call.tools = tools
        choice = call.tool_choice or merged(call.model.details.parameters, call.options).get("tool_choice") or "auto"
        offered = call.tools if call.tools and choice != "none" else None
        grammar = None
        if offered and call.json_schema is None:
            most = MAX_GRAMMAR_CALLS if call.parallel_calls else 1
            grammar = await asyncio.to_thread(tool_grammar, offered, call.model.call_format(), choice, most)
        loaded = await self._acquire(call)
        try:
            count = _token_counter(loaded)
            rendered = await asyncio.to_thread(
                render_chat, call.model.spec(), messages, count_tokens=count, num_ctx=loaded.context_length,
                tools=offered, think=call.think,
            )  # fmt: skip
            parser = CallParser(call.model.call_format(), tool_names(offered)) if offered else None
            most = MAX_CALLS if call.parallel_calls else 1
            extra = grammar.fields() if grammar else {}
            reply = _Reply(None, parser, most=most)
            async for item in self._complete(loaded, call, rendered.prompt, rendered.thinking_started, reply, extra):
                yield item
        finally:
            self.scheduler.release(loaded)

    async def generate(
        self,
        call: Call,
        prompt: str,
        *,
        system: str | None = None,
        template: str | None = None,
        suffix: str = "",
        raw: bool = False,
        context: list[int] | None = None,
        tokens: list[int] | None = None,
    ) -> AsyncIterator[Piece | Done]:
        """`tokens`: the prompt as token ids, sent as they are (no template, no BOS added)."""
        loaded = await self._acquire(call)
        try:
            if tokens is not None:
                async for item in self._complete(loaded, call, tokens, False):
                    if isinstance(item, Done):
                        item.context = tokens + item.context
                    yield item
                return
            if raw:
                text = prompt
            else:
                text = await asyncio.to_thread(  # off the event loop; the template budget bounds its time
                    render_generate,
                    call.model.spec(),
                    prompt,
                    system=system,
                    template=template,
                    suffix=suffix,
                    think=call.think,
                )
            if context:
                text = await loaded.runner.detokenize(context) + text
            prompt_tokens = await loaded.runner.tokenize(text)
            started = prompt_opens_thinking(text)
            async for item in self._complete(loaded, call, prompt_tokens, started):
                if isinstance(item, Done):
                    item.context = prompt_tokens + item.context
                yield item
        finally:
            self.scheduler.release(loaded)

    async def embed(self, call: Call, inputs: list[str], truncate: bool) -> tuple[list[list[float]], int, Done]:
        """One normalized vector per input, the tokens evaluated, and the timing of the call."""
        loaded = await self._acquire(call)
        try:
            vectors, count = [], 0
            for text in inputs:
                if not truncate and len(await loaded.runner.tokenize(text)) > loaded.context_length:
                    raise ValueError("the input length exceeds the context length; shorten it or set truncate")
                try:
                    result = await loaded.runner.embedding(text)
                except RunnerError:
                    self.scheduler.runner_failed(loaded)
                    raise
                vectors.append(result["embedding"])
                count += int(result.get("tokens_evaluated", 0))
            done = Done("stop", total=time.perf_counter() - call.started, load=self._load_time(call))
            return vectors, count, done
        finally:
            self.scheduler.release(loaded)

    async def score(self, call: Call, windows: list[dict[str, Any]], top_k: int = 0) -> dict[str, Any]:
        """The runner's /score of `windows` ({tokens, from}); BadRequest-worthy ValueError past the context."""
        loaded = await self._acquire(call)
        try:
            for i, window in enumerate(windows):
                if len(window["tokens"]) > loaded.context_length:
                    raise ValueError(
                        f"prompt: is {len(window['tokens'])} tokens, more than the context of "
                        f"{loaded.context_length}; shorten it or give the model a larger num_ctx"
                        if len(windows) == 1
                        else f"window {i}: is {len(window['tokens'])} tokens, more than {loaded.context_length}"
                    )
            try:
                return await loaded.runner.score({"windows": windows, "top_k": top_k})
            except RunnerError as e:
                if e.kind != "request":
                    self.scheduler.runner_failed(loaded)
                raise
        finally:
            self.scheduler.release(loaded)

    async def prompt_tokens(self, call: Call, text: str) -> list[tuple[int, str]]:
        """`text` tokenized as the runner tokenizes a prompt (BOS when the model adds one), with each token's piece."""
        loaded = await self._acquire(call)
        try:
            return await loaded.runner.tokenize_pieces(text)
        finally:
            self.scheduler.release(loaded)

    async def pieces(self, call: Call, tokens: list[int]) -> list[str]:
        """The text of each token id, as the model spells it."""
        loaded = await self._acquire(call)
        try:
            return await loaded.runner.pieces(tokens)
        finally:
            self.scheduler.release(loaded)

    async def detokenize(self, call: Call, tokens: list[int]) -> str:
        """The text token ids stand for, decoded as a whole (characters split across tokens join up)."""
        loaded = await self._acquire(call)
        try:
            return await loaded.runner.detokenize(tokens)
        finally:
            self.scheduler.release(loaded)

    async def _complete(
        self,
        loaded: Loaded,
        call: Call,
        prompt: str | list[int],
        thinking_started: bool,
        reply: _Reply | None = None,
        extra: dict[str, Any] | None = None,
    ) -> AsyncIterator[Piece | Done]:
        options = merged(call.model.details.parameters, call.options)
        body = {"prompt": prompt, "cache_prompt": True, **sampling_fields(options), **(extra or {})}
        if call.json_schema is not None:
            body["json_schema"] = call.json_schema
        if call.logprobs is not None:
            body["n_probs"] = max(1, call.logprobs)  # 0 alternatives still needs the chosen token's logprob
        reply = reply or _Reply(None, None)
        reply.splitter = ThinkingSplitter(started=thinking_started) if call.think is not False else None
        tokens: list[int] = []
        try:
            async for chunk in loaded.runner.complete(body, options.get("stream_interval")):
                tokens += chunk.get("tokens") or []
                if call.logprobs is not None:
                    reply.pending += [_trimmed(e, call.logprobs) for e in chunk.get("completion_probabilities") or []]
                text = chunk.get("content", "")
                if text and (piece := reply.feed(text)):
                    yield piece
                if chunk.get("stop"):
                    if piece := reply.flush(cut=chunk.get("stop_type") == "limit"):
                        yield piece
                    pending = reply.pending
                    done = self._done(loaded, call, chunk, tokens)
                    done.logprobs = pending
                    yield done
                    return
        except RunnerError:
            self.scheduler.runner_failed(loaded)
            raise

    def _done(self, loaded: Loaded, call: Call, final: dict[str, Any], tokens: list[int]) -> Done:
        t = final.get("timings", {})
        return Done(
            reason="length" if final.get("stop_type") == "limit" else "stop",
            total=time.perf_counter() - call.started,
            load=self._load_time(call),
            prompt_eval_count=int(t.get("prompt_n", 0)),
            prompt_tokens=int(final.get("tokens_evaluated", 0)),
            prompt_eval=float(t.get("prompt_ms", 0.0)) / 1000,
            eval_count=int(t.get("predicted_n", 0)),
            eval=float(t.get("predicted_ms", 0.0)) / 1000,
            draft_count=int(t.get("draft_n", 0)),
            draft_accepted_count=int(t.get("draft_n_accepted", 0)),
            context=tokens,
            stop_word=str(final.get("stopping_word") or "") if final.get("stop_type") == "word" else "",
        )

    @staticmethod
    def _load_time(call: Call) -> float:
        """This request's wait for a runner: the load when it needed one, else the scheduler's few milliseconds."""
        return max(0.0, (call.acquired or call.started) - call.started)


@dataclass
class _Reply:
    """Streamed text split into thinking, content and tool calls, each Piece carrying the entries it came from."""

    splitter: ThinkingSplitter | None
    parser: CallParser | None
    pending: list[dict[str, Any]] = field(default_factory=list)  # entries whose text is still held
    taken: int = 0  # calls of the parser already looked at
    most: int = MAX_CALLS  # calls kept; later ones are dropped
    sent: list[ToolCall] = field(default_factory=list)

    def feed(self, text: str) -> Piece | None:
        thinking, content = self.splitter.feed(text) if self.splitter else ("", text)
        return self._piece(thinking, self.parser.feed(content) if self.parser and content else content)

    def flush(self, cut: bool = False) -> Piece | None:
        """The end of the reply; `cut` says the token limit ended it, so a call it cut off is dropped, not shown."""
        thinking, content = self.splitter.flush() if self.splitter else ("", "")
        if self.parser:
            content = self.parser.feed(content) if content else ""
            if cut and self.parser.calls:
                self.parser.abandon()
            content += self.parser.flush()
        return self._piece(thinking, content)

    def _piece(self, thinking: str, content: str) -> Piece | None:
        calls = []
        for call in self.parser.calls[self.taken :] if self.parser else []:
            if call not in self.sent and len(self.sent) < self.most:  # a call repeated word for word runs once
                calls.append(call)
                self.sent.append(call)
        self.taken = len(self.parser.calls) if self.parser else 0
        if not (thinking or content or calls):
            return None
        piece = Piece(content, thinking, self.pending, calls)
        self.pending = []
        return piece


def _trimmed(entry: dict[str, Any], top: int) -> dict[str, Any]:
    """A runner entry with at most `top` alternatives (the runner sends at least one)."""
    return {**entry, "top_logprobs": list(entry.get("top_logprobs") or [])[:top]}


def _token_counter(loaded: Loaded) -> Any:
    """A synchronous token count through the runner, for prompt fitting (run in a worker thread).

    A token is at least one byte, so text no longer in bytes than the context
    needs no count at all.
    """
    limit = loaded.context_length

    def count(text: str) -> int:
        size = len(text.encode())
        if size <= limit:
            return size
        r = httpx.post(loaded.runner.url + "/tokenize", json={"content": text, "add_special": True}, timeout=60)
        r.raise_for_status()
        return len(r.json()["tokens"])

    return count


async def gather(items: AsyncIterator[Piece | Done]) -> tuple[str, str, Done]:
    """A whole reply: its content, its thinking and its Done (with every token's logprobs), for non-streamed answers."""
    text, thinking, logprobs, calls = [], [], [], []
    async for item in items:
        if isinstance(item, Done):
            item.logprobs = logprobs + item.logprobs
            item.tool_calls = calls + item.tool_calls
            return "".join(text), "".join(thinking), item
        text.append(item.content)
        thinking.append(item.thinking)
        logprobs += item.logprobs
        calls += item.tool_calls
    raise RuntimeError("the reply ended without its final chunk")


def renormalized(vector: list[float]) -> list[float]:
    """A shortened embedding (the `dimensions` option) scaled back to unit length."""
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]
