"""`loam create` run as a person runs it: Modelfiles on disk, the CLI in a child process, a real store."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

from app.errors import QuantizeError
from app.store.catalog import Catalog
from app.store.create import create
from app.store.gguf_info import read_header
from app.store.manifest import MEDIA_ADAPTER, MEDIA_MODEL
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from tests.conftest import USER_NOTES, run_loam
from tests.ggufmaker import write_tiny_llama, write_tiny_lora


@pytest.fixture(scope="session")
def f16_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An F16 llama whose rows are multiples of 256, so every matrix can take a K-quant."""
    return write_tiny_llama(tmp_path_factory.mktemp("f16") / "model.gguf", n_embd=256, n_ff=512, dtype="f16")


@pytest.fixture
def workdir(tmp_path: Path, f16_gguf: Path) -> Path:
    """A folder with model.gguf (F16) in it, where Modelfiles are written."""
    folder = tmp_path / "work"
    folder.mkdir()
    os.link(f16_gguf, folder / "model.gguf")
    return folder


def modelfile(folder: Path, text: str, name: str = "Modelfile") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def store_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def manifest_bytes(models: Path, name: str) -> bytes:
    model, tag = name.split(":") if ":" in name else (name, "latest")
    return (models / "manifests" / "registry.ollama.ai" / "library" / model / tag).read_bytes()


def model_blob(models: Path, name: str) -> Path:
    store = Store(models)
    return store.model_path(ModelName.parse(name))


def test_quantize_an_f16_model_to_q4_k_m(workdir: Path, models_dir: Path, f16_gguf: Path) -> None:
    mf = modelfile(workdir, USER_NOTES)
    result = run_loam("create", "bot", "-f", str(mf), "--quantize", "q4_K_M")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "quantizing F16 model to Q4_K_M 100%" in result.stderr
    assert result.stderr.rstrip().endswith("success")

    blob = model_blob(models_dir, "bot")
    source, quantized = read_header(f16_gguf), read_header(blob)
    matrices = {t.name for t in source.tensors if t.name.endswith(".weight") and "norm" not in t.name}
    kinds = {GGMLQuantizationType(t.type).name for t in quantized.tensors if t.name in matrices}
    assert kinds <= {"Q4_K", "Q6_K"} and "Q4_K" in kinds
    before = sum(t.n_bytes for t in source.tensors if t.name in matrices)
    after = sum(t.n_bytes for t in quantized.tensors if t.name in matrices)
    # Q4_K is 4.5 bits a weight and Q6_K 6.56; from 16 bits that is 0.28 to 0.41 of the size.
    assert 4.5 / 16 <= after / before <= 6.5625 / 16
    assert blob.stat().st_size < 0.4 * f16_gguf.stat().st_size

    show = run_loam("show", "bot")
    assert "quantization        Q4_K_M" in show.stdout
    assert run_loam("show", "bot", "--template").stdout == "{{ .System }}\n<human>: {{ .Prompt }}\n<bot>:\n\n"
    assert run_loam("show", "bot", "--parameters").stdout.split() == ["stop", '"<human>:"', "stop", '"<bot>:"']

    blobs = list((models_dir / "blobs").iterdir())
    assert not [b for b in blobs if b.name.startswith(".tmp-")]
    assert max(b.stat().st_size for b in blobs) == blob.stat().st_size  # the F16 source was never copied in


def test_the_quantized_model_runs_in_llama_cpp(workdir: Path, models_dir: Path) -> None:
    from llama_cpp import Llama

    assert run_loam("create", "q8", "-f", str(modelfile(workdir, "FROM ./model.gguf\n")), "-q", "Q8_0").returncode == 0
    llm = Llama(model_path=str(model_blob(models_dir, "q8")), n_ctx=64, verbose=False)
    out = llm.create_completion("the", max_tokens=4, temperature=0)
    assert out["usage"]["completion_tokens"] > 0
    assert read_header(model_blob(models_dir, "q8")).fields["general.file_type"] == 7  # MOSTLY_Q8_0


def test_create_from_a_stored_model_reuses_its_blob_and_round_trips(
    smollm2_store: Path, models_dir: Path, tmp_path: Path
) -> None:
    links_before = model_blob(smollm2_store, "smollm2:135m").stat().st_nlink  # other tests' stores may link it too
    shutil.copytree(smollm2_store, models_dir, copy_function=os.link)
    base_blob = model_blob(models_dir, "smollm2:135m")
    mf = modelfile(
        tmp_path,
        'FROM smollm2:135m\nSYSTEM """You are terse."""\nPARAMETER temperature 0.2\nPARAMETER stop "<|im_end|>"\n',
    )
    result = run_loam("create", "terse", "-f", str(mf))
    assert result.returncode == 0, result.stderr
    assert f"using existing layer sha256:{base_blob.name[7:19]}" in result.stderr

    assert model_blob(models_dir, "terse") == base_blob
    big = [b for b in (models_dir / "blobs").iterdir() if b.stat().st_size > 1 << 20]
    assert big == [base_blob] and base_blob.stat().st_nlink == links_before + 1  # only our hard link was added
    show = run_loam("show", "terse").stdout
    assert "temperature     0.2" in show and "You are terse." in show and "Apache-2.0" in show

    written = run_loam("show", "terse", "--modelfile").stdout
    assert written.startswith('# Modelfile generated by "loam show"')
    assert f"FROM {base_blob}\n" in written
    again = modelfile(tmp_path, written, "Modelfile.again")
    assert run_loam("create", "terse-again", "-f", str(again)).returncode == 0
    assert manifest_bytes(models_dir, "terse-again") == manifest_bytes(models_dir, "terse")
    assert run_loam("show", "terse-again", "--modelfile").stdout == written.replace(
        "terse:latest", "terse-again:latest"
    )


def test_a_catalog_base_is_pulled_first_and_its_layers_inherited(
    workdir: Path, models_dir: Path, user_catalog: Path, f16_gguf: Path
) -> None:
    user_catalog.write_text(
        f'[models."tinyf16:1"]\nsources = [{{ path = "{f16_gguf}" }}]\nsystem = "Base system."\n'
        'template = "{{ .Prompt }}"\nlicense = "Base licence"\n'
        'parameters = { temperature = 1.0, top_k = 64, stop = ["<end>"] }\n'
    )
    mf = modelfile(workdir, 'FROM tinyf16:1\nSYSTEM ""\nPARAMETER temperature 0.3\nLICENSE "Extra terms"\n')
    result = run_loam("create", "child", "-f", str(mf))
    assert result.returncode == 0, result.stderr
    assert "pulling" in result.stderr or "copying" in result.stderr
    details = Store(models_dir).show(ModelName.parse("child"))
    assert details.parameters == {"temperature": 0.3, "top_k": 64, "stop": ["<end>"]}
    assert details.system is None  # an empty SYSTEM removes the base's
    assert details.template == "{{ .Prompt }}"
    assert details.licenses == ["Base licence", "Extra terms"]
    assert model_blob(models_dir, "child") == model_blob(models_dir, "tinyf16:1")


def test_an_adapter_becomes_a_layer_and_round_trips(workdir: Path, models_dir: Path) -> None:
    write_tiny_lora(workdir / "style.gguf", n_embd=256)
    result = run_loam("create", "styled", "-f", str(modelfile(workdir, "FROM ./model.gguf\nADAPTER ./style.gguf\n")))
    assert result.returncode == 0, result.stderr
    layers = Store(models_dir).get(ModelName.parse("styled")).manifest.layers
    assert [layer.media_type for layer in layers] == [MEDIA_MODEL, MEDIA_ADAPTER]
    written = run_loam("show", "styled", "--modelfile").stdout
    assert "\nADAPTER " + str(models_dir / "blobs" / "sha256-") in written
    assert run_loam("create", "styled2", "-f", str(modelfile(workdir, written, "again"))).returncode == 0
    assert manifest_bytes(models_dir, "styled2") == manifest_bytes(models_dir, "styled")


BAD = [
    ("SYSTEM hi\n", ":1: no FROM instruction"),
    ("FROM ./model.gguf\nFORM x\n", ":2: unknown instruction 'FORM'"),
    ("FROM ./model.gguf\n\nPARAMETER top_p 7\n", ":3: PARAMETER top_p must be between 0 and 1, got 7"),
    ('FROM ./model.gguf\nTEMPLATE """{{ .Prompt }}\n', ':2: TEMPLATE: the """ opened here is never closed'),
    ("# base\nFROM ./missing.gguf\n", ":2: FROM ./missing.gguf: no such file"),
    ("FROM ./notes.txt\n", ":1: FROM: notes.txt is not a GGUF model file"),
    ("FROM ./model.gguf\nADAPTER ./model.gguf\n", ":2: ADAPTER ./model.gguf is a model, not a LoRA adapter"),
    ("FROM nosuchmodel:1\n", ":1: FROM nosuchmodel:1: model 'nosuchmodel:1' is not in the catalog"),
]


@pytest.mark.parametrize(("text", "error"), BAD)
def test_bad_modelfiles_store_nothing(workdir: Path, models_dir: Path, text: str, error: str) -> None:
    (workdir / "notes.txt").write_text("not a model")
    assert run_loam("create", "keep", "-f", str(modelfile(workdir, "FROM ./model.gguf\n"))).returncode == 0
    before = store_snapshot(models_dir)
    mf = modelfile(workdir, text, "Bad")
    result = run_loam("create", "bad", "-f", str(mf))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"error: {mf}{error}"), result.stderr
    assert store_snapshot(models_dir) == before


def test_requantizing_is_refused_unless_allowed(workdir: Path, models_dir: Path) -> None:
    assert run_loam("create", "q8", "-f", str(modelfile(workdir, "FROM ./model.gguf\n")), "-q", "q8_0").returncode == 0
    mf = modelfile(workdir, "FROM q8\n", "Again")
    refused = run_loam("create", "q4", "-f", str(mf), "-q", "q4_0")
    assert refused.returncode == 1
    assert "error: q8 is already quantized (Q8_0)" in refused.stderr and "--allow-requantize" in refused.stderr
    allowed = run_loam("create", "q4", "-f", str(mf), "-q", "q4_0", "--allow-requantize")
    assert allowed.returncode == 0, allowed.stderr
    assert "quantizing Q8_0 model to Q4_0" in allowed.stderr
    assert "quantization        Q4_0" in run_loam("show", "q4").stdout
    same = run_loam("create", "q8b", "-f", str(mf), "-q", "Q8_0")
    assert "already Q8_0; nothing to quantize" in same.stderr
    assert model_blob(models_dir, "q8b") == model_blob(models_dir, "q8")


@pytest.mark.parametrize(
    ("qtype", "error"),
    [("q9_9", "unknown quantization type 'q9_9'; choose one of F32, F16"), ("iq2_xs", "IQ2_XS needs an importance")],
)
def test_unusable_quantization_types_are_refused_first(workdir: Path, models_dir: Path, qtype: str, error: str) -> None:
    result = run_loam("create", "x", "-f", str(modelfile(workdir, "FROM ./model.gguf\n")), "-q", qtype)
    assert result.returncode == 1 and f"error: {error}" in result.stderr
    assert not models_dir.exists()


def test_a_quantizer_failure_says_why_and_stores_nothing(tmp_path: Path, models_dir: Path) -> None:
    write_tiny_llama(tmp_path / "alien.gguf", architecture="nosucharch", dtype="f16")
    result = run_loam("create", "alien", "-f", str(modelfile(tmp_path, "FROM ./alien.gguf\n")), "-q", "q4_0")
    assert result.returncode == 1
    assert "error: quantizing to Q4_0 failed: unknown model architecture: 'nosucharch'" in result.stderr
    assert not (models_dir / "manifests").exists()
    assert [p.name for p in (models_dir / "blobs").iterdir()] == []


def test_a_quantizer_crash_cannot_take_the_cli_down(
    workdir: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # llama.cpp cannot be made to segfault on demand; a stand-in child that does shows what the parent does.
    crasher = workdir / "crash.sh"
    crasher.write_text("#!/bin/sh\necho '[   1/  21] output.weight'\nkill -SEGV $$\n")
    crasher.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crasher))
    store = Store(models_dir)
    with pytest.raises(QuantizeError, match=r"quantizing to Q4_0 crashed \(SIGSEGV\); the store is unchanged"):
        create(
            store,
            Catalog.load(),
            ModelName.parse("crash"),
            parse("FROM ./model.gguf\n"),
            folder=workdir,
            quantize_to="q4_0",
        )
    assert store.list() == []
    assert [p.name for p in (models_dir / "blobs").iterdir()] == []


def test_a_missing_modelfile_is_one_clear_line(tmp_path: Path, models_dir: Path) -> None:
    result = run_loam("create", "x", "-f", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'nope'}: no such Modelfile; pass its path with -f\n"
