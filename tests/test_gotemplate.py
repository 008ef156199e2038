"""The Go text/template interpreter: syntax, functions, errors, and Ollama's library templates to the byte."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from app.errors import LoamError
from app.server.gotemplate import TemplateError, parse


def render(source: str, data: dict[str, Any] | None = None) -> str:
    return parse(source).execute(data or {})


CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

#: Ollama's library template for Llama 3.1, tools and all.
LLAMA3 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023

When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best \
answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use \
variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

ZEPHYR = """{{ if .System }}<|system|>
{{ .System }}</s>
{{ end }}{{ if .Prompt }}<|user|>
{{ .Prompt }}</s>
{{ end }}<|assistant|>
{{ .Response }}</s>
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def msg(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"Role": role, "Content": content, **extra}


# --- syntax ---------------------------------------------------------------------------------------------------------


def test_text_without_actions_is_unchanged() -> None:
    assert render("plain {text} } {") == "plain {text} } {"


def test_trim_markers_remove_all_adjacent_whitespace() -> None:
    assert render("a  \n\t{{- 1 -}}\n  b") == "a1b"
    assert render("a \n{{- 1 }} b") == "a1 b"
    assert render("a {{ 1 -}} \n b") == "a 1b"
    assert render("x {{-3}}") == "x -3", "a dash without a space is a negative number, not a trim marker"


def test_comments_print_nothing_and_may_trim() -> None:
    assert render("a{{/* a comment {{ .X }} */}}b") == "ab"
    assert render("a \n {{- /* trimmed */ -}} \n b") == "ab"


def test_if_else_if_else() -> None:
    source = "{{ if .A }}a{{ else if .B }}b{{ else if .C }}c{{ else }}none{{ end }}"
    assert render(source, {"A": 1, "B": 1}) == "a"
    assert render(source, {"B": "yes"}) == "b"
    assert render(source, {"C": [1]}) == "c"
    assert render(source, {}) == "none"


@pytest.mark.parametrize("value", [0, 0.0, "", [], {}, None, False])
def test_go_falsy_values(value: Any) -> None:
    assert render("{{ if .V }}yes{{ else }}no{{ end }}", {"V": value}) == "no"


@pytest.mark.parametrize("value", [1, -1, 0.5, "x", " ", [0], {"a": 0}, True])
def test_go_truthy_values(value: Any) -> None:
    assert render("{{ if .V }}yes{{ else }}no{{ end }}", {"V": value}) == "yes"


def test_missing_fields_print_empty_and_are_false() -> None:
    assert render("[{{ .Nope }}][{{ .A.B.C }}]{{ if .Nope }}x{{ end }}", {"A": {}}) == "[][]"


def test_nested_fields_and_request_spelling() -> None:
    data = {"Message": {"Function": {"Name": "f"}}, "call": {"function": {"name": "g"}}, "tool_calls": [1]}
    assert render("{{ .Message.Function.Name }} {{ .Call.Function.Name }} {{ len .ToolCalls }}", data) == "f g 1"


def test_range_rebinds_dot_and_keeps_dollar() -> None:
    data = {"Name": "n", "L": [{"X": 1}, {"X": 2}]}
    assert render("{{ range .L }}{{ .X }}{{ $.Name }};{{ end }}", data) == "1n;2n;"


def test_range_with_index_and_element_variables() -> None:
    assert render("{{ range $i, $m := .L }}{{ $i }}={{ $m }} {{ end }}", {"L": ["a", "b"]}) == "0=a 1=b "
    assert render("{{ range $m := .L }}<{{ $m }}>{{ end }}", {"L": ["a", "b"]}) == "<a><b>"


def test_range_else_runs_for_empty_and_missing() -> None:
    source = "{{ range .L }}{{ . }}{{ else }}empty{{ end }}"
    assert render(source, {"L": []}) == "empty"
    assert render(source, {}) == "empty"
    assert render(source, {"L": [7]}) == "7"


def test_range_over_a_map_goes_in_key_order() -> None:
    assert render("{{ range $k, $v := .M }}{{ $k }}={{ $v }} {{ end }}", {"M": {"b": 2, "a": 1}}) == "a=1 b=2 "


def test_break_and_continue() -> None:
    source = "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert render(source, {"L": [1, 2, 3, 4, 5]}) == "13"


def test_with_rebinds_dot_and_has_else() -> None:
    source = "{{ with .A }}{{ .B }}{{ else }}none{{ end }}"
    assert render(source, {"A": {"B": "bee"}}) == "bee"
    assert render(source, {"A": {}}) == "none"
    assert render("{{ with $x := .A }}{{ $x.B }}{{ end }}", {"A": {"B": 3}}) == "3"


def test_variables_declare_assign_and_scope() -> None:
    assert render('{{ $x := "a" }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}', {"L": ["b", "c"]}) == "c"
    assert render("{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}") == "21"
    assert render("{{ $ }}", {"A": 1}) == '{"A":1}'
    with pytest.raises(TemplateError, match="undefined variable"):
        render("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")


def test_pipelines_and_parentheses() -> None:
    data = {"Name": "Bob", "L": [1, 2, 3], "M": [{"Content": "first"}]}
    assert render('{{ .Name | printf "%s!" }}', data) == "Bob!"
    assert render('{{ .L | len | printf "%d items" }}', data) == "3 items"
    assert render("{{ (index .M 0).Content }}", data) == "first"
    assert render("{{ len (slice .L 1) }}", data) == "2"


def test_literals() -> None:
    assert render('{{ "tab\\there \\u00e9\\x41\\"" }}') == 'tab\there éA"'
    assert render("{{ `raw \\n {{ }}` }}") == "raw \\n {{ }}"
    assert render("{{ 0x1F }} {{ -2 }} {{ 1.5 }} {{ 1e3 }} {{ 'a' }} {{ true }} {{ false }} [{{ nil }}]") == (
        "31 -2 1.5 1000 97 true false []"
    )


# --- functions ------------------------------------------------------------------------------------------------------


def test_and_or_return_an_argument_and_short_circuit() -> None:
    assert render('{{ and 1 "x" }}|{{ and 0 "x" }}|{{ or "" "y" }}|{{ or "" 0 }}') == "x|0|y|0"
    assert render("{{ and false (index .L 5) }} {{ or true (index .L 5) }}", {"L": []}) == "false true"


def test_not_and_comparisons() -> None:
    assert render('{{ not 0 }} {{ not "x" }} {{ eq .R "user" }} {{ eq 2 1 2 }} {{ ne "a" "b" }}', {"R": "user"}) == (
        "true false true true true"
    )
    assert render('{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 3 2 }} {{ lt "a" "b" }}') == "true true false true true"
    assert render('{{ eq .Missing "x" }} {{ eq .Missing nil }}') == "false true"
    with pytest.raises(TemplateError, match="incompatible types"):
        render('{{ eq 1 "1" }}')
    with pytest.raises(TemplateError, match="incompatible types"):
        render('{{ lt 1 "2" }}')


def test_len_index_slice() -> None:
    data = {"L": [1, 2, 3], "M": {"k": "v"}, "S": "héllo"}
    assert render('{{ len .L }} {{ len .M }} {{ len .S }} {{ len "" }}', data) == "3 1 6 0"
    assert render('{{ index .L 2 }} {{ index .M "k" }} [{{ index .M "nope" }}]', data) == "3 v []"
    assert render('{{ slice .L 1 }} {{ slice .L 0 2 }} {{ slice "abcdef" 1 3 }}', data) == "[2,3] [1,2] bc"
    with pytest.raises(TemplateError, match="index out of range"):
        render("{{ index .L 3 }}", data)
    with pytest.raises(TemplateError, match="index out of range"):
        render("{{ slice .L 2 1 }}", data)


def test_print_printf_println_html() -> None:
    assert render('{{ print "a" 1 2 "b" }}') == "a1 2b"
    assert render('{{ println "a" 1 }}') == "a 1\n"
    assert render('{{ printf "%s=%d %q %v|%5.2f|%-4s|%03d|%x|%%" "a" 42 "hi" true 3.14159 "ab" 7 255 }}') == (
        'a=42 "hi" true| 3.14|ab  |007|ff|%'
    )
    assert render('{{ printf "%s %s" "a" }}') == "a %!s(MISSING)"
    assert render('{{ printf "%d" "x" }}') == "%!d(string=x)"
    assert render("{{ html .S }}", {"S": "<a href='x'>&\"</a>"}) == "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;"


def test_json_encodes_like_go() -> None:
    data = {"V": {"a": [1, "x<y&z"], "b": None, "c": True, "d": "é"}}
    assert render("{{ json .V }}", data) == '{"a":[1,"x\\u003cy\\u0026z"],"b":null,"c":true,"d":"é"}'
    assert render("{{ json .S }}", {"S": 'say "hi"'}) == '"say \\"hi\\""'


def test_maps_and_lists_print_as_json() -> None:
    assert render("{{ .Arguments }}", {"Arguments": {"city": "Paris", "days": 2}}) == '{"city":"Paris","days":2}'


def test_current_date() -> None:
    assert render("{{ currentDate }}") == datetime.date.today().isoformat()
    assert render('{{ currentDate "02 Jan 2006" }}') == datetime.date.today().strftime("%d %b %Y")


def test_a_template_reaches_only_its_data() -> None:
    assert render("[{{ .__class__ }}]", {"A": 1}) == "[]"
    with pytest.raises(TemplateError, match="can't evaluate field __class__ in type string"):
        render("{{ .Prompt.__class__ }}", {"Prompt": "p"})


def test_uses_names_fields_anywhere() -> None:
    assert parse("{{ range $i, $_ := .Messages }}{{ end }}").uses("Messages")
    assert parse("{{ if (len $.Messages) }}{{ end }}").uses("Messages")
    assert parse(LLAMA3).uses("Tools")
    assert not parse(ZEPHYR).uses("Messages")
    assert parse(ZEPHYR).uses("Response")
    assert not parse("{{ .Prompt }}").uses("Response")


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ if .X }}\n  {{ bogus 1 }}{{ end }}", 'line 2, column 6: function "bogus" not defined'),
        ("a{{ if .X }}b", "line 1, column 14: unexpected end of template: missing {{end}}"),
        ("text\n{{ .X ", "line 2, column 1: unclosed action"),
        ("{{ end }}", "line 1, column 4: unexpected {{end}}"),
        ("{{ .X }}{{ else }}", "line 1, column 12: unexpected {{else}}"),
        ('{{ "\\q" }}', "line 1, column 4: unknown escape sequence \\q"),
        ("{{ 1 | 2 }}", "line 1, column 4: can't give argument to non-function"),
        ("{{ break }}", "line 1, column 4: {{break}} outside {{range}}"),
        ('{{ define "x" }}{{ end }}', "line 1, column 4: {{define}} is not supported"),
        ("{{ ( .X }}", "unclosed left paren"),
        ("{{ .X ) }}", "unexpected )"),
        ("{{ # }}", "line 1, column 4: unexpected '#' in action"),
        ("{{/* no end", "line 1, column 1: unclosed comment"),
    ],
)
def test_parse_errors_name_the_position(source: str, message: str | None) -> None:
    with pytest.raises(TemplateError) as caught:
        parse(source).execute({})
    if message:
        assert message in str(caught.value)


def test_runtime_errors_name_the_position() -> None:
    with pytest.raises(TemplateError, match="line 2, column 4: can't evaluate field B in type string"):
        render("x\n{{ .A.B }}", {"A": "text"})
    with pytest.raises(TemplateError, match="can't give argument to non-function"):
        render("{{ .A 1 }}", {"A": 1})


def test_template_error_is_a_loam_error_and_a_value_error() -> None:
    assert issubclass(TemplateError, LoamError) and issubclass(TemplateError, ValueError)


# --- Ollama's library templates -------------------------------------------------------------------------------------


def test_chatml_with_system_and_messages() -> None:
    data = {"System": "Be brief.", "Messages": [msg("user", "Hello"), msg("assistant", "Hi!"), msg("user", "Bye")]}
    assert render(CHATML, data) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(CHATML, {"Messages": [msg("user", "Hello")]}) == (
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama3_conversation() -> None:
    data = {
        "System": "You are terse.",
        "Messages": [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "2+2?")],
        "Tools": None,
    }
    assert render(LLAMA3, data) == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


LLAMA3_TOOLS_SYSTEM = (
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n"
    "When you receive a tool call response, use the output to format an answer to the orginal user question.\n\n"
    "You are a helpful assistant with tool calling capabilities.<|eot_id|>"
)


def test_llama3_offers_tools_in_the_last_user_turn() -> None:
    data = {"Messages": [msg("user", "Weather in Paris?")], "Tools": [WEATHER_TOOL]}
    tool_json = (
        '{"type":"function","function":{"name":"get_weather","description":"Weather for a city",'
        '"parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}'
    )
    assert render(LLAMA3, data) == (
        LLAMA3_TOOLS_SYSTEM + "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper arguments "
        "that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
        "Do not use variables.\n\n" + tool_json + "\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_tool_call_and_result() -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    data = {
        "Messages": [
            msg("user", "Weather in Paris?"),
            msg("assistant", "", ToolCalls=[call]),
            msg("tool", "sunny"),
        ],
        "Tools": [WEATHER_TOOL],
    }
    assert render(LLAMA3, data) == (
        LLAMA3_TOOLS_SYSTEM + "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city":"Paris"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_legacy_prompt_response_template() -> None:
    template = parse(ZEPHYR)
    assert template.execute({"System": "S", "Prompt": "P", "Response": "R"}) == (
        "<|system|>\nS</s>\n<|user|>\nP</s>\n<|assistant|>\nR</s>\n"
    )
    assert template.execute({"Prompt": "P"}) == "<|user|>\nP</s>\n<|assistant|>\n</s>\n"
    assert template.truncated_at("Response").execute({"Prompt": "P", "Response": ""}) == (
        "<|user|>\nP</s>\n<|assistant|>\n"
    )


def test_truncation_follows_source_order() -> None:
    template = parse("A{{ if .X }}B{{ .Response }}C{{ else }}D{{ end }}E").truncated_at("Response")
    assert template.execute({"X": True, "Response": "r"}) == "ABr"
    assert template.execute({"X": False}) == "A", "the else branch and the tail come after .Response"
    untouched = parse("{{ .Prompt }} tail").truncated_at("Response")
    assert untouched.execute({"Prompt": "p"}) == "p tail"
