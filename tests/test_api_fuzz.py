"""Malformed bodies against one real `loam serve`: every one a 4xx JSON error naming the field, none a crash."""

from __future__ import annotations

import json
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client import RequestError, ServerError, chat_body, parse_chunk
from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from tests.server_process import ServerProcess, clone_store

FORBIDDEN = re.compile(r"Error\b|Exception|Traceback|pydantic|errors\.pydantic\.dev|127\.0\.0\.1:")
JSON = {"Content-Type": "application/json"}
DEEP_LIST = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000

#: Bodies no route may accept, whatever it expects.
GENERIC: list[bytes] = [
    b"",
    b"[]",
    b"null",
    b'"a string"',
    b"123",
    b"{not json",
    b'{"model": NaN}',
    b"\xff\xfe\x00garbage",
    b'{"model": "tiny\xff"}',
    DEEP_LIST,
    DEEP_OBJECT,
    b'{"model": "tiny", "x": ' + DEEP_LIST + b"}",
]

STRING = [5, True, [], {}, 1e300, ""]
BOOL = ["no", "true", 1, [], {}, 0.0]
OPTIONS = [[], "x", 5, {"temperature": "hot"}, {"num_ctx": -1}, {"num_ctx": 1e15}, {"top_k": [1]}, {"stop": 5}]
KEEP_ALIVE = [1e300, "99999999999h", "soon", True, [], {}, "9" * 500]
OLLAMA_MESSAGES = ["x", {"a": 1}, [5], [{"content": "x"}], [{"role": "robot"}], [{"role": "user", "content": 5}]]

FORMAT = [5, "xml", [], {"type": 5}, {"$ref": "#/nowhere"}]
GENERATION = {"model": STRING, "stream": BOOL, "options": OPTIONS, "keep_alive": KEEP_ALIVE, "think": BOOL}
OPENAI = {
    "model": STRING,
    "stream": BOOL,
    "temperature": ["hot", [], {}, True],
    "max_tokens": ["x", 1.5, -5],
    "stop": [5, [""], [1], {}],
    "n": [2, "1"],
    "stream_options": [[], "x", {"include_usage": "yes"}],
    "response_format": [
        {"type": "bogus"},
        "x",
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": {"type": 7}}},
    ],
}

#: path, method, a valid body, and bad values per field (each replacing that field in the valid body).
ROUTES: list[tuple[str, str, dict[str, Any], dict[str, list[Any]]]] = [
    ("/api/generate", "POST", {"model": "tiny", "prompt": "hi"},
     {**GENERATION, "prompt": STRING[:4], "format": FORMAT,
     "context": ["x", [1.5], ["a"], [-5]], "raw": BOOL}),
    ("/api/chat", "POST", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
     {**GENERATION, "messages": OLLAMA_MESSAGES, "tools": ["x", 5, [5]]}),
    ("/api/embed", "POST", {"model": "tiny", "input": "hi"}, {**GENERATION, "input": [5, [1], {}], "truncate": BOOL}),
    ("/api/embeddings", "POST", {"model": "tiny", "prompt": "hi"}, {**GENERATION, "prompt": STRING[:4]}),
    ("/api/show", "POST", {"model": "tiny"}, {"model": STRING, "name": STRING[:4]}),
    ("/api/copy", "POST", {"source": "tiny", "destination": "tiny2"}, {"source": STRING, "destination": STRING}),
    ("/api/delete", "DELETE", {"model": "nothere"}, {"model": STRING, "name": STRING[:4]}),
    ("/api/pull", "POST", {"model": "tiny", "stream": False}, {"model": STRING[:4], "stream": BOOL, "insecure": BOOL}),
    ("/api/create", "POST", {"model": "made", "from": "tiny"},
     {"model": STRING[:4], "from": STRING[:4], "files": ["x", {"a": 5}], "parameters": OPTIONS,
      "quantize": [5, []], "messages": OLLAMA_MESSAGES, "license": [5, [5]]}),
    ("/v1/chat/completions", "POST", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
     {**OPENAI, "messages": [[], "x", [{"role": "robot"}], [{"content": "x"}], [{"role": "user", "content": 5}]]}),
    ("/v1/completions", "POST", {"model": "tiny", "prompt": "hi"}, {**OPENAI, "prompt": [5, ["a", "b"], {}]}),
    ("/v1/embeddings", "POST", {"model": "tiny", "input": "hi"},
     {"model": STRING, "input": [5, [], [1], {}], "encoding_format": ["hex", 5], "dimensions": ["x", 1.5]}),
    ("/v1/responses", "POST", {"model": "tiny", "input": "hi"},
     {"model": STRING, "input": [5, [5], [{"type": "nope"}], {}], "instructions": [5, []],
      "tools": ["x", [5], [{"type": "web_search"}]], "max_output_tokens": ["x", -5], "temperature": ["hot", -1]}),
    ("/v1/messages", "POST", {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
     {"model": STRING, "messages": ["x", 5, [{"role": "robot"}], [{"content": "x"}]], "max_tokens": ["x", -1],
      "tools": ["x", [5]], "stop_sequences": [5, [5]], "temperature": ["hot", -1]}),
]  # fmt: skip


def cases() -> Iterator[tuple[str, str, bytes, str | None]]:
    """(path, method, body, the field the error must name) for every route."""
    for path, method, valid, fields in ROUTES:
        for body in GENERIC:
            yield path, method, body, None
        for field, values in fields.items():
            for value in values:
                yield path, method, json.dumps({**valid, field: value}).encode(), field
            required = ("model", "source", "destination") + (("messages", "input") if path.startswith("/v1/") else ())
            if field in required and field in valid:
                yield path, method, json.dumps({k: v for k, v in valid.items() if k != field}).encode(), field


@pytest.fixture(scope="module")
def models(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "models"
    create(
        Store(root),
        Catalog({}, "tiny"),
        ModelName.parse("tiny"),
        parse(f"FROM {tiny_gguf}\nPARAMETER num_ctx 256\n"),
        folder=root,
    )
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(models, tmp_path_factory.mktemp("home")) as s:
        yield s


def error_message(path: str, response: httpx.Response) -> str:
    body = response.json()
    if path.startswith("/v1/"):
        assert set(body["error"]) >= {"message", "type"}, body
        return body["error"]["message"]
    assert list(body) == ["error"], body
    return body["error"]


def test_every_malformed_body_is_a_clear_4xx(server: ServerProcess) -> None:
    all_cases = list(cases())
    per_route = {path: sum(1 for c in all_cases if c[0] == path) for path, *_ in ROUTES}
    assert min(per_route.values()) >= 20, per_route
    failures = []
    with httpx.Client(base_url=server.url, headers=JSON, timeout=30) as http:
        for path, method, body, field in all_cases:
            response = http.request(method, path, content=body)
            try:
                assert 400 <= response.status_code < 500, response.status_code
                message = error_message(path, response)
                assert isinstance(message, str) and message
                assert not FORBIDDEN.search(message), message
                if field is not None:
                    assert field in message, message
                if body in (DEEP_LIST, DEEP_OBJECT):
                    assert message == "request body nests too deeply"
            except (AssertionError, ValueError, KeyError) as e:
                failures.append(f"{method} {path} {body[:80]!r}: {response.status_code} {response.text[:200]} ({e})")
        assert not failures, "\n".join(failures[:20])
        assert http.get("/api/ps").json()["models"] == []  # checked before any model was loaded
        reply = http.post("/api/chat", json={**ROUTES[1][2], "stream": False, "options": {"num_predict": 3}})
        assert reply.status_code == 200 and reply.json()["done"] is True


def test_named_errors_read_as_the_api(server: ServerProcess) -> None:
    http = httpx.Client(base_url=server.url, headers=JSON)
    bad = http.post("/api/generate", json={"model": "tiny", "prompt": "x", "options": {"temperature": "hot"}})
    assert bad.status_code == 400 and bad.json()["error"] == "options.temperature: takes a number, got 'hot'"
    role = http.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user"}, {"content": "x"}]})
    assert role.json()["error"] == "messages[1].role: is required"
    stream = http.post("/api/chat", json={"model": "tiny", "messages": [], "stream": "no"})
    assert stream.json()["error"] == "stream: must be true or false"
    long_name = "x" * 5000
    missing = http.post("/api/show", json={"model": long_name})
    assert missing.status_code == 404 and len(missing.json()["error"]) < 200
    stop = http.post(
        "/api/generate",
        json={"model": "tiny", "prompt": "a", "options": {"stop": [], "num_predict": 2}, "stream": False},
    )
    assert stop.status_code == 200 and stop.json()["done"]
    nulls = {"model": "tiny", "messages": None, "stream": None, "options": None, "keep_alive": None, "think": "high"}
    assert http.post("/api/chat", json=nulls).json()["done_reason"] == "load"  # null is absent, as in Ollama
    assert http.post("/api/chat", json={"model": None}).json()["error"] == "model: is required"
    forever = http.post("/api/generate", json={"model": "tiny", "keep_alive": -1})
    assert forever.status_code == 200 and forever.json()["done_reason"] == "load"
    made = http.post(
        "/api/create", json={"model": "q", "from": "tiny", "quantize": "q8_0", "stream": False}, timeout=60
    )
    assert made.status_code == 200, made.text
    requantize = http.post("/api/create", json={"model": "q2", "from": "q", "quantize": "q8_0"})
    assert requantize.status_code == 400 and requantize.json()["error"].startswith("quantize: ")


def _read(url: str, body: dict[str, Any], lines: list[str], started: threading.Event) -> None:
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.strip():
                lines.append(line)
            if len(lines) >= 2:
                started.set()


def test_sigterm_ends_open_streams_with_an_error_line(smollm2_store: Path, tmp_path: Path) -> None:
    """uvicorn cancels what is still open 3 s after SIGTERM; each stream's last line says why it ends."""
    long = {"num_predict": 100_000, "temperature": 0, "num_ctx": 4096}
    messages = [{"role": "user", "content": "Tell me a very long story."}]
    models = clone_store(smollm2_store, tmp_path / "models")
    with ServerProcess(models, tmp_path / "home", LOAM_NUM_PARALLEL="3") as s:
        chat: list[str] = []
        sse: list[str] = []
        streams = [
            (s.url + "/api/chat", {"model": "smollm2:135m", "messages": messages, "options": long}, chat),
            (s.url + "/v1/chat/completions", {"model": "smollm2:135m", "messages": messages, "stream": True,
                                              "max_tokens": 100_000, "temperature": 0}, sse),
        ]  # fmt: skip
        events = [threading.Event() for _ in streams]
        threads = [
            threading.Thread(target=_read, args=(url, body, lines, event))
            for (url, body, lines), event in zip(streams, events, strict=True)
        ]
        whole: list[httpx.Response] = []
        threads.append(
            threading.Thread(
                target=lambda: whole.append(
                    httpx.post(s.url + "/api/chat", json={**streams[0][1], "stream": False}, timeout=60)
                )
            )
        )
        for t in threads:
            t.start()
        assert all(e.wait(60) for e in events)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert s.proc.wait(timeout=30) is not None
    assert whole[0].status_code == 503 and whole[0].json() == {"error": "server shutting down"}
    assert json.loads(chat[-1]) == {"error": "server shutting down"}
    assert all(json.loads(line)["done"] is False for line in chat[:-1])
    assert sse[-1] == "data: [DONE]", sse[-3:]
    assert json.loads(sse[-2].removeprefix("data: "))["error"]["message"] == "server shutting down", sse[-3:]


def test_the_client_checks_with_the_same_models() -> None:
    with pytest.raises(RequestError, match=r"^options\.temperature: takes a number, got 'hot'$"):
        chat_body("tiny", [{"role": "user", "content": "x"}], options={"temperature": "hot"})
    with pytest.raises(RequestError, match=r"^keep_alive: must be at most 100 years"):
        chat_body("tiny", [{"role": "user", "content": "x"}], keep_alive="99999999999h")
    assert chat_body("tiny", [], keep_alive=-1, format={"type": "object"})["keep_alive"] == -1
    assert parse_chunk('{"done": true, "eval_count": 3, "eval_duration": 1e6}')["eval_count"] == 3
    with pytest.raises(ServerError, match=r"final line is malformed: eval_count: "):
        parse_chunk('{"done": true, "eval_count": "many"}')
