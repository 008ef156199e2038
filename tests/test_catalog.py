from pathlib import Path

import pytest

from app.errors import CatalogError
from app.store.catalog import Catalog
from app.store.names import ModelName
from app.store.sources import PathSource, PipSource, RegistrySource, UrlSource, parse_source


def test_shipped_catalog() -> None:
    catalog = Catalog.load()
    assert catalog.default == "smollm2:135m"
    smol = catalog.get(ModelName.parse("smollm2:135m"))
    assert smol is not None and smol.size == 98362432 and smol.digest and smol.digest.startswith("sha256:b179c952")
    assert isinstance(smol.sources[0], UrlSource) and isinstance(smol.sources[-1], PipSource)
    gemma = catalog.get(ModelName.parse("gemma3:270m"))
    assert gemma is not None
    pip = gemma.sources[-1]
    assert isinstance(pip, PipSource) and len(pip.requirements) == 4 and len(pip.members) == 4
    assert gemma.parameters["stop"][-1] == "<end_of_turn>"
    assert isinstance(catalog.get(ModelName.parse("llama3.2:1b")).sources[0], RegistrySource)  # type: ignore[union-attr]


def test_user_catalog_extends_and_overrides(tmp_path: Path) -> None:
    user = tmp_path / "models.toml"
    user.write_text(
        'default = "mine:1"\n[models."mine:1"]\nsources = [{ path = "m.gguf" }]\n'
        '[models."smollm2:135m"]\ndescription = "mine"\nsources = [{ path = "/x.gguf" }]\n'
    )
    catalog = Catalog.load(user)
    assert catalog.default == "mine:1"
    mine = catalog.get(ModelName.parse("mine:1"))
    assert mine is not None and mine.sources == (PathSource(tmp_path / "m.gguf"),)
    assert catalog.get(ModelName.parse("smollm2:135m")).description == "mine"  # type: ignore[union-attr]
    assert catalog.get(ModelName.parse("gemma3:270m")) is not None


def test_suggestions() -> None:
    catalog = Catalog.load()
    assert "smollm2:135m" in catalog.suggest("smolm2")
    assert catalog.suggest("smollm2:latest")[0].startswith("smollm2:")
    assert "gemma3:270m" in catalog.suggest("gema3:270m")
    assert catalog.suggest("zzzzqqq") == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('[models."x:1"]\nsources = []\n', "non-empty `sources`"),
        ('[models."x:1"]\nsha256 = "abc"\nsources = [{ path = "a" }]\n', "sha256 must be"),
        ('[models."../x"]\nsources = [{ path = "a" }]\n', "invalid namespace"),
        ('[models."x:1"]\nsources = [{ ftp = "a" }]\n', "unknown source"),
        ('[models."x:1"\n', "models.toml"),
    ],
)
def test_bad_catalog_entries(tmp_path: Path, body: str, says: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(body)
    with pytest.raises(CatalogError, match=says.replace("[", r"\[").replace("(", r"\(")):
        Catalog.from_file(path)


def test_source_strings(tmp_path: Path) -> None:
    assert parse_source("https://h/x.gguf") == UrlSource("https://h/x.gguf")
    assert parse_source("pip:a==1#a/x.part0,b==1#b/x.part1") == PipSource(("a==1", "b==1"), ("a/x.part0", "b/x.part1"))
    assert parse_source("registry:hf.co/a/b:c") == RegistrySource(ModelName.parse("hf.co/a/b:c"))
    assert parse_source("m.gguf", tmp_path) == PathSource(tmp_path / "m.gguf")
    with pytest.raises(CatalogError, match="pip:PACKAGE"):
        parse_source("pip:nomember")


def test_default_name_reads_the_user_file_first_without_the_entries(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped.toml"
    shipped.write_text('default = "smollm2:135m"\n[models."broken"]\nsources = 3\n')  # entries are not read
    user = tmp_path / "user.toml"
    assert Catalog.default_name(user, shipped) == "smollm2:135m"
    user.write_text('default = "llama3.2:1b"\n')
    assert Catalog.default_name(user, shipped) == "llama3.2:1b"
    user.write_text("default = \n")
    with pytest.raises(CatalogError, match="user.toml"):
        Catalog.default_name(user, shipped)
