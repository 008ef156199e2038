"""The runner's command line: llama-server's flags, so either program can be launched the same way."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

KV_CACHE_TYPES = ("f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


@dataclass
class RunnerOptions:
    """How to load the model and serve it."""

    model: Path
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 4096
    batch_size: int = 512
    n_gpu_layers: int = 0
    parallel: int = 1
    threads: int = 0
    flash_attn: str = "auto"
    kv_cache_type: str = "f16"
    kv_cache_type_v: str = ""  # empty: the K cache's type
    lora: list[Path] = field(default_factory=list)
    main_gpu: int = 0
    tensor_split: list[float] = field(default_factory=list)
    mlock: bool = False
    no_mmap: bool = False
    embedding: bool = False
    verbose: bool = False
    cache_ram_mib: int = 512
    cache_disk: Path | None = None  # a folder for states that leave RAM; None: they are dropped
    cache_disk_mib: int = 4096
    draft_max: int = 16  # prompt-lookup drafting: the most tokens a draft proposes (0: off)
    draft_min: int = 1
    model_draft: Path | None = None  # a draft model of the same vocabulary, guessing where prompt lookup can't
    cache_key: str = ""  # the model's digest, naming its states on disk; else the file's path, size and mtime


def parse_args(argv: Sequence[str] | None = None) -> RunnerOptions:
    p = argparse.ArgumentParser(prog="python -m app.runner", description="Serve one GGUF model over HTTP.")
    p.add_argument("-m", "--model", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context tokens shared by all slots")
    p.add_argument("-b", "--batch-size", type=int, default=512)
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=0)
    p.add_argument("-np", "--parallel", type=int, default=1, help="slots: requests decoded together")
    p.add_argument("-t", "--threads", type=int, default=0, help="0: one per CPU")
    p.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="auto", choices=("on", "off", "auto"))
    p.add_argument("--kv-cache-type", "-ctk", "--cache-type-k", default="f16", choices=KV_CACHE_TYPES)
    p.add_argument("-ctv", "--cache-type-v", default="", choices=KV_CACHE_TYPES, help="default: the K cache's")
    p.add_argument("--lora", type=Path, action="append", default=[])
    p.add_argument("-mg", "--main-gpu", type=int, default=0)
    p.add_argument("-ts", "--tensor-split", default="", help="fractions per GPU, e.g. 3,1")
    p.add_argument("--mlock", action="store_true")
    p.add_argument("--no-mmap", action="store_true")
    p.add_argument("--embedding", "--embeddings", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--cache-ram", type=int, default=512, help="MiB of RAM for saved conversation states")
    p.add_argument("--draft-max", "--draft", "--draft-n", type=int, default=16, help="most drafted tokens; 0: off")
    p.add_argument("--draft-min", "--draft-n-min", type=int, default=1, help="no draft shorter than this")
    p.add_argument("-md", "--model-draft", type=Path, help="a draft model for speculative decoding")
    p.add_argument("--cache-disk", type=Path, help="folder keeping conversation states that leave RAM")
    p.add_argument("--cache-disk-size", type=int, default=4096, help="MiB the --cache-disk folder may hold in all")
    p.add_argument("--cache-key", default="", help="the model's digest, which names its states on disk")
    a = p.parse_args(argv)
    if a.parallel < 1 or a.ctx_size < a.parallel * 16:
        p.error("--parallel must be at least 1 and --ctx-size at least 16 tokens per slot")
    return RunnerOptions(
        model=a.model,
        host=a.host,
        port=a.port,
        ctx_size=a.ctx_size,
        batch_size=a.batch_size,
        n_gpu_layers=a.n_gpu_layers,
        parallel=a.parallel,
        threads=a.threads,
        flash_attn=a.flash_attn,
        kv_cache_type=a.kv_cache_type,
        kv_cache_type_v=a.cache_type_v,
        lora=a.lora,
        main_gpu=a.main_gpu,
        tensor_split=[float(x) for x in a.tensor_split.split(",") if x.strip()],
        mlock=a.mlock,
        no_mmap=a.no_mmap,
        embedding=a.embedding,
        verbose=a.verbose,
        cache_ram_mib=a.cache_ram,
        cache_disk=a.cache_disk,
        cache_disk_mib=a.cache_disk_size,
        cache_key=a.cache_key,
        draft_max=max(0, min(a.draft_max, 64)),
        draft_min=max(1, a.draft_min),
        model_draft=a.model_draft,
    )
