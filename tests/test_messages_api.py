"""Anthropic's Messages API on `loam serve`, through the official anthropic SDK: text, streams, tool use, counting.

SmolLM2 answers greedily here, so the SDK's accumulated stream must equal the
whole reply; the tools model must answer tool_choice {"type": "any"} with a
tool_use block whose input satisfies the tool's input_schema.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from app.server.anthropic_api import CountTokensRequest, _events, messages_of
from app.server.generate import Done, Piece
from app.tools.calls import ToolCall
from tests.server_process import ServerProcess, clone_store

SMOL = "smollm2:135m"
TOOLS_MODEL = "smollm2:135m-tools"
SYSTEM = "Answer in one short sentence."
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "the city's name"}},
        "required": ["city"],
    },
}

CAPITAL = {
    "type": "object",
    "properties": {"capital": {"type": "string", "maxLength": 24}},
    "required": ["capital"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(tools_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("messages")
    with ServerProcess(clone_store(tools_store, root / "models"), root / "home") as s:
        yield s


@pytest.fixture
def client(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused")


def greedy(**extra: Any) -> dict[str, Any]:
    """A request SmolLM2 answers greedily; the SDK has no temperature argument, so it goes in the body as sent."""
    body = {"model": SMOL, "max_tokens": 16, "system": SYSTEM, "messages": QUESTION, **extra}
    return {**body, "extra_body": {"temperature": 0}}


def test_text_whole_streamed_and_counted(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(**greedy())
    assert whole.id.startswith("msg_") and whole.type == "message" and whole.role == "assistant"
    assert whole.model == SMOL
    assert [b.type for b in whole.content] == ["text"]
    Message.model_validate(whole.model_dump())  # every field the SDK's type requires is there
    text = whole.content[0].text
    assert text.strip()
    assert whole.stop_reason == ("max_tokens" if whole.usage.output_tokens == 16 else "end_turn")

    with client.messages.stream(**greedy()) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text and final.content[0].text == text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens

    raw = [e.type for e in client.messages.create(stream=True, **greedy())]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    assert raw.count("content_block_start") == raw.count("content_block_stop") == 1

    # output_config.format holds the reply to a JSON schema
    shaped = client.messages.create(
        **greedy(max_tokens=48, output_config={"format": {"type": "json_schema", "schema": CAPITAL}})
    )
    jsonschema.validate(json.loads(shaped.content[0].text), CAPITAL)

    # count_tokens renders the same prompt the reply was generated from: cached and evaluated tokens add up to it
    counted = client.messages.count_tokens(model=SMOL, system=SYSTEM, messages=QUESTION).input_tokens
    usage = final.usage
    assert counted > 0 and counted == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    longer = client.messages.count_tokens(model=SMOL, system=SYSTEM + " Be kind.", messages=QUESTION).input_tokens
    assert longer > counted


def test_tool_use_and_result(client: anthropic.Anthropic) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    ask = {"model": TOOLS_MODEL, "max_tokens": 64, "tools": [WEATHER], "extra_body": {"temperature": 0}}
    first = client.messages.create(
        messages=question, tool_choice={"type": "any", "disable_parallel_tool_use": True}, **ask
    )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])

    with client.messages.stream(
        messages=question, tool_choice={"type": "any", "disable_parallel_tool_use": True}, **ask
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in streamed.content if b.type == "tool_use"] == [(b.name, b.input) for b in uses]

    result = {"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 degrees and sunny"}
    history = question + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [result]},
    ]
    second = client.messages.create(messages=history, tool_choice={"type": "none"}, **ask)
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"] and second.content[0].text.strip()
    # with tools, the template's tool section is part of the prompt that is counted
    plain = client.messages.count_tokens(model=TOOLS_MODEL, messages=question).input_tokens
    with_tools = client.messages.count_tokens(model=TOOLS_MODEL, messages=question, tools=[WEATHER]).input_tokens
    assert with_tools > plain


def test_errors_in_anthropic_shape(client: anthropic.Anthropic, server: ServerProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=8, messages=QUESTION)
    body = missing.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]

    r = httpx.post(server.url + "/v1/messages", json={"model": SMOL, "messages": QUESTION})
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: is required"},
    }

    with pytest.raises(anthropic.BadRequestError) as no_tools:
        client.messages.create(model=SMOL, max_tokens=8, messages=QUESTION, tools=[WEATHER])
    assert "does not support tools" in no_tools.value.response.json()["error"]["message"]

    with pytest.raises(anthropic.BadRequestError) as no_count:
        client.messages.count_tokens(model=SMOL, messages=QUESTION, tools=[WEATHER])
    assert "does not support tools" in no_count.value.response.json()["error"]["message"]

    server_tool = {"type": "web_search_20250305", "name": "web_search"}
    r = httpx.post(
        server.url + "/v1/messages",
        json={"model": TOOLS_MODEL, "max_tokens": 8, "messages": QUESTION, "tools": [server_tool]},
    )
    assert r.status_code == 400 and "server tool" in r.json()["error"]["message"]


def test_blocks_become_internal_messages() -> None:
    """tool_use blocks are the assistant's calls; each tool_result is a tool turn, text after it a user turn."""
    body = CountTokensRequest.model_validate(
        {
            "model": SMOL,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "A call.", "signature": ""},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "18 C"}],
                        },
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no such city", "is_error": True},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
        }
    )
    call = {"id": "toolu_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert messages_of(body) == [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "thinking": "A call.", "tool_calls": [call]},
        {"role": "tool", "content": "18 C", "tool_call_id": "toolu_1", "tool_name": "get_weather"},
        {"role": "tool", "content": "Error: no such city", "tool_call_id": "toolu_2"},
        {"role": "user", "content": "And tomorrow?"},
    ]


async def _replay(items: list[Piece | Done]) -> list[tuple[str, dict[str, Any]]]:
    async def pieces() -> AsyncIterator[Piece | Done]:
        for item in items:
            yield item

    head = {"id": "msg_1", "type": "message", "role": "assistant", "model": SMOL}
    return [event async for event in _events(pieces(), head, [])]


def test_stream_events_are_the_sdk_types() -> None:
    """Thinking, text and a call, streamed: every event validates as the SDK's own type, blocks indexed in order."""
    reply = [
        Piece(thinking="A call."),
        Piece(content="Checking."),
        Piece(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
        Done("stop", prompt_tokens=10, prompt_eval_count=4, eval_count=7),
    ]
    events = asyncio.run(_replay(reply))
    parsed = [TypeAdapter(RawMessageStreamEvent).validate_python(data) for name, data in events if name != "ping"]
    assert [name for name, _ in events if name != "ping"] == [e.type for e in parsed]
    shape = [(e.type, getattr(e, "index", None)) for e in parsed]
    assert shape == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert [parsed[i].content_block.type for i in (1, 4, 7)] == ["thinking", "text", "tool_use"]
    assert json.loads(parsed[8].delta.partial_json) == {"city": "Paris"}
    final = parsed[-2]
    assert final.delta.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (4, 6, 7)
