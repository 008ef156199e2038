"""Requests and slots: what the decode loop works on.

A slot is one llama.cpp sequence. It remembers the tokens its KV cache holds
after its request ends, so the next request with the same beginning (the next
turn of the same conversation) evaluates only what is new.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.runner.lookup import PromptLookup
from app.runner.sampling import Sampler, SamplingParams
from app.runner.settings import timings
from app.runner.text import TextStream

if TYPE_CHECKING:
    from app.runner.embedding import EmbedJob
    from app.runner.scoring import ScoreJob

Chunk = dict[str, Any]
_ids = itertools.count(1)


@dataclass
class Request:
    """One /completion, /embedding or /score call.

    `emit` hands a chunk to the HTTP side: the engine calls it on `loop` (the
    HTTP side's event loop), a step's chunks for all requests in one call, or on
    the decode thread when there is no loop.
    """

    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Chunk], None]
    loop: asyncio.AbstractEventLoop | None = None
    embedding: EmbedJob | None = None  # an embeddings request: read the prompt, return vectors
    score: ScoreJob | None = None  # a /score request: windows to evaluate, not a prompt to continue
    stream: bool = True  # False: one chunk at the end, so the HTTP side is not woken per token
    held_text: list[str] = field(default_factory=list)
    held_tokens: list[int] = field(default_factory=list)
    held_probs: list[dict[str, Any]] = field(default_factory=list)  # n_probs entries of a non-streamed reply
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Slot:
    """A sequence in the context, and the request using it, if any."""

    id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds, position by position
    request: Request | None = None
    last_used: float = 0.0
    # Per request:
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    next_token: int | None = None  # sampled, not yet in the KV cache
    drafts: list[int] = field(default_factory=list)  # guessed tokens in the batch after next_token, to verify
    lookup: PromptLookup | None = None  # where drafts come from
    sampler: Sampler | None = None
    text: TextStream | None = None
    n_prompt: int = 0
    n_cached: int = 0
    n_decoded: int = 0
    truncated: bool = False
    has_new_line: bool = False  # some text sent so far held a newline
    started: float = 0.0
    prompt_done: float = 0.0  # when the prompt's last batch was decoded (0: still reading it)
    gen_last: float = 0.0  # when the last token was sampled

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def busy(self) -> bool:
        return self.request is not None

    def start(self, request: Request, sampler: Sampler, n_cached: int, truncated: bool, lookup: PromptLookup) -> None:
        self.request = request
        self.sampler = sampler
        self.lookup = lookup
        self.text = TextStream(request.params.stop)
        self.pending = request.prompt[n_cached:]
        self.next_token = None
        self.n_prompt, self.n_cached, self.n_decoded = len(request.prompt), n_cached, 0
        self.truncated = truncated
        self.has_new_line = False
        self.started = time.perf_counter()
        self.prompt_done = self.gen_last = 0.0

    def release(self) -> None:
        if self.sampler:
            self.sampler.close()
        self.request, self.sampler, self.text, self.pending, self.next_token = None, None, None, [], None
        self.drafts, self.lookup = [], None
        self.last_used = time.perf_counter()

    @property
    def n_read(self) -> int:
        """Prompt tokens evaluated so far (not counting those the cache held)."""
        return self.n_prompt - self.n_cached - len(self.pending)

    def timings(self) -> dict[str, float | int]:
        """llama-server's timings object for this request so far, plus the wait for a free slot."""
        prompt_ms = (self.prompt_done - self.started) * 1000 if self.prompt_done else 0.0
        predicted_ms = max(1e-3, (self.gen_last - self.prompt_done) * 1000) if self.gen_last else 0.0
        drafted, accepted = (self.lookup.drafted, self.lookup.accepted) if self.lookup else (0, 0)
        queued = self.request.queued_at if self.request else self.started
        return {
            "queue_ms": max(0.0, (self.started - queued) * 1000),  # waiting for a free slot, before prompt_ms
            **timings(self.n_cached, self.n_read, prompt_ms, self.n_decoded, predicted_ms, drafted, accepted),
        }

    def progress_chunk(self) -> Chunk:
        """llama-server's prompt_progress chunk: how much of the prompt is read (or was cached)."""
        ms = (time.perf_counter() - self.started) * 1000
        progress = {"total": self.n_prompt, "cache": self.n_cached, "processed": self.n_cached + self.n_read}
        chunk: Chunk = {"content": "", "tokens": [], "stop": False, "id_slot": self.id}
        chunk["prompt_progress"] = progress | {"time_ms": ms}
        if self.request is not None and self.request.params.timings_per_token:
            chunk["timings"] = self.timings()
        return chunk

    def describe(self, n_ctx: int) -> dict[str, Any]:
        """The /slots view of this slot: llama-server's keys, and what it is doing."""
        request, lookup = self.request, self.lookup  # read once: the decode thread may release the slot meanwhile
        view: dict[str, Any] = {
            "id": self.id,
            "n_ctx": n_ctx,
            "speculative": lookup is not None and lookup.n_max > 0,
            "is_processing": request is not None,
            "n_past": self.n_past,
        }
        if request is not None:
            view.update(
                id_task=request.id,
                n_prompt_tokens=self.n_prompt,
                n_prompt_tokens_processed=self.n_read,
                n_prompt_pending=len(self.pending),
                next_token=[
                    {
                        "has_next_token": True,
                        "has_new_line": self.has_new_line,
                        "n_remain": -1,
                        "n_decoded": self.n_decoded,
                    }
                ],  # fmt: skip
            )
        return view
