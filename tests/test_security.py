"""Browser attacks on a real `loam serve`: foreign Origins, DNS-rebinding Host headers, simple-request CSRF and big
bodies are refused before they touch the store, while loopback pages, LOAM_ORIGINS, LOAM_ALLOWED_HOSTS and the
official Ollama client keep working."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from app.errors import ConfigError
from app.server import guard
from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from tests.server_process import ServerProcess

EVIL = "https://evil.example"
LIMIT = 64 * 1024
FAKE_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def models(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding `tiny`, the random-weight model."""
    root = tmp_path_factory.mktemp("security") / "models"
    root.mkdir()
    create(Store(root), Catalog({}, "tiny"), ModelName.parse("tiny"), parse(f"FROM {tiny_gguf}\n"), folder=root)
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "LOAM_ORIGINS": "https://*.trusted.example, chrome-extension://abc",
        "LOAM_ALLOWED_HOSTS": "myloam.lan",
        "LOAM_MAX_BODY": str(LIMIT),
    }
    with ServerProcess(models, tmp_path_factory.mktemp("home"), **env) as s:
        yield s


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the store: relative path -> sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def mutating(tiny_gguf: Path) -> list[tuple[str, str, bytes]]:
    """(method, path, body) for every route that changes the store, each one that would succeed if let through."""
    return [
        ("POST", "/api/pull", json.dumps({"model": "tiny", "stream": False}).encode()),
        ("POST", "/api/push", json.dumps({"model": "tiny", "stream": False}).encode()),
        ("POST", "/api/create", json.dumps({"model": "evil", "from": "tiny", "stream": False}).encode()),
        ("POST", "/api/copy", json.dumps({"source": "tiny", "destination": "evil"}).encode()),
        ("DELETE", "/api/delete", json.dumps({"model": "tiny"}).encode()),
        ("POST", f"/api/blobs/{FAKE_DIGEST}", b"not a model"),
    ]


def send(server: ServerProcess, method: str, path: str, body: bytes = b"", **headers: str) -> httpx.Response:
    return httpx.request(method, server.url + path, content=body, headers=headers, timeout=30)


def test_cross_origin_requests_are_refused(server: ServerProcess, models: Path, tiny_gguf: Path) -> None:
    before = snapshot(models)
    chat = ("POST", "/api/chat", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}))
    for method, path, body in [*mutating(tiny_gguf), (chat[0], chat[1], chat[2].encode())]:
        for origin in (
            EVIL,
            "null",
            "http://localhost.evil.example",
            "https://127.0.0.1.evil.example:80",
            "http://localhost:1.evil.example",
        ):
            r = send(server, method, path, body, origin=origin, **{"content-type": "application/json"})
            assert r.status_code == 403, (path, origin, r.text)
            assert r.json() == {"error": f"origin not allowed: {origin}"}
            assert "access-control-allow-origin" not in r.headers
    long = EVIL + "/" + "x" * 500
    r = send(server, "POST", "/api/copy", b"{}", origin=long)
    assert r.status_code == 403 and len(r.json()["error"]) < 130
    assert snapshot(models) == before
    assert "evil:latest" not in {m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]}


def test_dns_rebinding_host_is_refused(server: ServerProcess, models: Path) -> None:
    before = snapshot(models)
    rebound = f"evil.example:{server.port}"
    attacks = [
        ("DELETE", "/api/delete", json.dumps({"model": "tiny"}).encode()),
        ("GET", "/api/tags", b""),
        ("POST", "/api/create", json.dumps({"model": "evil", "from": "tiny", "stream": False}).encode()),
    ]
    for method, path, body in attacks:
        for host in (rebound, "evil.example", f"127.0.0.1.evil.example:{server.port}"):
            r = send(server, method, path, body, host=host, **{"content-type": "application/json"})
            assert r.status_code == 403, (path, host, r.text)
            assert r.json() == {"error": f"host not allowed: {host}"}
    assert snapshot(models) == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"],
)
def test_simple_request_csrf_is_refused(
    server: ServerProcess, models: Path, tiny_gguf: Path, content_type: str
) -> None:
    before = snapshot(models)
    for method, path, body in mutating(tiny_gguf):
        r = send(server, method, path, body, **{"content-type": content_type})
        assert r.status_code == 415, (path, r.text)
        assert r.json()["error"].startswith("Content-Type must be application/")
    for path in ("/api/chat", "/api/generate", "/api/embed", "/v1/chat/completions"):
        r = send(
            server, "POST", path, b'{"model": "tiny"}', origin="http://localhost:8080", **{"content-type": content_type}
        )
        assert r.status_code == 415 and r.json() == {"error": "Content-Type must be application/json"}, path
    r = send(server, "POST", "/api/copy", b'{"source": "tiny", "destination": "evil"}')  # no type at all
    assert r.status_code == 415
    assert snapshot(models) == before


def test_preflight(server: ServerProcess, models: Path) -> None:
    before = snapshot(models)
    asked = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "Content-Type, Authorization, X-Evil, openai-organization, x-stainless-os",
    }
    r = send(server, "OPTIONS", "/api/chat", origin="http://localhost:5173", **asked)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert r.headers["vary"] == "Origin"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert allowed == {"content-type", "authorization", "openai-organization", "x-stainless-os"}
    assert int(r.headers["access-control-max-age"]) > 0
    refused = send(server, "OPTIONS", "/api/delete", origin=EVIL, **asked)
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert snapshot(models) == before


def test_loopback_and_configured_origins_are_allowed(server: ServerProcess) -> None:
    for origin in (
        "http://localhost:3000",
        "http://127.0.0.1",
        "https://[::1]:8443",
        "app://loam",
        "tauri://localhost",
        "vscode-webview://abc123",
        "https://ui.trusted.example",
        "chrome-extension://abc",
    ):
        r = httpx.get(server.url + "/api/tags", headers={"origin": origin})
        assert r.status_code == 200, origin
        assert r.headers["access-control-allow-origin"] == origin and r.headers["vary"] == "Origin"
    plain = httpx.get(server.url + "/api/tags")
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    assert httpx.get(server.url + "/api/tags", headers={"origin": "https://trusted.example.evil"}).status_code == 403
    copied = httpx.post(
        server.url + "/api/copy",
        json={"source": "tiny", "destination": "from-page"},
        headers={"origin": "http://localhost:5173", "content-type": "application/json; charset=utf-8"},
    )
    assert copied.status_code == 200 and copied.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert httpx.request("DELETE", server.url + "/api/delete", json={"model": "from-page"}).status_code == 200


def test_allowed_hosts(server: ServerProcess) -> None:
    for host in (f"myloam.lan:{server.port}", "myloam.lan", f"localhost:{server.port}", "app.localhost", "[::1]:1"):
        r = httpx.get(server.url + "/api/tags", headers={"host": host})
        assert r.status_code == 200, host
    assert httpx.get(server.url + "/api/tags", headers={"host": "other.lan"}).status_code == 403


def test_body_limit(server: ServerProcess, models: Path) -> None:
    before = snapshot(models)
    big = json.dumps({"model": "tiny", "prompt": "x" * (LIMIT + 1)}).encode()
    r = httpx.post(server.url + "/api/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {"error": f"request body too large: limit {LIMIT} bytes"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"model": "evil", "from": "tiny", "system": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"y" * 1024
        yield b'", "stream": false}'

    r = httpx.post(server.url + "/api/create", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == f"request body too large: limit {LIMIT} bytes"
    assert snapshot(models) == before
    small = httpx.post(server.url + "/api/show", json={"model": "tiny"})
    assert small.status_code == 200


def test_official_client_still_works(server: ServerProcess, models: Path, tiny_gguf: Path) -> None:
    client = ollama.Client(host=server.url)
    assert "tiny:latest" in {m.model for m in client.list().models}
    assert tiny_gguf.stat().st_size > LIMIT  # blob uploads are exempt from the body limit
    digest = client.create_blob(tiny_gguf)
    assert (models / "blobs" / digest.replace(":", "-")).exists()
    client.copy("tiny", "tiny-copy")
    assert client.show("tiny-copy").details.family == "llama"
    client.delete("tiny-copy")
    assert "tiny-copy:latest" not in {m.model for m in client.list().models}
    created = client.create(model="from-blob", files={"tiny.gguf": digest}, stream=False)
    assert created.status == "success"
    client.delete("from-blob")


def test_settings_follow_the_bind_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Host check is on while bound to loopback and off with --allow-remote; a bad limit is one clear line."""
    assert guard.settings_from_env("127.0.0.1").check_host
    assert guard.settings_from_env("[::1]").check_host
    assert not guard.settings_from_env("0.0.0.0").check_host
    assert guard.settings_from_env("localhost").max_body == 32 * 1024 * 1024
    monkeypatch.setenv("LOAM_MAX_BODY", "lots")
    with pytest.raises(ConfigError, match="LOAM_MAX_BODY='lots' is not a whole number"):
        guard.settings_from_env("127.0.0.1")
