"""The runner's command line: llama-server's flags, so either program can be launched the same way.

Defaults are llama-server's too (no context shift, /metrics off, /slots on, the
model's own pooling); loam's scheduler asks for what it needs explicitly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

KV_CACHE_TYPES = ("f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
POOLING_TYPES = ("none", "mean", "cls", "last")
LOAD_MODES = ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")
#: llama-server's flags for downloading a model, which the runner refuses with one clear line.
HUB_FLAGS = ("-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-mu", "--model-url", "-hfd", "-hfrd", "--hf-repo-draft")
#: llama-server's switches that change nothing here: no web UI, no chat templates, always continuous batching.
NO_OP_SWITCHES = (
    "--jinja", "--no-jinja", "--offline", "--cont-batching", "-cb", "--no-cont-batching", "-nocb",
    "--no-ui", "--no-webui", "--backend-sampling", "--no-warmup", "--swa-full",
)  # fmt: skip


@dataclass
class RunnerOptions:
    """How to load the model and serve it."""

    model: Path
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 4096
    batch_size: int = 512
    ubatch_size: int = 512
    n_gpu_layers: int = 0
    parallel: int = 1
    threads: int = 0
    flash_attn: str = "auto"
    kv_cache_type: str = "f16"
    kv_cache_type_v: str = ""  # empty: the K cache's type
    kv_unified: bool = False  # one KV pool all slots draw from, each slot may use the whole context
    lora: list[Path] = field(default_factory=list)
    main_gpu: int = 0
    tensor_split: list[float] = field(default_factory=list)
    load_mode: str = "auto"  # auto (see app.runner.model.resolve_load_mode), none, mmap or dio
    mlock: bool = False
    embedding: bool = False
    pooling: str = ""  # empty: the model's own (llama.cpp's default, none for most chat models)
    verbose: bool = False
    # Request defaults, as llama-server's --temp, --seed and --n-predict set them:
    temperature: float = 0.8
    seed: int = -1
    n_predict: int = -1
    # What happens at the context's end: llama-server stops (or refuses a prompt that does not fit);
    # --context-shift drops old tokens instead, and loam's --truncate-prompts cuts long prompts to fit.
    ctx_shift: bool = False
    truncate_prompts: bool = False
    metrics: bool = False
    slots: bool = True
    aliases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    cache_ram_mib: int = 512
    cache_disk: Path | None = None  # a folder for states that leave RAM; None: they are dropped
    cache_disk_mib: int = 4096
    draft_max: int = 16  # prompt-lookup drafting: the most tokens a draft proposes (0: off)
    draft_min: int = 1
    model_draft: Path | None = None  # a draft model of the same vocabulary, guessing where prompt lookup can't
    cache_key: str = ""  # the model's digest, naming its states on disk; else the file's path, size and mtime

    @property
    def model_name(self) -> str:
        """What /models and OpenAI-style answers call the model: the first alias in order, else the file name."""
        return sorted(self.aliases)[0] if self.aliases else self.model.name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app.runner", description="Serve one GGUF model over HTTP.", allow_abbrev=False
    )
    a = p.add_argument
    a("-m", "--model", type=Path, required=True)
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=8080)
    a("-c", "--ctx-size", type=int, default=4096, help="context tokens shared by all slots")
    a("-b", "--batch-size", type=int, default=512)
    a("-ub", "--ubatch-size", type=int, default=512)
    a("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=0)
    a("-np", "--parallel", type=int, default=1, help="slots: requests decoded together")
    a("-t", "--threads", type=int, default=0, help="0: one per CPU")
    a("-fa", "--flash-attn", nargs="?", const="on", default="auto", choices=("on", "off", "auto"))
    a("--kv-cache-type", "-ctk", "--cache-type-k", default="f16", choices=KV_CACHE_TYPES)
    a("-ctv", "--cache-type-v", default="", choices=KV_CACHE_TYPES, help="default: the K cache's")
    a("-kvu", "--kv-unified", action="store_true", help="one KV pool for all slots")
    a("--lora", type=Path, action="append", default=[])
    a("-mg", "--main-gpu", type=int, default=0)
    a("-ts", "--tensor-split", default="", help="fractions per GPU, e.g. 3,1")
    a("-lm", "--load-mode", choices=LOAD_MODES, help="llama-server's; auto: read into huge pages where that pays")
    a("--mlock", action="store_true", help="keep the model in RAM")
    a("--mmap", dest="mmap", action="store_true", default=None, help="same as --load-mode mmap")
    a("--no-mmap", dest="mmap", action="store_false", help="same as --load-mode none")
    a("--embedding", "--embeddings", action="store_true")
    a("--pooling", choices=POOLING_TYPES, default="", help="embedding pooling; default: the model's")
    a("-v", "--verbose", action="store_true")
    a("--temp", type=float, default=0.8, help="default temperature of a request")
    a("-s", "--seed", type=int, default=-1, help="default sampling seed of a request; -1: random")
    a("-n", "--n-predict", "--predict", type=int, default=-1, help="default token limit of a request; -1: none")
    a("--context-shift", dest="ctx_shift", action="store_true", help="drop old tokens when the context is full")
    a("--no-context-shift", dest="ctx_shift", action="store_false")
    a("--truncate-prompts", action="store_true", help="cut a prompt too long for a slot, instead of refusing it")
    a("--metrics", action="store_true", help="serve /metrics")
    a("--slots", dest="slots", action="store_true", default=True, help="serve /slots (the default)")
    a("--no-slots", dest="slots", action="store_false")
    a("-a", "--alias", default="", help="comma-separated names of the model")
    a("--tags", default="", help="comma-separated tags of the model, shown by /models")
    a("--api-key", default="", help="comma-separated keys a request must carry (except /health)")
    a("--cache-ram", type=int, default=512, help="MiB of RAM for saved conversation states")
    a("--draft-max", "--draft", "--draft-n", type=int, default=16, help="most drafted tokens; 0: off")
    a("--draft-min", "--draft-n-min", type=int, default=1, help="no draft shorter than this")
    a("-md", "--model-draft", type=Path, help="a draft model for speculative decoding")
    a("--cache-disk", type=Path, help="folder keeping conversation states that leave RAM")
    a("--cache-disk-size", type=int, default=4096, help="MiB the --cache-disk folder may hold in all")
    a("--cache-key", default="", help="the model's digest, which names its states on disk")
    for flag in NO_OP_SWITCHES:
        a(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in HUB_FLAGS:
        a(flag, dest="hub", help=argparse.SUPPRESS)
    a("--reranking", "--rerank", action="store_true", help=argparse.SUPPRESS)
    return p


def _normalize(argv: Sequence[str]) -> list[str]:
    """llama-server reads `--flag_name` as `--flag-name`; so does the runner."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def _load_mode(load_mode: str | None, mmap: bool | None, mlock: bool) -> tuple[str, bool]:
    """llama-server's --load-mode, or the older --mmap/--no-mmap, as (how the file is read, whether it is locked)."""
    mode = load_mode or {None: "auto", True: "mmap", False: "none"}[mmap]
    if mode.endswith("mlock"):
        return {"mlock": "none", "mmap+mlock": "mmap"}[mode], True
    return mode, mlock


def _csv(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> RunnerOptions:
    """The options a command line asks for; exits with a usage error naming a bad or unsupported flag."""
    import sys

    p = _parser()
    a = p.parse_args(_normalize(sys.argv[1:] if argv is None else argv))
    if a.hub:
        p.error("the runner loads a local GGUF file (-m PATH); download models with `loam pull`")
    if a.reranking:
        p.error("--reranking is not supported by the runner; it serves completions and embeddings")
    if a.parallel < 1 or a.ctx_size < (16 if a.kv_unified else a.parallel * 16):
        p.error("--parallel must be at least 1 and --ctx-size at least 16 tokens per slot")
    mode, mlock = _load_mode(a.load_mode, a.mmap, a.mlock)
    return RunnerOptions(
        model=a.model,
        host=a.host,
        port=a.port,
        ctx_size=a.ctx_size,
        batch_size=a.batch_size,
        ubatch_size=max(1, min(a.ubatch_size, a.batch_size)),
        n_gpu_layers=a.n_gpu_layers,
        parallel=a.parallel,
        threads=a.threads,
        flash_attn=a.flash_attn,
        kv_cache_type=a.kv_cache_type,
        kv_cache_type_v=a.cache_type_v,
        kv_unified=a.kv_unified,
        lora=a.lora,
        main_gpu=a.main_gpu,
        tensor_split=[float(x) for x in _csv(a.tensor_split)],
        load_mode=mode,
        mlock=mlock,
        embedding=a.embedding,
        pooling=a.pooling,
        verbose=a.verbose,
        temperature=a.temp,
        seed=a.seed,
        n_predict=a.n_predict,
        ctx_shift=a.ctx_shift,
        truncate_prompts=a.truncate_prompts,
        metrics=a.metrics,
        slots=a.slots,
        aliases=_csv(a.alias),
        tags=_csv(a.tags),
        api_keys=_csv(a.api_key),
        cache_ram_mib=a.cache_ram,
        cache_disk=a.cache_disk,
        cache_disk_mib=a.cache_disk_size,
        cache_key=a.cache_key,
        draft_max=max(0, min(a.draft_max, 64)),
        draft_min=max(1, a.draft_min),
        model_draft=a.model_draft,
    )
