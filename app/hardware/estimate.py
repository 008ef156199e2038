"""How much memory a GGUF model needs under given settings, from its tensor sizes and shape metadata.

Placement needs the pieces separately: the repeating blocks (which move to a
GPU one by one), the input layer (which llama.cpp keeps on the CPU), the output
layer (which goes to a GPU only when every block does), the KV cache of each
block, and the compute buffer each device in use allocates.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.errors import BadModelFile

#: llama.cpp pads the context to this many tokens (the whole and each sequence's share).
CTX_PAD = 256
#: The largest micro-batch the runner and llama-server use by default (n_ubatch).
UBATCH = 512
#: KV cache element types: (bytes per block, elements per block), as ggml stores them.
KV_TYPE_SIZES: dict[str, tuple[int, int]] = {
    "f32": (4, 1),
    "f16": (2, 1),
    "bf16": (2, 1),
    "q8_0": (34, 32),
    "q4_0": (18, 32),
    "q4_1": (20, 32),
    "q5_0": (22, 32),
    "q5_1": (24, 32),
}
_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class MemoryEstimate:
    """A model's memory, in bytes, split the way llama.cpp places it."""

    n_layers: int
    layer_bytes: tuple[int, ...]  # weights of each repeating block (tensors named blk.N.*)
    input_bytes: int  # token_embd etc.: llama.cpp keeps the input layer on the CPU
    output_bytes: int  # output.weight + output_norm; token_embd again when the embeddings are tied
    kv_bytes_per_layer: int  # K and V of one block for the whole context (all slots)
    compute_bytes: int  # graph/compute buffer of one device (a heuristic, see docs/hardware.md)
    n_ctx: int  # the context llama.cpp will allocate (padded to a multiple of 256 per slot)
    #: The output layer is token_embd itself (tied embeddings): on the CPU it is the same
    #: mapped memory as the input layer, so it costs extra only once it goes to a GPU.
    output_shared: bool = False

    @property
    def kv_bytes(self) -> int:
        """The whole KV cache."""
        return self.kv_bytes_per_layer * self.n_layers

    @property
    def weights(self) -> int:
        """The model's weights as the file holds them (a tied output counted once)."""
        return sum(self.layer_bytes) + self.input_bytes + (0 if self.output_shared else self.output_bytes)

    @property
    def total(self) -> int:
        """Everything on one device: what a full offload puts on a GPU (the input layer stays in RAM)."""
        return sum(self.layer_bytes) + self.output_bytes + self.kv_bytes + self.compute_bytes

    def with_draft(self, draft: MemoryEstimate) -> MemoryEstimate:
        """This model with a draft model loaded beside it (a Modelfile's DRAFT), for placing both.

        The runner loads the draft with the model's context, slots and GPU layers,
        so it is split much as the model is; planning holds the draft's whole size
        (weights, KV cache, compute) beside the compute buffer of every device the
        model uses: an upper bound, which keeps a pair that does not fit off a GPU
        instead of failing to load there.
        """
        return replace(self, compute_bytes=self.compute_bytes + draft.total + draft.input_bytes)


def allocated_context(ctx_size: int, parallel: int = 1) -> int:
    """The context llama.cpp allocates for `ctx_size` tokens shared by `parallel` sequences.

    Measured on this build: the total is padded to 256, divided among the
    sequences, each share padded to 256 again (ctx 300 x 2 slots -> 512, ctx
    100 x 3 -> 768, ctx 513 x 2 -> 1024).
    """
    parallel = max(1, parallel)
    per_seq = _pad(max(1, _pad(ctx_size, CTX_PAD) // parallel), CTX_PAD)
    return per_seq * parallel


def kv_row_bytes(width: int, cache_type: str) -> int:
    """Bytes of one token's K (or V) row of `width` elements in a cache of `cache_type`."""
    try:
        block_bytes, block = KV_TYPE_SIZES[cache_type]
    except KeyError:
        raise ValueError(f"unknown KV cache type {cache_type!r}; use one of {', '.join(KV_TYPE_SIZES)}") from None
    return -(-width // block) * block_bytes


def estimate(
    path: Path,
    ctx_size: int,
    parallel: int = 1,
    kv_cache_type: str = "f16",
    batch_size: int = 512,
    flash_attn: bool = False,
) -> MemoryEstimate:
    """Estimate the memory of running the GGUF at `path` with llama-server's settings.

    `ctx_size` is the context shared by all `parallel` slots (llama-server's
    --ctx-size; 0 or less means the model's training context). `flash_attn`
    says the attention scores are not materialized, which shrinks the compute
    buffer at long contexts; False is the safe side.
    """
    from app.store.gguf_info import read_header

    try:
        header = read_header(path)
    except (OSError, ValueError, struct.error) as e:
        raise BadModelFile(f"cannot read {path.name} to estimate its memory ({e})") from e
    fields = header.fields
    arch = str(fields.get("general.architecture") or "llama")

    def meta(key: str) -> int | None:
        value: Any = fields.get(f"{arch}.{key}")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    layers: dict[int, int] = {}
    input_bytes = output_bytes = embd_bytes = embd_elements = 0
    has_output = False
    for t in header.tensors:
        if m := _BLOCK.match(t.name):
            layers[int(m.group(1))] = layers.get(int(m.group(1)), 0) + t.n_bytes
        elif t.name.startswith("output"):
            output_bytes += t.n_bytes
            has_output |= t.name == "output.weight"
        else:
            input_bytes += t.n_bytes
            if t.name == "token_embd.weight":
                embd_bytes, embd_elements = t.n_bytes, t.n_elements
    n_layers = meta("block_count") or (max(layers) + 1 if layers else 0)
    if n_layers <= 0:
        raise BadModelFile(f"{path.name} has no repeating blocks; it is not a model llama.cpp can offload")
    layer_bytes = tuple(layers.get(i, 0) for i in range(n_layers))
    shared = not has_output and embd_bytes > 0
    if shared:
        output_bytes += embd_bytes

    n_embd = meta("embedding_length") or 0
    n_head = meta("attention.head_count") or 1
    n_head_kv = meta("attention.head_count_kv") or n_head  # a per-layer array reads as missing
    head_dim = n_embd // n_head if n_head else 0
    k_width = (meta("attention.key_length") or head_dim) * n_head_kv
    v_width = (meta("attention.value_length") or head_dim) * n_head_kv
    n_vocab = meta("vocab_size") or (embd_elements // n_embd if n_embd else 0)

    n_ctx = allocated_context(ctx_size if ctx_size > 0 else (meta("context_length") or 2048), parallel)
    kv_per_layer = n_ctx * (kv_row_bytes(k_width, kv_cache_type) + kv_row_bytes(v_width, kv_cache_type))
    compute = compute_estimate(
        n_ctx_seq=n_ctx // max(1, parallel),
        n_ubatch=min(batch_size, UBATCH, n_ctx),
        n_embd=n_embd,
        n_head=n_head,
        n_vocab=n_vocab,
        parallel=max(1, parallel),
        flash_attn=flash_attn,
    )
    return MemoryEstimate(
        n_layers=n_layers,
        layer_bytes=layer_bytes,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        kv_bytes_per_layer=kv_per_layer,
        compute_bytes=compute,
        n_ctx=n_ctx,
        output_shared=shared,
    )


def compute_estimate(
    n_ctx_seq: int, n_ubatch: int, n_embd: int, n_head: int, n_vocab: int, parallel: int = 1, flash_attn: bool = False
) -> int:
    """The compute buffer of one device: the larger of the attention and the logits stage, plus 10%.

    ggml reuses buffer memory between graph nodes, so the buffer is about the
    peak of one stage, not a sum. Attention: the scores (and mask) of a
    micro-batch against a slot's context, f32 per head unless flash attention
    skips them, plus a few activations. Logits: the f32 logits of a micro-batch
    and two activations. The host buffer for the returned logits is added.
    Within a few % below to 2x above what llama.cpp reports on the CPU.
    """
    scores = n_ctx_seq * (1 if flash_attn else 1 + n_head)
    attention = 4 * n_ubatch * (1 + 4 * n_embd + scores)
    logits = 4 * n_ubatch * (2 * n_embd + n_vocab)
    return max(attention, logits) * 11 // 10 + 4 * n_vocab * parallel


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to
