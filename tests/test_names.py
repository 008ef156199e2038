from pathlib import Path

import pytest

from app.errors import InvalidName
from app.store.names import ModelName


@pytest.mark.parametrize(
    ("text", "full"),
    [
        ("smollm2", "registry.ollama.ai/library/smollm2:latest"),
        ("smollm2:135m", "registry.ollama.ai/library/smollm2:135m"),
        ("me/mymodel:v1.2", "registry.ollama.ai/me/mymodel:v1.2"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
        ("127.0.0.1:8080/library/tiny:latest", "127.0.0.1:8080/library/tiny:latest"),
        ("llama3.2", "registry.ollama.ai/library/llama3.2:latest"),
    ],
)
def test_parse_valid_names(text: str, full: str) -> None:
    assert str(ModelName.parse(text)) == full


def test_display_drops_defaults_and_keeps_tag() -> None:
    assert ModelName.parse("smollm2").display == "smollm2:latest"
    assert ModelName.parse("me/x:1").display == "me/x:1"
    assert ModelName.parse("hf.co/a/b:c").display == "hf.co/a/b:c"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty model name"),
        ("../x", "invalid namespace '..'"),
        ("a/../b", "invalid namespace '..'"),
        ("x/", "empty part"),
        ("a//b", "empty part"),
        ("model:", "empty tag"),
        ("mo del", "invalid model"),
        ("a/b/c/d", "expected [host/][namespace/]model[:tag]"),
        ("x:../../etc", "invalid host 'x:..'"),
        ("x:.hidden", "invalid tag"),
        ("m" * 81, "invalid model"),
        ("m" * 700, "the limit is"),
        ("ns/mod\\el", "invalid model"),
    ],
)
def test_invalid_names_are_refused_with_the_part_named(text: str, says: str) -> None:
    with pytest.raises(InvalidName) as info:
        ModelName.parse(text)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_manifest_path_follows_ollama_layout(tmp_path: Path) -> None:
    path = ModelName.parse("smollm2:135m").manifest_path(tmp_path)
    assert path == tmp_path / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
