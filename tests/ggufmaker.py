"""Write small llama-architecture GGUF models with random weights, using `gguf`.

llama.cpp loads and runs them for real; their text is noise. Used by the fast
tests and by benchmarks that need a model file of a chosen size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

WORDS = [
    "the",
    "a",
    "and",
    "of",
    "to",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "I",
    "his",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "or",
    "had",
    "by",
    "hot",
    "word",
    "but",
    "what",
    "some",
    "we",
    "can",
    "out",
    "other",
    "were",
    "all",
    "there",
    "when",
    "up",
    "use",
    "your",
]


def write_tiny_llama(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 128,
    n_ctx: int = 256,
    dtype: str = "f32",
    padding_bytes: int = 0,
    seed: int = 0,
    name: str = "tiny-llama",
    architecture: str = "llama",
) -> Path:
    """A llama model with an SPM vocabulary of specials, 256 byte tokens and some words.

    `padding_bytes` adds an extra tensor to reach a chosen file size (store
    tests that need big blobs; llama.cpp would refuse such a file).
    """
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    float_type = np.float16 if dtype == "f16" else np.float32
    writer = GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_block_count(n_layer)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if dtype == "f16" else LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )

    def weight(*shape: int, norm: bool = False) -> np.ndarray:
        if norm:
            return np.ones(shape, dtype=np.float32)
        return (rng.standard_normal(shape) * 0.02).astype(float_type)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", weight(n_embd, norm=True))
        for proj in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{proj}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", weight(n_embd, norm=True))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", weight(n_embd, norm=True))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd))
    if padding_bytes:
        writer.add_tensor(
            "padding",
            rng.integers(0, 255, padding_bytes, dtype=np.uint8).view(np.int8),
            raw_dtype=GGMLQuantizationType.I8,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    pieces = ["▁" + w for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz") + ["▁"]
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_lora(path: Path, *, n_embd: int = 64, n_layer: int = 2, rank: int = 4, seed: int = 1) -> Path:
    """A LoRA adapter GGUF for `write_tiny_llama`'s attention projections, as llama.cpp's converter writes one."""
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for i in range(n_layer):
        for proj in ("attn_q", "attn_v"):
            writer.add_tensor(
                f"blk.{i}.{proj}.weight.lora_a", (rng.standard_normal((rank, n_embd)) * 0.01).astype(np.float32)
            )
            writer.add_tensor(
                f"blk.{i}.{proj}.weight.lora_b", (rng.standard_normal((n_embd, rank)) * 0.01).astype(np.float32)
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
