"""Tools through real chat templates: the prompt loam renders equals a plain Jinja rendering (as transformers does
it), the call format is detected from the template, and what the template writes for a call parses back into the
same calls, cut anywhere in the stream. The templates in tests/data/templates are the models' own, as llama.cpp
ships them for its tests."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.server.prompt import PromptSpec, render_chat
from app.tools.calls import CallParser, ToolCall, detect_format

TEMPLATES = Path(__file__).parent / "data" / "templates"
FORMATS = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
    "Qwen-Qwen3-0.6B.jinja": "hermes",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
    "google-gemma-4-31B-it.jinja": "gemma",
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The time now", "parameters": {"type": "object"}},
    },
]
CALLS = [ToolCall("get_weather", {"city": "Paris", "days": 2}), ToolCall("get_time", {})]
SINGLE = {"meta-llama-Llama-3.2-3B-Instruct.jinja"}  # "This model only supports single tool-calls at once!"


def _calls(name: str) -> list[ToolCall]:
    return CALLS[:1] if name in SINGLE else CALLS


def _conversation(tool_turn: bool, calls: list[ToolCall] = CALLS) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris, and the time?"}]
    if tool_turn:
        wire = [
            {"id": f"call{i:05d}", "function": {"name": c.name, "arguments": c.arguments}} for i, c in enumerate(calls)
        ]
        messages.append({"role": "assistant", "content": "", "tool_calls": wire})
        results = ["sunny", "10:00"]
        for i, c in enumerate(calls):
            messages.append(
                {"role": "tool", "content": results[i], "tool_name": c.name, "tool_call_id": f"call{i:05d}"}
            )
    return messages


def _reference(source: str, messages: list[dict[str, Any]], tools: list | None) -> str:
    """The template rendered the way transformers' apply_chat_template renders it."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda v, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        v, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(jinja2.TemplateError(m))
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    hf = []
    for m in messages:
        out = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            out["tool_calls"] = [{"type": "function", **c} for c in m["tool_calls"]]
        if m.get("tool_call_id"):
            out["tool_call_id"] = m["tool_call_id"]
        if m.get("tool_name"):
            out["name"] = m["tool_name"]
        hf.append(out)
    return env.from_string(source).render(
        messages=hf, tools=tools, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
    )


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("tool_turn", [False, True], ids=["offer", "results"])
def test_tools_render_as_the_real_template_renders_them(name: str, tool_turn: bool) -> None:
    source = (TEMPLATES / name).read_text()
    messages = _conversation(tool_turn, _calls(name))
    spec = PromptSpec(chat_template=source, bos_token="<s>", eos_token="</s>")
    rendered = render_chat(spec, messages, count_tokens=len, num_ctx=1 << 20, tools=TOOLS).prompt
    assert rendered == _reference(source, messages, TOOLS)
    assert "get_weather" in rendered and "Get the current weather" in rendered


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_format_is_detected_from_the_template(name: str) -> None:
    assert detect_format((TEMPLATES / name).read_text()) == FORMATS[name]


def _written_calls(name: str) -> str:
    """What the template itself writes for an assistant turn holding CALLS: the model's output in that format."""
    source = (TEMPLATES / name).read_text()
    messages = _conversation(True, _calls(name))[:2]
    spec = PromptSpec(chat_template=source, bos_token="<s>", eos_token="</s>")
    before = render_chat(spec, messages[:1], count_tokens=len, num_ctx=1 << 20, tools=TOOLS).prompt
    from app.server.jinja import render_jinja

    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    plain[1]["tool_calls"] = [{"type": "function", **c} for c in messages[1]["tool_calls"]]
    whole = render_jinja(source, plain, add_generation_prompt=False, bos_token="<s>", eos_token="</s>", tools=TOOLS)
    common = os.path.commonprefix([before, whole])
    at = len(before) if whole.startswith(before) else max(common.rfind("\n") + 1, common.rfind("<"))
    text = whole[at:]  # where the two part: a generation prompt may differ from a written turn
    for end in ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "</s>", "<turn|>", "<|tool_response>"):
        text = text.split(end)[0]
    return text.replace("<think>\n\n</think>\n\n", "")  # an empty thinking section: the server's splitter takes it


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_calls_the_template_writes_parse_back_at_every_stream_cut(name: str) -> None:
    text = _written_calls(name)
    assert text.strip(), "the template writes the calls"
    fmt = detect_format((TEMPLATES / name).read_text())
    for cut in range(len(text) + 1):
        parser = CallParser(fmt)
        shown = parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.flush()
        assert parser.calls == _calls(name), (cut, text)
        assert not shown.strip(), (cut, shown)


def test_go_template_renders_tools_and_calls_with_ollamas_fields() -> None:
    """The SmolLM2 tools Modelfile's TEMPLATE: .Tools print as JSON, .ToolCalls' arguments too, results as turns."""
    from app.store.modelfile import parse

    modelfile = parse((Path(__file__).parent.parent / "docs" / "modelfiles" / "smollm2-tools.Modelfile").read_text())
    spec = PromptSpec(template=modelfile.template, system="Be brief.")
    prompt = render_chat(spec, _conversation(True), count_tokens=len, num_ctx=1 << 20, tools=TOOLS[:1]).prompt
    tool_json = json.dumps(TOOLS[0]["function"], separators=(",", ":"))
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert f'<tools>\n{{"type": "function", "function": {tool_json}}}\n</tools>' in prompt
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris","days":2}}\n'
        '{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>\n'
    ) in prompt
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n" in prompt
    assert prompt.endswith("<tool_response>\n10:00\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    no_tools = render_chat(spec, _conversation(False), count_tokens=len, num_ctx=1 << 20).prompt
    assert "# Tools" not in no_tools and "<tool_call>" not in no_tools
