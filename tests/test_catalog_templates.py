"""The catalog's templates: every one parses; the Gemma 3 Modelfile chats in Gemma 3's own turn format, and the
catalog's gemma3:270m (the pretrained model) in a plain transcript it continues well."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.server.gotemplate import parse
from app.server.jinja import render_jinja
from app.server.prompt import PromptSpec, render_chat, render_generate
from app.store.catalog import Catalog
from app.store.modelfile import parse as parse_modelfile
from app.store.names import ModelName
from app.store.store import Store
from tests.conftest import run_loam

#: Gemma 3's chat template as Google ships it with the instruct models (tokenizer_config.json).
GEMMA3_HF = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ],
]


MODELFILES = Path(__file__).resolve().parent.parent / "docs" / "modelfiles"


@pytest.fixture(scope="module")
def gemma() -> PromptSpec:
    """docs/modelfiles/gemma3.Modelfile: for instruction-tuned Gemma 3 GGUFs."""
    modelfile = parse_modelfile((MODELFILES / "gemma3.Modelfile").read_text())
    assert modelfile.template and modelfile.parameters["stop"] == ["<end_of_turn>"]
    return PromptSpec(template=modelfile.template)


def chat(spec: PromptSpec, messages: list[dict[str, str]]) -> str:
    return render_chat(spec, messages, count_tokens=len, num_ctx=1 << 20).prompt


def test_every_catalog_template_parses() -> None:
    templates = {name: e.template for name, e in Catalog.load().entries.items() if e.template}
    assert "gemma3:270m" in templates
    for name, source in templates.items():
        assert parse(source).uses("Messages"), name


def test_gemma3_entry_keeps_its_stop_and_sampling() -> None:
    entry = Catalog.load().entries["gemma3:270m"]
    assert entry.parameters["stop"] == ["\nUser:", "\nAssistant:", "<end_of_turn>"]
    assert entry.parameters["top_k"] == 64


def test_pretrained_gemma3_entry_chats_as_a_transcript() -> None:
    """The pretrained model never saw Gemma's turn markers; it gets the transcript it continues."""
    spec = PromptSpec(template=Catalog.load().entries["gemma3:270m"].template)
    assert chat(spec, CONVERSATIONS[3]) == "User: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:"
    assert "<start_of_turn>" not in chat(spec, CONVERSATIONS[0])


def test_gemma3_chat_uses_gemma_turns(gemma: PromptSpec) -> None:
    prompt = chat(gemma, CONVERSATIONS[2])
    assert prompt == (
        "<start_of_turn>user\nYou are a helpful assistant.\n\nHello, how are you?<end_of_turn>\n"
        "<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n"
        "<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_gemma3_chat_matches_googles_template(gemma: PromptSpec, messages: list[dict[str, str]]) -> None:
    """The Go template writes what Gemma 3's own Jinja template writes (the runner adds <bos>)."""
    assert chat(gemma, messages) == render_jinja(GEMMA3_HF, messages)


def test_gemma3_system_from_the_modelfile_opens_the_first_turn(gemma: PromptSpec) -> None:
    spec = PromptSpec(template=gemma.template, system="Answer in one word.")
    assert chat(spec, CONVERSATIONS[0]) == (
        "<start_of_turn>user\nAnswer in one word.\n\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma3_generate_prompt(gemma: PromptSpec) -> None:
    assert render_generate(gemma, "Why is the sky blue?") == (
        "<start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_pulled_gemma3_entry_stores_its_template(tiny_gguf: Path, loam_home: Path, user_catalog: Path) -> None:
    """Pull the entry's template and parameters over a local file: the model's layers carry Gemma's turns."""
    template = parse_modelfile((MODELFILES / "gemma3.Modelfile").read_text()).template or ""
    shipped = PromptSpec(template=template.lstrip("\n"))  # as a TOML multi-line string holds it
    assert shipped.template and "'''" not in shipped.template
    user_catalog.write_text(
        f'[models."gemmaish:test"]\n'
        f'parameters = {{ stop = ["<end_of_turn>"] }}\n'
        f"template = '''{shipped.template}'''\n"
        f'sources = [{{ path = "{tiny_gguf}" }}]\n'
    )
    result = run_loam("pull", "gemmaish:test", env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    details = Store(loam_home / "models").show(ModelName.parse("gemmaish:test"))
    assert details.template == shipped.template
    assert details.parameters["stop"] == ["<end_of_turn>"]
    spec = PromptSpec(template=details.template, chat_template=details.info.chat_template)
    assert chat(spec, CONVERSATIONS[0]) == (
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    )
