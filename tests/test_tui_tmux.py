"""The chat in a real terminal: tmux runs `python -m app chat` against a real `loam serve`, keys are
sent as a person types them, and every step is checked on the screen that `tmux capture-pane` reads.

The session is the issue's acceptance point: paste 60 lines, Esc inside a code block, Ctrl+E in the
input, switch model and reopen, kill the server mid-answer and continue.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from app.store.catalog import Catalog
from app.store.create import create
from app.store.modelfile import parse
from app.store.names import ModelName
from app.store.store import Store
from tests.runner_process import REPO
from tests.server_process import ServerProcess, clone_store

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

SMOL = "smollm2:135m"
#: A hang guard for one step, not a limit on speed.
STEP = 60.0
PROMPT = "tmux-test$"


@pytest.fixture(scope="module")
def store(smollm2_store: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the module's own with smollm2:135m and the tiny model."""
    root = clone_store(smollm2_store, tmp_path_factory.mktemp("tmux") / "models")
    modelfile = parse(f"FROM {tiny_gguf}\nPARAMETER num_ctx 256\nPARAMETER num_predict 8\n")
    create(Store(root), Catalog({}, SMOL), ModelName.parse("tiny"), modelfile, folder=root)
    return root


class Terminal:
    """A tmux server of the test's own, 120x40, running a plain shell in the chat's folder."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.socket = f"loam-test-{uuid.uuid4().hex[:12]}"
        self.env = env
        # 60 rows: a reopened chat shows the three signed answers even when the stopped one ran long
        # (a streaming answer is drawn once a second on a small machine, so Esc lands later in it).
        self.tmux(
            "new-session", "-d", "-x", "120", "-y", "60", "-c", str(cwd),
            "env", f"PS1={PROMPT} ", f"TERM={env['TERM']}", "bash", "--norc", "--noprofile",
        )  # fmt: skip

    def tmux(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"tmux {args[0]} failed: {result.stderr}"
        return result.stdout

    def keys(self, *keys: str) -> None:
        """Press keys, in tmux's names (Enter, Escape, C-e, Home)."""
        self.tmux("send-keys", "-t", "0", *keys)

    def press(self, key: str) -> None:
        """Press one key and give the app a moment, as a person's next key comes no sooner.

        Keys sent within a millisecond or two (Home, Ctrl+E, "!") were seen to land out of order
        (about 1 in 8 tries), which no person at a keyboard does."""
        self.keys(key)
        time.sleep(0.2)

    def type(self, text: str) -> None:
        """Type text literally, character by character as the terminal sends it."""
        self.tmux("send-keys", "-t", "0", "-l", text)

    def paste(self, text: str) -> None:
        """Paste text as a terminal does: bracketed, so the app sees one paste, newlines and all."""
        self.tmux("load-buffer", "-b", "loam", "-", stdin=text)
        self.tmux("paste-buffer", "-p", "-d", "-b", "loam", "-t", "0")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "0")

    def wait_for(self, check: str | Callable[[str], bool], what: str = "") -> str:
        """Poll the screen until `check` (a text on it, or a test of it) holds; the screen then."""
        test = (lambda s: check in s) if isinstance(check, str) else check
        deadline = time.monotonic() + STEP
        while time.monotonic() < deadline:
            text = self.screen()
            if test(text):
                return text
            time.sleep(0.15)
        raise AssertionError(f"the screen never showed {what or check!r}; it shows:\n{self.screen()}")

    def close(self) -> None:
        """End the tmux server and remove its socket, which kill-server leaves behind."""
        found = subprocess.run(
            ["tmux", "-L", self.socket, "display-message", "-p", "#{socket_path}"], capture_output=True, text=True
        )
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        if found.returncode == 0 and found.stdout.strip():
            Path(found.stdout.strip()).unlink(missing_ok=True)


def say(term: Terminal, text: str, shell: bool = False) -> None:
    """Type a line into the chat's input (or at the shell's prompt) and press Enter; a message
    is then on screen, so that `answer_to` finds what is below it."""
    term.type(text)
    if shell:
        term.keys("Enter")
        return
    term.wait_for(lambda s: text[-20:] in prompt_text(s), f"{text!r} in the input")
    term.keys("Enter")
    term.wait_for(lambda s: "Message (Enter" in prompt_text(s), "the input emptied")
    if not text.startswith("/"):  # a message: on screen before its answer is looked for
        term.wait_for(lambda s: any(text in line for line in log_lines(s)), f"{text!r} in the chat")


def prompt_text(screen: str) -> str:
    """What the input box shows: the lines between its top and bottom edges."""
    lines = screen.splitlines()
    tops = [i for i, line in enumerate(lines) if line.startswith("▊▔")]
    bottoms = [i for i, line in enumerate(lines) if line.startswith("▊▁")]
    if not tops or not bottoms:
        return ""
    inner = lines[tops[-1] + 1 : bottoms[-1]]
    return "\n".join(line.strip("▊▎").strip() for line in inner)


FIGURES = re.compile(r"\d+ tokens · [\d.]+ tokens/s")
SIGNATURE = re.compile(r"\W*(You|loam|error|smollm2:135m|tiny)\s*")


def log_lines(screen: str) -> list[str]:
    """The chat's lines: below the bar, above the input box."""
    lines = screen.splitlines()[1:]
    tops = [i for i, line in enumerate(lines) if line.startswith("▊▔")]
    return lines[: tops[-1]] if tops else lines


def signatures(screen: str) -> list[str]:
    """Who signed each message on screen, top to bottom."""
    return [m.group(1) for line in log_lines(screen) if (m := SIGNATURE.fullmatch(line))]


def answer_to(screen: str, question: str) -> str:
    """The answer below the last message that says `question`, as far as the screen shows it; the
    whole chat when the question has scrolled off (a streaming answer is shown from its top)."""
    lines = log_lines(screen)
    asked = [i for i, line in enumerate(lines) if question in line]
    if not asked:
        return "\n".join(lines)
    below = lines[asked[-1] + 1 :]
    signed = [i for i, line in enumerate(below) if SIGNATURE.fullmatch(line)]
    if not signed or SIGNATURE.fullmatch(below[signed[0]]).group(1) in ("You", "loam", "error"):  # type: ignore[union-attr]
        return ""
    return "\n".join(below[signed[0] : signed[1] if len(signed) > 1 else None])


def words(answer: str) -> int:
    """How many words an answer shows, leaving out signatures and the loading line."""
    lines = [line for line in answer.splitlines() if "loading " not in line and not SIGNATURE.fullmatch(line)]
    return len(re.findall(r"[A-Za-z]{2,}", " ".join(lines)))


def column(screen: str, text: str) -> int:
    """Where `text` starts on the last line that has it."""
    return [line.index(text) for line in screen.splitlines() if text in line][-1]


def server_at(store: Path, home: Path, host: str) -> ServerProcess:
    """A server on a given host:port, as a person starts `loam serve` again after it died."""
    server = ServerProcess(store, home, LOAM_HOST=host)  # LOAM_HOST decides where it listens
    server.host, server.url, server.port = host, f"http://{host}", int(host.rpartition(":")[2])
    return server.wait_ready()


def bar(screen: str) -> str:
    return screen.splitlines()[0].strip() if screen else ""


def kill_servers_of(store: Path) -> None:
    """End any `loam serve` the chat started on its own for this store (it outlives the chat)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"LOAM_MODELS={store}".encode() not in environ.read_bytes().split(b"\0"):
                continue
            cmdline = (environ.parent / "cmdline").read_bytes().split(b"\0")
            if b"serve" in cmdline:
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.fixture
def chat_env(store: Path, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LOAM_MODELS": str(store),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "TERM": "xterm-256color",
    }


def test_a_person_at_a_terminal(store: Path, chat_env: dict[str, str], tmp_path: Path) -> None:
    """Paste 60 lines, Esc inside a code block, Ctrl+E in the input, switch model and reopen,
    kill the server mid-answer and continue: every step behaves as described."""
    servers = [ServerProcess(store, tmp_path / "server").wait_ready()]
    host = servers[0].host
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    term = Terminal(cwd, {**chat_env, "LOAM_HOST": host})
    try:
        term.wait_for(PROMPT, "the shell's prompt")
        say(term, f"{sys.executable} -m app chat -m {SMOL} --new", shell=True)
        term.wait_for(lambda s: "connected" in bar(s), "connected in the bar")

        # 1. Paste 60 lines: the message keeps them as separate lines, and is answered.
        say(term, "/set parameter num_predict 24")
        say(term, "/set parameter temperature 0")
        term.paste("\n".join(f"- line {i} *as typed*" for i in range(60)))
        term.wait_for(lambda s: "line 59" in prompt_text(s), "the pasted lines in the input")
        term.keys("Enter")
        shown = term.wait_for(lambda s: FIGURES.search(answer_to(s, "line 59")) is not None, "an answer to the paste")
        for i in range(40, 60):  # the lines the screen has room for
            assert re.search(rf"^\W*- line {i} \*as typed\*\s*[▁-█]*$", shown, re.M), (
                f"line {i} is not as typed:\n{shown}"
            )
        assert signatures(shown)[-1] == SMOL

        # 2. Esc inside a code block: the stop is marked below the block, and the export's fences pair up.
        say(term, "/set parameter num_predict 400")
        question = "Write a long Python program with many functions, in one ```python code block."
        say(term, question)
        term.wait_for(lambda s: "def " in answer_to(s, question), "the code starting")
        term.keys("Escape")
        shown = term.wait_for(lambda s: "[stopped]" in answer_to(s, question), "[stopped] below the answer")
        assert column(shown, "[stopped]") < column(shown, "def "), "the mark is prose, not a line of the code"
        term.keys("C-s")
        term.wait_for("exported to", "the export's notice")
        [export] = cwd.glob("loam-chat-*.md")
        text = export.read_text()
        fences = [line for line in text.splitlines() if line.startswith("```")]
        assert fences and len(fences) % 2 == 0, text
        assert text.rstrip().endswith("```"), "the stopped answer's block is closed"

        # 3. Ctrl+E in the input goes to the end of the line, and exports nothing.
        exported = export.stat().st_mtime_ns
        term.type("hello world")
        term.wait_for(lambda s: prompt_text(s) == "hello world", "hello world in the input")
        for key in ("Home", "C-e"):
            term.press(key)
        term.type("!")
        shown = term.wait_for(lambda s: "!" in prompt_text(s), "the ! in the input")
        assert prompt_text(shown) == "hello world!", shown
        assert list(cwd.glob("loam-chat-*.md")) == [export] and export.stat().st_mtime_ns == exported
        term.press("C-u")
        term.wait_for(lambda s: "Message (Enter" in prompt_text(s), "the input emptied")

        # 4. Switch model and reopen: each answer is still signed by the model that wrote it.
        say(term, "/load tiny")
        term.wait_for(lambda s: bar(s).startswith("loam · tiny"), "tiny in the bar")
        say(term, "/set parameter num_predict 16")
        say(term, "Say hi to the tiny model.")
        term.wait_for(lambda s: FIGURES.search(answer_to(s, "Say hi to")) is not None, "tiny's answer")
        term.keys("C-q")
        term.wait_for(lambda s: s.rstrip().endswith(PROMPT), "the shell again")
        say(term, f"{sys.executable} -m app chat", shell=True)
        shown = term.wait_for(lambda s: "connected" in bar(s) and "tiny" in signatures(s), "the chat reopened")
        assert [name for name in signatures(shown) if name not in ("You", "loam")] == [SMOL, SMOL, "tiny"], shown
        assert bar(shown).startswith("loam · tiny")

        # 5. Kill the server mid-answer, start it again and continue.
        say(term, f"/load {SMOL}")
        term.wait_for(lambda s: bar(s).startswith(f"loam · {SMOL}"), "smollm2 in the bar")
        say(term, "/set parameter num_predict 1000")
        story = "Tell me a long story about a lighthouse keeper who finds a message in a bottle."
        say(term, story)
        term.wait_for(lambda s: words(answer_to(s, story)) >= 12, "the story streaming")
        servers[0].proc.kill()
        servers[0].proc.wait()
        shown = term.wait_for(lambda s: "[cut short" in answer_to(s, story), "the answer marked cut short")
        assert words(answer_to(shown, story)) >= 12, "the partial answer is kept"
        term.wait_for(lambda s: "server lost" in bar(s), "server lost in the bar")
        servers.append(server_at(store, tmp_path / "server2", host))
        term.wait_for(lambda s: "connected" in bar(s), "connected again in the bar")
        say(term, "/set parameter num_predict 24")
        term.press("C-r")
        shown = term.wait_for(lambda s: FIGURES.search(answer_to(s, story)) is not None, "an answer after the retry")
        assert "[cut short" not in answer_to(shown, story) and "server lost" not in bar(shown)
    finally:
        term.close()
        for server in servers:
            server.stop()
        kill_servers_of(store)
