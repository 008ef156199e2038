"""llama-server's protocol on the runner, through real HTTP and the official OpenAI client.

The tiny random model makes these fast; llama.cpp's own server tests (run by
tests/llama_server_suite against both programs) cover the same ground on SmolLM2.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tests.ggufmaker import write_tiny_llama
from tests.runner_process import RunnerProcess

#: Started as llama.cpp's server tests start llama-server.
FLAGS = (
    "--ctx-size", "512", "--parallel", "2", "--batch-size", "32", "--threads", "2", "--temp", "0.8",
    "--seed", "42", "--n-predict", "8", "--alias", "tiny,small", "--tags", "chat,test", "--metrics",
    "--embedding", "--pooling", "mean", "--no-jinja", "--offline",
)  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("protocol") / "tiny.gguf", n_ctx=256)


@pytest.fixture(scope="module")
def runner(model: Path) -> Iterator[RunnerProcess]:
    with RunnerProcess(model, *FLAGS) as r:
        yield r


def post(runner: RunnerProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(runner.url + path, json=body, timeout=60)


def events(runner: RunnerProcess, path: str, body: dict) -> list[str]:
    """The `data:` payloads of a streamed answer, as text."""
    with httpx.stream("POST", runner.url + path, json={**body, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def tokens(runner: RunnerProcess, text: str) -> list[int]:
    return post(runner, "/tokenize", {"content": text, "add_special": True}).json()["tokens"]


def test_server_defaults_and_generation_settings(runner: RunnerProcess) -> None:
    answer = post(runner, "/completion", {"prompt": "the cat"}).json()
    settings = answer["generation_settings"]
    assert settings["seed"] == 42 and settings["temperature"] == 0.8 and settings["n_predict"] == 8
    assert answer["tokens_predicted"] <= 8  # --n-predict 8 bounds a request that sets none...
    unset = post(runner, "/completion", {"prompt": "the cat", "n_predict": -1, "ignore_eos": True}).json()
    assert unset["tokens_predicted"] == 8  # ... and one that asks for the server's (-1)
    assert answer["model"] == "small" and answer["prompt"].endswith("the cat") and answer["index"] == 0
    assert isinstance(answer["has_new_line"], bool) and answer["tokens"] == []
    banned = post(runner, "/completion", {"prompt": "a", "n_predict": 2, "ignore_eos": True}).json()
    assert banned["generation_settings"]["logit_bias"] and all(
        b["bias"] is None for b in banned["generation_settings"]["logit_bias"]
    )
    props = httpx.get(runner.url + "/props").json()
    assert props["default_generation_settings"]["params"]["seed"] == 42 and props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 256 and props["model_alias"] == "small"


def test_response_fields_pick_nested_paths(runner: RunnerProcess) -> None:
    body = {"prompt": "the cat", "n_predict": 3, "response_fields": ["content", "generation_settings/n_predict", "x/y"]}
    answer = post(runner, "/completion", body).json()
    assert set(answer) == {"content", "generation_settings/n_predict"} and answer["generation_settings/n_predict"] == 3


def test_several_prompts_in_one_request(runner: RunnerProcess) -> None:
    ids = tokens(runner, "the cat")
    body = {"prompt": [ids, "the cat", {"prompt_string": "the cat"}], "n_predict": 4, "temperature": 0}
    answers = post(runner, "/completion", body).json()
    assert [a["index"] for a in answers] == [0, 1, 2]
    assert len({a["content"] for a in answers}) == 1  # the same prompt three ways, greedy
    mixed = post(runner, "/completion", {"prompt": [ids[0], "cat"], "n_predict": 2}).json()
    assert isinstance(mixed, dict)  # a token id at the top level: one prompt
    streamed = [json.loads(e) for e in events(runner, "/completion", {**body, "prompt": ["the", "a cat"]})]
    assert {e["index"] for e in streamed} == {0, 1} and sum(e["stop"] for e in streamed) == 2
    refused = post(runner, "/completion", {"prompt": {"prompt_string": "x", "multimodal_data": ["AA=="]}})
    assert refused.status_code == 400 and "multimodal" in refused.json()["error"]["message"].lower()


def test_logit_bias_bans_tokens_by_id_and_by_text(runner: RunnerProcess) -> None:
    body = {"prompt": "the cat", "n_predict": 1, "temperature": 0, "return_tokens": True}
    [first] = post(runner, "/completion", body).json()["tokens"]
    for bias in ([[first, False]], {str(first): -100}):
        [other] = post(runner, "/completion", {**body, "logit_bias": bias}).json()["tokens"]
        assert other != first
    piece = post(runner, "/detokenize", {"tokens": [first]}).json()["content"]
    if tokens(runner, piece)[-1:] == [first]:  # the piece tokenizes back to itself: ban it by its text
        [other] = post(runner, "/completion", {**body, "logit_bias": [[piece, False]]}).json()["tokens"]
        assert other != first


def test_post_sampling_probs(runner: RunnerProcess) -> None:
    body = {"prompt": "the cat", "n_predict": 3, "temperature": 1.0, "n_probs": 5, "post_sampling_probs": True}
    probs = post(runner, "/completion", body).json()["completion_probabilities"]
    assert len(probs) == 3
    for entry in probs:
        top = [p["prob"] for p in entry["top_probs"]]
        assert 0 < entry["prob"] <= 1 and 1 <= len(top) <= 5 and top == sorted(top, reverse=True)
        assert all(p > 0 for p in top) and sum(top) <= 1.0 + 1e-5 and "logprob" not in entry


def test_post_sampling_probs_of_a_greedy_pick_are_certain(runner: RunnerProcess) -> None:
    body = {"prompt": "the cat", "n_predict": 2, "temperature": 0, "n_probs": 3, "post_sampling_probs": True}
    for entry in post(runner, "/completion", body).json()["completion_probabilities"]:
        assert entry["prob"] == 1.0 and [(p["id"], p["prob"]) for p in entry["top_probs"]] == [(entry["id"], 1.0)]


def test_progress_chunks_and_timings_per_token(runner: RunnerProcess) -> None:
    prompt = " ".join(["the cat sat"] * 20)  # several 32-token batches
    body = {"prompt": prompt, "n_predict": 3, "return_progress": True, "timings_per_token": True, "cache_prompt": False}
    chunks = [json.loads(e) for e in events(runner, "/completion", body)]
    progress = [c for c in chunks if "prompt_progress" in c]
    assert len(progress) > 2 and progress[0]["timings"]["prompt_n"] == 0 and progress[0]["timings"]["prompt_ms"] == 0
    processed = [c["prompt_progress"]["processed"] for c in progress]
    assert processed == sorted(processed) and processed[-1] == progress[-1]["prompt_progress"]["total"]
    assert all("timings" in c for c in chunks if not c["stop"])


def test_openai_completions_with_the_official_client(runner: RunnerProcess) -> None:
    client = openai.OpenAI(base_url=runner.url + "/v1", api_key="none")
    answer = client.completions.create(
        model="tiny", prompt="the cat", max_tokens=4, temperature=0, extra_body={"ignore_eos": True}
    )
    assert answer.system_fingerprint.startswith("b") and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 4 and answer.object == "text_completion"
    stream = client.completions.create(
        model="tiny", prompt="the cat", max_tokens=4, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    parts = list(stream)
    assert "".join(p.choices[0].text for p in parts) == answer.choices[0].text
    assert [p.choices[0].finish_reason for p in parts][-1] == "length"
    assert all(p.choices[0].finish_reason is None for p in parts[:-1])
    raw = events(runner, "/v1/completions", {"prompt": "a", "max_tokens": 2})
    assert raw[-1] == "[DONE]"


def test_openai_embeddings_with_the_official_client(runner: RunnerProcess) -> None:
    client = openai.OpenAI(base_url=runner.url + "/v1", api_key="none")
    default = client.embeddings.create(model="tiny", input=["the cat", "a dog"])  # asks for base64 itself
    floats = client.embeddings.create(model="tiny", input=["the cat", "a dog"], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1] and default.usage.prompt_tokens == floats.usage.prompt_tokens
    for a, b in zip(default.data, floats.data, strict=True):
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=True)) < 1e-6
    raw = post(runner, "/v1/embeddings", {"input": "the cat", "encoding_format": "base64"}).json()["data"][0]
    vector = struct.unpack(f"<{64}f", base64.b64decode(raw["embedding"]))
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-4
    same = post(
        runner,
        "/v1/embeddings",
        {"input": [{"content": [{"type": "text", "text": "the "}, {"type": "text", "text": "cat"}]}]},
    )
    assert same.json()["data"][0]["embedding"] == floats.data[0].embedding
    for bad in ([], {"content": "x"}, [{"content": [{"type": "image_url"}]}], [{"content": [{"type": "?"}]}]):
        response = post(runner, "/v1/embeddings", {"input": bad})
        assert response.status_code == 400 and "error" in response.json(), bad


def test_models_slots_and_metrics(runner: RunnerProcess) -> None:
    [info] = httpx.get(runner.url + "/v1/models").json()["data"]
    assert info["id"] == "small" and set(info["aliases"]) == {"tiny", "small"} and set(info["tags"]) == {"chat", "test"}
    slots = httpx.get(runner.url + "/slots").json()
    assert [s["n_ctx"] for s in slots] == [256, 256] and "params" not in slots[0]
    post(runner, "/completion", {"prompt": "the cat sat", "n_predict": 2})
    response = httpx.get(runner.url + "/metrics")
    assert response.headers["Process-Start-Time-Unix"].isdigit()
    # spelled as llama-server spells it: llama.cpp's own server tests look it up in a plain dict
    with socket.create_connection(("127.0.0.1", runner.port)) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = raw.makefile("rb").read().split(b"\r\n\r\n", 1)[0]
    assert b"\r\nProcess-Start-Time-Unix: " in head, head
    names = {line.split()[0] for line in response.text.splitlines() if line.startswith("llamacpp:")}
    for name in (
        "prompt_tokens_cached_total",
        "n_tokens_max",
        "n_busy_slots_per_decode",
        "spec_decode_num_drafts_total",
    ):
        assert f"llamacpp:{name}" in names
    missing = httpx.get(runner.url + "/no/such/path")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_pooling_none_gives_a_vector_per_token(model: Path) -> None:
    with RunnerProcess(model, "--ctx-size", "256", "--threads", "1", "--embedding", "--no-slots") as r:
        n = len(tokens(r, "the cat sat"))
        [answer] = post(r, "/embeddings", {"input": "the cat sat"}).json()
        assert len(answer["embedding"]) == n and all(len(v) == 64 for v in answer["embedding"])
        assert post(r, "/v1/embeddings", {"input": "the cat"}).status_code == 400  # not OpenAI-compatible
        assert httpx.get(r.url + "/slots").status_code == 501


def test_api_keys_and_several_addresses(model: Path) -> None:
    with RunnerProcess(
        model, "--ctx-size", "256", "--threads", "1", "--api-key", "k1,k2", "--host", "127.0.0.1,::1"
    ) as r:
        assert httpx.get(r.url + "/health").status_code == 200  # public
        assert httpx.get(f"http://[::1]:{r.port}/health").status_code == 200
        denied = httpx.post(r.url + "/completion", json={"prompt": "a", "n_predict": 1})
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        for headers in ({"Authorization": "Bearer k2"}, {"X-Api-Key": "k1"}):
            ok = httpx.post(r.url + "/completion", json={"prompt": "a", "n_predict": 1}, headers=headers)
            assert ok.status_code == 200
        assert httpx.get(r.url + "/props", headers={"Authorization": "Bearer k3"}).status_code == 401


def test_a_unified_kv_cache_gives_each_slot_the_whole_context(model: Path) -> None:
    with RunnerProcess(model, "--ctx-size", "256", "--parallel", "4", "--kv-unified", "--threads", "1") as r:
        assert [s["n_ctx"] for s in httpx.get(r.url + "/slots").json()] == [256] * 4
        answer = post(r, "/completion", {"prompt": "a", "n_predict": 100, "ignore_eos": True}).json()
        assert answer["tokens_predicted"] == 100  # more than a quarter of the context


@pytest.mark.parametrize(
    ("flag", "message"),
    [(["--hf-repo", "org/model"], "loads a local GGUF"), (["--reranking"], "--reranking is not supported")],
)
def test_flags_the_runner_refuses_name_the_reason(model: Path, flag: list[str], message: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "app.runner", "-m", str(model), *flag], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 2 and message in run.stderr


VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["prompt", "input", "content", "logit_bias", "n_probs", "logprobs", "post_sampling_probs", "response_fields",
     "stop", "temperature", "seed", "embd_normalize", "encoding_format", "grammar_triggers", "n_keep", "n_discard",
     "min_keep", "return_tokens", "echo", "best_of", "ignore_eos", "top_k", "model"]
)  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/completion", "/v1/completions", "/embeddings", "/v1/embeddings", "/tokenize"]),
    body=st.dictionaries(FIELDS, VALUE, max_size=6),
)
def test_garbage_bodies_get_an_answer_never_a_500(runner: RunnerProcess, path: str, body: dict) -> None:
    body = {**body, "n_predict": 1, "stream": False}  # bounded work; every other field is the stranger's
    raw = json.dumps(body, allow_nan=True).encode()
    response = httpx.post(runner.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code < 500, (path, body, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
