"""Scoring token sequences: log-probabilities of given tokens, computed in full batches.

A scoring job holds windows of tokens. The decode thread packs the windows of
the free slots it was given into one llama_decode at a time (one sequence per
slot, up to n_batch tokens, a window longer than the room left continuing in
the next decode), asks for logits only where a scored token is predicted, and
turns each row into a log-softmax with numpy straight on llama.cpp's logits
buffer. The same row math gives /completion's `n_probs`.
"""

from __future__ import annotations

import ctypes
import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp as llama
import numpy as np

if TYPE_CHECKING:
    from app.runner.slot import Slot

MAX_WINDOWS = 4096
MAX_TOKENS = 1 << 20  # per request
MAX_TOP_K = 100
MAX_TOP_ENTRIES = 1 << 21  # scored positions x top_k in one JSON answer
MAX_DISTRIBUTION_BYTES = 1 << 30
_CHUNK = 1 << 18  # floats per numpy pass: rows are processed in cache-sized blocks


@dataclass
class _Piece:
    """Part of a window put in one batch: the scored rows it yields, in logits-buffer order."""

    window: int
    first_row: int  # index into the window's scored positions
    n_rows: int
    ends_window: bool


class ScoreJob:
    """One /score request: its windows, what to compute, and where the decode thread is in it."""

    def __init__(self, windows: list[tuple[np.ndarray, int]], top_k: int, distribution: bool, n_vocab: int) -> None:
        self.windows = windows
        self.top_k = top_k
        self.distribution = distribution
        self.n_vocab = n_vocab
        sizes = [len(t) - start for t, start in windows]
        self.row_offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_rows = int(self.row_offset[-1])
        self.logprobs = np.empty(self.n_rows, np.float32)
        self.top_ids = np.empty((self.n_rows, top_k), np.int32) if top_k else None
        self.top_logprobs = np.empty((self.n_rows, top_k), np.float32) if top_k else None
        self.dist = np.empty((self.n_rows, n_vocab), np.dtype("<f4")) if distribution else None
        self.tokens_evaluated = sum(len(t) for t, _ in windows)
        self.seconds = 0.0
        self._todo = deque(range(len(windows)))
        self._at: dict[int, list[int]] = {}  # slot id -> [window, tokens of it already in the slot]

    @classmethod
    def from_json(cls, body: dict[str, Any], n_vocab: int, n_ctx_slot: int) -> ScoreJob:
        """Check a /score body against the model; ValueError says what is wrong with it."""
        raw = body.get("windows")
        if not isinstance(raw, list) or not raw:
            raise ValueError("windows must be a non-empty list of {tokens, from} objects")
        if len(raw) > MAX_WINDOWS:
            raise ValueError(f"{len(raw)} windows in one request; at most {MAX_WINDOWS}")
        top_k = body.get("top_k", 0) or 0
        if type(top_k) is not int or not 0 <= top_k <= min(MAX_TOP_K, n_vocab):
            raise ValueError(f"top_k must be an integer from 0 to {min(MAX_TOP_K, n_vocab)}")
        distribution = body.get("distribution", False)
        if not isinstance(distribution, bool):
            raise ValueError("distribution must be true or false")
        windows: list[tuple[np.ndarray, int]] = []
        total = rows = 0
        for i, w in enumerate(raw):
            tokens, start = _window(i, w, n_vocab, n_ctx_slot)
            total += len(tokens)
            rows += len(tokens) - start
            if total > MAX_TOKENS:
                raise ValueError(f"more than {MAX_TOKENS} tokens in one request; send fewer windows per request")
            windows.append((tokens, start))
        if distribution and rows * n_vocab * 4 > MAX_DISTRIBUTION_BYTES:
            raise ValueError(
                f"the distribution answer would be {rows * n_vocab * 4 >> 20} MiB, over "
                f"{MAX_DISTRIBUTION_BYTES >> 20} MiB; send fewer windows per request"
            )
        if rows * top_k > MAX_TOP_ENTRIES:
            raise ValueError(f"{rows} scored positions x top_k {top_k} is too many; send fewer windows per request")
        return cls(windows, top_k, distribution, n_vocab)

    # -- the decode thread ---------------------------------------------

    @property
    def done(self) -> bool:
        return not self._todo and not self._at

    def has_work(self, slot: Slot) -> bool:
        """Whether this slot has a window in progress or one can still be started in it."""
        return slot.id in self._at or bool(self._todo)

    def fill(self, batch: llama.llama_batch, slots: list[Slot], n_batch: int, memory: Any) -> list[_Piece]:
        """Put the next tokens of each slot's window into the (empty) batch; a slot starts a new window empty."""
        token = np.ctypeslib.as_array(batch.token, shape=(n_batch,))
        pos = np.ctypeslib.as_array(batch.pos, shape=(n_batch,))
        n_seq = np.ctypeslib.as_array(batch.n_seq_id, shape=(n_batch,))
        wants = np.ctypeslib.as_array(ctypes.cast(batch.logits, ctypes.POINTER(ctypes.c_int8)), shape=(n_batch,))
        pieces: list[_Piece] = []
        n = 0
        for slot in slots:
            if n == n_batch:
                break
            if slot.id not in self._at:
                if not self._todo:
                    continue
                self._at[slot.id] = [self._todo.popleft(), 0]
                llama.llama_memory_seq_rm(memory, slot.id, -1, -1)
                slot.tokens = []
            w, a = self._at[slot.id]
            tokens, start = self.windows[w]
            b = min(len(tokens), a + n_batch - n)
            token[n : n + b - a] = tokens[a:b]
            pos[n : n + b - a] = np.arange(a, b, dtype=np.int32)
            n_seq[n : n + b - a] = 1
            # logits at positions start-1 .. len-2: each predicts the next, scored token
            wants[n : n + b - a] = 0
            lo, hi = max(a, start - 1), min(b, len(tokens) - 1)
            if hi > lo:
                wants[n + lo - a : n + hi - a] = 1
                pieces.append(_Piece(w, lo - (start - 1), hi - lo, b == len(tokens)))
            elif b == len(tokens):
                pieces.append(_Piece(w, 0, 0, True))
            seq = batch.seq_id
            for i in range(n, n + b - a):
                seq[i][0] = slot.id
            slot.tokens.extend(tokens[a:b].tolist())
            self._at[slot.id][1] = b
            n += b - a
        batch.n_tokens = n
        return pieces

    def take(self, ctx: llama.llama_context_p, pieces: list[_Piece]) -> None:
        """Turn the decoded rows into log-probabilities and note the windows that are finished."""
        n_out = sum(p.n_rows for p in pieces)
        if n_out:
            logits = np.ctypeslib.as_array(llama.llama_get_logits(ctx), shape=(n_out, self.n_vocab))
            targets = np.concatenate([self._targets(p) for p in pieces])
            lse = logsumexp(logits)
            lp = logits[np.arange(n_out), targets] - lse
            r = 0
            for p in pieces:
                d0 = int(self.row_offset[p.window]) + p.first_row
                dest = slice(d0, d0 + p.n_rows)
                rows = slice(r, r + p.n_rows)
                self.logprobs[dest] = lp[rows]
                if self.dist is not None:
                    np.subtract(logits[rows], lse[rows, None], out=self.dist[dest])
                if self.top_ids is not None and self.top_logprobs is not None:
                    ids, values = top_k(logits[rows], self.top_k)
                    self.top_ids[dest] = ids
                    self.top_logprobs[dest] = values - lse[rows, None]
                r += p.n_rows
        finished = {p.window for p in pieces if p.ends_window}
        for slot_id in [s for s, (w, _) in self._at.items() if w in finished]:
            del self._at[slot_id]

    def _targets(self, p: _Piece) -> np.ndarray:
        tokens, start = self.windows[p.window]
        return tokens[start + p.first_row : start + p.first_row + p.n_rows]

    # -- the answer -------------------------------------------------------

    def answer_json(self) -> bytes:
        """The JSON answer: per-window logprobs (and top-k lists)."""
        out = []
        for i in range(len(self.windows)):
            rows = slice(int(self.row_offset[i]), int(self.row_offset[i + 1]))
            entry: dict[str, Any] = {"logprobs": self.logprobs[rows].tolist()}
            if self.top_ids is not None and self.top_logprobs is not None:
                ids, values = self.top_ids[rows].tolist(), self.top_logprobs[rows].tolist()
                pairs = zip(ids, values, strict=True)
                entry["top"] = [[[t, v] for t, v in zip(i_row, v_row, strict=True)] for i_row, v_row in pairs]
            out.append(entry)
        body = {
            "windows": out,
            "n_vocab": self.n_vocab,
            "tokens_evaluated": self.tokens_evaluated,
            "seconds": self.seconds,
        }
        return json.dumps(body).encode()


def _window(i: int, w: Any, n_vocab: int, n_ctx_slot: int) -> tuple[np.ndarray, int]:
    if not isinstance(w, dict):
        raise ValueError(f"windows[{i}] must be an object with tokens and from")
    tokens, start = w.get("tokens"), w.get("from")
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise ValueError(f"windows[{i}].tokens must be a list of token ids")
    if type(start) is not int or not 1 <= start < len(tokens):
        raise ValueError(f"windows[{i}].from must be an integer from 1 to len(tokens) - 1 ({len(tokens) - 1})")
    if len(tokens) > n_ctx_slot:
        raise ValueError(
            f"windows[{i}] has {len(tokens)} tokens but a slot holds {n_ctx_slot}; "
            "use shorter windows or start the runner with a larger --ctx-size per slot"
        )
    if min(tokens) < 0 or max(tokens) >= n_vocab:  # checked before numpy, which cannot hold an id past int64
        raise ValueError(f"windows[{i}].tokens has an id outside the vocabulary of {n_vocab}")
    return np.asarray(tokens, dtype=np.int32), start


def logsumexp(rows: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) of each row, in cache-sized blocks through one scratch buffer."""
    n, v = rows.shape
    out = np.empty(n, np.float32)
    step = max(1, _CHUNK // v)
    scratch = np.empty((min(step, n), v), np.float32)
    for r in range(0, n, step):
        block = rows[r : r + step]
        t = scratch[: len(block)]
        m = block.max(axis=1)
        np.subtract(block, m[:, None], out=t)
        np.exp(t, out=t)
        out[r : r + step] = m + np.log(t.sum(axis=1))
    return out


def top_k(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row, largest first: (ids, values)."""
    ids = np.argpartition(rows, -k, axis=1)[:, -k:]
    values = np.take_along_axis(rows, ids, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(values, order, axis=1)


def token_probs(ctx: llama.llama_context_p, index: int, n_vocab: int, token: int, n: int, piece: Any) -> dict[str, Any]:
    """llama-server's completion_probabilities entry for a sampled token: raw-logit logprobs, top n."""
    row = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, index), shape=(1, n_vocab))
    lse = float(logsumexp(row)[0])
    ids, values = top_k(row, min(n, n_vocab))

    def entry(t: int, logit: float) -> dict[str, Any]:
        data: bytes = piece(t)
        return {"id": t, "token": data.decode("utf-8", "replace"), "bytes": list(data), "logprob": logit - lse}

    top = [entry(int(t), float(v)) for t, v in zip(ids[0], values[0], strict=True)]
    return {**entry(token, float(row[0, token])), "top_logprobs": top}


def post_sampling_entry(token: int, prob: float, top: list[tuple[int, float]], piece: Any) -> dict[str, Any]:
    """llama-server's completion_probabilities entry with post_sampling_probs: probabilities after the chain."""

    def entry(t: int, p: float) -> dict[str, Any]:
        data: bytes = piece(t)
        return {"id": t, "token": data.decode("utf-8", "replace"), "bytes": list(data), "prob": p}

    return {**entry(token, prob), "top_probs": [entry(t, p) for t, p in top]}
