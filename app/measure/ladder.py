"""`loam ladder`: quantize one model to several types and compare them on this machine.

From an unquantized SOURCE (F32, F16 or BF16; a store name or a .gguf path)
it makes each type with `create --quantize` (reusing a stored rung of the
same type), then measures every rung the same way: size, bits per weight,
memory needed at the chosen context, prompt and generation speed at 1 and 4
streams (through loam's server, as `loam bench` does), perplexity, KL
divergence and same-top-token rate against SOURCE (as `loam eval` does), and
multiple-choice accuracy when given tasks. It prints one table, a chart of
quality loss and speed against size, and a recommendation by a stated rule.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import config
from app.errors import LoamError
from app.store.names import ModelName
from app.store.quantize import UNQUANTIZED, quant_type
from app.store.store import Store

#: Tag endings that name an unquantized source; a rung's tag replaces them with its type.
_SOURCE_SUFFIXES = ("-f32", "-f16", "-bf16", "f32", "f16", "bf16", "latest")


@dataclass
class Rung:
    """One model on the ladder and what was measured of it."""

    name: str
    qtype: str
    digest: str
    path: Path
    size: int
    bpw: float
    memory: int = 0
    figures: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.qtype, "size": self.size, "bpw": self.bpw, "memory": self.memory}


def rung_name(source: ModelName, qtype: str) -> str:
    """`smollm2:135m-f16` → `smollm2:135m-q4_k_m`; `smollm2-f16` → `smollm2-f16:q4_k_m`."""
    tag = source.tag.lower()
    for suffix in _SOURCE_SUFFIXES:
        if tag.endswith(suffix):
            tag = tag[: -len(suffix)]
            break
    tag = f"{tag.rstrip('-_.')}-{qtype.lower()}" if tag.rstrip("-_.") else qtype.lower()
    return ModelName(source.host, source.namespace, source.model, tag).display


def parse_types(text: str) -> list[str]:
    """`q8_0,q4_K_M` → canonical type names, in order, without repeats; QuantizeError names a bad one."""
    types = [quant_type(t) for t in text.split(",") if t.strip()]
    if not types:
        raise LoamError("--types is empty; give types like q8_0,q4_K_M,q4_0")
    return list(dict.fromkeys(types))


def _status(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def source_model(store: Store, text: str, progress: Any) -> ModelName:
    """The store name of SOURCE, creating `<file stem>:<type>` from a .gguf path first."""
    from app.store.catalog import Catalog
    from app.store.create import create
    from app.store.gguf_info import inspect
    from app.store.modelfile import parse

    path = Path(text).expanduser()
    if text.endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise LoamError(f"{text}: no such file; give a .gguf path or a model name from `loam list`")
        info = inspect(path)
        stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.stem.lower()).strip("-.") or "model"
        name = ModelName.parse(f"{stem[:60]}:{(info.file_type or 'source').lower()}")
        if not store.manifests.exists(name):
            _status(f"importing {path} as {name.display}")
            catalog = Catalog.load(config.paths().user_catalog)
            create(store, catalog, name, parse(f"FROM {path.resolve()}\n"), folder=path.parent, progress=progress)
        return name
    name = ModelName.parse(text)
    if not store.manifests.exists(name):
        raise LoamError(f"model {text!r} not found; pull or create it first (see `loam list`)")
    return name


def make_rungs(store: Store, source: ModelName, types: list[str], progress: Any) -> list[Rung]:
    """The source and one rung per type, quantizing only what is not stored yet."""
    from app.store.catalog import Catalog
    from app.store.create import create
    from app.store.modelfile import parse

    details = store.show(source)
    ftype = (details.info.file_type or "").upper()
    if ftype not in UNQUANTIZED:
        raise LoamError(
            f"{source.display} is {ftype or 'of unknown type'}; the ladder starts from F32, F16 or BF16 "
            f"(make one with: loam create NAME --quantize f16 --allow-requantize)"
        )
    rungs = [_rung(store, source)]
    for qtype in types:
        if qtype == ftype:
            continue
        name = ModelName.parse(rung_name(source, qtype))
        if store.manifests.exists(name) and (store.show(name).info.file_type or "").upper() == qtype:
            _status(f"reusing {name.display} ({qtype})")
        else:
            _status(f"quantizing {source.display} to {qtype} as {name.display}")
            catalog = Catalog.load(config.paths().user_catalog)
            modelfile = parse(f"FROM {source.display}\n")
            create(store, catalog, name, modelfile, folder=Path.cwd(), quantize_to=qtype, progress=progress)
        rungs.append(_rung(store, name))
    return rungs


def _rung(store: Store, name: ModelName) -> Rung:
    details = store.show(name)
    path = store.model_path(name)
    size = path.stat().st_size
    params = details.info.parameter_count or 1
    return Rung(
        name=name.display,
        qtype=(details.info.file_type or "?").upper(),
        digest=details.stored.digest,
        path=path,
        size=size,
        bpw=size * 8 / params,
    )


def memory_needed(path: Path, ctx: int) -> int:
    """Bytes to run the model with one slot of `ctx` tokens (weights, KV cache, compute), as the scheduler plans."""
    from app.hardware.estimate import estimate

    est = estimate(path, ctx, 1)
    return est.weights + est.kv_bytes + est.compute_bytes


def recommend(rungs: list[Rung], threshold: float) -> tuple[Rung | None, str]:
    """The smallest rung whose mean KLD vs the source is under `threshold`, and the rule in words."""
    rule = f"the smallest type whose mean KL divergence from the source is below {threshold:g}"
    measured = [r for r in rungs[1:] if isinstance(r.figures.get("kld_mean"), (int, float))]
    if not measured:
        return None, rule + " (needs --text: nothing measured KLD)"
    good = [r for r in measured if r.figures["kld_mean"] < threshold]
    if good:
        return min(good, key=lambda r: r.size), rule
    best = min(measured, key=lambda r: r.figures["kld_mean"])
    return best, rule + f"; none is, so the closest to the source ({best.qtype}, KLD {best.figures['kld_mean']:.4f})"


def _command_line() -> str:
    return "loam " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run(args: argparse.Namespace) -> int:
    from app.display import ProgressDisplay
    from app.measure.results import machine_label

    started = time.perf_counter()
    types = parse_types(args.types)
    for flag in ("text", "choices"):
        value = getattr(args, flag)
        if value and not Path(value).is_file():
            raise LoamError(f"--{flag} {value}: no such file")
    if args.report and not Path(args.report).resolve().parent.is_dir():  # known before minutes of measuring
        raise LoamError(f"--report {args.report}: its folder does not exist; create it or give another path")
    store = Store.default()
    display = ProgressDisplay()
    try:
        source = source_model(store, args.source, display)
        rungs = make_rungs(store, source, types, display)
    finally:
        display.close()
    for r in rungs:
        r.memory = memory_needed(r.path, args.ctx)
    measure_all(rungs, args)
    chosen, rule = recommend(rungs, args.kld_threshold)
    result = {
        "source": rungs[0].name,
        "command": _command_line(),
        "rule": rule,
        "recommended": chosen.name if chosen else None,
        "rungs": [{**r.row(), **r.figures} for r in rungs],
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_label(),
    }
    from app.measure import ladder_report

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(ladder_report.table(result))
        print(f"\nrecommended: {result['recommended'] or 'none'} — {rule}")
    if sys.stderr.isatty():
        print(ladder_report.chart(result), file=sys.stderr)
    if args.report:
        try:
            Path(args.report).write_text(ladder_report.markdown(result), encoding="utf-8")
        except OSError as e:
            raise LoamError(f"cannot write --report {args.report}: {e.strerror or e}") from None
        _status(f"wrote {args.report}")
    return 0


def measure_all(rungs: list[Rung], args: argparse.Namespace) -> None:
    """Speed through the server, then quality against the source; each rung's figures filled in.

    The work is `loam bench` and `loam eval` themselves, run in-process with
    their JSON output read back, so the ladder's figures are exactly theirs
    and are remembered the same way.
    """
    names = [r.name for r in rungs]
    by_name = {r.name: r for r in rungs}
    for model in _bench(names, args)["models"]:
        levels = {lv["concurrency"]: lv for lv in model["levels"]}
        rung = by_name[model["model"]]
        one, four = levels.get(1, {}), levels.get(4, {})
        rung.figures |= {
            "prompt_tps_1": one.get("prompt_tps"),
            "gen_tps_1": one.get("stream_tps"),
            "ttft_p50_ms_1": one.get("ttft_p50_ms"),
            "agg_tps_1": one.get("aggregate_tps"),
            "agg_tps_4": four.get("aggregate_tps"),
            "slots": model.get("slots"),
        }
    if args.text:
        for model in _eval(names[1:], args, perplexity=args.text, kld=names[0])["models"]:
            keep = ("ppl", "ppl_err", "ppl_ratio", "kld_mean", "kld_err", "kld_median", "kld_p99", "kld_max")
            keep += ("same_top",)
            by_name[model["name"]].figures |= {k: v for k, v in model["figures"].items() if k in keep}
    if args.choices:
        for model in _eval(names, args, choices=args.choices)["models"]:
            figures = model["figures"]
            by_name[model["name"]].figures |= {k: figures.get(k) for k in ("accuracy", "accuracy_err", "chance")}


def _bench(names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from app.measure import bench

    ns = argparse.Namespace(
        models=names, concurrency="1,4", prompt_tokens=args.prompt_tokens, gen=args.gen, requests=0,
        time_limit=300.0, target=None, api=None, warmup=1, json=True, csv=False, no_chart=True, no_save=False,
    )  # fmt: skip
    out = io.StringIO()
    code = bench.run(ns, out=out)
    if code != 0:
        raise KeyboardInterrupt if code == 130 else LoamError(f"the bench of the ladder failed (exit {code})")
    return json.loads(out.getvalue())


def _eval(names: list[str], args: argparse.Namespace, **what: str) -> dict[str, Any]:
    from app.measure import evaluate

    ns = argparse.Namespace(
        models=names, perplexity=what.get("perplexity"), ctx=args.ctx, chunks=args.chunks, kld=what.get("kld"),
        choices=what.get("choices"), tasks=args.tasks, threads=0, num_gpu=-1, json=True, no_save=False,
    )  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.run(ns)
    if code != 0:
        raise KeyboardInterrupt if code == 130 else LoamError(f"the eval of the ladder failed (exit {code})")
    return json.loads(out.getvalue())
