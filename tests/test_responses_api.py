"""OpenAI's Responses API on `loam serve`, through the official openai SDK: text, streams, function calls, errors.

SmolLM2 answers greedily here, so a streamed reply must spell the same text as
the whole one; the tools model (a Hermes-style template) must call the function
when tool_choice requires it, with arguments that satisfy the tool's schema.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.server.generate import Done, Piece
from app.server.responses_api import ResponsesRequest, _Shell, _Stream, messages_of
from app.tools.calls import ToolCall
from tests.server_process import ServerProcess, clone_store

SMOL = "smollm2:135m"
TOOLS_MODEL = "smollm2:135m-tools"
QUESTION = "What is the capital of France?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
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
    root = tmp_path_factory.mktemp("responses")
    with ServerProcess(clone_store(tools_store, root / "models"), root / "home") as s:
        yield s


@pytest.fixture
def oa(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


def greedy(**extra: Any) -> dict[str, Any]:
    return {"model": SMOL, "temperature": 0, "max_output_tokens": 16, **extra}


def test_text_answer_whole_and_streamed(oa: openai.OpenAI) -> None:
    whole = oa.responses.create(input=QUESTION, instructions="Answer in one short sentence.", **greedy())
    assert whole.id.startswith("resp_") and whole.object == "response" and whole.model == SMOL
    assert [item.type for item in whole.output] == ["message"]
    Response.model_validate(whole.model_dump())  # every field the SDK's type requires is there
    text = whole.output_text
    assert text.strip()
    usage = whole.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # the status says whether max_output_tokens cut the answer
    assert (whole.status == "incomplete") == (usage.output_tokens == 16)
    if whole.status == "incomplete":
        assert whole.incomplete_details is not None and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.output[0].status == whole.status  # the message the limit cut is incomplete too

    events = list(
        oa.responses.create(input=QUESTION, instructions="Answer in one short sentence.", stream=True, **greedy())
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed" if whole.status == "completed" else "response.incomplete",
    ]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    final = events[-1].response
    assert final.output[0].status == whole.status
    assert final.output_text == text and final.id == events[0].response.id
    assert final.usage is not None and final.usage.output_tokens == usage.output_tokens

    # the SDK's own accumulating stream helper agrees
    with oa.responses.stream(
        input=[{"role": "user", "content": QUESTION}], instructions="Answer in one short sentence.", **greedy()
    ) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert stream.get_final_response().output_text == deltas == text

    # text.format holds the reply to a JSON schema
    schema = {"format": {"type": "json_schema", "name": "answer", "schema": CAPITAL}}
    shaped = oa.responses.create(input=QUESTION, text=schema, **greedy(max_output_tokens=48))
    jsonschema.validate(json.loads(shaped.output_text), CAPITAL)


def test_function_call_and_its_output(oa: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    ask: dict[str, Any] = {"model": TOOLS_MODEL, "tools": [WEATHER], "temperature": 0, "max_output_tokens": 64}
    first = oa.responses.create(input=question, tool_choice="required", parallel_tool_calls=False, **ask)
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])

    # the stateless round trip: the whole conversation, the call, and what the function answered
    history = question + [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"})
    second = oa.responses.create(input=history, tool_choice="none", **ask)
    assert [item.type for item in second.output] == ["message"]
    assert second.output_text.strip()

    # streamed, the call arrives as one function call item with its arguments
    with oa.responses.stream(input=question, tool_choice="required", parallel_tool_calls=False, **ask) as stream:
        events = list(stream)
        final = stream.get_final_response()
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == json.loads(call.arguments)
    assert [(c.type, c.name) for c in final.output] == [("function_call", "get_weather")]
    assert json.loads(final.output[0].arguments) == json.loads(call.arguments)


def test_errors_in_openai_shape(oa: openai.OpenAI, server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oa.responses.create(model="no-such-model", input="hi")
    assert missing.value.type == "not_found_error" and "no-such-model" in missing.value.message

    with pytest.raises(openai.BadRequestError) as stateful:
        oa.responses.create(model=SMOL, input="hi", previous_response_id="resp_123")
    assert "keeps no state" in stateful.value.message and "whole conversation" in stateful.value.message

    with pytest.raises(openai.BadRequestError) as no_tools:
        oa.responses.create(model=SMOL, input="hi", tools=[WEATHER])
    assert "does not support tools" in no_tools.value.message

    with pytest.raises(openai.BadRequestError) as no_thinking:
        oa.responses.create(model=SMOL, input="hi", reasoning={"effort": "low"})
    assert "does not support thinking" in no_thinking.value.message

    with pytest.raises(openai.BadRequestError) as builtin:
        oa.responses.create(model=TOOLS_MODEL, input="hi", tools=[{"type": "web_search"}])
    assert "function tools only" in builtin.value.message

    image = {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}
    r = httpx.post(server.url + "/v1/responses", json={"model": SMOL, "input": [image]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "text only" in r.json()["error"]["message"]

    bad_args = [{"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "[1]"}]
    r = httpx.post(server.url + "/v1/responses", json={"model": SMOL, "input": bad_args})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("input[0].arguments:")


def test_input_items_become_internal_messages() -> None:
    """Calls join the assistant turn before them, reasoning becomes its thinking, outputs name the function."""
    body = ResponsesRequest.model_validate(
        {
            "model": SMOL,
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Two calls."}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "18 C"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "25 C"}]},
            ],
        }
    )
    calls = [
        {"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "c2", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
    ]
    assert messages_of(body) == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "thinking": "Two calls.", "tool_calls": calls},
        {"role": "tool", "content": "18 C", "tool_call_id": "c1", "tool_name": "get_weather"},
        {"role": "tool", "content": "25 C", "tool_call_id": "c2", "tool_name": "get_weather"},
    ]


async def _replay(stream: _Stream, items: list[Piece | Done]) -> list[tuple[str, dict[str, Any]]]:
    async def pieces() -> AsyncIterator[Piece | Done]:
        for item in items:
            yield item

    return [event async for event in stream.events(pieces())]


def test_stream_events_are_the_sdk_types() -> None:
    """Thinking, a call and text, streamed: every event validates as the SDK's own type, in the order it expects."""
    body = ResponsesRequest.model_validate({"model": SMOL, "input": "hi", "tools": [WEATHER]})
    reply = [
        Piece(thinking="Two calls."),
        Piece(content="\n"),  # before a call: held, then dropped
        Piece(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
        Piece(content="Checked."),
        Done("stop", prompt_tokens=10, prompt_eval_count=4, eval_count=7),
    ]
    events = asyncio.run(_replay(_Stream(_Shell(body, SMOL)), reply))
    parsed = [TypeAdapter(ResponseStreamEvent).validate_python(data) for _, data in events]
    assert [name for name, _ in events] == [e.type for e in parsed]
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    assert [e.type.removeprefix("response.") for e in parsed] == [
        "created",
        "in_progress",
        "output_item.added",
        "reasoning_summary_part.added",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.done",
        "reasoning_summary_part.done",
        "output_item.done",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ]
    final = parsed[-1].response
    assert [item.type for item in final.output] == ["reasoning", "function_call", "message"]
    assert final.output[0].summary[0].text == "Two calls." and final.output_text == "Checked."
    assert json.loads(final.output[1].arguments) == {"city": "Paris"}
    assert final.usage.input_tokens == 10 and final.usage.input_tokens_details.cached_tokens == 6
