"""Scoring speed of `loam eval --perplexity` against llama.cpp's llama-perplexity, side by side on one file and ctx.

    python -m benchmarks.eval --model smollm2:135m --bin-dir DIR [--text FILE] [--ctx 512] [--threads N] [--runs 2]

DIR holds llama-perplexity (built from the llama.cpp tree vendored in
llama-cpp-python's sdist, see docs/benchmarks.md). Without --text a plain
English text is written (tests/test_eval.py's generator). Runs alternate
between the two tools; each is timed over its scoring only, model loading and
tokenization left out:

  loam             tokens in the windows / time from the first /score request to the last answer
  llama-perplexity the same tokens / time from its "calculating perplexity over" line to "Final estimate"

Prints each side's median tok/s, PPL, and the ratio loam / llama-perplexity.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def model_path(name: str) -> Path:
    from app.measure.scoring import resolve

    return resolve(name).path


def run_llama(bin_dir: Path, model: Path, text: Path, ctx: int, threads: int, chunks: int) -> dict[str, float]:
    """One llama-perplexity run, its scoring timed from its own log lines as they arrive."""
    argv = [str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", str(ctx), "-b", "2048"]
    argv += ["-t", str(threads)] + (["--chunks", str(chunks)] if chunks else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marks: dict[str, float] = {}
    lines: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    reader = threading.Thread(target=read_stdout)
    reader.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "calculating perplexity over" in line:
            marks["start"] = time.perf_counter()
        elif "Final estimate" in line:
            marks["end"] = time.perf_counter()
    proc.wait()
    reader.join()
    log = "".join(lines)
    if proc.returncode or "end" not in marks:
        raise SystemExit(f"llama-perplexity failed:\n{log[-3000:]}")
    n_chunks = int(re.search(r"calculating perplexity over (\d+) chunks", log).group(1))  # type: ignore[union-attr]
    ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1))  # type: ignore[union-attr]
    tokens = n_chunks * ctx
    return {
        "tok_s": tokens / (marks["end"] - marks["start"]),
        "ppl": ppl,
        "tokens": tokens,
    }


def run_loam(model: str, text: Path, ctx: int, threads: int, chunks: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "app", "eval", model, "--perplexity", str(text), "--ctx", str(ctx)]
    argv += ["--threads", str(threads), "--json", "--no-save"] + (["--chunks", str(chunks)] if chunks else [])
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"loam eval failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout)["models"][0]["figures"]
    return {"tok_s": figures["tokens_per_second"], "ppl": figures["ppl"], "tokens": figures["tokens_evaluated"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2:135m", help="store name or .gguf path")
    parser.add_argument("--bin-dir", type=Path, default=os.environ.get("LLAMA_CPP_BIN_DIR"), help="llama-perplexity")
    parser.add_argument("--text", type=Path, help="text file (default: 12000 generated English words)")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if not args.bin_dir or not (args.bin_dir / "llama-perplexity").exists():
        parser.error("--bin-dir (or LLAMA_CPP_BIN_DIR) must hold llama-perplexity")
    with tempfile.TemporaryDirectory() as tmp:
        text = args.text
        if text is None:
            from tests.test_eval import english_text

            text = Path(tmp) / "text.txt"
            text.write_text(english_text(12000))
        model = model_path(args.model)
        ours, theirs = [], []
        for i in range(args.runs):
            theirs.append(run_llama(args.bin_dir, model, text, args.ctx, args.threads, args.chunks))
            ours.append(run_loam(args.model, text, args.ctx, args.threads, args.chunks))
            print(
                f"run {i + 1}: loam {ours[-1]['tok_s']:.0f} tok/s (PPL {ours[-1]['ppl']:.4f}), "
                f"llama-perplexity {theirs[-1]['tok_s']:.0f} tok/s (PPL {theirs[-1]['ppl']:.4f})",
                file=sys.stderr,
            )
    loam_rate = statistics.median(r["tok_s"] for r in ours)
    llama_rate = statistics.median(r["tok_s"] for r in theirs)
    print(f"model {args.model}, ctx {args.ctx}, {int(ours[0]['tokens'])} tokens, {args.threads} threads")
    print(f"loam eval          {loam_rate:8.0f} tok/s   PPL {ours[0]['ppl']:.4f}")
    print(f"llama-perplexity   {llama_rate:8.0f} tok/s   PPL {theirs[0]['ppl']:.4f}")
    print(f"ratio loam / llama-perplexity: {loam_rate / llama_rate:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
