"""Speculative decoding against plain decoding, in the same run.

    python -m benchmarks.speculative --model PATH [--threads 2] [--runs 5] [--tokens 256]
    python -m benchmarks.speculative --model F16.gguf --draft Q4_1.gguf [--draft-max 8]

Two runners of the same model, one with drafting (`--draft-max 16`, the
default) and one without (`--draft-max 0`), answer the same greedy requests in
turn. Two prompts: a ~300-token text to rewrite with one word changed (the
reply copies its prompt, so drafts come true), and an unrelated one (a story:
little to copy, so drafting must cost next to nothing). Prints the median
generation tok/s of each, their ratio, what was drafted and accepted, and
whether the two texts are identical, as greedy decoding requires. With
`--draft PATH` the drafting runner guesses with that draft model instead of
prompt lookup (`--model-draft`), and a plain question is added.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import httpx

from tests.runner_process import RunnerProcess

TEXT = (
    "The history of bread begins in the Neolithic era, when people first ground grains into flour and "
    "mixed it with water. Over thousands of years, bakers in Egypt, Greece and Rome refined the craft: "
    "they learned to use wild yeasts, built ovens of clay and stone, and traded recipes along the roads "
    "of their empires. In medieval Europe, guilds controlled who could bake and sell bread, and the price "
    "of a loaf was fixed by law in many towns. The industrial revolution brought roller mills, which made "
    "white flour cheap, and later factories that baked sliced bread by the million. Today, small bakeries "
    "are returning to slow fermentation, and many people bake sourdough at home. Bread is still the food "
    "that most people in the world eat every day, in thousands of shapes: flat breads baked on hot stones, "
    "tall loaves with a hard crust, soft rolls, and sweet breads for holidays."
)
#: ChatML, SmolLM2's template: the runner takes raw prompts.
REWRITE = (
    "<|im_start|>user\nRewrite the following text word for word, changing only 'Neolithic' to 'Stone Age':\n\n"
    f"{TEXT}<|im_end|>\n<|im_start|>assistant\n"
)
QUESTION = (
    "<|im_start|>user\nWhat is the capital of France? Answer in two sentences.<|im_end|>\n<|im_start|>assistant\n"
)
UNRELATED = (
    "<|im_start|>user\nWrite a long story about a dragon who learns to play the violin.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def generate(url: str, prompt: str, n_tokens: int) -> dict:
    body = {"prompt": prompt, "n_predict": n_tokens, "temperature": 0, "cache_prompt": False}
    return httpx.post(url + "/completion", json=body, timeout=None).json()


def compare(plain: RunnerProcess, drafted: RunnerProcess, prompt: str, runs: int, n_tokens: int) -> dict:
    """Interleaved runs of both runners on one prompt: medians, ratio, draft counts, identity."""
    rates: dict[str, list[float]] = {"plain": [], "drafted": []}
    texts: dict[str, set[str]] = {"plain": set(), "drafted": set()}
    last: dict = {}
    for _ in range(runs):
        for label, runner in (("plain", plain), ("drafted", drafted)):
            answer = generate(runner.url, prompt, n_tokens)
            rates[label].append(answer["timings"]["predicted_per_second"])
            texts[label].add(answer["content"])
            last[label] = answer
    p, d = statistics.median(rates["plain"]), statistics.median(rates["drafted"])
    t = last["drafted"]["timings"]
    return {
        "plain": p,
        "drafted": d,
        "ratio": d / p,
        "draft_n": t["draft_n"],
        "accepted": t["draft_n_accepted"],
        "tokens": t["predicted_n"],
        "identical": len(texts["plain"] | texts["drafted"]) == 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--draft", type=Path, help="a draft model: guess with it instead of prompt lookup")
    parser.add_argument("--draft-max", type=int, default=16)
    args = parser.parse_args()
    flags = ("--ctx-size", "2048", "--threads", str(args.threads))
    drafting = ("--draft-max", str(args.draft_max)) + (("--model-draft", str(args.draft)) if args.draft else ())
    prompts = [("rewrite", REWRITE), ("unrelated", UNRELATED)] + ([("question", QUESTION)] if args.draft else [])
    with RunnerProcess(args.model, *flags, "--draft-max", "0") as plain:
        with RunnerProcess(args.model, *flags, *drafting) as drafted:
            for label, prompt in prompts:
                r = compare(plain, drafted, prompt, args.runs, args.tokens)
                print(
                    f"{label:<10} plain {r['plain']:6.1f} tok/s   drafted {r['drafted']:6.1f} tok/s   "
                    f"ratio {r['ratio']:.2f}x   drafted {r['draft_n']}, accepted {r['accepted']} "
                    f"of {r['tokens']} tokens   identical text: {r['identical']}"
                )


if __name__ == "__main__":
    main()
