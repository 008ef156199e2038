"""The runner's /score and /completion's n_probs, against a real runner process.

Scoring must give the same log-probabilities however the windows are packed
into decodes, agree with llama-cpp-python's own full-logits evaluation, and
leave the chat slots it borrowed exactly as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.store.blobs import BlobStore
from tests.conftest import SMOLLM2_SHA256
from tests.ggufmaker import write_tiny_llama
from tests.runner_process import RunnerProcess

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
QUESTION = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
TEXT = (
    "The river rises in the hills to the north and runs south through farmland for some forty miles before it "
    "reaches the town. In spring the water is high and brown with mud; by late summer it is low and clear, and "
    "children wade across the shallows below the old stone bridge. The mill that once stood beside the bridge "
    "burned down a century ago, but its wheel was saved and now hangs in the museum on the square, where a "
    "small brass plate tells visitors how much flour it ground in its best year. "
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("score") / "tiny.gguf", n_ctx=256)


@pytest.fixture(scope="module")
def packed(tiny_model: Path) -> Iterator[RunnerProcess]:
    """Four slots of 128 tokens: up to four windows per decode."""
    with RunnerProcess(tiny_model, "--ctx-size", "512", "--parallel", "4", "--threads", "2", "--metrics") as runner:
        yield runner


@pytest.fixture(scope="session")
def smollm2(smollm2_store: Path) -> Path:
    return BlobStore(smollm2_store).path("sha256:" + SMOLLM2_SHA256)


def score(runner: RunnerProcess, windows: list[dict], **extra: object) -> httpx.Response:
    return httpx.post(runner.url + "/score", json={"windows": windows, **extra}, timeout=None)


def logprobs(runner: RunnerProcess, windows: list[dict], **extra: object) -> list[np.ndarray]:
    response = score(runner, windows, **extra)
    assert response.status_code == 200, response.text
    return [np.array(w["logprobs"]) for w in response.json()["windows"]]


def distribution(runner: RunnerProcess, windows: list[dict]) -> np.ndarray:
    response = score(runner, windows, distribution=True)
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    rows, vocab = int(response.headers["x-score-rows"]), int(response.headers["x-score-vocab"])
    return np.frombuffer(response.content, "<f4").reshape(rows, vocab)


def random_windows(n: int, seed: int, n_vocab: int, max_len: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(n):
        length = int(rng.integers(8, max_len + 1))
        tokens = [1, *rng.integers(2, n_vocab, length - 1).tolist()]
        windows.append({"tokens": tokens, "from": int(rng.integers(1, length))})
    return windows


def tokens_of(runner: RunnerProcess, text: str, add_special: bool = True) -> list[int]:
    body = {"content": text, "add_special": add_special}
    return httpx.post(runner.url + "/tokenize", json=body).json()["tokens"]


def metric(runner: RunnerProcess, name: str) -> float:
    lines = httpx.get(runner.url + "/metrics").text.splitlines()
    return next(float(line.split()[1]) for line in lines if line.startswith(name + " "))


def n_vocab(runner: RunnerProcess) -> int:
    return int(score(runner, [{"tokens": [1, 2], "from": 1}]).json()["n_vocab"])


# -- the tiny model -------------------------------------------------------


def test_packing_does_not_change_the_numbers(tiny_model: Path) -> None:
    """Bit for bit with flash attention off: rows never land at the wrong window or position."""
    windows = random_windows(7, seed=1, n_vocab=331, max_len=128)
    common = ("--threads", "2", "--flash-attn", "off")
    with RunnerProcess(tiny_model, "--ctx-size", "512", "--parallel", "4", *common) as runner:
        together = logprobs(runner, windows)
        alone = [logprobs(runner, [w])[0] for w in windows]
        reversed_order = logprobs(runner, windows[::-1])[::-1]
    # one slot and a 48-token batch: every window is split over several decodes
    with RunnerProcess(tiny_model, "--ctx-size", "128", "--batch-size", "48", *common) as split:
        in_pieces = logprobs(split, windows)
    for w, a, *others in zip(windows, together, alone, reversed_order, in_pieces, strict=True):
        assert len(a) == len(w["tokens"]) - w["from"] and np.all(a < 0)
        for other in others:
            np.testing.assert_allclose(a, other, rtol=0, atol=1e-6)


def test_packing_with_flash_attention(packed: RunnerProcess) -> None:
    """With several slots flash attention is on; llama.cpp's CPU kernel tiles queries by batch shape,
    so the packing moves the numbers by float rounding only (about 2e-4 here, 3e-5 relative)."""
    windows = random_windows(7, seed=1, n_vocab=n_vocab(packed), max_len=128)
    together = logprobs(packed, windows)
    alone = [logprobs(packed, [w])[0] for w in windows]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=0)


def test_the_answer_reports_its_work(packed: RunnerProcess) -> None:
    windows = random_windows(3, seed=2, n_vocab=n_vocab(packed), max_len=64)
    before = metric(packed, "loam:scored_tokens_total")
    body = score(packed, windows).json()
    assert metric(packed, "loam:scored_tokens_total") == before + body["tokens_evaluated"]
    assert body["tokens_evaluated"] == sum(len(w["tokens"]) for w in windows)
    assert body["seconds"] > 0 and "top" not in body["windows"][0]


def test_distribution_rows_are_log_softmax_and_agree_with_the_json(packed: RunnerProcess) -> None:
    windows = random_windows(5, seed=3, n_vocab=n_vocab(packed), max_len=128)
    rows = distribution(packed, windows)
    answer = score(packed, windows, top_k=5).json()
    assert rows.shape == (sum(len(w["tokens"]) - w["from"] for w in windows), answer["n_vocab"])
    np.testing.assert_allclose(np.exp(rows.astype(np.float64)).sum(axis=1), 1.0, atol=1e-4)
    r = 0
    for w, got in zip(windows, answer["windows"], strict=True):
        targets = w["tokens"][w["from"] :]
        block = rows[r : r + len(targets)]
        np.testing.assert_allclose(block[np.arange(len(targets)), targets], got["logprobs"], atol=1e-5)
        for row, top in zip(block, got["top"], strict=True):
            ids, values = [t[0] for t in top], [t[1] for t in top]
            assert len(top) == 5 and values == sorted(values, reverse=True)
            assert ids[0] == int(np.argmax(row))
            np.testing.assert_allclose(values, row[ids], atol=1e-5)
            assert np.sum(row > values[-1] + 1e-6) < 5  # nothing outside the list beats its last entry
        r += len(targets)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "windows must be"),
        ({"windows": []}, "windows must be"),
        ({"windows": [[1, 2]]}, "windows[0] must be an object"),
        ({"windows": [{"tokens": [], "from": 1}]}, "windows[0].from"),
        ({"windows": [{"tokens": [1, 2, 3], "from": 0}]}, "windows[0].from"),
        ({"windows": [{"tokens": [1, 2, 3], "from": 3}]}, "windows[0].from"),
        ({"windows": [{"tokens": [1, 2, 3]}]}, "windows[0].from"),
        ({"windows": [{"tokens": [1, 2], "from": 1}, {"tokens": [1, -1], "from": 1}]}, "windows[1].tokens has an id"),
        ({"windows": [{"tokens": [1, 10**6], "from": 1}]}, "outside the vocabulary"),
        ({"windows": [{"tokens": [1, 10**30], "from": 1}]}, "outside the vocabulary"),  # past int64
        ({"windows": [{"tokens": [1, 2.5], "from": 1}]}, "list of token ids"),
        ({"windows": [{"tokens": [1, True], "from": 1}]}, "list of token ids"),
        ({"windows": [{"tokens": [1, 2], "from": 1}] * 4097}, "at most 4096"),
        ({"windows": [{"tokens": [1, 2], "from": 1}], "top_k": -1}, "top_k must be"),
        ({"windows": [{"tokens": [1, 2], "from": 1}], "top_k": 101}, "top_k must be"),
        ({"windows": [{"tokens": [1, 2], "from": 1}], "distribution": "yes"}, "distribution must be"),
    ],
)
def test_bad_windows_get_400(packed: RunnerProcess, body: dict, message: str) -> None:
    response = httpx.post(packed.url + "/score", json=body)
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_a_window_longer_than_a_slot_gets_400(packed: RunnerProcess) -> None:
    n_ctx = httpx.get(packed.url + "/props").json()["default_generation_settings"]["n_ctx"]
    assert score(packed, [{"tokens": [1] * n_ctx, "from": 1}]).status_code == 200
    response = score(packed, [{"tokens": [1] * (n_ctx + 1), "from": 1}])
    assert response.status_code == 400 and f"a slot holds {n_ctx}" in response.json()["error"]["message"]


def test_a_body_that_is_not_json_gets_400(packed: RunnerProcess) -> None:
    assert httpx.post(packed.url + "/score", content=b"{not json").status_code == 400
    assert httpx.post(packed.url + "/score", json=[1, 2]).status_code == 400


def test_n_probs_chunks_and_the_final_answer(packed: RunnerProcess) -> None:
    prompt = tokens_of(packed, "the cat and the dog")
    plain = packed.complete(prompt=prompt, n_predict=12, temperature=0, ignore_eos=True)
    assert "completion_probabilities" not in plain
    whole = packed.complete(prompt=prompt, n_predict=12, temperature=0, ignore_eos=True, n_probs=3)
    assert whole["tokens"] == plain["tokens"] and whole["content"] == plain["content"]
    chunks = packed.stream(prompt=prompt, n_predict=12, temperature=0, ignore_eos=True, n_probs=3)
    streamed = [c["completion_probabilities"][0] for c in chunks if not c["stop"]]
    assert [p["id"] for p in streamed] == plain["tokens"]
    assert streamed == whole["completion_probabilities"]
    for entry, token in zip(streamed, plain["tokens"], strict=True):
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["id"] == token  # greedy: the sampled token is the most likely
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert entry["logprob"] == top[0]["logprob"] <= 0
        assert set(entry) == {"id", "token", "bytes", "logprob", "top_logprobs"}
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]


def test_n_probs_agrees_with_score(packed: RunnerProcess) -> None:
    prompt = tokens_of(packed, "one two three")
    reply = packed.complete(prompt=prompt, n_predict=3, temperature=0, ignore_eos=True, n_probs=2)
    window = {"tokens": prompt + reply["tokens"], "from": len(prompt)}
    scored = logprobs(packed, [window])[0]
    expected = [p["logprob"] for p in reply["completion_probabilities"]]
    np.testing.assert_allclose(scored, expected, atol=1e-4)


@pytest.mark.parametrize("n_probs", [-2, 101, 49152, 2.5])
def test_bad_n_probs_gets_400(packed: RunnerProcess, n_probs: float) -> None:
    """Negative, fractional, or more entries than any client needs (each is held for a whole answer)."""
    response = httpx.post(packed.url + "/completion", json={"prompt": "x", "n_probs": n_probs})
    assert response.status_code == 400 and "n_probs must be a whole number from 0 to 100" in response.text


def test_chat_slots_survive_scoring(packed: RunnerProcess) -> None:
    prompt = "the dog and the cat and"
    before = packed.complete(prompt=prompt, n_predict=16, temperature=0, ignore_eos=True)
    logprobs(packed, random_windows(9, seed=4, n_vocab=n_vocab(packed), max_len=128))
    after = packed.complete(prompt=prompt, n_predict=16, temperature=0, ignore_eos=True)
    assert after["content"] == before["content"] and after["tokens"] == before["tokens"]
    assert after["timings"]["cache_n"] > 0  # the conversation's saved state came back
    slots = httpx.get(packed.url + "/slots").json()
    assert not any(s["is_processing"] for s in slots)


def test_scoring_while_a_stream_generates(packed: RunnerProcess) -> None:
    body = {"prompt": "a b c d", "n_predict": 60, "temperature": 0, "ignore_eos": True}
    solo = packed.complete(**body)
    windows = random_windows(6, seed=5, n_vocab=n_vocab(packed), max_len=128)
    expected = logprobs(packed, windows)
    results: dict[str, object] = {}

    def chat() -> None:
        results["chat"] = packed.complete(**body, cache_prompt=False)

    def scorer(i: int) -> None:
        results[f"score{i}"] = logprobs(packed, windows[i * 2 : i * 2 + 2])

    threads = [threading.Thread(target=chat)] + [threading.Thread(target=scorer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["chat"]["tokens"] == solo["tokens"]  # type: ignore[index]
    got = [lp for i in range(3) for lp in results[f"score{i}"]]  # type: ignore[attr-defined]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=0)  # flash attention: see test_packing_with_flash_attention


# -- a real model ---------------------------------------------------------


def test_smollm2_matches_llama_cpp_python_and_any_packing(smollm2: Path) -> None:
    from llama_cpp import Llama

    args = ("--ctx-size", "512", "--parallel", "2", "--batch-size", "256", "--threads", "2", "--flash-attn", "on")
    with RunnerProcess(smollm2, *args) as runner:
        tokens = tokens_of(runner, TEXT * 3)[:200]
        windows = [{"tokens": tokens[s : s + 128], "from": 64} for s in (0, 24, 48, 72)]
        question = SYSTEM + QUESTION.format("What is the capital of France?")
        before = runner.complete(prompt=question, n_predict=24, temperature=0)
        together = logprobs(runner, windows)
        alone = [logprobs(runner, [w])[0] for w in windows]
        after = runner.complete(prompt=question, n_predict=24, temperature=0)
        top = score(runner, windows[:1], top_k=3).json()["windows"][0]["top"]
    assert after["content"] == before["content"] and before["content"]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    # the same flash-attention setting: on this model it moves logprobs by up to 0.27 against the plain kernel
    llm = Llama(
        model_path=str(smollm2), n_ctx=256, n_batch=128, logits_all=True, flash_attn=True, n_threads=2, verbose=False
    )
    for w, got in zip(windows, together, strict=True):
        llm.reset()
        llm.eval(w["tokens"])
        logits = np.array(llm.scores[: len(w["tokens"])], dtype=np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        positions = np.arange(w["from"] - 1, len(w["tokens"]) - 1)
        reference = log_softmax[positions, np.array(w["tokens"])[positions + 1]]
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)
    first = [t[0] for t in top[0]]
    assert len(first) == 3 and all(isinstance(i, int) for i in first)
    assert np.mean(together[0]) > -8  # real text: far likelier than chance (log 1/49152 = -10.8)
