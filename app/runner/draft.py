"""A draft model: a smaller model of the same vocabulary that guesses the next tokens for the big one.

The Modelfile's DRAFT (`--model-draft` here, as in llama-server) is loaded
beside the model, with one sequence per slot. Before each step the engine asks
it for a guess: the draft's sequence is brought level with the slot's text
(only what changed is evaluated), then it decodes greedily, one token at a time,
while it is confident. The engine verifies the guess in the model's own batch
(app.runner.engine), so the answer is the model's alone; a good draft only
makes it come sooner.
"""

from __future__ import annotations

import ctypes

import llama_cpp as llama
import numpy as np

from app.runner.cache import common_prefix
from app.runner.model import LoadError, Model

#: Stop guessing once the draft's own top token is less likely than this (llama.cpp's --draft-p-min).
P_MIN = 0.75


class Drafter:
    """A loaded draft model and, per slot, the tokens its sequence holds."""

    def __init__(self, draft: Model, target: Model) -> None:
        check_vocabularies(draft, target)
        self.model = draft
        self._batch = llama.llama_batch_init(draft.n_batch, 0, 1)
        self._held: dict[int, list[int]] = {}

    def propose(self, seq: int, text: list[int], n: int) -> list[int]:
        """Up to `n` tokens the draft expects after `text` (a slot's prompt and reply so far)."""
        room = self.model.n_ctx_slot - len(text) - 1
        n = min(n, room)
        if n <= 0 or not text:
            return []
        held = self._held.setdefault(seq, [])
        keep = min(common_prefix(held, text), len(text) - 1)  # the last token is read again for its logits
        if keep < len(held):
            llama.llama_memory_seq_rm(self.model.memory, seq, keep, -1)
            del held[keep:]
        if not self._feed(seq, held, text[keep:]):
            return []
        out: list[int] = []
        while True:
            token, p = self._best()
            if p < P_MIN:
                break
            out.append(token)
            if len(out) == n or not self._feed(seq, held, [token]):
                break
        return out

    def _feed(self, seq: int, held: list[int], tokens: list[int]) -> bool:
        """Evaluate `tokens` after what the sequence holds, in batches, logits for the last one only."""
        batch, size = self._batch, self.model.n_batch
        for start in range(0, len(tokens), size):
            chunk = tokens[start : start + size]
            batch.n_tokens = 0
            for j, token in enumerate(chunk):
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, len(held) + j, 1
                batch.seq_id[i][0], batch.logits[i] = seq, start + j == len(tokens) - 1
                batch.n_tokens = i + 1
            if llama.llama_decode(self.model.ctx, batch) != 0:
                llama.llama_memory_seq_rm(self.model.memory, seq, len(held), -1)
                return False
            held.extend(chunk)
        return True

    def _best(self) -> tuple[int, float]:
        """The draft's most likely next token and its probability."""
        ptr = llama.llama_get_logits_ith(self.model.ctx, -1)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.model.n_vocab,))
        best = int(logits.argmax())
        return best, float(1.0 / np.exp(logits - logits[best]).sum())

    def close(self) -> None:
        llama.llama_batch_free(self._batch)
        self.model.close()


def check_vocabularies(draft: Model, target: Model) -> None:
    """llama.cpp's pairing rule: the same tokenizer, give or take a few added tokens at the end."""
    same_kind = llama.llama_vocab_type(draft.vocab) == llama.llama_vocab_type(target.vocab)
    specials = (
        all(f(draft.vocab) == f(target.vocab) for f in (llama.llama_vocab_bos, llama.llama_vocab_eos))
        and draft.add_bos == target.add_bos
    )
    shared = min(draft.n_vocab, target.n_vocab)
    same_tokens = all(
        draft.piece(t, special=True) == target.piece(t, special=True) for t in range(5, shared, max(1, shared // 256))
    )
    if not same_kind or not specials or abs(draft.n_vocab - target.n_vocab) > 128 or not same_tokens:
        raise LoadError("bad_model", "the draft model's vocabulary is not the model's; pick a draft of the same family")
