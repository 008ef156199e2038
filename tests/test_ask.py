"""`loam ask` and `loam run` as a person uses them: child processes, a server they start themselves, real SmolLM2."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ask import combined_prompt, parse_options
from app.client import is_local
from app.errors import LoamError
from app.stats import Stats, go_duration, verbose_lines
from tests.conftest import REPO, SMOLLM2_SHA256
from tests.runner_process import free_port
from tests.server_process import clone_store

FIGURES = (
    "total duration",
    "load duration",
    "prompt eval count",
    "prompt eval duration",
    "prompt eval rate",
    "eval count",
    "eval duration",
    "eval rate",
)


class Home:
    """An isolated loam home and port; the server `ask` starts is stopped at the end."""

    def __init__(self, root: Path, models: Path) -> None:
        self.root = root
        self.host = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "LOAM_HOST": self.host,
            "LOAM_MODELS": str(models),
            "XDG_STATE_HOME": str(root / "state"),
            "XDG_CACHE_HOME": str(root / "cache"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_DATA_HOME": str(root / "data"),
        }
        self.pid_file = root / "state" / "loam" / f"serve-{self.host.rsplit(':', 1)[1]}.pid"

    def ask(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self.env,
            timeout=600,
        )

    def stop_server(self) -> None:
        if self.pid_file.exists():
            pid = int(self.pid_file.read_text())
            try:
                os.kill(pid, signal.SIGINT)
                for _ in range(200):
                    os.kill(pid, 0)
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def home(smollm2_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("ask")
    h = Home(root, clone_store(smollm2_store, root / "models"))
    yield h
    h.stop_server()


def load_ms(stderr: str) -> float:
    value = re.search(r"^load duration:\s+([\d.]+)(ns|µs|ms|s)$", stderr, re.M)
    assert value, stderr
    scale = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1000.0}[value.group(2)]
    return float(value.group(1)) * scale


def test_piped_question_prints_answer_on_stdout_and_figures_on_stderr(home: Home) -> None:
    first = home.ask("ask", "-m", "smollm2:135m", "--verbose", "-o", "num_predict=24", stdin="The sky is blue because")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip(), "the answer goes to stdout"
    assert not any(name in first.stdout for name in FIGURES), "figures never reach stdout"
    for name in FIGURES:
        assert re.search(rf"^{name}:\s+\S", first.stderr, re.M), f"{name} missing from stderr:\n{first.stderr}"
    assert home.pid_file.exists(), "ask started a server of its own and recorded it"
    assert (home.root / "state" / "loam" / "logs" / "server.log").exists()

    second = home.ask("ask", "-m", "smollm2:135m", "--verbose", "-o", "num_predict=8", stdin="The sky is blue because")
    assert second.returncode == 0, second.stderr
    assert load_ms(second.stderr) < load_ms(first.stderr) / 10, "the model stayed loaded between the two calls"


def test_prompt_and_stdin_are_combined_and_output_is_only_the_answer(home: Home) -> None:
    result = home.ask(
        "ask", "-m", "smollm2:135m", "-o", "temperature=0", "-o", "num_predict=16", "Summarize the note above.",
        stdin="Note: the meeting moved to Friday.\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n") and not result.stdout.endswith("\n\n")
    assert result.stderr == ""


def test_no_stream_and_json_format(home: Home) -> None:
    result = home.ask(
        "ask", "-m", "smollm2:135m", "--no-stream", "--format", "json", "-o", "num_predict=60", "-o", "temperature=0",
        "Give a JSON object with keys name and age for Bob, aged 30.",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), dict)


def test_json_schema_format_constrains_the_answer(home: Home) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    result = home.ask(
        "ask", "-m", "smollm2:135m", "--format", json.dumps(schema), "-o", "num_predict=40", "Bob is 30. How old?"
    )
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["age"], int)


def test_errors_are_one_line_with_exit_code_1(home: Home) -> None:
    bad_format = home.ask("ask", "-m", "smollm2:135m", "--format", "xml", "hi")
    assert bad_format.returncode == 1
    assert bad_format.stderr.startswith("error: --format 'xml'") and bad_format.stderr.count("\n") == 1
    bad_option = home.ask("ask", "-m", "smollm2:135m", "-o", "temprature=1", "hi")
    assert bad_option.returncode == 1 and "did you mean" in bad_option.stderr
    nothing = home.ask("ask", "-m", "smollm2:135m")
    assert nothing.returncode == 1 and "nothing to ask" in nothing.stderr
    bad_name = home.ask("ask", "-m", "Bad Name!", "hi")
    assert bad_name.returncode == 1 and bad_name.stdout == ""


def test_ctrl_c_exits_130_and_cancels_the_generation(home: Home) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "ask", "-m", "smollm2:135m", "-o", "num_predict=100000", "Count to a million."],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=home.env,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    assert first, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    # The server has one slot: had the generation gone on, this answer would wait behind 100,000 tokens.
    after = home.ask("ask", "-m", "smollm2:135m", "--verbose", "-o", "num_predict=4", "Hi")
    assert after.returncode == 0, after.stderr
    assert re.search(r"^eval count:\s+[1-4] token", after.stderr, re.M)


def test_run_with_a_prompt_answers_once(home: Home) -> None:
    result = home.ask("run", "smollm2:135m", "-o", "num_predict=8", "Hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_default_model_is_pulled_on_first_use(smollm2_store: Path, tmp_path: Path) -> None:
    """An empty store: the catalog's default model is pulled, with progress on stderr, then asked."""
    blob = smollm2_store / "blobs" / f"sha256-{SMOLLM2_SHA256}"
    h = Home(tmp_path, tmp_path / "models")
    catalog = tmp_path / "config" / "loam" / "models.toml"
    catalog.parent.mkdir(parents=True)
    catalog.write_text(
        f'default = "smol:local"\n[models."smol:local"]\nsha256 = "{SMOLLM2_SHA256}"\n'
        f'size = {blob.stat().st_size}\nsources = [{{ path = "{blob}" }}]\nparameters = {{ num_predict = 8 }}\n'
    )
    try:
        result = h.ask("ask", "Hello")
    finally:
        h.stop_server()
    assert result.returncode == 0, result.stderr
    assert "smol:local is not in the store; pulling it" in result.stderr
    assert "success" in result.stderr
    assert result.stdout.strip()
    assert (tmp_path / "models" / "blobs" / f"sha256-{SMOLLM2_SHA256}").exists()


def test_a_server_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    h = Home(tmp_path, tmp_path / "models")
    h.env["LOAM_MAX_QUEUE"] = "not a number"
    result = h.ask("ask", "-m", "smollm2:135m", "hi")
    assert result.returncode == 1
    assert "loam serve" in result.stderr and "server.log" in result.stderr, result.stderr


# -- the parts, without a server ---------------------------------------------------


class Piped(io.StringIO):
    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_combined_prompt_puts_piped_text_first() -> None:
    assert combined_prompt("summarize", Piped("notes\nmore notes\n")) == "notes\nmore notes\n\nsummarize"
    assert combined_prompt("hi", Terminal("ignored")) == "hi"
    assert combined_prompt(None, Piped("only stdin")) == "only stdin"
    with pytest.raises(LoamError, match="nothing to ask"):
        combined_prompt("", Piped("   \n"))


def test_parse_options_types_values_and_collects_stops() -> None:
    options = parse_options(["temperature=0.5", "num_ctx=2048", "stop=###", "stop=END"])
    assert options == {"temperature": 0.5, "num_ctx": 2048, "stop": ["###", "END"]}
    with pytest.raises(LoamError, match="NAME=VALUE"):
        parse_options(["temperature"])


def test_verbose_lines_match_ollamas_format() -> None:
    stats = Stats(1_596_818_833, 575_693_088, 35, 215_406_607, 58, 796_468_114)
    assert verbose_lines(stats) == [
        "total duration:       1.596818833s",
        "load duration:        575.693088ms",
        "prompt eval count:    35 token(s)",
        "prompt eval duration: 215.406607ms",
        "prompt eval rate:     162.48 tokens/s",
        "eval count:           58 token(s)",
        "eval duration:        796.468114ms",
        "eval rate:            72.82 tokens/s",
    ]


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0s"), (999, "999ns"), (205_148, "205.148µs"), (1_500_000, "1.5ms"), (2_000_000_000, "2s"),
     (125_500_000_000, "2m5.5s"), (3_725_000_000_000, "1h2m5s")],
)  # fmt: skip
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_only_loopback_hosts_are_autostarted() -> None:
    assert is_local("127.0.0.1:11435") and is_local("localhost:1") and is_local("[::1]:5")
    assert not is_local("10.0.0.2:11435") and not is_local("example.org:80")


def test_ask_help_is_quick_to_import() -> None:
    """`loam ask --help` must not import httpx, the store or Textual (the startup benchmark times it)."""
    code = "import sys; from app.cli import build_parser; build_parser(); print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    for heavy in ("httpx", "textual", "llama_cpp", "app.store.store"):
        assert f"'{heavy}'" not in out, heavy


def test_asking_imports_neither_httpx_nor_pydantic(home: Home) -> None:
    """A warm `loam ask` is a start-up race; the CLI's client speaks HTTP over a plain socket (app/http11.py)."""
    code = (
        "import sys\nfrom app.cli import main\nrc = main(['ask', '-m', 'smollm2:135m', '-o', 'num_predict=3', 'Hi'])\n"
        "print('MODULES', sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'pydantic', 'textual')),"
        " file=sys.stderr)\nraise SystemExit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=home.env,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "no answer"
    assert "MODULES []" in done.stderr, done.stderr


def test_a_bad_keep_alive_is_the_servers_one_line_error(home: Home) -> None:
    bad = home.ask("ask", "-m", "smollm2:135m", "--keepalive", "forever", "hi")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: keep_alive") and bad.stderr.count("\n") == 1, bad.stderr
