"""Tool calls parsed out of streamed model text, per format, however the stream is cut."""

from __future__ import annotations

import json

import pytest

from app.tools.calls import MAX_HELD, CallParser, ToolCall, detect_format, parse_calls

WEATHER = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})
TIME = ToolCall("get_time", {"zone": "Europe/Paris"})
HERMES = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
    '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}\n</tool_call>\n'
)
LLAMA3 = (
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
    '{"name": "get_time", "parameters": {"zone": "Europe/Paris"}}'
)
MISTRAL = (
    'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
    '{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}]'
)
JSON_LIST = json.dumps(
    [{"name": "get_weather", "arguments": WEATHER.arguments}, {"name": "get_time", "arguments": TIME.arguments}]
)
CASES = [
    ("hermes", HERMES, "Let me check.\n"),
    ("llama3", LLAMA3, ""),
    ("mistral", MISTRAL, "Sure. "),
    ("json", JSON_LIST, ""),
    ("llama3", LLAMA3.removeprefix("<|python_tag|>"), ""),  # Llama 3.2 often answers bare JSON
]


def run(fmt: str, pieces: list[str]) -> tuple[str, list[ToolCall], list[str]]:
    parser = CallParser(fmt)
    shown = [parser.feed(p) for p in pieces]
    shown.append(parser.flush())
    return "".join(shown), parser.calls, shown


@pytest.mark.parametrize(("fmt", "text", "before"), CASES)
def test_two_calls_in_one_turn(fmt: str, text: str, before: str) -> None:
    shown, calls, _ = run(fmt, [text])
    assert calls == [WEATHER, TIME] and shown == before


@pytest.mark.parametrize(("fmt", "text", "before"), CASES)
def test_a_stream_cut_at_every_boundary_gives_the_same_calls(fmt: str, text: str, before: str) -> None:
    for cut in range(1, len(text)):
        shown, calls, pieces = run(fmt, [text[:cut], text[cut:]])
        assert (shown, calls) == (before, [WEATHER, TIME]), cut
        assert "<tool_call" not in "".join(pieces) and "[TOOL_CALLS" not in "".join(pieces)
    shown, calls, _ = run(fmt, list(text))  # one character at a time
    assert (shown, calls) == (before, [WEATHER, TIME])


def test_text_before_a_call_streams_at_once() -> None:
    parser = CallParser("hermes")
    assert parser.feed("The weather ") == "The weather "
    assert parser.feed("in Paris: <tool") == "in Paris: "  # a marker may be starting: held back
    assert parser.feed('_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}') == ""
    assert parser.calls == []  # not closed yet
    assert parser.feed("</tool_call>") == "" and parser.calls == [ToolCall("get_weather", WEATHER.arguments)]


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral", "json"])
def test_plain_answers_are_text(fmt: str) -> None:
    answer = "Paris is the capital of France. Use <b>tags</b> or [brackets] freely; {braces} too."
    shown, calls, _ = run(fmt, [answer[:20], answer[20:]])
    assert shown == answer and calls == []


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("hermes", "<tool_call>{not json}</tool_call> and more"),
        ("hermes", '<tool_call>{"name": "x", "argu'),  # cut off mid-call
        ("mistral", "[TOOL_CALLS] nothing"),
        ("json", '{"answer": 42}'),  # JSON, but no call
        ("llama3", '{"name": "f", "parameters": "not an object"}'),
    ],
)
def test_what_is_not_a_call_is_given_back_as_text(fmt: str, text: str) -> None:
    shown, calls, _ = run(fmt, [text])
    assert calls == [] and shown == text


def test_a_whole_call_the_answer_ended_before_closing_still_counts() -> None:
    text = 'Checking. <tool_call>{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}'
    shown, calls, _ = run("hermes", [text])
    assert shown == "Checking. " and calls == [TIME]  # models often stop at end-of-turn before </tool_call>


def test_arguments_as_a_json_string_and_openai_shape() -> None:
    assert parse_calls('{"name": "f", "arguments": "{\\"a\\": 1}"}') == [ToolCall("f", {"a": 1})]
    assert parse_calls('{"type": "function", "function": {"name": "f", "arguments": {}}}') == [ToolCall("f", {})]
    assert parse_calls('{"name": "", "arguments": {}}') is None
    assert parse_calls("[]") is None


def test_what_is_held_is_bounded() -> None:
    parser = CallParser("hermes")
    assert parser.feed("<tool_call>") == ""
    flood = "x" * (MAX_HELD + 10)
    assert parser.feed(flood) == "<tool_call>" + flood and parser.calls == []
    assert parse_calls(";".join(['{"name": "f", "arguments": {}}'] * 100)) is None  # too many calls


def test_the_format_comes_from_the_template() -> None:
    assert detect_format("{% for t in tools %}<tool_call>{{ t }}</tool_call>{% endfor %}") == "hermes"
    assert detect_format("{{ .Tools }}[TOOL_CALLS]") == "mistral"
    assert detect_format("<|start_header_id|>ipython<|end_header_id|><|python_tag|>") == "llama3"
    assert detect_format("{{ .Prompt }}") == "json" and detect_format(None) == "json"
    with pytest.raises(ValueError, match="unknown tool call format"):
        CallParser("xml")


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral", "json"])
def test_fuzz_random_text_in_random_pieces_never_fails_and_loses_nothing(fmt: str) -> None:
    import random

    rng = random.Random(fmt)
    alphabet = ['{', '}', '[', ']', '"', ":", ",", ";", " ", "\n", "a", "name", "arguments", "<tool_call>",
                "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "<tool", "_call>", "x"]  # fmt: skip
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        shown, calls, _ = run(fmt, pieces)
        if not calls:
            assert shown == text  # nothing parsed as a call: every character is shown, in order


def test_a_call_cut_off_by_the_token_limit_can_be_abandoned() -> None:
    parser = CallParser("hermes")
    shown = parser.feed('<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "a", "argu')
    assert parser.abandon() is True
    assert shown + parser.flush() == ""
    assert parser.calls == [ToolCall("a", {})]
    assert parser.abandon() is False


def test_gemma_calls_parse_nested_values_and_refuse_broken_ones() -> None:
    from app.tools.calls import parse_gemma_call

    body = 'call:get_weather{city:<|"|>Paris, FR<|"|>,days:3,opts:{metric:true,tags:[<|"|>a<|"|>,2.5,null]}}'
    assert parse_gemma_call(body) == [
        ToolCall("get_weather", {"city": "Paris, FR", "days": 3, "opts": {"metric": True, "tags": ["a", 2.5, None]}})
    ]
    assert parse_gemma_call("call:f{q:<escape>hi<escape>}", "functiongemma") == [ToolCall("f", {"q": "hi"})]
    for broken in ["call:f{a:", 'call:f{a:<|"|>x}', "call:f{a:1 b:2}", "call:f{a:1} trailing", "f{a:1}", "call:f"]:
        assert parse_gemma_call(broken) is None, broken
    assert parse_gemma_call("call:f{a:" + "[" * 100 + "]" * 100 + "}") is None  # nested too deeply


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        (
            '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
            [ToolCall("get_weather", {"city": "Paris"})],
        ),
        ('  {"name": "get_weather", "arguments": {}}', [ToolCall("get_weather", {})]),
        ('{"name": "Bob", "arguments": {}}', []),  # not an offered tool: the answer's own JSON
        ("```python\nprint(1)\n```", []),
        ("`x` is a variable", []),
    ],
)
def test_any_format_takes_a_whole_answer_that_is_a_bare_or_fenced_call(text: str, calls: list[ToolCall]) -> None:
    """Models trained on <tool_call> blocks (Qwen 2.5 Coder) often answer with the bare or fenced JSON instead."""
    for cut in range(len(text) + 1):
        parser = CallParser("hermes", names=["get_weather"])
        shown = parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.flush()
        assert parser.calls == calls, cut
        assert shown == ("" if calls else text), cut
