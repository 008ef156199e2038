"""Token log-probabilities through `loam serve`, read by the official Ollama and OpenAI clients.

SmolLM2 answers greedily (temperature 0, no penalties), so each chosen token
must be the top alternative; the prompt logprobs of an echoed completion
(what evaluation harnesses read for log-likelihood) must agree with the
runner's own /score of the same tokens and with the logprobs the same tokens
got while they were being generated.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import ollama
import openai
import pytest

from app.server.openai_api import text_offsets
from app.server.runners import Runner, RunnerCommand, RunnerError
from app.store.names import ModelName
from app.store.store import Store
from tests.server_process import ServerProcess, clone_store

SMOL = "smollm2:135m"
GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 8}
PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def models(smollm2_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_store(smollm2_store, tmp_path_factory.mktemp("logprobs") / "models")


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(models, tmp_path_factory.mktemp("home")) as s:
        yield s


@pytest.fixture(scope="module")
def vocab(models: Path) -> llama_cpp.Llama:
    """SmolLM2's tokenizer, loaded on its own: the count of prompt tokens, checked independently of the server."""
    path = Store(models).model_path(ModelName.parse(SMOL))
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


@pytest.fixture
def oa(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


def runner_url(server: ServerProcess) -> str:
    """The address of the server's (one) runner, read from its command line."""
    (pid,) = server.runner_pids()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return f"http://127.0.0.1:{int(argv[argv.index(b'--port') + 1])}"


def prompt_tokens(vocab: llama_cpp.Llama, text: str) -> list[int]:
    """`text` as the runner tokenizes a prompt: BOS when the model adds one, special tokens parsed."""
    return vocab.tokenize(text.encode(), add_bos=True, special=True)  # llama.cpp adds BOS only if the model does


def assert_greedy_entries(entries: list[Any], top: int) -> None:
    """Each entry: a logprob <= 0, `top` alternatives best first, the chosen token the best one."""
    assert entries
    for e in entries:
        assert e.logprob <= 0
        alternatives = e.top_logprobs or []
        assert len(alternatives) == top
        if top:
            assert [a.logprob for a in alternatives] == sorted((a.logprob for a in alternatives), reverse=True)
            assert alternatives[0].logprob >= e.logprob - 1e-6
            assert alternatives[0].token == e.token  # greedy: the sampler took the most likely token
        raw = getattr(e, "bytes", None)  # the ollama client's type has no bytes field; OpenAI's has
        if raw is not None:
            assert bytes(raw).decode("utf-8", "replace") == e.token or "\ufffd" in e.token


# -- requests the wire models refuse --------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/api/chat", {"messages": [], "top_logprobs": 21}, "top_logprobs: must be between 0 and 20"),
        ("/api/generate", {"prompt": "x", "top_logprobs": -1}, "top_logprobs: must be between 0 and 20"),
        ("/api/generate", {"prompt": "x", "logprobs": "yes"}, "logprobs: must be true or false"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
         "top_logprobs: needs logprobs: true"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True,
                                  "top_logprobs": 30}, "top_logprobs: must be between 0 and 20"),
        ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs: must be between 0 and 20"),
        ("/v1/completions", {"prompt": "x", "logprobs": True}, "logprobs: must be a whole number"),
        ("/v1/completions", {"prompt": [[1, 2], [3]]}, "prompt: takes one prompt per request"),
        ("/v1/completions", {"prompt": [1, -2]}, "prompt: must be a string or a list of token ids"),
        ("/v1/completions", {"prompt": "x", "echo": 1}, "echo: must be true or false"),
    ],
)  # fmt: skip
def test_bad_logprob_fields_are_400s_naming_the_field(
    server: ServerProcess, path: str, body: dict[str, Any], message: str
) -> None:
    r = httpx.post(server.url + path, json={"model": SMOL, **body}, timeout=None)
    assert r.status_code == 400
    error = r.json()["error"]
    assert message in (error["message"] if isinstance(error, dict) else error)


def test_text_offsets_follow_the_text_past_added_and_split_tokens() -> None:
    assert text_offsets("Hello world", ["Hello", " world"]) == [0, 5]
    assert text_offsets("Hi there", ["<s>", "Hi", " there"]) == [0, 0, 2]  # an added BOS is not in the text
    assert text_offsets("a 😀 b", ["a", " \ufffd", "\ufffd", " b"]) == [0, 1, 1, 3]  # one emoji in two tokens


# -- Ollama ---------------------------------------------------------------------------------


def test_ollama_chat_logprobs_whole_and_streamed(server: ServerProcess) -> None:
    client = ollama.Client(host=server.url)
    messages = [{"role": "user", "content": "Name three colors."}]
    whole = client.chat(SMOL, messages, logprobs=True, top_logprobs=3, options=GREEDY)
    entries = whole.logprobs
    assert len(entries) == whole.eval_count == 8
    assert_greedy_entries(entries, 3)
    assert "".join(e.token for e in entries) == whole.message.content
    chunks = list(client.chat(SMOL, messages, logprobs=True, top_logprobs=3, options=GREEDY, stream=True))
    streamed = [e for c in chunks for e in (c.logprobs or [])]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)
    for c in chunks:
        if c.message.content:  # each piece of text comes with the logprobs of the tokens it came from
            assert "".join(e.token for e in c.logprobs) == c.message.content
    plain = client.chat(SMOL, messages, options=GREEDY)
    assert plain.logprobs is None and plain.message.content == whole.message.content


def test_stream_interval_gathers_tokens_into_fewer_chunks_with_the_same_text(server: ServerProcess) -> None:
    """Tokens of one interval come as one chunk, with the logprobs of each; 0 sends every token alone."""
    client = ollama.Client(host=server.url)
    options = {**GREEDY, "num_predict": 48, "ignore_eos": True}

    def stream(interval: float) -> list[Any]:
        chunks = client.generate(SMOL, PROMPT, raw=True, logprobs=True, stream=True, options=options | {
            "stream_interval": interval})  # fmt: skip
        return [c for c in chunks if c.response or c.done]

    alone, gathered = stream(0), stream(1.0)
    for chunks in (alone, gathered):
        entries = [e for c in chunks for e in (c.logprobs or [])]
        assert len(entries) == chunks[-1].eval_count == 48
        for c in chunks[:-1]:
            assert "".join(e.token for e in c.logprobs) == c.response
    assert "".join(c.response for c in gathered) == "".join(c.response for c in alone)
    assert max(len(c.logprobs) for c in alone[:-1]) == 1
    assert len(gathered) < len(alone) / 4, [len(c.logprobs) for c in gathered[:-1]]
    with pytest.raises(ollama.ResponseError, match="stream_interval"):
        client.generate(SMOL, PROMPT, options={"stream_interval": 5})


def test_ollama_generate_logprobs_without_alternatives(server: ServerProcess) -> None:
    client = ollama.Client(host=server.url)
    reply = client.generate(SMOL, PROMPT, raw=True, logprobs=True, options=GREEDY)
    assert len(reply.logprobs) == reply.eval_count
    assert_greedy_entries(reply.logprobs, 0)
    assert "".join(e.token for e in reply.logprobs) == reply.response
    top = client.generate(SMOL, PROMPT, raw=True, logprobs=True, top_logprobs=5, options=GREEDY)
    assert [e.logprob for e in top.logprobs] == pytest.approx([e.logprob for e in reply.logprobs], abs=1e-4)
    assert_greedy_entries(top.logprobs, 5)
    body = {"model": SMOL, "prompt": PROMPT, "raw": True, "logprobs": True, "top_logprobs": 2, "stream": False}
    wire = httpx.post(server.url + "/api/generate", json={**body, "options": GREEDY}, timeout=None).json()["logprobs"]
    assert set(wire[0]) == {"token", "logprob", "bytes", "top_logprobs"}  # Ollama's shape, bytes included
    assert set(wire[0]["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert bytes(wire[0]["bytes"]).decode() == wire[0]["token"] == reply.logprobs[0].token


# -- OpenAI ---------------------------------------------------------------------------------


def test_openai_chat_logprobs_whole_and_in_stream_deltas(oa: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    args = {"model": SMOL, "messages": messages, "temperature": 0, "max_tokens": 8, "logprobs": True}
    whole = oa.chat.completions.create(**args, top_logprobs=2)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 8
    assert_greedy_entries(content, 2)
    assert "".join(e.token for e in content) == whole.choices[0].message.content
    streamed: list[Any] = []
    for chunk in oa.chat.completions.create(**args, top_logprobs=2, stream=True):
        choice = chunk.choices[0]
        if choice.delta.content:
            assert choice.logprobs is not None and choice.logprobs.content
        if choice.logprobs:
            streamed += choice.logprobs.content
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)
    none = oa.chat.completions.create(**{**args, "logprobs": False})
    assert none.choices[0].logprobs is None


def test_echoed_prompt_logprobs_one_per_prompt_token(server: ServerProcess, oa: openai.OpenAI, vocab: Any) -> None:
    reply = oa.completions.create(model=SMOL, prompt=PROMPT, echo=True, logprobs=3, max_tokens=0)
    choice = reply.choices[0]
    assert choice.text == PROMPT
    lp = choice.logprobs
    tokens = prompt_tokens(vocab, PROMPT)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(tokens)
    assert reply.usage.prompt_tokens == len(tokens) and reply.usage.completion_tokens == 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert len(top) in (3, 4)  # the 3 most likely, and the chosen token when it is not among them
        assert max(top.values()) >= logprob - 1e-6 and top[token] == logprob
    assert [PROMPT[o : o + len(t)] for t, o in zip(lp.tokens, lp.text_offset, strict=True)] == lp.tokens
    # the runner's own scoring of the same tokens gives the same figures
    windows = [{"tokens": tokens, "from": 1}]
    answer = httpx.post(runner_url(server) + "/score", json={"windows": windows}, timeout=None).json()
    direct = answer["windows"][0]["logprobs"]
    assert lp.token_logprobs[1:] == pytest.approx(direct, abs=1e-5)
    assert math.fsum(lp.token_logprobs[1:]) == pytest.approx(math.fsum(direct), abs=1e-4)


def test_echo_with_generation_matches_the_scored_continuation(oa: openai.OpenAI) -> None:
    """lm-evaluation-harness's request: token ids, echo, logprobs 1, max_tokens 1; then score what was generated."""
    first = oa.completions.create(model=SMOL, prompt=PROMPT, echo=True, logprobs=1, max_tokens=0)
    n = len(first.choices[0].logprobs.tokens)
    grown = oa.completions.create(model=SMOL, prompt=PROMPT, echo=True, logprobs=1, max_tokens=4, temperature=0)
    lp = grown.choices[0].logprobs
    assert len(lp.tokens) == n + 4 == n + grown.usage.completion_tokens
    assert lp.token_logprobs[:n] == pytest.approx(first.choices[0].logprobs.token_logprobs, abs=1e-5)
    text = grown.choices[0].text
    assert text.startswith(PROMPT) and text == "".join(lp.tokens)
    generated = lp.token_logprobs[n:]
    for token, top in zip(lp.tokens[n:], lp.top_logprobs[n:], strict=True):
        assert max(top, key=top.get) == token  # greedy
    # the generated text, scored as a prompt: each token's logprob as it was when sampled
    rescored = oa.completions.create(model=SMOL, prompt=text, echo=True, logprobs=1, max_tokens=0)
    again = rescored.choices[0].logprobs
    assert again.tokens == lp.tokens  # the text re-tokenizes to the same tokens
    # one batch against token-by-token decoding of a 4-bit model: the sums run in other orders (16 tokens: mean
    # difference 0.008, largest 0.08 measured here)
    assert again.token_logprobs[n:] == pytest.approx(generated, abs=0.1)


def test_token_id_prompts_are_scored_as_sent(oa: openai.OpenAI, vocab: Any) -> None:
    tokens = prompt_tokens(vocab, PROMPT)
    by_ids = oa.completions.create(model=SMOL, prompt=[tokens], echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = by_ids.choices[0].logprobs
    assert len(lp.token_logprobs) == len(tokens) + 1  # the prompt's, then the one generated token's
    assert lp.token_logprobs[0] is None and lp.token_logprobs[-1] <= 0
    by_text = oa.completions.create(model=SMOL, prompt=PROMPT, echo=True, logprobs=1, max_tokens=0)
    assert lp.token_logprobs[:-1] == pytest.approx(by_text.choices[0].logprobs.token_logprobs, abs=1e-5)


def test_streamed_echo_sends_the_prompt_first(oa: openai.OpenAI) -> None:
    chunks = list(oa.completions.create(model=SMOL, prompt=PROMPT, echo=True, logprobs=2, max_tokens=3,
                                        temperature=0, stream=True))  # fmt: skip
    assert chunks[0].choices[0].text == PROMPT
    assert chunks[0].choices[0].logprobs.token_logprobs[0] is None
    entries = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "".join(entries) and text.startswith(PROMPT)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_prompt_longer_than_the_context_is_a_400(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/v1/completions",
        json={"model": SMOL, "prompt": "word " * 10000, "echo": True, "logprobs": 1, "max_tokens": 0},
        timeout=None,
    )
    assert r.status_code == 400, r.text
    assert "more than the context" in r.json()["error"]["message"]


# -- Runner.score, the server's client for the runner's /score ----------------------------------


def test_runner_score_json_and_distribution_agree(tiny_gguf: Path, tmp_path: Path) -> None:
    """On the tiny random model: the binary distribution's rows are log-softmaxes whose entries are the JSON figures."""
    import numpy as np

    async def scenario() -> None:
        runner = Runner(RunnerCommand(), tiny_gguf, ["--ctx-size", "256"], tmp_path)
        try:
            await runner.wait_ready()
            tokens = (await runner.tokenize("one two three four five six seven"))[:8]
            windows = [{"tokens": tokens, "from": 1}, {"tokens": tokens[:5], "from": 3}]
            answer = await runner.score({"windows": windows, "top_k": 2})
            assert [len(w["logprobs"]) for w in answer["windows"]] == [len(tokens) - 1, 2]
            assert all(len(top) == 2 and top[0][1] >= top[1][1] for top in answer["windows"][0]["top"])
            dist = await runner.score({"windows": windows, "distribution": True})
            rows = dist["distribution"]
            assert rows.shape == (len(tokens) - 1 + 2, answer["n_vocab"]) and rows.dtype == np.float32
            assert np.allclose(np.log(np.exp(rows.astype(np.float64)).sum(axis=1)), 0, atol=1e-3)
            wanted = [tokens[j] for j in range(1, len(tokens))] + [tokens[3], tokens[4]]
            picked = rows[np.arange(len(wanted)), wanted]
            json_figures = answer["windows"][0]["logprobs"] + answer["windows"][1]["logprobs"]
            assert picked == pytest.approx(json_figures, abs=1e-4)
            with pytest.raises(RunnerError) as refused:
                await runner.score({"windows": [{"tokens": tokens * 40, "from": 1}]})
            assert refused.value.kind == "request"
        finally:
            await runner.stop()

    asyncio.run(scenario())
