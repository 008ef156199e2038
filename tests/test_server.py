"""`loam serve` through the official Ollama and OpenAI Python clients, unchanged, over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from tests.fake_registry import FakeRegistry
from tests.runner_process import REPO, free_port
from tests.server_process import ServerProcess, clone_store

SMOL = "smollm2:135m"
GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def models(smollm2_store: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of this module's own: smollm2 plus `tiny`, the random-weight model."""
    root = clone_store(smollm2_store, tmp_path_factory.mktemp("server") / "models")
    store = Store(root)
    create(
        store,
        Catalog({}, SMOL),
        ModelName.parse("tiny"),
        parse(f"FROM {tiny_gguf}\nPARAMETER num_ctx 256\n"),
        folder=root,
    )
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(models, tmp_path_factory.mktemp("home")) as s:
        yield s


@pytest.fixture
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url)


# -- the store through the Ollama client --------------------------------------


def test_list_show_copy_delete(client: ollama.Client) -> None:
    names = {m.model for m in client.list().models}
    assert {SMOL, "tiny:latest"} <= names
    shown = client.show(SMOL)
    assert shown.details.family == "llama" and shown.details.quantization_level == "Q4_1"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert "<|im_start|>" in (shown.template or "") and "FROM " in (shown.modelfile or "")
    client.copy(SMOL, "smol-copy")
    assert "smol-copy:latest" in {m.model for m in client.list().models}
    client.delete("smol-copy")
    assert "smol-copy:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("smol-copy")
    assert missing.value.status_code == 404


def test_pull_streams_progress(client: ollama.Client, tiny_gguf: Path) -> None:
    registry = FakeRegistry().start()
    try:
        registry.add_model("library/pulled", "latest", tiny_gguf.read_bytes())
        events = list(client.pull(f"{registry.host}/library/pulled", insecure=True, stream=True))
    finally:
        registry.stop()
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    transfer = [e for e in events if e.total]
    assert transfer and transfer[-1].completed == transfer[-1].total == tiny_gguf.stat().st_size
    assert client.show(f"{registry.host}/library/pulled").details.format == "gguf"


def test_create_from_a_stored_model(client: ollama.Client) -> None:
    events = list(client.create("tiny-pirate", from_="tiny", system="Talk like a pirate.", stream=True))
    assert events[-1].status == "success"
    shown = client.show("tiny-pirate")
    assert "Talk like a pirate." in (shown.modelfile or "")
    assert "num_ctx" in (shown.parameters or "")  # inherited from tiny


# -- generation ----------------------------------------------------------------


def test_chat_streamed_and_whole_agree_and_carry_timings(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat(SMOL, messages=messages, options=GREEDY)
    assert whole.done and whole.done_reason == "length" and whole.message.role == "assistant"
    assert whole.eval_count == 12 and whole.prompt_eval_count > 0
    assert whole.total_duration >= whole.prompt_eval_duration + whole.eval_duration > 0
    chunks = list(client.chat(SMOL, messages=messages, options=GREEDY, stream=True))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert "".join(c.message.content for c in chunks) == whole.message.content
    # The second time the same conversation costs only the last prompt token.
    assert chunks[-1].prompt_eval_count <= 1


def test_a_cached_prompt_is_counted_apart(server: ServerProcess) -> None:
    """loam's final chunk says how many prompt tokens came from the slot's cache (the chat's panel shows it)."""
    body = {"model": SMOL, "messages": [{"role": "user", "content": "Name three rivers."}], "options": GREEDY}
    first = httpx.post(server.url + "/api/chat", json={**body, "stream": False}, timeout=None).json()
    again = httpx.post(server.url + "/api/chat", json={**body, "stream": False}, timeout=None).json()
    assert again["prompt_eval_count"] <= 1
    assert again["prompt_eval_count"] + again["prompt_cache_count"] == first["prompt_eval_count"] + first.get(
        "prompt_cache_count", 0
    )


def test_generate_returns_context_and_raw(client: ollama.Client) -> None:
    result = client.generate(SMOL, prompt="Name a colour.", options=GREEDY)
    assert result.response and result.done_reason == "length"
    assert len(result.context) > result.eval_count
    raw = client.generate(SMOL, prompt="1, 2, 3,", raw=True, options=GREEDY)
    assert raw.prompt_eval_count == len(raw.context) - raw.eval_count < 10  # no template around it


def test_ignore_eos_generates_exactly_num_predict_tokens(client: ollama.Client) -> None:
    short = client.generate(SMOL, "Say hi.", options={**GREEDY, "num_predict": 200})
    assert short.done_reason == "stop" and short.eval_count < 200  # the model ends its answer on its own
    full = client.generate(SMOL, "Say hi.", options={**GREEDY, "num_predict": short.eval_count + 8, "ignore_eos": True})
    assert full.done_reason == "length" and full.eval_count == short.eval_count + 8


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    result = client.embed(SMOL, input=["the cat sat", "a dog ran"])
    assert len(result.embeddings) == 2 and all(len(v) == 576 for v in result.embeddings)
    assert abs(sum(x * x for x in result.embeddings[0]) - 1) < 1e-3
    assert result.embeddings[0] != result.embeddings[1]
    legacy = client.embeddings(SMOL, prompt="the cat sat")
    assert max(abs(a - b) for a, b in zip(legacy.embedding, result.embeddings[0], strict=True)) < 1e-4


def test_errors_have_ollama_status_codes(server: ServerProcess, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat("nope", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
    assert 'model "nope" not found, try pulling it first' in missing.value.error
    bad = httpx.post(server.url + "/api/chat", content=b"{not json")
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    role = httpx.post(server.url + "/api/chat", json={"model": SMOL, "messages": [{"role": "robot", "content": "x"}]})
    assert role.status_code == 400 and "robot" in role.json()["error"]
    opt = httpx.post(server.url + "/api/generate", json={"model": SMOL, "prompt": "x", "options": {"top_p": 7}})
    assert opt.status_code == 400 and "top_p" in opt.json()["error"]


# -- keep-alive and the scheduler --------------------------------------------------


def test_keep_alive_reuses_then_unloads(client: ollama.Client) -> None:
    client.generate("tiny", prompt="", keep_alive=0)  # start from unloaded
    first = client.generate("tiny", prompt="a b c", options={"num_predict": 4})
    second = client.generate("tiny", prompt="a b c d", options={"num_predict": 4})
    assert first.load_duration > 0 and second.load_duration < 0.05 * first.load_duration
    loaded = {m.model: m for m in client.ps().models}
    assert loaded["tiny:latest"].context_length == 256 and loaded["tiny:latest"].size > 0
    client.generate("tiny", prompt="", keep_alive=0)
    assert "tiny:latest" not in {m.model for m in client.ps().models}


def test_an_empty_prompt_loads_the_model(client: ollama.Client) -> None:
    result = client.generate("tiny", prompt="", keep_alive="1m")
    assert result.done and result.done_reason == "load"
    assert "tiny:latest" in {m.model for m in client.ps().models}
    unload = client.chat("tiny", messages=[], keep_alive=0)
    assert unload.done_reason == "unload" and "tiny:latest" not in {m.model for m in client.ps().models}


def test_changed_load_options_reload_the_model(client: ollama.Client) -> None:
    client.generate(SMOL, prompt="a", options={"num_predict": 1, "num_ctx": 512})
    assert {m.model: m for m in client.ps().models}[SMOL].context_length == 512
    client.generate(SMOL, prompt="a", options={"num_predict": 1, "num_ctx": 1024})
    assert {m.model: m for m in client.ps().models}[SMOL].context_length == 1024


def test_a_runner_killed_mid_stream(server: ServerProcess, client: ollama.Client) -> None:
    stream = client.chat(
        SMOL, messages=[{"role": "user", "content": "Tell me a long story."}], stream=True,
        options={"num_predict": 4000, "temperature": 0},
    )  # fmt: skip
    next(stream)
    runners = server.runner_pids()
    assert runners
    for pid in runners:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(ollama.ResponseError, match="SIGKILL"):
        for _ in stream:
            pass
    again = client.chat(SMOL, messages=[{"role": "user", "content": "Hi"}], options=GREEDY)
    assert again.done and again.message.content and again.load_duration > 0


# -- the OpenAI client -------------------------------------------------------------


def test_openai_chat_models_embeddings(server: ServerProcess) -> None:
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert SMOL in {m.id for m in oa.models.list().data}
    messages = [{"role": "user", "content": "What is 2+2?"}]
    whole = oa.chat.completions.create(model=SMOL, messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 10
    assert whole.usage.prompt_tokens > 5
    chunks = list(
        oa.chat.completions.create(
            model=SMOL, messages=messages, max_tokens=10, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 10
    completion = oa.completions.create(model=SMOL, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert completion.choices[0].text and completion.usage.completion_tokens == 5
    vectors = oa.embeddings.create(model=SMOL, input=["the cat sat", "a dog ran"])
    assert [len(d.embedding) for d in vectors.data] == [576, 576]
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="nope", messages=messages)


# -- limits and lifecycle, each on a server of its own -------------------------------


def test_a_full_queue_answers_503(models: Path, tmp_path: Path) -> None:
    # Greedy SmolLM2 Q4_1 answers this with an endless "la Femme, la Femme, ...": a request that stays busy.
    question = [{"role": "user", "content": "What is the capital of France?"}]
    body = {"model": SMOL, "messages": question, "options": {"temperature": 0, "num_predict": 100000}}
    with ServerProcess(models, tmp_path, LOAM_MAX_QUEUE="1") as s:
        with httpx.stream("POST", s.url + "/api/chat", json=body, timeout=60) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)
            second = httpx.post(s.url + "/api/chat", json={**body, "stream": False}, timeout=60)
            assert second.status_code == 503 and "busy" in second.json()["error"]


def test_a_quantized_kv_cache_loads_and_answers(models: Path, tmp_path: Path) -> None:
    """LOAM_KV_CACHE_TYPE reaches the runner as llama-server's -ctk/-ctv flags, which it takes."""
    body = {"model": SMOL, "prompt": "Say hello.", "stream": False, "options": {"temperature": 0, "num_predict": 4}}
    with ServerProcess(models, tmp_path, LOAM_KV_CACHE_TYPE="q8_0") as s:
        reply = httpx.post(s.url + "/api/generate", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["eval_count"] == 4


def test_max_loaded_models_evicts_the_idle_one(models: Path, tmp_path: Path) -> None:
    with ServerProcess(models, tmp_path, LOAM_MAX_LOADED_MODELS="1") as s:
        c = ollama.Client(host=s.url)
        c.generate("tiny", prompt="a", options={"num_predict": 1})
        c.generate(SMOL, prompt="a", options={"num_predict": 1})
        assert [m.model for m in c.ps().models] == [SMOL]
        assert len(s.runner_pids()) == 1


def test_stopping_the_server_stops_its_runners(models: Path, tmp_path: Path) -> None:
    s = ServerProcess(models, tmp_path).wait_ready()
    ollama.Client(host=s.url).generate("tiny", prompt="a", options={"num_predict": 1})
    runners = s.runner_pids()
    assert runners
    s.stop()
    assert s.proc.returncode == 0
    for pid in runners:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_binding_beyond_loopback_needs_a_flag(models: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LOAM_HOST": f"0.0.0.0:{port}", "LOAM_MODELS": str(models), "XDG_CONFIG_HOME": str(tmp_path)}
    refused = subprocess.run([sys.executable, "-m", "app", "serve"], env=env, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 1 and "--allow-remote" in refused.stderr
    s = ServerProcess(models, tmp_path / "open", "--allow-remote", LOAM_HOST=f"0.0.0.0:{port}")
    try:
        s.url = f"http://127.0.0.1:{port}"
        s.wait_ready()
        assert "reachable from other machines" in s.log.read_text()
    finally:
        s.stop()


def test_allow_remote_must_be_a_real_boolean(models: Path, tmp_path: Path) -> None:
    (tmp_path / "loam").mkdir()
    (tmp_path / "loam" / "config.toml").write_text('[server]\nallow_remote = "false"\n')
    env = {
        **os.environ,
        "LOAM_HOST": f"0.0.0.0:{free_port()}",
        "LOAM_MODELS": str(models),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    refused = subprocess.run([sys.executable, "-m", "app", "serve"], env=env, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: config.toml: [server] allow_remote = 'false' must be true or false, without quotes; fix the file"
    ]


def test_a_busy_port_is_one_error_line(server: ServerProcess) -> None:
    env = {**server.env}
    second = subprocess.run([sys.executable, "-m", "app", "serve"], env=env, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 1
    [line] = second.stderr.strip().splitlines()
    assert line.startswith("error: ") and f"{server.host} is in use" in line
    assert httpx.get(server.url + "/api/version").status_code == 200  # the first server is unharmed


def test_ps_and_stop_commands(server: ServerProcess) -> None:
    ollama.Client(host=server.url).generate("tiny", prompt="a", options={"num_predict": 1}, keep_alive="10m")
    env = {**server.env}
    shown = subprocess.run([sys.executable, "-m", "app", "ps"], env=env, cwd=REPO, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(r for r in rows if r.startswith("tiny:latest"))
    assert "100% CPU" in row and "minutes from now" in row
    stop = subprocess.run(
        [sys.executable, "-m", "app", "stop", "tiny"], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert stop.returncode == 0, stop.stderr
    assert "tiny:latest" not in {m.model for m in ollama.Client(host=server.url).ps().models}


def test_ps_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "LOAM_HOST": f"127.0.0.1:{free_port()}"}
    result = subprocess.run([sys.executable, "-m", "app", "ps"], env=env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "loam serve" in result.stderr and result.stdout == ""


def test_ndjson_lines_are_whole_json(server: ServerProcess) -> None:
    body = {"model": "tiny", "prompt": "a b", "options": {"num_predict": 5}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 5
    assert all(line["done"] is False for line in lines[:-1])


def test_concurrent_requests_share_one_runner(server: ServerProcess) -> None:
    results: list[dict] = []

    def one(i: int) -> None:
        body = {"model": "tiny", "prompt": f"x {i}", "stream": False, "options": {"num_predict": 8}}
        results.append(httpx.post(server.url + "/api/generate", json=body, timeout=120).json())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["eval_count"] for r in results] == [8, 8, 8]
    loaded = [m.model for m in ollama.Client(host=server.url).ps().models]
    assert loaded.count("tiny:latest") == 1 and len(server.runner_pids()) == len(loaded)


def test_runners_do_not_outlive_a_killed_server(models: Path, tmp_path: Path) -> None:
    s = ServerProcess(models, tmp_path).wait_ready()
    ollama.Client(host=s.url).generate("tiny", prompt="a", options={"num_predict": 1})
    runners = s.runner_pids()
    s.proc.kill()
    s.proc.wait()
    for pid in runners:
        for _ in range(100):  # the runner looks for its parent every second
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists()


def test_uvicorn_takes_httptools_for_the_server() -> None:
    """loam depends on httptools: uvicorn's writer with it costs the server less CPU a streamed token than h11's.

    (Runners keep h11, which writes header names as llama-server does: tests/test_runner_protocol.py.)
    """
    import uvicorn

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never called")

    config = uvicorn.Config(app)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
