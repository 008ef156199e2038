"""The decode loop: continuous batching over slots, the prompt cache, context shifting.

One thread owns the llama.cpp context. Each pass it admits queued requests
into free slots (choosing the slot, or a saved state, with the longest common
prefix), builds one batch holding the next token of every generating slot plus
prompt chunks of slots still reading, decodes it, samples every slot that has
logits, and hands each new piece of text to its request at once.

A generating slot's next token may bring a draft behind it: tokens guessed by a
draft model (app.runner.draft) or from where the text repeats itself
(app.runner.lookup), decoded in the same batch and kept as far as the model,
sampling each position in turn, agrees with them.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
import traceback
from collections import deque

import llama_cpp as llama

from app.runner.cache import SavedState, StateCache, common_prefix
from app.runner.context import fit_prompt, shift_span
from app.runner.draft import Drafter
from app.runner.embedding import embed
from app.runner.lookup import PromptLookup
from app.runner.metrics import Metrics
from app.runner.model import Model
from app.runner.prompts import exceeds_context
from app.runner.sampling import Sampler
from app.runner.scoring import ScoreJob, post_sampling_entry, token_probs
from app.runner.slot import Chunk, Request, Slot

#: llama.cpp pads the KV length a batch attends over to a multiple of this (llama_kv_cache::get_n_kv).
KV_PAD = 256
#: How long the decode thread waits, at most, for the HTTP side to send a pass's chunks.
DELIVERY_WAIT = 0.005


def _hand_over(group: list[tuple[Request, Chunk]], done: threading.Event | None) -> None:
    """On the HTTP side's loop: queue each chunk, and signal once the streams woken by them have run."""
    try:
        for request, chunk in group:
            try:
                request.emit(chunk)
            except Exception:  # noqa: BLE001 - one request's failure must not cost the others their chunks
                traceback.print_exc()
    finally:
        if done is not None:
            asyncio.get_running_loop().call_soon(done.set)  # after the tasks these chunks woke


class Engine:
    """Slots, a request queue and the thread that decodes for them."""

    def __init__(self, model: Model, cache: StateCache | int, drafter: Drafter | None = None) -> None:
        """`cache`: where displaced conversations' states go (a byte budget: RAM only, no disk tier);
        `drafter`: a draft model that guesses tokens where prompt lookup finds nothing to copy."""
        self.model = model
        self.drafter = drafter
        self.slots = [Slot(i) for i in range(model.options.parallel)]
        self.cache = cache if isinstance(cache, StateCache) else StateCache(cache)
        self.batch_size = model.n_batch
        #: On the CPU a batch costs about in proportion to its tokens, so drafts pay only for a lone
        #: stream: beside others they cost more than they save (4 streams: 0.85x with drafts, 1.0x without).
        self.draft_lone_only = model.options.n_gpu_layers == 0
        self._batch = llama.llama_batch_init(self.batch_size, 0, 1)
        self._outbox: list[tuple[Request, Chunk]] = []  # chunks of this pass, handed over at its end
        self._reading: list[Slot] = []  # slots whose prompt tokens are in this pass's batch
        #: Wait for the HTTP side between decodes on the CPU only, where it would take the decode's cores;
        #: beside a GPU decode it costs nothing and is better done at the same time.
        self.delivery_wait = DELIVERY_WAIT if model.options.n_gpu_layers == 0 else 0.0
        self._queue: deque[Request] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.failure = ""  # set when the decode loop died; every request then gets this error
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self._scoring: list[tuple[Request, ScoreJob, list[Slot]]] = []  # jobs in progress, their slots
        self.metrics = Metrics()

    # -- called from any thread ---------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=60)  # the slots' states are being kept (the server allows up to a minute)

    def submit(self, request: Request) -> None:
        with self._cond:
            if self.failure:
                request.emit({"error": self.failure, "stop": True})
                return
            self._queue.append(request)
            self._cond.notify_all()

    def cancel(self, request: Request) -> None:
        """The client is gone: free its slot (or drop it from the queue) at the next pass."""
        request.cancelled.set()
        with self._cond:
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def progress(self) -> int:
        """A count that grows with every decode: unchanged over time means the loop is stuck or idle."""
        return self.metrics.n_decode

    # -- the decode thread --------------------------------------------

    def _run(self) -> None:
        """The loop, guarded: a bug in it fails every request instead of leaving them hanging."""
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 - reported to every client and to /health
            traceback.print_exc()
            with self._cond:
                self.failure = f"the decode loop failed: {type(e).__name__}: {e}"
                waiting = [r for r in self._queue] + [s.request for s in self.slots if s.request]
                waiting = list({r.id: r for r in waiting}.values())  # a scoring request holds several slots
                self._queue.clear()
            for request in waiting:
                self._emit(request, {"error": self.failure, "stop": True})
            self._deliver()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queue and not any(s.busy for s in self.slots):
                    self._cond.wait()
                if self._stopping:
                    self._keep_states()
                    return
            self._drop_cancelled()
            self._admit()
            for job in list(self._scoring):
                self._score_step(*job)
            self._step()
            self._deliver()

    def _emit(self, request: Request, chunk: Chunk) -> None:
        self._outbox.append((request, chunk))

    def _deliver(self) -> None:
        """Hand this pass's chunks to the HTTP side, one call per event loop, and give it a moment.

        The HTTP side's work (JSON, SSE, socket writes) would otherwise run beside
        the next decode, on the cores its threads are using, and hold the GIL the
        decode thread needs back: with 4 streams on 2 cores a decode took 15% longer
        than in llama-server. Waiting up to DELIVERY_WAIT for the chunks to be sent
        does that work between decodes instead.
        """
        if not self._outbox:
            return
        items, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop | None, list[tuple[Request, Chunk]]] = {}
        for request, chunk in items:
            by_loop.setdefault(request.loop, []).append((request, chunk))
        sent: list[threading.Event] = []
        for loop, group in by_loop.items():
            if loop is None:
                _hand_over(group, None)
                continue
            done = threading.Event()
            try:
                loop.call_soon_threadsafe(_hand_over, group, done)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                continue
            sent.append(done)
        deadline = time.monotonic() + self.delivery_wait
        for done in sent:
            done.wait(max(0.0, deadline - time.monotonic()))

    def _keep_states(self) -> None:
        """At stop: every slot's conversation goes to the cache, which keeps what it can beyond this process."""
        for slot in self.slots:
            if not slot.busy:
                self._save(slot)
        self.cache.flush()

    def _drop_cancelled(self) -> None:
        with self._cond:
            self._queue = deque(r for r in self._queue if not r.cancelled.is_set())
        # a cancelled scoring job's slots keep what they hold (slot.tokens stays true to the KV cache)
        self._scoring = [job for job in self._scoring if not job[0].cancelled.is_set()]
        for slot in self.slots:
            if slot.request and slot.request.cancelled.is_set():
                slot.release()

    def _admit(self) -> None:
        while True:
            with self._cond:
                free = [s for s in self.slots if not s.busy]
                if not self._queue or not free:
                    return
                request = self._queue.popleft()
            if request.embedding is not None:
                self._embed(request, free)
            elif request.score is not None:
                self._start_scoring(request, request.score, free)
            else:
                self._assign(request, free)

    def _assign(self, request: Request, free: list[Slot]) -> None:
        params = request.params
        prompt, truncated = request.prompt, False
        if self.model.options.truncate_prompts:
            prompt, truncated = fit_prompt(prompt, params.n_keep, self.model.n_ctx_slot, self.model.add_bos)
        elif len(prompt) >= self.model.n_ctx_slot:  # the HTTP side refuses these; a guard for other callers
            self._emit(request, {"error": exceeds_context(len(prompt), self.model.n_ctx_slot), "stop": True})
            return
        request.prompt = prompt
        slot, n_cached = self._pick_slot(prompt, free, params.cache_prompt)
        n_cached = min(n_cached, len(prompt) - 1)  # the last prompt token is evaluated for its logits
        self._trim(slot, n_cached)
        self.metrics.prompt_tokens_cached += n_cached
        sampler = Sampler(
            params, self.model.vocab, self.model.n_vocab, self.model.eog_tokens if params.ignore_eos else None
        )
        for token in prompt[max(0, len(prompt) - params.repeat_last_n) :] if sampler.penalized else ():
            sampler.accept(token)
        options = self.model.options
        n_max = options.draft_max if params.draft_max < 0 else min(params.draft_max, options.draft_max)
        n_min = options.draft_min if params.draft_min < 0 else max(params.draft_min, 1)
        lookup = PromptLookup(n_max, n_min, prompt if n_max > 0 else [])
        slot.start(request, sampler, n_cached, truncated, lookup)
        self._progress(slot)

    def _progress(self, slot: Slot) -> None:
        """A streamed request that asked for it hears how far its prompt has been read."""
        request = slot.request
        assert request is not None
        if request.stream and request.params.return_progress:
            self._emit(request, slot.progress_chunk())

    def _pick_slot(self, prompt: list[int], free: list[Slot], use_cache: bool) -> tuple[Slot, int]:
        """The free slot to use and how many prompt tokens it already holds.

        The slot with the longest common prefix wins, unless a saved state
        shares more; then the least recently used free slot is saved away
        and the state restored into it.
        """
        slot = max(free, key=lambda s: (common_prefix(s.tokens, prompt) if use_cache else 0, -s.last_used))
        n = common_prefix(slot.tokens, prompt) if use_cache else 0
        saved, n_saved = self.cache.best(prompt) if use_cache else (None, 0)
        if saved is not None and n_saved > n:
            slot = min(free, key=lambda s: s.last_used)
            self._save(slot)
            self._restore(slot, saved)
            return slot, common_prefix(slot.tokens, prompt)  # 0 when the state could not be restored
        if n < len(slot.tokens) // 2:
            self._save(slot)  # another conversation takes this slot; keep this one's history
        return slot, n

    def _save(self, slot: Slot) -> None:
        if not slot.tokens or not self.cache.enabled:
            return
        size = llama.llama_state_seq_get_size(self.model.ctx, slot.id)
        buf = (ctypes.c_uint8 * size)()
        written = llama.llama_state_seq_get_data(self.model.ctx, buf, size, slot.id)
        self.cache.put(SavedState(tuple(slot.tokens), ctypes.string_at(buf, written)))  # one copy, not a list

    def _restore(self, slot: Slot, saved: SavedState) -> None:
        """Load a saved state into a slot; the slot ends up empty when the state is unusable."""
        llama.llama_memory_seq_rm(self.model.memory, slot.id, -1, -1)
        slot.tokens = []
        data = self.cache.take(saved)  # None: a disk copy that failed its checks
        if not data:
            return
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama.llama_state_seq_set_data(self.model.ctx, buf, len(data), slot.id) == 0:
            llama.llama_memory_seq_rm(self.model.memory, slot.id, -1, -1)
            return
        slot.tokens = list(saved.tokens)

    def _trim(self, slot: Slot, n: int) -> None:
        """Keep only the first n tokens of a slot's KV cache."""
        if n < len(slot.tokens):
            llama.llama_memory_seq_rm(self.model.memory, slot.id, n, -1)
            del slot.tokens[n:]

    def _step(self) -> None:
        """Build one batch from every busy slot, decode it, sample and emit."""
        batch, outputs, n_gen = self._build_batch()
        if batch.n_tokens == 0:
            return
        started = time.perf_counter()
        rc = llama.llama_decode(self.model.ctx, batch)
        if rc == 1 and self._free_idle_cells():  # a unified KV pool is full: idle conversations make room
            rc = llama.llama_decode(self.model.ctx, batch)
        m = self.metrics
        m.n_decode += 1
        m.n_busy_slots += sum(s.busy for s in self.slots)
        m.n_tokens_max = max(m.n_tokens_max, max(s.n_past for s in self.slots))
        if rc != 0:  # 1: no room left in the KV cache (a unified one, shared by all slots)
            message = {1: "Context size has been exceeded.", -1: "Invalid input batch."}.get(rc, "Compute error.")
            for slot in {s.id: s for s in [*(s for s, _ in outputs), *self._reading]}.values():
                self._fail(slot, message)
            return
        now = time.perf_counter()
        for slot in self._reading:
            if not slot.pending:
                slot.prompt_done = now
            self._progress(slot)
        predicted = sum(self._sample(slot, index) for slot, index in outputs)
        self._account(predicted, n_gen, batch.n_tokens - n_gen, now - started)

    def _free_idle_cells(self) -> bool:
        """Move idle slots' conversations to the state cache and empty their cells; whether any had some."""
        idle = [s for s in self.slots if not s.busy and s.tokens]
        for slot in idle:
            self._save(slot)
            self._trim(slot, 0)
        return bool(idle)

    def _build_batch(self) -> tuple[llama.llama_batch, list[tuple[Slot, int]], int]:
        """The batch, the (slot, batch index) pairs to sample, and how many tokens are generated ones (drafts too)."""
        batch = self._batch
        batch.n_tokens = 0
        outputs: list[tuple[Slot, int]] = []
        generating = [s for s in self.slots if s.busy and s.next_token is not None]
        for i, slot in enumerate(generating):
            if not self._make_room(slot):
                continue
            token, slot.next_token = slot.next_token, None
            outputs.append((slot, self._add(slot, token, True)))
            slot.drafts = self._draft(slot, token, len(generating) - i - 1, lone=len(generating) == 1)
            for draft in slot.drafts:
                self._add(slot, draft, True)
        n_gen = batch.n_tokens
        # The rest of the batch goes to prompts, shortest remainder first: finishing one prompt before
        # the next gives the lowest mean time to first token, and generating slots went in above.
        reading = sorted((s for s in self.slots if s.busy and s.pending), key=lambda s: (len(s.pending), s.started))
        self._reading = []
        for slot in reading:
            take = slot.pending[: self.batch_size - batch.n_tokens]
            if not take:
                break
            self._reading.append(slot)
            del slot.pending[: len(take)]
            for j, token in enumerate(take):
                index = self._add(slot, token, not slot.pending and j == len(take) - 1)
            if not slot.pending:
                outputs.append((slot, index))
        return batch, outputs, n_gen

    def _draft(self, slot: Slot, token: int, others: int, lone: bool = True) -> list[int]:
        """Tokens guessed to follow `token` (by prompt lookup, else the draft model), bounded by the slot's
        context, the token limit and the batch's room; none beside other streams on the CPU."""
        lookup = slot.lookup
        assert lookup is not None
        if lookup.n_max <= 0:
            return []
        lookup.extend([token])
        if not lone and self.draft_lone_only:
            return []
        size = lookup.budget(self._room(slot, others))
        guess = lookup.match(size)  # copying the text costs nothing; the draft model guesses where it can't
        if not guess and size and self.drafter is not None:
            guess = self.drafter.propose(slot.id, lookup.history, size)
        return guess

    def _room(self, slot: Slot, others: int) -> int:
        """How many drafted tokens fit behind a slot's next token.

        A batch never crosses a multiple of KV_PAD cells: llama.cpp pads the KV
        length a batch attends over to that, so a draft reaching past it would
        have the next token attend over a longer padded cache than it does
        alone. Below 256 cells a verified draft then rounds exactly as single
        tokens do; past that, ggml's CPU attention splits one token's work
        differently from a batch's, and logprobs may differ in the last bits
        (about 0.02 at most on SmolLM2), which can flip a near tie.
        """
        request = slot.request
        assert request is not None
        return min(
            -(-slot.n_past // KV_PAD) * KV_PAD - slot.n_past,
            self.model.n_ctx_slot - slot.n_past,
            self.batch_size - self._batch.n_tokens - others,  # each generating slot after this one needs a place
            self._limit(request) - slot.n_decoded - 1 if self._limit(request) >= 0 else self.batch_size,
        )

    def _add(self, slot: Slot, token: int, logits: bool) -> int:
        b = self._batch
        i = b.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, slot.n_past, 1, logits
        b.seq_id[i][0] = slot.id
        b.n_tokens = i + 1
        slot.tokens.append(token)
        return i

    def _make_room(self, slot: Slot) -> bool:
        """With --context-shift, shift a full context as llama-server does: keep n_keep tokens
        (-1: the whole prompt), drop n_discard of the rest (0: half); without it, the answer ends there."""
        if slot.n_past + 1 < self.model.n_ctx_slot:
            return True
        if not (self.model.options.ctx_shift and self.model.can_shift):
            slot.truncated = True
            self._finish(slot, "limit")
            return False
        assert slot.request is not None
        params = slot.request.params
        n_keep, n_discard = shift_span(
            slot.n_past, slot.n_prompt, params.n_keep, params.n_discard, self.model.n_ctx_slot, self.model.add_bos
        )
        mem = self.model.memory
        llama.llama_memory_seq_rm(mem, slot.id, n_keep, n_keep + n_discard)
        llama.llama_memory_seq_add(mem, slot.id, n_keep + n_discard, slot.n_past, -n_discard)
        del slot.tokens[n_keep : n_keep + n_discard]
        slot.truncated = True
        return True

    def _sample(self, slot: Slot, index: int) -> int:
        """Sample the slot's token at batch `index`, then along its draft while the draft agrees; how many came."""
        drafts, lookup = slot.drafts, slot.lookup
        slot.drafts = []
        n_kv = slot.n_past - len(drafts)  # tokens the KV cache holds for sure, before the draft is checked
        token, n = self._take(slot, index, n_kv), 1
        accepted = 0
        while token is not None and accepted < len(drafts) and token == drafts[accepted]:
            accepted += 1
            token, n = self._take(slot, index + accepted, n_kv + accepted), n + 1
        if drafts:
            self._trim(slot, slot.n_past - len(drafts) + accepted)  # the refused guesses leave the KV cache
            assert lookup is not None
            lookup.verified(len(drafts), accepted)
            lookup.extend(drafts[:accepted])
            self.metrics.draft_tokens += len(drafts)
            self.metrics.draft_accepted += accepted
            self.metrics.draft_steps += 1
        slot.next_token = token
        return n

    def _take(self, slot: Slot, index: int, n_kv: int) -> int | None:
        """Sample at batch `index` (the KV cache then holding `n_kv` tokens) and hand the text on;
        the token, or None when the reply ended there."""
        request, sampler, text = slot.request, slot.sampler, slot.text
        assert request is not None and sampler is not None and text is not None
        params = request.params
        slot.gen_last = time.perf_counter()
        slot.prompt_done = slot.prompt_done or slot.gen_last
        probs = None
        if params.n_probs > 0 and params.post_sampling_probs:
            token, p, top = sampler.sample_candidates(self.model.ctx, index, params.n_probs)
            probs = post_sampling_entry(token, p, top, self._piece)
        else:
            token = sampler.sample(self.model.ctx, index)
        slot.n_decoded += 1
        if self.model.is_eog(token) and not params.ignore_eos:
            self._finish(slot, "eos")
            return None
        if params.n_probs > 0 and probs is None:
            probs = token_probs(self.model.ctx, index, self.model.n_vocab, token, params.n_probs, self._piece)
        content = text.feed(self.model.piece(token))
        slot.has_new_line = slot.has_new_line or "\n" in content
        if text.stopped_by is not None:
            self._finish(slot, "word", content)
            return None
        self._hand_on(slot, request, token, content, probs)
        if not self.model.options.ctx_shift and n_kv + 1 >= self.model.n_ctx_slot:
            slot.truncated = True  # llama-server's rule: no room for the next token, so the answer ends here
            self._finish(slot, "limit")
            return None
        if 0 <= self._limit(request) <= slot.n_decoded:
            self._finish(slot, "limit")
            return None
        return token

    def _limit(self, request: Request) -> int:
        """The most tokens a request may generate (-1: no limit): its own n_predict, else the runner's --n-predict."""
        n = request.params.n_predict
        return n if n != -1 else self.model.options.n_predict

    def _hand_on(self, slot: Slot, request: Request, token: int, content: str, probs: Chunk | None) -> None:
        """A streamed token goes out as a chunk at once; a whole answer's is held for the end."""
        if request.stream:
            chunk: Chunk = {"content": content, "tokens": [token], "stop": False, "id_slot": slot.id}
            chunk["tokens_predicted"], chunk["tokens_evaluated"] = slot.n_decoded, slot.n_prompt
            if probs is not None:
                chunk["completion_probabilities"] = [probs]
            if request.params.timings_per_token:
                chunk["timings"] = slot.timings()
            self._emit(request, chunk)
        else:
            request.held_text.append(content)
            request.held_tokens.append(token)
            if probs is not None:
                request.held_probs.append(probs)

    def _finish(self, slot: Slot, stop_type: str, content: str = "") -> None:
        request, text = slot.request, slot.text
        assert request is not None and text is not None
        if stop_type != "word":
            content += text.flush()
        final: Chunk = {
            "content": "".join(request.held_text) + content,
            "tokens": request.held_tokens,
            "stop": True,
            "stop_type": stop_type,
            "stopping_word": text.stopped_by or "",
            "id_slot": slot.id,
            "tokens_predicted": slot.n_decoded,
            "tokens_evaluated": slot.n_prompt,
            "tokens_cached": slot.n_past,
            "truncated": slot.truncated,
            "has_new_line": slot.has_new_line or "\n" in content,
            "timings": slot.timings(),
        }
        if request.params.n_probs > 0 and not request.stream:
            final["completion_probabilities"] = request.held_probs
        slot.release()
        self._emit(request, final)

    def _fail(self, slot: Slot, message: str) -> None:
        request = slot.request
        slot.release()
        self._trim(slot, 0)
        if request:
            self._emit(request, {"error": message, "stop": True})

    def _account(self, predicted: int, n_gen: int, n_prompt: int, elapsed: float) -> None:
        """Counters for /metrics; a mixed batch's time counts toward both kinds of work."""
        m = self.metrics
        m.predicted_tokens += predicted
        m.prompt_tokens += n_prompt
        if n_gen:
            m.predicted_seconds += elapsed
            m.predicted_window.add(predicted, elapsed)
        if n_prompt:
            m.prompt_seconds += elapsed
            m.prompt_window.add(n_prompt, elapsed)

    def _embed(self, request: Request, free: list[Slot]) -> None:
        """The request's embedding, read in the least recently used free slot's sequence (saved first)."""
        slot = min(free, key=lambda s: s.last_used)
        self._save(slot)
        self._trim(slot, 0)
        job = request.embedding
        assert job is not None
        started = time.perf_counter()
        try:
            vectors, n_decodes = embed(self.model, self._batch, slot.id, request.prompt, job.normalize)
        except RuntimeError as e:
            self._emit(request, {"error": str(e), "stop": True})
            return
        finally:
            llama.llama_memory_seq_rm(self.model.memory, slot.id, -1, -1)
            slot.tokens = []
            slot.last_used = time.perf_counter()
        self.metrics.n_decode += n_decodes
        self.metrics.prompt_tokens += len(request.prompt)
        self.metrics.prompt_seconds += time.perf_counter() - started
        self._emit(request, {"embedding": vectors, "tokens_evaluated": len(request.prompt), "stop": True})

    def _piece(self, token: int) -> bytes:
        return self.model.piece(token, special=True)

    # -- scoring ----------------------------------------------------------

    def _start_scoring(self, request: Request, job: ScoreJob, free: list[Slot]) -> None:
        """Give a scoring job as many free slots as it has windows, saving what they held."""
        slots = sorted(free, key=lambda s: s.last_used)[: len(job.windows)]
        for slot in slots:
            self._save(slot)
            self._trim(slot, 0)
            slot.request = request
        self._scoring.append((request, job, slots))

    def _score_step(self, request: Request, job: ScoreJob, slots: list[Slot]) -> None:
        """One llama_decode of the job's windows; slots with nothing left to score are freed at once."""
        started = time.perf_counter()
        pieces = job.fill(self._batch, slots, self.batch_size, self.model.memory)
        rc = llama.llama_decode(self.model.ctx, self._batch) if self._batch.n_tokens else 0
        self.metrics.n_decode += 1
        self.metrics.scored_tokens += self._batch.n_tokens
        if rc == 0:
            job.take(self.model.ctx, pieces)
        job.seconds += time.perf_counter() - started
        for slot in [s for s in slots if rc != 0 or not job.has_work(s)]:
            slots.remove(slot)
            self._trim(slot, 0)
            slot.release()
        if rc != 0:
            self._scoring.remove((request, job, slots))
            self._emit(request, {"error": f"llama_decode failed ({rc})", "stop": True})
        elif job.done:
            self._scoring.remove((request, job, slots))
            self._emit(request, {"score": job, "stop": True})
