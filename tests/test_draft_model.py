"""Modelfile DRAFT: a second model that proposes tokens, stored as a layer, checked to share the vocabulary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from gguf import GGUFWriter

from app.errors import ModelfileError
from app.server.options import DEFAULT_DRAFT_NUM_PREDICT, load_options, merged
from app.server.scheduler import LoadRequest
from app.store.blobs import hash_file, short_digest
from app.store.catalog import Catalog
from app.store.create import create, modelfile_text
from app.store.gguf_info import DRAFT_MAX_SIZE_DIFFERENCE, vocabulary, vocabulary_difference
from app.store.manifest import MEDIA_DRAFT, MEDIA_MODEL
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from tests import ggufmaker
from tests.conftest import run_loam
from tests.ggufmaker import write_tiny_llama
from tests.server_process import ServerProcess

N_TOKENS = 3 + 256 + len(ggufmaker.WORDS) + 27  # specials, bytes, words, letters and "▁"


def tiny_with_words(path: Path, words: list[str], **kw: object) -> Path:
    """A tiny llama whose vocabulary has `words` in place of the usual ones."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ggufmaker, "WORDS", words)
        return write_tiny_llama(path, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model, a draft with its vocabulary, and drafts whose vocabularies differ in several ways."""
    root = tmp_path_factory.mktemp("draft")
    words = list(ggufmaker.WORDS)
    return {
        "model": write_tiny_llama(root / "model.gguf", name="model"),
        "draft": write_tiny_llama(root / "draft.gguf", n_layer=1, n_embd=32, n_ff=64, seed=5, name="draft"),
        "wide": tiny_with_words(root / "wide.gguf", words + [f"w{i}" for i in range(300)], seed=6),
        "respelled": tiny_with_words(root / "respelled.gguf", ["THE", *words[1:]], seed=7),
    }


@pytest.fixture
def workdir(tmp_path: Path, ggufs: dict[str, Path]) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    for key, path in ggufs.items():
        (folder / f"{key}.gguf").hardlink_to(path)
    return folder


@pytest.fixture
def store(models_dir: Path) -> Store:
    return Store(models_dir)


def build(store: Store, folder: Path, name: str, text: str) -> None:
    create(store, Catalog.load(), ModelName.parse(name), parse(text), folder=folder)


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def model_digest(store: Store, name: str) -> str:
    layer = store.get(ModelName.parse(name)).manifest.layer(MEDIA_MODEL)
    assert layer is not None
    return layer.digest


@pytest.fixture
def drafted(store: Store, workdir: Path) -> Store:
    """little:1m (the draft) and big (the model, drafted by little:1m)."""
    build(store, workdir, "little:1m", "FROM ./draft.gguf\n")
    build(store, workdir, "big", "FROM ./model.gguf\nDRAFT little:1m\nPARAMETER draft_num_predict 8\n")
    return store


def test_draft_is_a_layer_on_the_stored_draft_models_blob(drafted: Store, workdir: Path) -> None:
    store = drafted
    stored = store.get(ModelName.parse("big"))
    draft = stored.manifest.layer(MEDIA_DRAFT)
    assert draft is not None
    assert draft.digest == model_digest(store, "little:1m")
    assert draft.digest == hash_file(workdir / "draft.gguf").digest
    assert [layer.media_type for layer in stored.manifest.layers][:2] == [MEDIA_MODEL, MEDIA_DRAFT]
    # No copy: the store holds the two GGUFs once each.
    ggufs = sorted(p.name for p in (store.root / "blobs").iterdir() if p.stat().st_size > 10_000)
    assert ggufs == sorted(f"sha256-{d.removeprefix('sha256:')}" for d in (draft.digest, model_digest(store, "big")))

    details = store.show(ModelName.parse("big"))
    assert details.draft == draft and details.draft_name == "little:1m"
    assert details.parameters == {"draft_num_predict": 8}
    assert store.draft_path(details) == store.blobs.path(draft.digest) == store.model_path(ModelName.parse("little:1m"))
    assert store.draft_path(store.show(ModelName.parse("little:1m"))) is None


def test_show_modelfile_names_the_draft_and_builds_the_same_manifest(drafted: Store, workdir: Path) -> None:
    store = drafted
    text = modelfile_text(store, ModelName.parse("big"))
    draft = store.get(ModelName.parse("big")).manifest.layer(MEDIA_DRAFT)
    assert draft is not None
    assert f"DRAFT {store.blobs.path(draft.digest)}\n" in text
    before = ModelName.parse("big").manifest_path(store.root).read_bytes()
    build(store, workdir, "again", text)
    assert ModelName.parse("again").manifest_path(store.root).read_bytes() == before


def test_a_draft_given_as_a_path_is_stored_by_digest(store: Store, workdir: Path) -> None:
    build(store, workdir, "big", "FROM ./model.gguf\nDRAFT ./draft.gguf\n")
    details = store.show(ModelName.parse("big"))
    assert details.draft is not None
    assert details.draft.digest == hash_file(workdir / "draft.gguf").digest
    path = store.draft_path(details)
    assert path is not None and path.read_bytes() == (workdir / "draft.gguf").read_bytes()
    assert details.draft_name is None  # no stored model has that blob as its model
    assert details.draft_label == f"sha256-{short_digest(details.draft.digest)}"


def test_a_model_built_from_a_drafted_one_keeps_its_draft_unless_told(drafted: Store, workdir: Path) -> None:
    store = drafted
    build(store, workdir, "child", "FROM big\nSYSTEM Be brief.\n")
    build(store, workdir, "plain", 'FROM big\nDRAFT ""\n')
    draft_digest = model_digest(store, "little:1m")
    child = store.show(ModelName.parse("child"))
    assert child.draft is not None and child.draft.digest == draft_digest
    assert store.show(ModelName.parse("plain")).draft is None
    assert MEDIA_DRAFT not in {layer.media_type for layer in store.get(ModelName.parse("plain")).manifest.layers}


def test_loam_show_and_rm_through_the_cli(drafted: Store) -> None:
    digest = model_digest(drafted, "little:1m")
    shown = run_loam("show", "big")
    assert shown.returncode == 0, shown.stderr
    assert f"    draft               little:1m (sha256-{short_digest(digest)})\n" in shown.stdout
    assert "draft_num_predict 8" in shown.stdout

    removed = run_loam("rm", "little:1m")
    assert removed.returncode == 0, removed.stderr
    blob = drafted.blobs.path(digest)
    assert blob.is_file(), "the draft blob went with little:1m while big still drafts with it"
    details = drafted.show(ModelName.parse("big"))
    assert drafted.draft_path(details) == blob
    assert details.draft_label == f"sha256-{short_digest(digest)}"  # no stored model of that name any more

    assert digest in drafted.remove(ModelName.parse("big"))
    assert not blob.exists()


def test_a_draft_with_another_vocabulary_is_refused_and_nothing_is_stored(store: Store, workdir: Path) -> None:
    build(store, workdir, "wide:1m", "FROM ./wide.gguf\n")
    before = snapshot(store.root)
    wide = N_TOKENS + 300
    with pytest.raises(ModelfileError) as caught:
        build(store, workdir, "big", "FROM ./model.gguf\nDRAFT wide:1m\n")
    assert str(caught.value) == (
        f"Modelfile:2: DRAFT wide:1m: its vocabulary differs from the model's ({wide} vs {N_TOKENS} tokens)"
    )
    assert snapshot(store.root) == before

    with pytest.raises(ModelfileError, match=rf"^Modelfile:2: DRAFT ./wide.gguf: .* \({wide} vs {N_TOKENS} tokens\)$"):
        build(store, workdir, "big", "FROM ./model.gguf\nDRAFT ./wide.gguf\n")
    assert snapshot(store.root) == before


def test_the_cli_prints_the_mismatch_on_one_line(store: Store, workdir: Path) -> None:
    (workdir / "Modelfile").write_text("FROM ./model.gguf\nDRAFT ./respelled.gguf\n")
    result = run_loam("create", "big", "-f", str(workdir / "Modelfile"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: {workdir / 'Modelfile'}:2: DRAFT ./respelled.gguf: its vocabulary differs from the model's "
        "(token 259 is '▁THE' vs '▁the')"
    )
    assert not (store.root / "manifests").exists() or not list((store.root / "manifests").rglob("big"))


def test_vocabularies_pair_as_llama_cpp_pairs_them(tmp_path: Path, ggufs: dict[str, Path]) -> None:
    model = vocabulary(ggufs["model"])
    assert (model.model, model.size, model.bos, model.eos, model.add_bos) == ("llama", N_TOKENS, 1, 2, True)
    assert vocabulary_difference(vocabulary(ggufs["draft"]), model) is None
    # A few tokens more at the end is what llama.cpp tolerates (up to DRAFT_MAX_SIZE_DIFFERENCE), either way round.
    longer = vocabulary(write_vocab_only(tmp_path / "longer.gguf", extra=("▁extra", "▁more")))
    assert longer.size == N_TOKENS + 2
    assert vocabulary_difference(longer, model) is None
    assert vocabulary_difference(model, longer) is None
    assert DRAFT_MAX_SIZE_DIFFERENCE < 300
    assert vocabulary_difference(vocabulary(ggufs["wide"]), model) == f"{N_TOKENS + 300} vs {N_TOKENS} tokens"
    # The same count, but the words come later: the first token that differs is named.
    assert vocabulary_difference(vocabulary(ggufs["wide"]), vocabulary(ggufs["respelled"])) is not None
    assert vocabulary_difference(vocabulary(ggufs["respelled"]), model) == "token 259 is '▁THE' vs '▁the'"


def test_other_tokenizers_and_special_tokens_are_refused(tmp_path: Path, ggufs: dict[str, Path]) -> None:
    model = vocabulary(ggufs["model"])
    gpt2 = write_vocab_only(tmp_path / "gpt2.gguf", tokenizer="gpt2")
    assert vocabulary_difference(vocabulary(gpt2), model) == "tokenizer gpt2 vs llama"
    bos = write_vocab_only(tmp_path / "bos.gguf", bos=0)
    assert vocabulary_difference(vocabulary(bos), model) == "bos token 0 vs 1"


def write_vocab_only(path: Path, *, tokenizer: str = "llama", bos: int = 1, extra: tuple[str, ...] = ()) -> Path:
    """A one-tensor GGUF with the tiny llama's token list (plus `extra` at its end) and these tokenizer fields."""
    words = ggufmaker._vocab()[0] + list(extra)
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(tokenizer)
    writer.add_token_list(words)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_tensor("token_embd.weight", np.zeros((len(words), 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_draft_without_a_vocabulary_or_that_is_an_adapter_is_refused(store: Store, workdir: Path) -> None:
    writer = GGUFWriter(str(workdir / "bare.gguf"), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ggufmaker.write_tiny_lora(workdir / "lora.gguf")
    with pytest.raises(ModelfileError, match=r"^Modelfile:2: DRAFT ./bare.gguf: bare.gguf has no token list"):
        build(store, workdir, "big", "FROM ./model.gguf\nDRAFT ./bare.gguf\n")
    with pytest.raises(ModelfileError, match=r"^Modelfile:2: DRAFT ./lora.gguf is a LoRA adapter"):
        build(store, workdir, "big", "FROM ./model.gguf\nDRAFT ./lora.gguf\n")
    with pytest.raises(ModelfileError, match=r"^Modelfile:2: DRAFT ./nope.gguf: no such file"):
        build(store, workdir, "big", "FROM ./model.gguf\nDRAFT ./nope.gguf\n")
    assert store.list() == []


def test_a_hostile_token_list_ends_in_one_line(store: Store, workdir: Path) -> None:
    """A token list whose count claims more strings than the file holds is refused before any walk."""
    good = (workdir / "draft.gguf").read_bytes()
    key = b"tokenizer.ggml.tokens"
    at = good.index(key) + len(key) + 4 + 4  # past the key, the value type (array) and the element type
    hostile = workdir / "hostile.gguf"
    hostile.write_bytes(good[:at] + (1 << 40).to_bytes(8, "little") + good[at + 8 :])
    with pytest.raises(ModelfileError) as caught:
        build(store, workdir, "big", "FROM ./model.gguf\nDRAFT ./hostile.gguf\n")
    message = str(caught.value)
    assert message.startswith("Modelfile:2: DRAFT: hostile.gguf is not a valid GGUF: array 'tokenizer.ggml.tokens'")
    assert "\n" not in message and len(message) < 400
    assert store.list() == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "PARAMETER draft_num_predict must be between 1 and 64, got 0"),
        ("65", "PARAMETER draft_num_predict must be between 1 and 64, got 65"),
        ("eight", "PARAMETER draft_num_predict takes a whole number, got 'eight'"),
    ],
)
def test_a_bad_draft_num_predict_is_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse(f"FROM x\nDRAFT y\nPARAMETER draft_num_predict {value}\n")
    assert str(caught.value) == f"Modelfile:3: {message}"


def test_draft_num_predict_reaches_the_load_options() -> None:
    assert load_options(merged({}, None), None, 1).draft_num_predict == DEFAULT_DRAFT_NUM_PREDICT
    assert load_options(merged({"draft_num_predict": 8}, None), None, 1).draft_num_predict == 8
    assert load_options(merged({"draft_num_predict": 8}, {"draft_num_predict": 32}), None, 1).draft_num_predict == 32
    with pytest.raises(ValueError, match="draft_num_predict must be between 1 and 64, got 100"):
        merged({}, {"draft_num_predict": 100})
    fields = LoadRequest.__dataclass_fields__
    assert fields["draft"].default is None


@pytest.fixture
def served(drafted: Store, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(drafted.root, tmp_path / "serve") as server:
        yield server.wait_ready()


def test_api_show_lists_the_draft_and_requests_check_draft_num_predict(served: ServerProcess, drafted: Store) -> None:
    digest = model_digest(drafted, "little:1m")
    shown = httpx.post(served.url + "/api/show", json={"model": "big"}, timeout=30)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    size = drafted.blobs.path(digest).stat().st_size
    assert body["draft"] == {"model": "little:1m", "digest": digest, "size": size}
    assert "DRAFT " in body["modelfile"] and "draft_num_predict 8" in body["parameters"]
    assert "draft" not in httpx.post(served.url + "/api/show", json={"model": "little:1m"}, timeout=30).json()

    bad = httpx.post(
        served.url + "/api/generate",
        json={"model": "big", "prompt": "hi", "stream": False, "options": {"draft_num_predict": 0}},
        timeout=60,
    )
    assert bad.status_code == 400
    assert bad.json() == {"error": "options.draft_num_predict: must be between 1 and 64, got 0"}


def test_a_loaded_model_counts_its_draft_in_its_memory(served: ServerProcess, drafted: Store) -> None:
    """/api/ps's size is the plan for the model and its draft, which the runner loads beside it."""
    from app.hardware.devices import Inventory
    from app.hardware.estimate import estimate
    from app.hardware.placement import plan

    loaded = httpx.post(
        served.url + "/api/generate",
        json={"model": "big", "prompt": "hi", "stream": False, "options": {"num_predict": 1}},
        timeout=120,
    )
    assert loaded.status_code == 200, loaded.text
    ps = next(m for m in httpx.get(served.url + "/api/ps", timeout=30).json()["models"] if m["name"].startswith("big"))
    details = drafted.show(ModelName.parse("big"))
    opts = load_options(merged(details.parameters, {}), details.info.context_length, 1)
    shape = (opts.num_ctx * opts.parallel, opts.parallel, "f16", opts.num_batch)
    alone = estimate(drafted.blobs.path(model_digest(drafted, "big")), *shape)
    both = alone.with_draft(estimate(drafted.blobs.path(model_digest(drafted, "little:1m")), *shape))
    cpu = Inventory((), (), 64 << 30, 60 << 30)
    assert ps["size"] == plan(both, cpu).size > plan(alone, cpu).size
