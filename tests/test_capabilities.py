"""Capabilities as /api/show lists them and as routes require them, from real stored models and templates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter, PoolingType

from app.errors import Unsupported
from app.server.capabilities import ORDER, capabilities, require
from app.store.gguf_info import inspect
from app.store.manifest import MEDIA_PROJECTOR, Layer
from app.store.names import ModelName
from app.store.store import ModelDetails, Store

#: The Hermes/Qwen-style Go template Ollama's library ships for Qwen 3 (abridged, fields kept).
QWEN3_GO = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if (and $.IsThinkSet (and .Thinking (or $last (gt $i $.LastUserIndex)))) -}}
<think>{{ .Thinking }}</think>
{{ end -}}
{{ .Content }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) -}}
<think>

</think>

{{ end -}}
{{ end }}
{{- end }}
{{- end }}"""

#: Qwen3's Hugging Face chat template, abridged: tools, reasoning_content and enable_thinking all appear.
QWEN3_JINJA = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
    {{- "# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- endif %}
{%- for message in messages %}
    {%- set content = message.content %}
    {%- if message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\\n' + content }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

#: Gemma 3's Hugging Face chat template (as in Gemma 3 instruct GGUFs): turns, no tools, no thinking.
GEMMA3_JINJA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'assistant') -%}{%- set role = "model" -%}{%- else -%}{%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}{{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}"""

#: A fill-in-the-middle Go template as Ollama's code models carry one.
FIM_GO = (
    "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
    "{{ else }}{{ .Prompt }}{{ end }}"
)


def stored(root: Path, gguf: Path, name: str, *, template: str | None = None) -> ModelDetails:
    """Store `gguf` under `name` (with a TEMPLATE layer when given) and read it back as `show` does."""
    store = Store(root)
    store.write_model(
        ModelName.parse(name), store.blobs.write_bytes(gguf.read_bytes()), inspect(gguf), template=template
    )
    return store.show(ModelName.parse(name))


def with_info(details: ModelDetails, **changes: object) -> ModelDetails:
    return dataclasses.replace(details, info=dataclasses.replace(details.info, **changes))


def write_bert(path: Path) -> Path:
    """An embedding-only GGUF as llama.cpp's converter writes a BERT model: mean pooling, no causal attention."""
    writer = GGUFWriter(str(path), "bert")
    writer.add_name("tiny-bert")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_pooling_type(PoolingType.MEAN)
    writer.add_causal_attention(False)
    writer.add_tensor("token_embd.weight", np.zeros((16, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelDetails:
    return stored(tmp_path_factory.mktemp("tiny"), tiny_gguf, "tiny")


def test_smollm2_jinja_template_has_no_tools_or_thinking(smollm2_store: Path) -> None:
    details = Store(smollm2_store).show(ModelName.parse("smollm2:135m"))
    assert details.template is None and details.info.chat_template  # rendered with the GGUF's Jinja template
    assert "tools" not in details.info.chat_template
    assert capabilities(details) == ["completion"]


def test_tools_modelfile_gives_smollm2_tools(tools_store: Path) -> None:
    details = Store(tools_store).show(ModelName.parse("smollm2:135m-tools"))
    assert capabilities(details) == ["completion", "tools"]
    require("smollm2:135m-tools", details, tools=True)
    with pytest.raises(Unsupported, match=r'^"smollm2:135m-tools" does not support thinking$'):
        require("smollm2:135m-tools", details, tools=True, thinking=True)


def test_tiny_random_gguf_is_completion_only(tiny: ModelDetails) -> None:
    assert tiny.info.chat_template and tiny.template is None
    assert capabilities(tiny) == ["completion"]


def test_go_template_wins_over_the_gguf_jinja_template(tiny: ModelDetails) -> None:
    """loam renders with the Modelfile TEMPLATE when there is one, so its fields decide, not the GGUF's template."""
    qwen = with_info(tiny, chat_template=QWEN3_JINJA)
    assert capabilities(qwen) == ["completion", "tools", "thinking"]
    assert capabilities(dataclasses.replace(qwen, template="{{ .Prompt }}")) == ["completion"]
    assert capabilities(dataclasses.replace(tiny, template=QWEN3_GO)) == ["completion", "tools", "thinking"]


def test_qwen3_jinja_template_has_tools_and_thinking(tiny: ModelDetails) -> None:
    assert capabilities(with_info(tiny, chat_template=QWEN3_JINJA)) == ["completion", "tools", "thinking"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{% if enable_thinking %}/think{% endif %}{{ messages[0].content }}", ["completion", "thinking"]),
        ("{% for m in messages %}{{ m['reasoning_content'] }}{% endfor %}", ["completion", "thinking"]),
        ("{{ messages[-1].content }}<think>\n", ["completion", "thinking"]),
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}", ["completion", "tools"]),
        ("{% if tools is defined and tools %}x{% endif %}", ["completion", "tools"]),
        # words in text are not references: no `tools` variable, no thinking marker
        ("You have no tools and never think.{{ messages[0].content }}", ["completion"]),
        ("{% set tools = [] %}{% for t in tools %}{{ t }}{% endfor %}", ["completion"]),
        ("{{ messages[0].tools_note }}", ["completion"]),
        ("{% for m in messages %}{{ m.content", ["completion"]),  # does not parse: nothing claimed
    ],
)
def test_jinja_rules(tiny: ModelDetails, source: str, expected: list[str]) -> None:
    assert capabilities(with_info(tiny, chat_template=source)) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ range .Messages }}{{ .Content }}{{ end }}", ["completion"]),
        ("{{ if .Tools }}{{ range .Tools }}{{ .Function }}{{ end }}{{ end }}{{ .Prompt }}", ["completion", "tools"]),
        ("{{ range $.Tools }}{{ . }}{{ end }}", ["completion", "tools"]),
        ("{{ if $.Think }}/think{{ end }}{{ .Prompt }}", ["completion", "thinking"]),
        ("{{ range .Messages }}{{ .Thinking }}{{ .Content }}{{ end }}", ["completion", "thinking"]),
        (FIM_GO, ["completion", "insert"]),
        ("Tools: none. Think about the Suffix. {{ .Prompt }}", ["completion"]),
        ("{{ if .Tools }}unclosed", ["completion"]),  # does not parse: nothing claimed
    ],
)
def test_go_rules(tiny: ModelDetails, source: str, expected: list[str]) -> None:
    assert capabilities(dataclasses.replace(tiny, template=source)) == expected


def test_gemma_style_templates_are_completion_only(tiny: ModelDetails) -> None:
    from app.store.catalog import Catalog

    assert capabilities(with_info(tiny, chat_template=GEMMA3_JINJA)) == ["completion"]
    gemma = Catalog.load().entries["gemma3:270m"]
    assert gemma.template
    assert capabilities(dataclasses.replace(tiny, template=gemma.template)) == ["completion"]


def test_embedding_gguf_is_embedding_only(tmp_path: Path) -> None:
    details = stored(tmp_path / "models", write_bert(tmp_path / "bert.gguf"), "tiny-bert")
    assert details.info.architecture == "bert"
    assert (details.info.pooling_type, details.info.causal_attention) == (int(PoolingType.MEAN), False)
    assert capabilities(details) == ["embedding"]
    with pytest.raises(Unsupported, match=r'^"tiny-bert" does not support tools$'):
        require("tiny-bert", details, tools=True)


def test_pooling_or_bidirectional_attention_means_embedding(tiny: ModelDetails) -> None:
    """A decoder architecture converted as an embedder (Qwen3-Embedding, EmbeddingGemma) says so in its metadata."""
    pooled = with_info(tiny, pooling_type=int(PoolingType.LAST))
    assert capabilities(pooled) == ["embedding"]
    bidirectional = with_info(tiny, causal_attention=False)
    assert capabilities(bidirectional) == ["embedding"]
    plain = dataclasses.replace(
        tiny, info=dataclasses.replace(tiny.info, pooling_type=int(PoolingType.NONE), causal_attention=True)
    )
    assert capabilities(plain) == ["completion"]
    assert capabilities(with_info(tiny, architecture="nomic-bert")) == ["embedding"]


def test_projector_or_vision_encoder_means_vision(tiny: ModelDetails) -> None:
    with pytest.raises(Unsupported, match=r'^"tiny" does not support vision$'):
        require("tiny", tiny, images=True)
    manifest = dataclasses.replace(
        tiny.stored.manifest, layers=[*tiny.stored.manifest.layers, Layer(MEDIA_PROJECTOR, "sha256:" + "0" * 64, 1)]
    )
    projected = dataclasses.replace(tiny, stored=dataclasses.replace(tiny.stored, manifest=manifest))
    assert capabilities(projected) == ["completion", "vision"]
    require("tiny", projected, images=True)
    assert capabilities(with_info(tiny, vision=True)) == [
        "completion",
        "vision",
    ]


def test_require_wording_and_order(tiny: ModelDetails) -> None:
    require("tiny", tiny)  # nothing asked, nothing refused
    with pytest.raises(Unsupported) as refused:
        require("tiny", tiny, tools=True, thinking=True, images=True)
    assert str(refused.value) == '"tiny" does not support tools'
    with pytest.raises(Unsupported, match=r'^"tiny" does not support thinking$'):
        require("tiny", tiny, thinking=True)
    thinker = with_info(tiny, chat_template=QWEN3_JINJA)
    require("qwen3", thinker, tools=True, thinking=True)


def test_order_is_the_contracts() -> None:
    assert ORDER == ("completion", "tools", "thinking", "vision", "embedding", "insert")
