"""Prompts arriving together are read one after another, shortest first, not all side by side.

Sharing every batch among them makes all of them wait for the last; reading
one prompt before the next gets the first answer started after one prompt's
time, the second after two, and so on, which lowers the mean time to first
token (llama-server's own order does the same).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.conftest import SMOLLM2_SHA256
from tests.runner_process import RunnerProcess


def test_four_prompts_at_once_are_read_in_turn(smollm2_store: Path) -> None:
    model = smollm2_store / "blobs" / f"sha256-{SMOLLM2_SHA256}"
    # A batch of 64 tokens holds one of the short prompts at a time.
    flags = ("--ctx-size", "8192", "--parallel", "5", "--batch-size", "64", "--threads", "2")
    prompts = [" ".join(f"w{i}x{k}" for k in range(12)) for i in range(4)]
    long = " ".join(f"long{k}" for k in range(400))  # keeps the decode loop busy while the four arrive
    results: list[dict] = [{}] * 5

    def one(i: int) -> None:
        results[i] = runner.complete(prompt=prompts[i] if i < 4 else long, n_predict=1, cache_prompt=False)

    with RunnerProcess(model, *flags) as runner:
        first = threading.Thread(target=one, args=(4,))
        first.start()
        while not any(s.get("n_prompt_pending") for s in httpx.get(runner.url + "/slots").json()):
            assert first.is_alive(), "the long prompt ended before the four arrived"
            time.sleep(0.01)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in [*threads, first]:
            t.join()
    counts = [r["timings"]["prompt_n"] for r in results[:4]]
    assert all(40 <= n <= 64 for n in counts), counts
    waits = sorted(r["timings"]["queue_ms"] + r["timings"]["prompt_ms"] for r in results[:4])
    # In turn: the first is read after about one batch, the last after about four; side by side, all after four.
    assert waits[0] < 0.5 * waits[-1], waits
    assert results[4]["timings"]["prompt_ms"] > waits[-1]  # the longest remainder waits for the short ones
