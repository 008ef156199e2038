"""Prompt-lookup drafting: guesses from the text so far, verified in one batch, never changing a greedy answer.

The speed is measured by benchmarks/speculative.py; these tests hold the output
to what plain decoding gives, on the real SmolLM2.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.runner.lookup import PAUSE_AFTER_MISS, PromptLookup
from benchmarks.speculative import REWRITE, UNRELATED
from tests.conftest import SMOLLM2_SHA256
from tests.runner_process import RunnerProcess

# -- the drafter, alone -------------------------------------------------------------


def test_a_draft_is_what_followed_the_same_ngram_before() -> None:
    lookup = PromptLookup(n_max=16, history=[1, 2, 3, 4, 5, 6, 7, 8, 9])
    lookup.size = 4
    lookup.extend([20, 1, 2, 3])  # the reply starts repeating the prompt
    assert lookup.draft(room=16) == [4, 5, 6, 7]
    assert lookup.draft(room=2) == [4, 5]  # never past the room it is given


def test_the_ngram_that_ends_the_text_is_not_its_own_match() -> None:
    lookup = PromptLookup(n_max=16, history=[7, 8, 9])
    assert lookup.draft(room=8) == []  # 7 8 9 occurs once: there is nothing earlier to copy
    lookup.extend([1, 7, 8, 9])
    lookup.size = 8
    assert lookup.draft(room=8) == [1, 7, 8, 9]


def test_the_longest_matching_ngram_wins() -> None:
    # "5 1 2 3" was followed by 40, plain "1 2 3" most recently by 50.
    lookup = PromptLookup(n_max=16, history=[5, 1, 2, 3, 40, 9, 1, 2, 3, 50, 5, 1, 2, 3])
    lookup.size = 1
    assert lookup.draft(room=4) == [40]


def test_draft_length_follows_how_drafts_fared() -> None:
    lookup = PromptLookup(n_max=16, history=list(range(100)) * 2)
    assert lookup.size == 2
    lookup.verified(2, 2)
    lookup.verified(4, 4)
    assert lookup.size == 8
    lookup.verified(8, 3)
    assert lookup.size == 4
    lookup.verified(4, 0)  # refused outright: small again, and a pause
    assert lookup.size == 2 and lookup.pause == PAUSE_AFTER_MISS
    assert [lookup.draft(room=8) for _ in range(PAUSE_AFTER_MISS)] == [[]] * PAUSE_AFTER_MISS
    assert lookup.draft(room=8) != []
    assert (lookup.drafted, lookup.accepted) == (18, 9)


def test_no_draft_when_drafting_is_off_or_too_short() -> None:
    assert PromptLookup(n_max=0, history=[1, 2, 3, 1, 2, 3]).draft(room=8) == []
    lookup = PromptLookup(n_max=16, n_min=3, history=[1, 2, 3, 4, 1, 2, 3])
    assert lookup.draft(room=8) == []  # only one token (4) would follow: under n_min


# -- the runner, on SmolLM2 -----------------------------------------------------------


@pytest.fixture(scope="module")
def runners(smollm2_store: Path) -> Iterator[tuple[RunnerProcess, RunnerProcess]]:
    """Two runners of SmolLM2, with prompt-lookup drafting (the default) and without; two slots each."""
    model = smollm2_store / "blobs" / f"sha256-{SMOLLM2_SHA256}"
    flags = ("--ctx-size", "4096", "--parallel", "2", "--threads", "2", "--metrics")
    with RunnerProcess(model, *flags, "--draft-max", "0") as plain, RunnerProcess(model, *flags) as drafted:
        yield plain, drafted


def complete(runner: RunnerProcess, **body: object) -> dict:
    return runner.complete(cache_prompt=False, **body)


def test_greedy_text_is_identical_and_drafts_are_counted(runners: tuple[RunnerProcess, RunnerProcess]) -> None:
    plain, drafted = runners
    a = complete(plain, prompt=REWRITE, n_predict=160, temperature=0)
    b = complete(drafted, prompt=REWRITE, n_predict=160, temperature=0)
    assert b["content"] == a["content"] and b["tokens_predicted"] == a["tokens_predicted"]
    assert "medieval Europe, guilds" in b["content"]  # it copies its prompt
    t = b["timings"]
    assert t["draft_n"] > 50 and t["draft_n_accepted"] > t["draft_n"] * 0.7  # the reply copies its prompt
    assert a["timings"].get("draft_n", 0) == 0  # reported only when there were drafts, as llama-server
    metrics = httpx.get(drafted.url + "/metrics").text
    assert "loam:draft_tokens_total" in metrics and "loam:draft_accepted_total" in metrics


def test_the_token_limit_and_stop_words_cut_a_draft_where_plain_decoding_stops(
    runners: tuple[RunnerProcess, RunnerProcess],
) -> None:
    plain, drafted = runners
    for body in ({"n_predict": 37}, {"n_predict": 200, "stop": ["Rome"]}, {"n_predict": 90, "n_probs": 2}):
        a = complete(plain, prompt=REWRITE, temperature=0, **body)
        b = complete(drafted, prompt=REWRITE, temperature=0, **body)
        assert (b["content"], b["stop_type"], b["tokens"]) == (a["content"], a["stop_type"], a["tokens"]), body
        if "n_probs" in body:  # each token's figures come from its own position in the batch
            pa, pb = a["completion_probabilities"], b["completion_probabilities"]
            assert [p["token"] for p in pb] == [p["token"] for p in pa]
            assert max(abs(p["logprob"] - q["logprob"]) for p, q in zip(pa, pb, strict=True)) < 0.05
    assert b["timings"]["draft_n_accepted"] > 0


def test_a_streamed_reply_with_drafts_sends_every_token_once(runners: tuple[RunnerProcess, RunnerProcess]) -> None:
    plain, drafted = runners
    whole = complete(plain, prompt=REWRITE, n_predict=120, temperature=0)
    chunks = []
    body = {"prompt": REWRITE, "n_predict": 120, "temperature": 0, "stream": True, "cache_prompt": False}
    with httpx.stream("POST", drafted.url + "/completion", json=body, timeout=None) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    streamed = [c for c in chunks if not c["stop"]]
    assert "".join(c["content"] for c in streamed) + chunks[-1]["content"] == whole["content"]
    assert [t for c in streamed for t in c["tokens"]] == whole["tokens"][: len(streamed)]
    assert chunks[-1]["timings"]["draft_n_accepted"] > 0


def test_two_slots_drafting_at_once_answer_as_plain_decoding_does(
    runners: tuple[RunnerProcess, RunnerProcess],
) -> None:
    plain, drafted = runners
    prompts = [REWRITE, REWRITE.replace("Stone Age", "Bronze Age")]
    expected = [complete(plain, prompt=p, n_predict=80, temperature=0)["content"] for p in prompts]
    got: list[str] = ["", ""]

    def one(i: int) -> None:
        got[i] = complete(drafted, prompt=prompts[i], n_predict=80, temperature=0)["content"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_sampling_through_drafts_uses_the_whole_sampler_chain(runners: tuple[RunnerProcess, RunnerProcess]) -> None:
    """A sampled reply is drawn token by token from the model's own distribution, drafts or not.

    With top_k 1 that distribution has one token: the sampled chain (temperature,
    penalties, seed) must then give the greedy text, which proves each drafted
    position was sampled rather than taken.
    """
    plain, drafted = runners
    greedy = complete(plain, prompt=REWRITE, n_predict=100, temperature=0)
    sampled = complete(drafted, prompt=REWRITE, n_predict=100, temperature=0.9, top_k=1, seed=7)
    assert sampled["content"] == greedy["content"]
    assert sampled["timings"]["draft_n_accepted"] > 0


def test_a_request_can_turn_drafting_off(runners: tuple[RunnerProcess, RunnerProcess]) -> None:
    _, drafted = runners
    answer = complete(drafted, prompt=REWRITE, n_predict=60, temperature=0, **{"speculative.n_max": 0})
    assert answer["timings"].get("draft_n", 0) == 0
    refused = httpx.post(drafted.url + "/completion", json={"prompt": "x", "speculative.n_max": 1000})
    assert refused.status_code == 400 and "speculative.n_max" in refused.json()["error"]["message"]


def test_an_unrelated_prompt_drafts_little_and_answers_the_same(runners: tuple[RunnerProcess, RunnerProcess]) -> None:
    plain, drafted = runners
    a = complete(plain, prompt=UNRELATED, n_predict=120, temperature=0)
    b = complete(drafted, prompt=UNRELATED, n_predict=120, temperature=0)
    assert b["content"] == a["content"]


# -- through loam serve -------------------------------------------------------------------


def test_draft_counts_reach_the_api_and_ask_verbose(smollm2_store: Path, tmp_path: Path) -> None:
    from benchmarks.speculative import TEXT
    from tests.conftest import run_loam
    from tests.server_process import ServerProcess, clone_store

    models = clone_store(smollm2_store, tmp_path / "models")
    with ServerProcess(models, tmp_path / "home") as server:
        body = {"model": "smollm2:135m", "prompt": REWRITE, "raw": True, "stream": False}
        body["options"] = {"temperature": 0, "num_predict": 80}
        final = httpx.post(server.url + "/api/generate", json=body, timeout=None).json()
        assert final["draft_count"] > 0 and 0 < final["draft_accepted_count"] <= final["draft_count"]
        env = {**server.env}
        asked = run_loam(
            "ask", "-m", "smollm2:135m", "--verbose", "-o", "temperature=0", "-o", "num_predict=80",
            "Repeat this text word for word:", env=env, input=TEXT,
        )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    assert "medieval" in asked.stdout and "drafted" not in asked.stdout  # figures stay off stdout
    (line,) = [ln for ln in asked.stderr.splitlines() if ln.startswith("speculative:")]
    drafted, accepted = map(int, re.fullmatch(r"speculative: +drafted (\d+), accepted (\d+)", line).groups())
    assert 0 < accepted <= drafted


def test_verbose_adds_the_draft_line_only_when_there_were_drafts() -> None:
    from app.stats import Stats, verbose_lines

    assert len(verbose_lines(Stats(eval_count=3, eval_duration=10**9))) == 8
    lines = verbose_lines(Stats(eval_count=3, eval_duration=10**9, draft_count=12, draft_accepted_count=9))
    assert lines[-1] == "speculative:          drafted 12, accepted 9"
    assert Stats.from_response({"draft_count": 5, "draft_accepted_count": 4}).draft_accepted_count == 4
