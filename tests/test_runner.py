"""The runner as a real child process on 127.0.0.1: protocol, batching, prompt cache, failures."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.runner.api import build_app
from app.runner.options import RunnerOptions
from app.runner.state import RunnerState
from app.store.blobs import BlobStore
from tests.conftest import REPO, SMOLLM2_SHA256
from tests.ggufmaker import write_tiny_llama
from tests.runner_process import RunnerProcess

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
QUESTION = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="session")
def smollm2(smollm2_store: Path) -> Path:
    return BlobStore(smollm2_store).path("sha256:" + SMOLLM2_SHA256)


@pytest.fixture(scope="module")
def tiny_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerProcess]:
    model = write_tiny_llama(tmp_path_factory.mktemp("runner") / "tiny.gguf", n_ctx=256)
    flags = ["--ctx-size", "128", "--parallel", "1", "--threads", "2", "--metrics"]
    loam = ["--embedding", "--pooling", "mean", "--context-shift", "--truncate-prompts"]  # as loam serve starts it
    with RunnerProcess(model, *flags, *loam) as runner:
        yield runner


def tokens_of(runner: RunnerProcess, text: str) -> list[int]:
    return httpx.post(runner.url + "/tokenize", json={"content": text, "add_special": True}).json()["tokens"]


def metric(runner: RunnerProcess, name: str) -> float:
    for line in httpx.get(runner.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


# -- real model ---------------------------------------------------------


def test_greedy_completion_matches_llama_cpp_python(smollm2: Path) -> None:
    from llama_cpp import Llama

    prompt = "The capital of France is"
    llm = Llama(model_path=str(smollm2), n_ctx=2048, n_threads=2, flash_attn=True, verbose=False)  # as the runner
    expected = llm.create_completion(prompt, max_tokens=32, temperature=0)["choices"][0]["text"]
    del llm
    with RunnerProcess(smollm2, "--ctx-size", "2048", "--threads", "2") as runner:
        result = runner.complete(prompt=prompt, n_predict=32, temperature=0)
    assert result["content"] == expected
    assert result["timings"]["predicted_n"] == 32 and result["stop_type"] == "limit"


def test_stop_strings_and_end_of_generation(smollm2: Path) -> None:
    with RunnerProcess(smollm2, "--ctx-size", "2048", "--threads", "2") as runner:
        plain = runner.complete(prompt="The capital of France is", n_predict=12, temperature=0)["content"]
        assert "United" in plain
        chunks = runner.stream(prompt="The capital of France is", n_predict=12, temperature=0, stop=["United"])
        text = "".join(c["content"] for c in chunks)
        assert text == plain[: plain.index("United")]
        assert chunks[-1]["stop_type"] == "word" and chunks[-1]["stopping_word"] == "United"
        assert not any("Unit" in c["content"] for c in chunks)

        answer = runner.complete(prompt=SYSTEM + QUESTION.format("Say hello."), n_predict=200, temperature=0)
        assert answer["stop_type"] == "eos" and answer["tokens_predicted"] < 200
        assert "<|im_end|>" not in answer["content"] and answer["content"].strip()


def test_a_second_turn_evaluates_only_its_new_tokens(smollm2: Path) -> None:
    with RunnerProcess(smollm2, "--ctx-size", "2048", "--threads", "2") as runner:
        first = QUESTION.format("Name a colour.")
        reply = runner.complete(prompt=first, n_predict=24, temperature=0, stop=["\n"])
        second = first + reply["content"] + "<|im_end|>\n" + QUESTION.format("And another one?")
        again = runner.complete(prompt=second, n_predict=8, temperature=0)
        new = len(tokens_of(runner, second)) - len(tokens_of(runner, first + reply["content"]))
        assert again["timings"]["cache_n"] > 0
        assert again["timings"]["prompt_n"] <= new + 1


def test_four_conversations_on_two_slots_keep_their_state(smollm2: Path) -> None:
    topics = ["cats", "the sea", "bread", "mountains"]
    with RunnerProcess(smollm2, "--ctx-size", "4096", "--parallel", "2", "--threads", "2", "--metrics") as runner:
        history = {t: "" for t in topics}
        seen = {t: 0 for t in topics}  # tokens the runner has seen of each conversation: prompt + generated
        for turn in range(3):
            for topic in topics:  # taking turns: four conversations through two slots
                prompt = history[topic] + QUESTION.format(f"Tell me one fact about {topic} (turn {turn}).")
                result = runner.complete(prompt=prompt, n_predict=12, temperature=0)
                timings = result["timings"]
                if turn > 0:
                    new = len(tokens_of(runner, prompt)) - seen[topic]
                    assert timings["cache_n"] >= seen[topic] - 1, (topic, turn, timings)
                    assert timings["prompt_n"] <= new + 1, (topic, turn, timings)
                history[topic] = prompt + result["content"] + "<|im_end|>\n"
                seen[topic] = result["tokens_evaluated"] + result["tokens_predicted"]
        assert metric(runner, "loam:state_cache_hits_total") >= 4


def test_concurrent_streams_match_their_sequential_output(smollm2: Path) -> None:
    prompts = ["Once upon a time", "The best way to learn Python is", "In 1492, Columbus", "My favourite food is"]
    with RunnerProcess(smollm2, "--ctx-size", "4096", "--parallel", "4", "--threads", "2") as runner:
        body = {"n_predict": 32, "temperature": 0, "cache_prompt": False}
        sequential = ["".join(c["content"] for c in runner.stream(prompt=p, **body)) for p in prompts]
        streams: dict[int, list[dict]] = {}

        def run(i: int) -> None:
            streams[i] = runner.stream(prompt=prompts[i], **body)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(4):
            chunks = streams[i]
            assert chunks[-1]["stop"] is True and sum(not c["stop"] for c in chunks) == 32
            assert len({c["id_slot"] for c in chunks}) == 1
            assert "".join(c["content"] for c in chunks) == sequential[i]
        assert len({streams[i][0]["id_slot"] for i in range(4)}) == 4  # all four slots were used at once


# -- protocol, on the tiny model --------------------------------------------


def test_tokenize_detokenize_and_token_prompts(tiny_runner: RunnerProcess) -> None:
    url = tiny_runner.url
    tokens = httpx.post(url + "/tokenize", json={"content": "the cat"}).json()["tokens"]
    assert tokens and httpx.post(url + "/detokenize", json={"tokens": tokens}).json()["content"].strip() == "the cat"
    pieces = httpx.post(url + "/tokenize", json={"content": "the", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces).strip() == "the"
    by_text = tiny_runner.complete(prompt="the cat", n_predict=4, temperature=0, return_tokens=True)
    by_tokens = tiny_runner.complete(prompt=[1, *tokens], n_predict=4, temperature=0, return_tokens=True)
    assert len(by_text["tokens"]) == 4 and by_text["tokens"] == by_tokens["tokens"]
    plain = httpx.post(url + "/completion", json={"prompt": "the cat", "n_predict": 4}).json()
    assert plain["tokens"] == []  # ids only when asked, as llama-server


def test_streams_are_server_sent_events(tiny_runner: RunnerProcess) -> None:
    body = {"prompt": "the", "n_predict": 3, "stream": True}
    with httpx.stream("POST", tiny_runner.url + "/completion", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) == 4 and events[-1]["stop"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": []}, "must not be empty"),
        ({"prompt": [[]]}, "the prompt is empty"),
        ({"prompt": [10**9]}, "out of range"),
        ({"prompt": {"a": 1}}, "elements must be a string"),
        ({"prompt": "x", "temperature": "hot"}, "temperature must be a finite number"),
        ({"prompt": "x", "grammar_triggers": 5}, "grammar_triggers must be a list"),
        ({"prompt": "x", "stop": ["a"] * 65}, "at most 64 strings"),
    ],
)
def test_bad_requests_get_400(tiny_runner: RunnerProcess, body: dict, message: str) -> None:
    response = httpx.post(tiny_runner.url + "/completion", json=body)
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert httpx.post(tiny_runner.url + "/completion", content=b"{not json").status_code == 400


def test_slots_metrics_and_embedding(tiny_runner: RunnerProcess) -> None:
    before = metric(tiny_runner, "llamacpp:tokens_predicted_total")
    tiny_runner.complete(prompt="a b c", n_predict=5, ignore_eos=True)
    assert metric(tiny_runner, "llamacpp:tokens_predicted_total") >= before + 4
    slots = httpx.get(tiny_runner.url + "/slots").json()
    assert len(slots) == 1 and slots[0]["is_processing"] is False
    [answer] = httpx.post(tiny_runner.url + "/embedding", json={"content": "the cat"}).json()
    [vector] = answer["embedding"]  # pooled: one vector for the whole input
    assert len(vector) == 64 and abs(sum(x * x for x in vector) - 1.0) < 1e-3
    oai = httpx.post(tiny_runner.url + "/v1/embeddings", json={"input": ["the cat", "a dog"]}).json()
    assert [d["index"] for d in oai["data"]] == [0, 1] and oai["data"][0]["embedding"] == vector
    n_tokens = len(tokens_of(tiny_runner, "the cat")) + len(tokens_of(tiny_runner, "a dog"))
    assert oai["usage"]["prompt_tokens"] == n_tokens
    memory = httpx.get(tiny_runner.url + "/props").json()["memory"]
    assert memory["model"] > 0 and memory["compute"] > 0 and memory["kv_cache"] > 0


def test_context_overflow_truncates_and_shifts(tiny_runner: RunnerProcess) -> None:
    n_ctx = httpx.get(tiny_runner.url + "/props").json()["default_generation_settings"]["n_ctx"]
    long_prompt = " ".join(["the cat and the dog"] * n_ctx)  # far beyond the context
    assert len(tokens_of(tiny_runner, long_prompt)) > 2 * n_ctx
    result = tiny_runner.complete(prompt=long_prompt, n_predict=8, ignore_eos=True, n_keep=4)
    assert result["truncated"] is True and result["tokens_evaluated"] < n_ctx
    shifted = tiny_runner.complete(prompt="the", n_predict=3 * n_ctx, ignore_eos=True)
    assert shifted["tokens_predicted"] == 3 * n_ctx and shifted["truncated"] is True
    assert shifted["tokens_cached"] <= n_ctx


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "x", "n_predict": 1e400}',
        b'{"prompt": "x", "top_p": ' + b"9" * 400 + b"}",
        b'{"prompt": "x", "seed": NaN}',
        b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_numbers_and_nesting_json_allows_but_llama_cpp_cannot_take_get_400(
    tiny_runner: RunnerProcess, raw: bytes
) -> None:
    response = httpx.post(tiny_runner.url + "/completion", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_null_fields_mean_the_default(tiny_runner: RunnerProcess) -> None:
    body = {"prompt": "the cat", "n_predict": 2, "logprobs": None, "n_probs": None, "stop": None, "logit_bias": None}
    answer = httpx.post(tiny_runner.url + "/completion", json=body).json()
    assert answer["tokens_predicted"] == 2 and answer["generation_settings"]["n_probs"] == 0


def test_llama_server_context_rules_without_loam_flags(tmp_path: Path) -> None:
    """Started as llama-server would be: a prompt that does not fit is refused, an answer ends at the context's end."""
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_ctx=256)
    with RunnerProcess(model, "--ctx-size", "256", "--threads", "1") as runner:
        refused = httpx.post(runner.url + "/completion", json={"prompt": "the cat " * 256, "n_predict": 4})
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["type"] == "exceed_context_size_error"
        assert "exceeds the available context size (256 tokens)" in error["message"] and error["n_ctx"] == 256
        prompt = tokens_of(runner, "the cat")
        result = runner.complete(prompt="the cat", ignore_eos=True)  # no n_predict: up to the context's end
        assert result["truncated"] is True and result["stop_type"] == "limit"
        assert result["tokens_predicted"] == 256 - len(prompt)
        assert httpx.get(runner.url + "/metrics").status_code == 501  # --metrics not given


def test_a_client_that_disconnects_frees_its_slot(tiny_runner: RunnerProcess) -> None:
    before = metric(tiny_runner, "llamacpp:tokens_predicted_total")
    body = {"prompt": "the", "n_predict": 100000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", tiny_runner.url + "/completion", json=body, timeout=None) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 5:
                break
    for _ in range(400):
        if not httpx.get(tiny_runner.url + "/slots").json()[0]["is_processing"]:
            break
        time.sleep(0.025)
    assert not httpx.get(tiny_runner.url + "/slots").json()[0]["is_processing"]
    nxt = tiny_runner.complete(prompt="a", n_predict=3, ignore_eos=True)
    assert nxt["tokens_predicted"] == 3
    assert metric(tiny_runner, "llamacpp:tokens_predicted_total") - before < 100000


def test_health_reports_load_progress() -> None:
    state = RunnerState(RunnerOptions(model=Path("x.gguf")), progress=0.4)

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://runner") as client:
            return await client.get("/health"), await client.post("/completion", json={"prompt": "x"})

    health, completion = asyncio.run(ask())
    assert health.status_code == 503 and health.json() == {"status": "loading model", "progress": 0.4}
    assert completion.status_code == 503


# -- failures ---------------------------------------------------------------


def run_failing(tmp_path: Path, *args: str, address_space: int | None = None) -> dict:
    """The runner's exit report; `address_space` caps its memory (bytes), so an allocation fails at once."""

    def cap() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    proc = subprocess.run(
        [sys.executable, "-m", "app.runner", *args, "--port", "0"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert not list(tmp_path.glob("core*"))
    return report


def test_a_missing_model_file(tmp_path: Path) -> None:
    report = run_failing(tmp_path, "--model", str(tmp_path / "nope.gguf"))
    assert report["kind"] == "missing" and "does not exist" in report["error"]


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    (tmp_path / "notes.gguf").write_text("hello")
    assert run_failing(tmp_path, "--model", str(tmp_path / "notes.gguf"))["kind"] == "bad_model"


def test_an_unsupported_architecture(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "alien.gguf", architecture="nosucharch")
    report = run_failing(tmp_path, "--model", str(model))
    assert report["kind"] == "bad_model" and "unsupported model architecture 'nosucharch'" in report["error"]


def test_a_context_that_does_not_fit_in_memory(tmp_path: Path, tiny_gguf: Path) -> None:
    """A 20 GB KV cache under a 3 GiB cap: refused as it would be on a small machine, without filling this one."""
    report = run_failing(tmp_path, "--model", str(tiny_gguf), "--ctx-size", "400000000", address_space=3 << 30)
    assert report["kind"] == "oom" and "not enough memory" in report["error"]


def test_json_replies_that_finish_always_parse(tiny_runner: RunnerProcess) -> None:
    """Random weights at temperature 1 pick control characters too; the grammar must keep them out of strings."""
    finished = 0
    for seed in range(20):
        reply = tiny_runner.complete(
            prompt="a", json_schema={"type": "object"}, temperature=1.0, seed=seed, n_predict=96, cache_prompt=False
        )
        if reply["stop_type"] == "limit":
            continue
        finished += 1
        assert isinstance(json.loads(reply["content"]), dict), reply["content"]
    assert finished > 0


def test_a_reply_cut_mid_character_drops_the_unfinished_bytes(tiny_runner: RunnerProcess) -> None:
    """The tiny vocabulary spells Korean only in byte tokens: one token is a third of a character."""
    one = tiny_runner.complete(prompt="a", grammar='root ::= "한국"', n_predict=1, temperature=0)
    assert one["stop_type"] == "limit" and one["content"] == ""
    four = tiny_runner.complete(prompt="a", grammar='root ::= "한국"', n_predict=4, temperature=0)
    assert four["content"] == "한"
    whole = tiny_runner.complete(prompt="a", grammar='root ::= "한국"', n_predict=6, temperature=0)
    assert whole["content"] == "한국"


def test_a_queued_stream_hears_progress_comments_while_the_decode_loop_moves(tiny_runner: RunnerProcess) -> None:
    """One slot, busy with a long reply: the waiting request hears that the runner is alive, not wedged."""
    first_started, done = threading.Event(), threading.Event()

    def long_reply() -> None:
        body = {"prompt": "the", "n_predict": 10_000_000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", tiny_runner.url + "/completion", json=body, timeout=None) as r:
            for _ in r.iter_lines():
                first_started.set()
                if done.is_set():
                    return

    worker = threading.Thread(target=long_reply)
    worker.start()
    try:
        assert first_started.wait(60)
        body = {"prompt": "a", "n_predict": 3, "ignore_eos": True, "stream": True}
        lines = []
        with httpx.stream("POST", tiny_runner.url + "/completion", json=body, timeout=None) as r:
            for line in r.iter_lines():
                lines.append(line)
                if line == ": progress":
                    done.set()  # heard the heartbeat: let the long reply go
        worker.join(60)
    finally:
        done.set()
        worker.join(60)
    first = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert ": progress" in lines[:first]  # a comment came before any chunk (SSE clients skip it)
    assert all(line in ("", ": progress") for line in lines[:first])
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert chunks[-1]["stop"] and chunks[-1]["tokens_predicted"] == 3


def test_a_korean_reply_cut_by_n_predict_never_ends_mid_character(smollm2: Path) -> None:
    """SmolLM2 spells Hangul in byte pieces: one token is part of a character."""
    prompt = QUESTION.format("한국어로 대답해 주세요. 서울은 어떤 도시입니까?")
    with RunnerProcess(smollm2, "--ctx-size", "512", "--parallel", "1", "--threads", "2") as runner:
        whole = runner.complete(prompt=prompt, n_predict=12, temperature=0)["content"]
        for n in (1, 2, 3):
            cut = runner.complete(prompt=prompt, n_predict=n, temperature=0)
            assert cut["stop_type"] == "limit"
            assert "\ufffd" not in cut["content"] and whole.startswith(cut["content"])
    assert any(ord(c) > 0x3000 for c in whole)
