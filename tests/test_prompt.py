"""Prompt rendering: template choice, system and history, legacy turns, fitting, the Jinja sandbox, thinking."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.server.gotemplate import TemplateError
from app.server.jinja import render_jinja
from app.server.prompt import PromptSpec, Rendered, render_chat, render_generate
from app.server.thinking import ThinkingSplitter, prompt_opens_thinking, split_thinking

#: SmolLM2-135M-Instruct's tokenizer.chat_template, as its GGUF carries it.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_GO = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
LEGACY_CHATML = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""
MISTRAL_NO_RESPONSE = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_RESPONSE = MISTRAL_NO_RESPONSE + "{{ .Response }}"
MISTRAL_MESSAGES = """[INST] {{ if .System }}{{ .System }}

{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}
{{- end }}"""


def words(text: str) -> int:
    return len(text.split())


def chat(spec: PromptSpec, messages: list[dict[str, Any]], num_ctx: int = 100_000, **kw: Any) -> Rendered:
    return render_chat(spec, messages, count_tokens=words, num_ctx=num_ctx, **kw)


def m(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


# --- system prompt and history --------------------------------------------------------------------------------------


def test_smollm2_jinja_template_with_its_default_system() -> None:
    rendered = chat(PromptSpec(chat_template=SMOLLM2), [m("user", "Hi")])
    assert rendered.prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rendered.dropped == 0 and not rendered.thinking_started


def test_modelfile_system_is_used_when_the_request_has_none() -> None:
    rendered = chat(PromptSpec(chat_template=SMOLLM2, system="Be brief."), [m("user", "Hi")])
    assert rendered.prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_request_system_replaces_the_modelfile_system() -> None:
    spec = PromptSpec(template=CHATML_GO, system="Modelfile system")
    prompt = chat(spec, [m("system", "Request system"), m("user", "Hi")]).prompt
    assert "Request system" in prompt and "Modelfile system" not in prompt
    assert prompt.startswith("<|im_start|>system\nRequest system<|im_end|>\n")


def test_modelfile_history_goes_after_the_system_message() -> None:
    spec = PromptSpec(template=CHATML_GO, system="S", messages=[m("user", "q0"), m("assistant", "a0")])
    expected = (
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nq0<|im_end|>\n<|im_start|>assistant\na0<|im_end|>\n"
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat(spec, [m("user", "q1")]).prompt == expected.format(system="S")
    assert chat(spec, [m("system", "R"), m("user", "q1")]).prompt == expected.format(system="R")


def test_go_messages_template_sees_system_tools_and_think() -> None:
    template = (
        "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}|{{ range .Tools }}"
        "{{ .Function.Name }}{{ end }}|{{ .Think }}|{{ .IsThinkSet }}"
    )
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    prompt = chat(PromptSpec(template=template, system="S"), [m("user", "u")], tools=tools, think=True).prompt
    assert prompt == "S|system:S;user:u;|get_weather|true|true"


def test_consecutive_messages_of_one_role_are_merged_like_ollama() -> None:
    prompt = chat(PromptSpec(template=CHATML_GO), [m("user", "one"), m("user", "two")]).prompt
    assert prompt == "<|im_start|>user\none\n\ntwo<|im_end|>\n<|im_start|>assistant\n"


# --- legacy .Prompt/.Response templates -----------------------------------------------------------------------------


@pytest.mark.parametrize("template", [MISTRAL_NO_RESPONSE, MISTRAL_RESPONSE, MISTRAL_MESSAGES])
def test_legacy_and_messages_templates_render_the_same_conversation(template: str) -> None:
    messages = [m("user", "Hello friend!"), m("assistant", "Hello human!"), m("user", "What is your name?")]
    assert chat(PromptSpec(template=template), messages).prompt == (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )


@pytest.mark.parametrize("template", [MISTRAL_NO_RESPONSE, MISTRAL_RESPONSE, MISTRAL_MESSAGES])
def test_legacy_system_goes_into_the_first_turn(template: str) -> None:
    messages = [m("system", "You are a helpful assistant!"), m("user", "Hello friend!")]
    messages += [m("assistant", "Hello human!"), m("user", "What is your name?")]
    assert chat(PromptSpec(template=template), messages).prompt == (
        "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )


def test_legacy_template_is_cut_at_response_in_the_last_turn() -> None:
    messages = [m("system", "You are a helpful assistant!"), m("user", "Hello friend!")]
    messages += [m("assistant", "Hello human!"), m("user", "What is your name?")]
    assert chat(PromptSpec(template=LEGACY_CHATML), messages).prompt == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_trailing_assistant_message_is_continued() -> None:
    messages = [m("user", "What is your name?"), m("assistant", "My name is Ollama and I")]
    assert chat(PromptSpec(template=MISTRAL_RESPONSE), messages).prompt == (
        "[INST] What is your name?[/INST] My name is Ollama and I"
    )


def test_legacy_template_without_response_gets_it_appended() -> None:
    template = "{{ .System }}\n<human>: {{ .Prompt }}\n<bot>:\n"
    messages = [m("system", "S"), m("user", "q1"), m("assistant", "a1"), m("user", "q2")]
    assert chat(PromptSpec(template=template), messages).prompt == "S\n<human>: q1\n<bot>:\na1\n<human>: q2\n<bot>:\n"


def test_plain_fallback_without_any_template() -> None:
    messages = [m("user", "Hi"), m("assistant", "Hello"), m("user", "Bye")]
    assert chat(PromptSpec(system="S"), messages).prompt == "S\n\nHi\n\nHello\n\nBye"


# --- fitting into num_ctx -------------------------------------------------------------------------------------------


def long_conversation() -> list[dict[str, Any]]:
    return [
        m("system", "sys"),
        m("user", "u1 " * 10),
        m("assistant", "a1 " * 10),
        m("user", "u2 " * 10),
        m("assistant", "a2 " * 10),
        m("user", "last question"),
    ]


def test_everything_is_kept_when_it_fits() -> None:
    rendered = chat(PromptSpec(), long_conversation(), num_ctx=1000)
    assert rendered.dropped == 0 and "u1" in rendered.prompt


def test_fitting_drops_the_oldest_non_system_messages() -> None:
    rendered = chat(PromptSpec(), long_conversation(), num_ctx=25)
    assert rendered.dropped == 2
    assert words(rendered.prompt) <= 25
    assert rendered.prompt.startswith("sys\n\nu2")
    assert "u1" not in rendered.prompt and "a1" not in rendered.prompt and rendered.prompt.endswith("last question")


def test_fitting_keeps_system_and_the_last_message_even_when_too_long() -> None:
    rendered = chat(PromptSpec(template=CHATML_GO), long_conversation(), num_ctx=1)
    assert rendered.dropped == 4
    assert rendered.prompt == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nlast question<|im_end|>\n<|im_start|>assistant\n"
    )


def test_fitting_drops_modelfile_history_first() -> None:
    spec = PromptSpec(system="S", messages=[m("user", "old " * 20), m("assistant", "older " * 20)])
    rendered = chat(spec, [m("user", "new question")], num_ctx=10)
    assert rendered.dropped == 2 and rendered.prompt == "S\n\nnew question"


def test_fitting_never_orphans_a_tool_result() -> None:
    call = {"function": {"name": "f", "arguments": {}}}
    messages = [
        m("user", "x " * 30),
        m("assistant", "", tool_calls=[call]),
        m("tool", "result " * 5),
        m("tool", "more " * 5),
        m("user", "thanks"),
    ]
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return words(text)

    spec = PromptSpec(template=CHATML_GO)
    rendered = render_chat(spec, messages, count_tokens=count, num_ctx=20)
    assert rendered.dropped == 1, "the tool results stay with the call that asked for them"
    assert rendered.prompt.startswith("<|im_start|>assistant\n<|im_end|>\n<|im_start|>tool\nresult")
    rendered = render_chat(spec, messages, count_tokens=count, num_ctx=10)
    assert rendered.dropped == 4, "the call goes together with its results"
    assert not any(p.startswith("<|im_start|>tool") for p in counted)


def test_fitting_counts_each_candidate_once() -> None:
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return words(text)

    render_chat(PromptSpec(), long_conversation(), count_tokens=count, num_ctx=25)
    assert len(counted) == len(set(counted)) == 3


def test_fitting_a_long_conversation_takes_a_few_renders() -> None:
    """Thousands of messages (a request body can hold them) cost a few renders, not one per message left out."""
    messages = [m("user" if i % 2 == 0 else "assistant", f"w{i} " * 3) for i in range(3001)]
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return words(text)

    rendered = render_chat(PromptSpec(), messages, count_tokens=count, num_ctx=300)
    assert len(counted) <= 14, "bisection: about log2(3000) candidates are counted"
    assert words(rendered.prompt) <= 300 < words(rendered.prompt) + 3 + 3, "as few messages as possible are left out"
    assert rendered.dropped == 3001 - 100 and rendered.prompt.rstrip().endswith("w3000 w3000 w3000")


# --- the Jinja sandbox ----------------------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ self.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum }}{{ cycler }}{{ namespace }}",
    "{% set x = [].append(1) %}{{ x }}",
    "{{ config }}{{ request }}",
    "{{ config.items() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ messages[0].__class__ }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ ''|attr('__class__') }}",
    "{{ messages.append({'role': 'user', 'content': 'pwned'}) }}",
    "{{ messages[0].update({'content': 'pwned'}) }}",
    "{{ messages.pop() }}",
    "{{ 'a' * 100000000 }}",
    "{{ range(100000000)|list|length }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_are_harmless(source: str) -> None:
    messages = [m("user", "hello")]
    before = copy.deepcopy(messages)
    try:
        output = render_jinja(source, messages)
    except TemplateError as e:
        assert "\n" not in str(e)
    else:
        for internal in ("<class", "function", "module", "__", "0x"):
            assert internal not in output
    assert messages == before, "the template changed its input"


def test_raise_exception_is_a_template_error_with_the_templates_message() -> None:
    source = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    )
    with pytest.raises(TemplateError, match="Conversation must start with user"):
        render_jinja(source, [m("assistant", "hi")])
    with pytest.raises(TemplateError, match="Conversation must start with user"):
        chat(PromptSpec(chat_template=source), [m("assistant", "hi")])


def test_jinja_syntax_and_runtime_errors_are_one_line_template_errors() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        render_jinja("ok\n{% if %}", [])
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        render_jinja("{{ 1 / 0 }}", [])


def test_jinja_environment_matches_transformers() -> None:
    source = (
        "{{ bos_token }}{% for message in messages %}\n"
        "  {% if message.role == 'skip' %}{% continue %}{% endif %}\n"
        "{{ message.content }}|{% endfor %}{{ tools|tojson }}|{{ {'k': 'é'}|tojson(indent=1) }}"
        "{% generation %}G{% endgeneration %}{{ eos_token }}{{ strftime_now('%Y')|length }}"
    )
    messages = [m("user", "a"), m("skip", "b"), m("user", "c")]
    output = render_jinja(source, messages, bos_token="<s>", eos_token="</s>", tools=[{"x": 1}])
    assert output == '<s>a|c|[{"x": 1}]|{\n "k": "é"\n}G</s>4'


def test_jinja_sees_enable_thinking_and_tool_calls() -> None:
    source = (
        "{{ enable_thinking }}|{% for m in messages %}{{ m.tool_calls[0].function.name if m.tool_calls }}{% endfor %}"
    )
    messages = [m("user", "q"), m("assistant", "", tool_calls=[{"function": {"name": "f", "arguments": {}}}])]
    assert chat(PromptSpec(chat_template=source), messages, think=False).prompt == "False|f"


# --- generate -------------------------------------------------------------------------------------------------------


def test_generate_with_a_legacy_template_cuts_at_response() -> None:
    spec = PromptSpec(template=LEGACY_CHATML, system="S")
    assert render_generate(spec, "Hi") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_generate(spec, "Hi", system="T").startswith("<|im_start|>system\nT<|im_end|>")


def test_generate_with_a_messages_template_and_a_request_template() -> None:
    spec = PromptSpec(template=CHATML_GO)
    assert render_generate(spec, "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_generate(spec, "Hi", template="Q: {{ .Prompt }}\nA:") == "Q: Hi\nA:"


def test_generate_with_a_suffix_fills_the_middle() -> None:
    template = "{{ if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{ else }}{{ .Prompt }}{{ end }}"
    spec = PromptSpec(template=template)
    assert render_generate(spec, "def add(", suffix="return x") == "<PRE> def add( <SUF>return x <MID>"
    assert render_generate(spec, "def add(") == "def add("


def test_generate_with_jinja_or_nothing() -> None:
    assert render_generate(PromptSpec(chat_template=SMOLLM2), "Hi", system="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_generate(PromptSpec(system="ignored"), "raw text") == "raw text"


# --- thinking -------------------------------------------------------------------------------------------------------

THINKING_TEXTS = [
    "<think>\nLet me think. 2 < 3.\n</think>\n\nThe answer is 4.",
    "  <think>a</think>b <think>not thinking</think>",
    "No thinking here, but <think> later </think> is content.",
    "<think>never closed ",
    "<thi",
    "<think></think>",
    "",
]


@pytest.mark.parametrize("text", THINKING_TEXTS)
@pytest.mark.parametrize("started", [False, True])
def test_streamed_splitting_matches_whole_text_at_every_chunk_boundary(text: str, started: bool) -> None:
    expected = split_thinking(text, started=started)
    chunkings = [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
    for chunks in chunkings:
        splitter = ThinkingSplitter(started=started)
        pieces = [splitter.feed(chunk) for chunk in chunks] + [splitter.flush()]
        assert ("".join(p[0] for p in pieces), "".join(p[1] for p in pieces)) == expected, chunks


def test_split_thinking_results() -> None:
    assert split_thinking(THINKING_TEXTS[0]) == ("Let me think. 2 < 3.", "The answer is 4.")
    assert split_thinking(THINKING_TEXTS[2]) == ("", THINKING_TEXTS[2])
    assert split_thinking("<think>never closed ") == ("never closed", "")
    assert split_thinking("reasoning\n</think>\n\nanswer", started=True) == ("reasoning", "answer")


def test_splitter_holds_back_a_partial_tag() -> None:
    splitter = ThinkingSplitter()
    assert splitter.feed("<th") == ("", "")
    assert splitter.feed("ink>idea</th") == ("idea", "")
    assert splitter.feed("ink>\n\nAns") == ("", "Ans")
    assert splitter.feed("wer") == ("", "wer")
    assert splitter.flush() == ("", "")


def test_a_later_think_tag_is_content() -> None:
    splitter = ThinkingSplitter()
    assert splitter.feed("Hello ") == ("", "Hello ")
    assert splitter.feed("<think>x</think>") == ("", "<think>x</think>")


def test_thinking_started_when_the_prompt_opens_a_think_section() -> None:
    template = "{{ range .Messages }}{{ .Content }}{{ end }}<|assistant|><think>\n"
    assert chat(PromptSpec(template=template), [m("user", "q")]).thinking_started
    closed = "{{ range .Messages }}{{ .Content }}{{ end }}<think>\n\n</think>\n\n"
    assert not chat(PromptSpec(template=closed), [m("user", "q")]).thinking_started
    assert prompt_opens_thinking("x<think>  \n") and not prompt_opens_thinking("x<think>y")
