"""A llama.cpp model and context, loaded through llama-cpp-python's low-level bindings.

Only the engine's decode thread touches the context after loading; the
tokenizer calls read the vocabulary alone and are safe from any thread.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as llama

from app.hardware.devices import cgroup_free, system_ram
from app.runner import hugepages
from app.runner.options import RunnerOptions

_POOLING = {
    "none": llama.LLAMA_POOLING_TYPE_NONE,
    "mean": llama.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama.LLAMA_POOLING_TYPE_CLS,
    "last": llama.LLAMA_POOLING_TYPE_LAST,
}
_KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}


class LoadError(Exception):
    """A model that could not be loaded, with the kind the runner reports (oom, bad_model, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")


@dataclass
class _LogTail:
    """The last lines llama.cpp logged: load failures are explained only there.

    It also adds up the buffers llama.cpp reports allocating (weights, KV cache,
    compute), by kind, which is the only place their exact sizes are told.
    """

    lines: list[str]
    verbose: bool
    buffers: dict[str, int] = field(default_factory=dict)

    def __call__(self, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace")
        if self.verbose:
            sys.stderr.write(line)
        self.lines.append(line)
        del self.lines[:-40]
        if m := _BUFFER.search(line):
            kind = {"KV": "kv_cache"}.get(m.group(2), m.group(2))
            self.buffers[kind] = self.buffers.get(kind, 0) + round(float(m.group(3)) * (1 << 20))


_log = _LogTail([], False)
_log_callback = llama.llama_log_callback(_log)


class Model:
    """A loaded model, its vocabulary and one context with a sequence per slot."""

    def __init__(self, options: RunnerOptions, on_progress: Callable[[float], None] = lambda p: None) -> None:
        _log.verbose = options.verbose
        _log.buffers.clear()
        llama.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama.llama_backend_init()
        self.options = options
        #: How the file was read: none (into memory), mmap (mapped) or dio.
        self.load_mode = resolve_load_mode(options, _check_file(options))
        self.model = _load_model(options, self.load_mode, on_progress)
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama.llama_model_n_embd(self.model)
        self.n_embd_out = llama.llama_model_n_embd_out(self.model)
        self.ctx = _new_context(self.model, options)
        self.n_ctx = llama.llama_n_ctx(self.ctx)
        self.n_batch = llama.llama_n_batch(self.ctx)  # llama.cpp clamps it to the context size
        self.n_ubatch = llama.llama_n_ubatch(self.ctx)
        #: Each slot's share of the context: all of it with a unified KV pool, never past what the model was trained on.
        self.n_ctx_slot = min(llama.llama_n_ctx_seq(self.ctx), llama.llama_model_n_ctx_train(self.model))
        self.pooling = int(llama.llama_pooling_type(self.ctx))
        self.memory = llama.llama_get_memory(self.ctx)
        self.can_shift = bool(llama.llama_memory_can_shift(self.memory))
        self.add_bos = bool(llama.llama_vocab_get_add_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}  # token (negated minus one: with special) -> its bytes
        self._adapters = [_apply_lora(self.model, self.ctx, path) for path in options.lora]
        #: Bytes llama.cpp allocated, by kind: model (weights), kv_cache, compute, output (MiB precision).
        self.allocated = dict(_log.buffers)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run one tiny batch and forget it, as llama-server does at start.

        The first decode touches every weight page, allocates the compute buffers
        and starts the worker threads: work the first request would otherwise wait
        for, tens of milliseconds for SmolLM2, seconds for a large model on disk.
        """
        special = [llama.llama_vocab_bos(self.vocab), llama.llama_vocab_eos(self.vocab)]
        tokens = [t for t in special if t >= 0] or [0]
        array = (llama.llama_token * len(tokens))(*tokens)
        llama.llama_set_warmup(self.ctx, True)
        try:
            batch = llama.llama_batch_get_one(array, len(tokens))
            if llama.llama_model_has_encoder(self.model):
                llama.llama_encode(self.ctx, batch)
            if llama.llama_model_has_decoder(self.model):
                llama.llama_decode(self.ctx, batch)  # a failure here shows again, and is reported, on first use
            llama.llama_memory_clear(self.memory, True)
            llama.llama_synchronize(self.ctx)
            llama.llama_perf_context_reset(self.ctx)
        finally:
            llama.llama_set_warmup(self.ctx, False)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            buf = (llama.llama_token * size)()
            n = llama.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes a token stands for; control tokens are empty unless `special`.

        Remembered per token: the decode loop asks for each generated token's piece.
        """
        key = -token - 1 if special else token
        found = self._pieces.get(key)
        if found is None:
            found = self._pieces[key] = self._read_piece(token, special)
        return found

    def _read_piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab

    def is_eog(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    @functools.cached_property
    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token (EOS, EOT, <|im_end|>...), for ignore_eos."""
        return [t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(self.vocab, t)]

    def close(self) -> None:
        llama.llama_free(self.ctx)
        llama.llama_model_free(self.model)


def _check_file(options: RunnerOptions) -> int:
    """The model file's size; LoadError if it is missing or not GGUF."""
    path = Path(options.model)
    if not path.is_file():
        raise LoadError("missing", f"model file {path} does not exist")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise LoadError("bad_model", f"{path} is not a GGUF model file")
    return path.stat().st_size


def _load_model(options: RunnerOptions, mode: str, on_progress: Callable[[float], None]) -> llama.llama_model_p:
    path = Path(options.model)
    params = llama.llama_model_default_params()
    params.n_gpu_layers = options.n_gpu_layers
    params.main_gpu = options.main_gpu
    if options.tensor_split:
        split = (ctypes.c_float * len(options.tensor_split))(*options.tensor_split)
        params.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
    _set_load_mode(params, mode, options.mlock)

    @llama.llama_progress_callback
    def progress(fraction: float, user_data: ctypes.c_void_p) -> bool:
        on_progress(float(fraction))
        return True

    params.progress_callback = progress
    model = llama.llama_model_load_from_file(os.fsencode(path), params)
    if not model:
        raise _classify(f"cannot load {path.name}")
    return model


def resolve_load_mode(
    options: RunnerOptions,
    file_size: int,
    huge_pages: bool | None = None,
    available: int | None = None,
    gpu_build: bool | None = None,
) -> str:
    """How the model file is read: "auto" becomes "none" (read into memory) where that memory takes huge pages
    (app.runner.hugepages), llama.cpp has no GPU backend (which would put read-in weights in pinned host
    memory instead) and a copy of the file fits in the available RAM (or the cgroup's limit) with a quarter
    and 512 MiB to spare; otherwise "mmap", as llama-server maps by default."""
    if options.load_mode != "auto":
        return options.load_mode
    huge_pages = hugepages.active() if huge_pages is None else huge_pages
    gpu_build = bool(llama.llama_supports_gpu_offload()) if gpu_build is None else gpu_build
    if not huge_pages or gpu_build or options.n_gpu_layers != 0:
        return "mmap"
    if available is None:
        available = min(system_ram()[1], cgroup_free() or sys.maxsize)
    return "none" if file_size + file_size // 4 + (512 << 20) <= available else "mmap"


_LOAD_MODES = {
    ("none", False): "LLAMA_LOAD_MODE_NONE",
    ("none", True): "LLAMA_LOAD_MODE_MLOCK",
    ("mmap", False): "LLAMA_LOAD_MODE_MMAP",
    ("mmap", True): "LLAMA_LOAD_MODE_MMAP_MLOCK",
    ("dio", False): "LLAMA_LOAD_MODE_DIRECT_IO",
    ("dio", True): "LLAMA_LOAD_MODE_DIRECT_IO",
}


def _set_load_mode(params: llama.llama_model_params, mode: str, mlock: bool) -> None:
    if hasattr(params, "load_mode"):
        params.load_mode = getattr(llama, _LOAD_MODES[mode, mlock])
    else:  # older llama.cpp
        params.use_mmap, params.use_mlock = mode == "mmap", mlock


def _new_context(model: llama.llama_model_p, options: RunnerOptions) -> llama.llama_context_p:
    params = llama.llama_context_default_params()
    params.n_ctx = options.ctx_size
    params.n_batch = options.batch_size
    params.n_ubatch = min(options.ubatch_size, options.batch_size)
    params.n_seq_max = options.parallel
    params.kv_unified = options.kv_unified
    params.n_threads = params.n_threads_batch = options.threads or max(1, (os.cpu_count() or 2))
    params.flash_attn_type = flash_attn_type(options)
    params.type_k = _KV_TYPES[options.kv_cache_type]
    params.type_v = _KV_TYPES[options.kv_cache_type_v or options.kv_cache_type]
    params.no_perf = False
    params.pooling_type = _POOLING.get(options.pooling, llama.LLAMA_POOLING_TYPE_UNSPECIFIED)
    ctx = llama.llama_init_from_model(model, params)
    if not ctx:
        llama.llama_model_free(model)
        raise _classify(f"cannot create a context of {options.ctx_size} tokens")
    return ctx


def flash_attn_type(options: RunnerOptions) -> int:
    """llama.cpp's flash-attention setting: "auto" is llama.cpp's own rule (on for the CPU).

    With flash attention off, the CPU kernels' rounding depends on the batch's
    shape, and on some CPUs (AVX2 without AVX-512) by a lot: a prompt read whole
    and the same prompt served from the cache (its last token read alone) gave
    logprobs 0.02-0.4 apart on SmolLM2, so a cached conversation could answer
    differently. With it on they match, whatever the cache or the batch.
    """
    if options.flash_attn == "on":
        return llama.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if options.flash_attn == "off":
        return llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return llama.LLAMA_FLASH_ATTN_TYPE_AUTO


def _apply_lora(model: llama.llama_model_p, ctx: llama.llama_context_p, path: Path) -> llama.llama_adapter_lora_p:
    adapter = llama.llama_adapter_lora_init(model, os.fsencode(path))
    if not adapter:
        raise _classify(f"cannot load the LoRA adapter {path}")
    adapters = (llama.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(1.0)
    if llama.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
        raise LoadError("bad_model", f"the LoRA adapter {path} does not fit this model")
    return adapter


_OOM = re.compile(r"out of memory|bad_alloc|failed to allocate|unable to allocate|cannot allocate|alloc.*failed", re.I)
_ARCH = re.compile(r"unknown model architecture: '([^']*)'")


def _classify(what: str) -> LoadError:
    """Name the cause of a load failure from what llama.cpp logged."""
    text = "".join(_log.lines)
    reason = next((ln.strip() for ln in reversed(_log.lines) if "error" in ln.lower() or "failed" in ln.lower()), "")
    if m := _ARCH.search(text):
        return LoadError("bad_model", f"{what}: unsupported model architecture '{m.group(1)}'")
    if _OOM.search(text):
        return LoadError("oom", f"{what}: not enough memory ({reason})")
    return LoadError("bad_model", f"{what}: {reason or 'llama.cpp refused it'}")
