"""No Go or Jinja template can make a render run away: each payload ends in the budget error; the server stays up."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.server.gotemplate import TemplateBudgetExceeded, TemplateError, check_template, parse
from app.server.jinja import render_jinja
from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse as parse_modelfile
from app.store.names import ModelName
from app.store.store import Store
from tests.server_process import ServerProcess

JINJA_PAYLOADS = {
    "namespace list doubling": "{% set ns = namespace(x=[1]) %}{% for i in range(40) %}"
    "{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x|length }}",
    "string doubling with ~": "{% set ns = namespace(x='ab') %}{% for i in range(40) %}"
    "{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}",
    "string doubling with *": "{% set ns = namespace(x='ab') %}{% for i in range(40) %}"
    "{% set ns.x = ns.x * 2 %}{% endfor %}",
    "huge range join": "{{ range(10**7)|join(',') }}",
    "nested lists": "{% for a in range(100000)|list %}{% for b in range(100000)|list %}{% endfor %}{% endfor %}",
    "empty nested loops": "{% set l = range(1000)|list %}{% for a in l %}{% for b in l %}{% for c in l %}"
    "{% endfor %}{% endfor %}{% endfor %}",
    "self-recursive macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "big output": "{% for a in range(5000) %}{{ 'x' * 100000 }}{% endfor %}",
}
GO_NESTED = "{{range $i := 100000}}{{range $j := 100000}}x{{end}}{{end}}"
GO_PAYLOADS = {
    "nested range": GO_NESTED,
    "nested range, no output": "{{range $i := 100000}}{{range $j := 100000}}{{end}}{{end}}",
    "nested range over a list": "{{range $i := .Messages}}{{range $j := 100000}}{{range $k := 100000}}"
    "{{end}}{{end}}{{end}}",
    "big output": '{{range $i := 100000}}{{printf "%s%s" $.X $.X}}{{end}}',
}


@pytest.mark.parametrize("source", JINJA_PAYLOADS.values(), ids=JINJA_PAYLOADS.keys())
def test_jinja_payloads_hit_the_budget(source: str) -> None:
    with pytest.raises(TemplateBudgetExceeded, match="template exceeded its budget"):
        render_jinja(source, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("source", GO_PAYLOADS.values(), ids=GO_PAYLOADS.keys())
def test_go_payloads_hit_the_budget(source: str) -> None:
    with pytest.raises(TemplateBudgetExceeded, match="template exceeded its budget"):
        parse(source).execute({"Messages": [{"Role": "user"}], "X": "y" * 1000})


def test_ordinary_templates_still_render() -> None:
    assert (
        render_jinja(
            "{% for m in messages %}<{{ m.role ~ ':' ~ m['content']|trim }}>{% endfor %}",
            [{"role": "user", "content": " hi "}],
        )
        == "<user:hi>"
    )
    assert (
        parse("{{range .Messages}}[{{.Role}}]{{end}}").execute({"Messages": [{"Role": "a"}, {"Role": "b"}]}) == "[a][b]"
    )


def test_the_budget_error_is_a_bad_request() -> None:
    assert issubclass(TemplateBudgetExceeded, ValueError) and issubclass(TemplateBudgetExceeded, TemplateError)


def test_check_template_names_the_line() -> None:
    check_template("{{ .Prompt }}")
    with pytest.raises(TemplateError, match=r"line 2\b|2:"):
        check_template("ok\n{{ if .Prompt }}")


@pytest.fixture(scope="module")
def server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("budget") / "models"
    store = Store(root)
    for name, extra in (("tiny", ""), ("evil", f'TEMPLATE """{GO_NESTED}"""\n')):
        modelfile = parse_modelfile(f"FROM {tiny_gguf}\nPARAMETER num_ctx 256\n{extra}")
        create(store, Catalog({}, "tiny"), ModelName.parse(name), modelfile, folder=root)
    with ServerProcess(root, tmp_path_factory.mktemp("home")) as s:
        yield s


def _while_pending(url: str, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[float], float]:
    """Send the evil request from a thread, poll /api/version until it ends: its reply, poll latencies, its latency."""
    result: dict[str, Any] = {}

    def evil() -> None:
        start = time.monotonic()
        result["reply"] = httpx.post(url + path, json=body, timeout=120)
        result["latency"] = time.monotonic() - start

    thread = threading.Thread(target=evil)
    thread.start()
    polls: list[float] = []
    with httpx.Client(timeout=120) as poller:
        while thread.is_alive():
            start = time.monotonic()
            assert poller.get(url + "/api/version").status_code == 200
            if thread.is_alive():  # counted only when the evil request was still pending after it answered
                polls.append(time.monotonic() - start)
            time.sleep(0.02)
    thread.join()
    return result["reply"], polls, result["latency"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "tiny", "prompt": "hi", "template": GO_NESTED, "stream": False}),
        ("/api/chat", {"model": "evil", "messages": [{"role": "user", "content": "hi"}], "stream": False}),
    ],
    ids=["generate with a template", "chat with an evil Modelfile TEMPLATE"],
)
def test_the_server_answers_while_an_evil_template_runs(server: ServerProcess, path: str, body: dict[str, Any]) -> None:
    reply, polls, latency = _while_pending(server.url, path, body)
    print(f"{path}: 400 after {latency:.2f}s; {len(polls)} version polls, slowest {max(polls, default=0):.3f}s")
    assert reply.status_code == 400
    assert reply.json() == {"error": "template exceeded its budget"}
    assert len(polls) >= 3
