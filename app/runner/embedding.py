"""Embeddings in the decode loop: a prompt read with embeddings on, pooled as the context says.

With pooling `none` each token gets a vector; otherwise the sequence gets one,
normalized as the request asks (llama-server's `embd_normalize`). Only `last`
pooling can be read in several batches; the others need the whole input in one.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp as llama
import numpy as np

from app.runner.model import Model


@dataclass
class EmbedJob:
    """What an embeddings request asks beyond its tokens."""

    normalize: int = 2  # -1 none, 0 max-abs to int16 range, 1 taxicab, 2 euclidean, >2 p-norm


def normalized(vector: np.ndarray, norm: int) -> np.ndarray:
    """llama.cpp's common_embd_normalize."""
    v = vector.astype(np.float64)
    if norm == -1:
        total = 1.0
    elif norm == 0:
        total = float(np.abs(v).max(initial=0.0)) / 32760.0
    elif norm == 2:
        total = float(np.sqrt((v * v).sum()))
    else:
        total = float((np.abs(v) ** norm).sum() ** (1.0 / norm))
    return (v * (1.0 / total if total > 0 else 0.0)).astype(np.float32)


def split_allowed(model: Model) -> bool:
    """Whether an input may be read in more than one batch (only `last` pooling keeps a running state)."""
    return model.pooling == llama.LLAMA_POOLING_TYPE_LAST


def embed(
    model: Model, batch: llama.llama_batch, seq: int, tokens: list[int], norm: int
) -> tuple[list[list[float]], int]:
    """The vectors of `tokens` read in sequence `seq`, and how many decodes that took; RuntimeError if one fails."""
    ctx, n_out = model.ctx, model.n_embd_out
    per_token = model.pooling == llama.LLAMA_POOLING_TYPE_NONE
    step = model.n_batch if split_allowed(model) else len(tokens)
    vectors: list[list[float]] = []
    n_decodes = 0
    llama.llama_set_embeddings(ctx, True)
    try:
        for start in range(0, len(tokens), step):
            part = tokens[start : start + step]
            batch.n_tokens = len(part)
            for j, token in enumerate(part):
                batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, start + j, 1, True
                batch.seq_id[j][0] = seq
            rc = llama.llama_decode(ctx, batch)
            n_decodes += 1
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}) reading the input")
            if per_token:
                vectors += [_read(llama.llama_get_embeddings_ith(ctx, j), n_out).tolist() for j in range(len(part))]
        if not per_token:
            raw = llama.llama_get_embeddings_seq(ctx, seq)
            if not raw:
                raise RuntimeError("llama.cpp returned no pooled embedding")
            vectors = [normalized(_read(raw, n_out), norm).tolist()]
    finally:
        llama.llama_set_embeddings(ctx, False)
        batch.n_tokens = 0
    return vectors, n_decodes


def _read(pointer: ctypes._Pointer, n: int) -> np.ndarray:  # type: ignore[type-arg]
    return np.ctypeslib.as_array(pointer, shape=(n,)).copy()
