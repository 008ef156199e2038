"""A long conversation's next turn after `loam serve` restarts: with the disk cache of states, and without.

    python -m benchmarks.disk_cache --models PATH [--model smollm2:135m] [--words 700]

One server answers a first turn of about 2,000 tokens and is stopped (its
runner writes the conversation's state to the cache folder); a new server
answers the next turn. The same is done with LOAM_CACHE_DISK=0. Prints, for
both, the second turn's prompt tokens evaluated and its time to the answer
(total duration, which includes loading the model), and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import httpx

from tests.server_process import ServerProcess


def turn(server: ServerProcess, model: str, messages: list[dict[str, str]]) -> dict:
    body = {"model": model, "messages": messages, "stream": False, "options": {"temperature": 0, "num_predict": 12}}
    return httpx.post(server.url + "/api/chat", json=body, timeout=None).json()


def conversation(models: Path, model: str, words: int, cache: str) -> tuple[dict, dict]:
    """The first turn and, after a restart, the second: their final chunks."""
    listing = " ".join(f"item{i}" for i in range(words))
    history = [{"role": "user", "content": f"Here is my list: {listing}. Remember it."}]
    with tempfile.TemporaryDirectory() as home:
        with ServerProcess(models, Path(home), LOAM_CACHE_DISK=cache) as server:
            first = turn(server, model, history)
        history += [first["message"], {"role": "user", "content": "What was the first item?"}]
        with ServerProcess(models, Path(home), LOAM_CACHE_DISK=cache) as server:
            second = turn(server, model, history)
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="a model store (LOAM_MODELS)")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--words", type=int, default=700)
    args = parser.parse_args()
    results = {label: conversation(args.models, args.model, args.words, cache) for label, cache in
               (("disk cache", "4GB"), ("no disk cache", "0"))}  # fmt: skip
    for label, (first, second) in results.items():
        print(
            f"{label:<14} first turn {first['prompt_eval_count']} prompt tokens; after the restart "
            f"{second['prompt_eval_count']} evaluated, answer in {second['total_duration'] / 1e9:.2f} s"
        )
    cached, uncached = results["disk cache"][1], results["no disk cache"][1]
    print(f"time to the second answer: {cached['total_duration'] / uncached['total_duration']:.2f}x without the cache")


if __name__ == "__main__":
    main()
