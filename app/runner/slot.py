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
from app.runner.text import TextStream

if TYPE_CHECKING:
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
    embedding: bool = False
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
    started: float = 0.0
    prompt_done: float = 0.0

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
        self.started = time.perf_counter()
        self.prompt_done = 0.0

    def release(self) -> None:
        if self.sampler:
            self.sampler.close()
        self.request, self.sampler, self.text, self.pending, self.next_token = None, None, None, [], None
        self.drafts, self.lookup = [], None
        self.last_used = time.perf_counter()

    def timings(self, now: float) -> dict[str, float | int]:
        """llama-server's timings object for this request so far."""
        prompt_ms = ((self.prompt_done or now) - self.started) * 1000
        predicted_ms = (now - self.prompt_done) * 1000 if self.prompt_done else 0.0
        prompt_n = self.n_prompt - self.n_cached
        queued = self.request.queued_at if self.request else self.started
        return {
            "queue_ms": max(0.0, (self.started - queued) * 1000),  # waiting for a free slot, before prompt_ms
            "cache_n": self.n_cached,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": prompt_n / prompt_ms * 1000 if prompt_ms > 0 else 0.0,
            "predicted_n": self.n_decoded,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / self.n_decoded if self.n_decoded else 0.0,
            "predicted_per_second": self.n_decoded / predicted_ms * 1000 if predicted_ms > 0 else 0.0,
            "draft_n": self.lookup.drafted if self.lookup else 0,
            "draft_n_accepted": self.lookup.accepted if self.lookup else 0,
        }

    def describe(self) -> dict[str, Any]:
        """The /slots view of this slot."""
        return {
            "id": self.id,
            "is_processing": self.busy,
            "n_past": self.n_past,
            "id_task": self.request.id if self.request else -1,
            "n_prompt_pending": len(self.pending),
            "n_decoded": self.n_decoded if self.busy else 0,
        }
