"""Tool calling through `loam serve` with the official openai and ollama clients, on SmolLM2 with a tools TEMPLATE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.server_process import ServerProcess, clone_store

TOOLS_MODEL = "smollm2:135m-tools"
PLAIN_MODEL = "smollm2:135m"  # SmolLM2's own Jinja template has no tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a timezone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tools_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tools-api")
    proc = ServerProcess(clone_store(tools_store, root / "models"), root / "home").wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


def _valid(name: str, arguments: dict) -> None:
    schema = {"get_weather": WEATHER, "get_time": TIME}[name]["function"]["parameters"]
    jsonschema.validate(arguments, schema)


def test_openai_required_call_validates_and_the_result_yields_an_answer(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=80
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    _valid("get_weather", json.loads(calls[0].function.arguments))

    history = [*QUESTION, choice.message.model_dump(exclude_none=True)]
    history.append({"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 22 degrees celsius"})
    final = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=history, tools=[WEATHER], temperature=0, max_tokens=40
    )
    assert final.choices[0].finish_reason in ("stop", "length")
    assert not final.choices[0].message.tool_calls
    assert final.choices[0].message.content.strip()


def test_openai_streams_the_call_whole_as_a_delta(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=QUESTION, tools=[WEATHER, TIME], tool_choice="required", temperature=0,
        max_tokens=80, stream=True,
    )  # fmt: skip
    deltas, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert deltas and deltas[0].index == 0 and deltas[0].id
    for delta in deltas:  # each call arrives whole: its arguments parse on their own
        _valid(delta.function.name, json.loads(delta.function.arguments))


def test_openai_named_function_and_no_parallel_calls(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=QUESTION, tools=[WEATHER, TIME], temperature=0, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False,
    )  # fmt: skip
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    _valid("get_time", json.loads(calls[0].function.arguments))


def test_auto_grammar_binds_once_the_model_opens_a_call(oai: openai.OpenAI) -> None:
    """The model is asked to echo a call with a wrong argument name; the lazy grammar holds it to the schema."""
    echo = (
        'Reply with exactly this text: <tool_call>{"name": "get_weather", "arguments": {"town": "Paris"}}</tool_call>'
    )
    reply = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": echo}], tools=[WEATHER], temperature=0, max_tokens=60
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert calls[0].function.name == "get_weather"
    _valid("get_weather", json.loads(calls[0].function.arguments))
    plain = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": echo}], temperature=0, max_tokens=60
    )
    assert '"town"' in plain.choices[0].message.content  # without tools, the same reply stays text


def test_tool_choice_none_offers_no_tools(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=20
    )
    assert reply.choices[0].finish_reason in ("stop", "length") and not reply.choices[0].message.tool_calls


def test_ollama_client_gets_message_tool_calls(server: ServerProcess) -> None:
    client = ollama.Client(host=server.url)

    def get_weather(city: str) -> str:
        """Get the current weather in a city.

        Args:
          city: the city name
        """
        return f"sunny in {city}"

    options = {"temperature": 0, "num_predict": 80, "tool_choice": "required"}
    reply = client.chat(model=TOOLS_MODEL, messages=QUESTION, tools=[get_weather], options=options)
    calls = reply.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments["city"], str)

    history = [*QUESTION, reply.message]
    for call in calls:
        history.append({"role": "tool", "content": get_weather(**call.function.arguments), "tool_name": "get_weather"})
    final = client.chat(model=TOOLS_MODEL, messages=history, tools=[get_weather], options={"temperature": 0})
    assert final.message.content.strip() and not final.message.tool_calls

    streamed = list(
        client.chat(model=TOOLS_MODEL, messages=QUESTION, tools=[get_weather], options=options, stream=True)
    )
    with_calls = [c for c in streamed if c.message.tool_calls]
    assert len(with_calls) == 1 and with_calls[0].message.tool_calls[0].function.name == "get_weather"
    assert streamed[-1].done


def test_models_without_a_capability_get_the_400_on_both_apis(server: ServerProcess, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=f'"{PLAIN_MODEL}" does not support tools'):
        oai.chat.completions.create(model=PLAIN_MODEL, messages=QUESTION, tools=[WEATHER])
    r = httpx.post(server.url + "/api/chat", json={"model": PLAIN_MODEL, "messages": QUESTION, "tools": [WEATHER]})
    assert r.status_code == 400 and "does not support tools" in r.json()["error"]
    r = httpx.post(server.url + "/api/chat", json={"model": PLAIN_MODEL, "messages": QUESTION, "think": True})
    assert r.status_code == 400 and "does not support thinking" in r.json()["error"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError, match="does not support vision"):
        oai.chat.completions.create(
            model=PLAIN_MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]
        )
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        oai.chat.completions.create(model=PLAIN_MODEL, messages=QUESTION, reasoning_effort="high")


def test_bad_tool_requests_are_400s(server: ServerProcess, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match='no tool named "nope"'):
        oai.chat.completions.create(
            model=TOOLS_MODEL,
            messages=QUESTION,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        oai.chat.completions.create(model=TOOLS_MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="sometimes")
    bad_args = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}
    ]}  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="arguments must be a JSON object"):
        oai.chat.completions.create(model=TOOLS_MODEL, messages=[*QUESTION, bad_args], tools=[WEATHER])
    r = httpx.post(
        server.url + "/api/chat",
        json={"model": TOOLS_MODEL, "messages": QUESTION, "tools": [WEATHER], "options": {"tool_choice": 7}},
    )
    assert r.status_code == 400 and "tool_choice" in r.json()["error"]


def test_api_show_lists_what_each_model_can_do(server: ServerProcess) -> None:
    def caps(model: str) -> list[str]:
        return httpx.post(server.url + "/api/show", json={"model": model}).json()["capabilities"]

    assert caps(PLAIN_MODEL) == ["completion"]
    assert caps(TOOLS_MODEL) == ["completion", "tools"]
    assert ollama.Client(host=server.url).show(TOOLS_MODEL).capabilities == ["completion", "tools"]


def _pydantic_style(name: str, unit: dict) -> dict:
    """A tool whose parameters use $defs, as pydantic and most SDK helpers write them."""
    parameters = {
        "$defs": {"Unit": unit},
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/Unit"}},
        "required": ["city", "unit"],
    }
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def test_parameters_with_defs_are_constrained_each_by_its_own(oai: openai.OpenAI) -> None:
    """Two tools that both define "Unit", differently: each call holds to its own tool's definitions."""
    tools = [
        _pydantic_style("weather_named", {"type": "string", "enum": ["celsius", "fahrenheit"]}),
        # An enum, which the grammar enforces: the converter ignores minimum and maximum (docs/tools.md).
        _pydantic_style("weather_coded", {"type": "integer", "enum": list(range(10))}),
    ]
    for choice in ("weather_named", "weather_coded"):
        reply = oai.chat.completions.create(
            model=TOOLS_MODEL, messages=QUESTION, tools=tools, temperature=0, max_tokens=60,
            tool_choice={"type": "function", "function": {"name": choice}},
        )  # fmt: skip
        call = reply.choices[0].message.tool_calls[0]
        assert call.function.name == choice
        schema = next(t for t in tools if t["function"]["name"] == choice)["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)


def test_hostile_parameters_schemas_are_refused_in_one_line(server: ServerProcess) -> None:
    deep: dict = {"type": "string"}
    for _ in range(400):
        deep = {"type": "object", "properties": {"a": deep}}
    for parameters in (deep, {"$ref": "#"}, {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}):
        tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
        body = {"model": TOOLS_MODEL, "messages": QUESTION, "tools": [tool], "max_tokens": 5}
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 400, reply.text
        message = reply.json()["error"]["message"]
        assert "Error" not in message and "\n" not in message
    nameless = {"type": "function", "function": {"parameters": {"type": "object"}}}
    body = {"model": TOOLS_MODEL, "messages": QUESTION, "tools": [WEATHER, nameless], "max_tokens": 5}
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 400 and "tools[1]" in reply.json()["error"]["message"]
