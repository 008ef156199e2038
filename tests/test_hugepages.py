"""Model memory in huge pages: the policy on simulated kernels and C libraries, then a real runner on this one."""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.hardware.devices import cgroup_free
from app.runner import hugepages
from app.runner.model import resolve_load_mode
from app.runner.options import RunnerOptions, parse_args
from app.server.scheduler import load_mode_args
from app.store.blobs import BlobStore
from tests.conftest import SMOLLM2_SHA256
from tests.ggufmaker import write_tiny_llama
from tests.runner_process import RunnerProcess

HERE_SUPPORTED = hugepages.supported(hugepages.thp_mode(), hugepages.glibc_version())


@pytest.mark.parametrize(
    ("text", "mode"),
    [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"), ("always madvise [never]", "never"),
     ("garbage", ""), (None, "")],
)  # fmt: skip
def test_the_kernels_mode_is_the_bracketed_word(tmp_path: Path, text: str | None, mode: str) -> None:
    setting = tmp_path / "enabled"
    if text is not None:
        setting.write_text(text)
    assert hugepages.thp_mode(setting) == mode


@pytest.mark.parametrize(
    ("reported", "version"),
    [("glibc 2.36", (2, 36)), ("glibc 2.35.1", (2, 35)), ("musl 1.2", None), ("glibc x.y", None), (None, None)],
)
def test_glibc_version(reported: str | None, version: tuple[int, int] | None) -> None:
    assert hugepages.glibc_version(lambda name: reported) == version


def test_a_c_library_that_cannot_say_is_not_glibc() -> None:
    def refuse(name: str) -> str:
        raise ValueError(name)

    assert hugepages.glibc_version(refuse) is None


@pytest.mark.parametrize(
    ("mode", "glibc", "ok"),
    [("madvise", (2, 36), True), ("always", (2, 35), True), ("never", (2, 36), False), ("", (2, 36), False),
     ("madvise", (2, 34), False), ("madvise", None, False)],
)  # fmt: skip
def test_huge_pages_need_a_kernel_that_offers_them_and_glibc_2_35(
    mode: str, glibc: tuple[int, int] | None, ok: bool
) -> None:
    assert hugepages.supported(mode, glibc) is ok


@pytest.mark.parametrize(
    ("tunables", "setting", "huge"),
    [("", None, False), ("glibc.malloc.hugetlb=1", "1", True),
     ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2", "2", True), ("glibc.malloc.hugetlb=0", "0", False),
     ("glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0", "0", False)],
)  # fmt: skip
def test_the_users_own_hugetlb_setting_is_read_as_glibc_reads_it(
    tunables: str, setting: str | None, huge: bool
) -> None:
    env = {"GLIBC_TUNABLES": tunables}
    assert hugepages.hugetlb_setting(env) == setting and hugepages.has_tunable(env) is huge
    if setting is not None:  # the user's choice stands: nothing is appended
        assert hugepages.with_tunable(env) == env


def test_the_tunable_joins_other_glibc_tunables_once() -> None:
    env = hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "HOME": "/h"}
    assert hugepages.with_tunable(env) == env
    assert hugepages.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that offers huge pages: madvise mode, glibc 2.36."""
    monkeypatch.setattr(hugepages, "thp_mode", lambda setting=None: "madvise")
    monkeypatch.setattr(hugepages, "glibc_version", lambda confstr=None: (2, 36))


@pytest.mark.parametrize(
    ("env", "restarts"),
    [({}, True), ({"LOAM_HUGE_PAGES": "0"}, False), ({"LOAM_HUGE_PAGES": "off"}, False),
     ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, False), ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, False),
     ({"LOAM_HUGE_PAGES_EXEC": "1"}, False)],
)  # fmt: skip
def test_the_runner_starts_itself_again_only_when_that_changes_something(
    simulated: None, env: dict[str, str], restarts: bool
) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    argv = [sys.executable, "-m", "app.runner", "--model", "m.gguf"]
    assert hugepages.restart_with_tunable(env, argv, lambda *call: calls.append(call)) is restarts
    if restarts:
        (program, args, new_env), = calls  # fmt: skip
        assert program == sys.executable and args == argv
        assert hugepages.has_tunable(new_env) and new_env["LOAM_HUGE_PAGES_EXEC"] == "1"
    else:
        assert calls == []


def test_a_failed_restart_goes_on_in_ordinary_pages(simulated: None, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*call: object) -> None:
        raise PermissionError("not allowed")

    assert hugepages.restart_with_tunable({}, ["x"], fail) is False
    assert "using ordinary pages" in capsys.readouterr().err


def test_no_restart_where_the_kernel_has_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hugepages, "thp_mode", lambda setting=None: "never")
    assert not hugepages.restart_with_tunable({}, ["x"], lambda *call: pytest.fail("restarted"))
    assert "GLIBC_TUNABLES" not in hugepages.child_environ({"HOME": "/h"})


def test_loam_serve_starts_runners_with_the_tunable(simulated: None) -> None:
    assert hugepages.has_tunable(hugepages.child_environ({"HOME": "/h"}))
    assert not hugepages.has_tunable(hugepages.child_environ({"LOAM_HUGE_PAGES": "0"}))


GIB = 1 << 30


@pytest.mark.parametrize(
    ("mode", "ngl", "huge", "available", "gpu_build", "resolved"),
    [("auto", 0, True, 8 * GIB, False, "none"),  # read into memory that takes huge pages
     ("auto", 0, False, 8 * GIB, False, "mmap"),  # no huge pages: a copy would gain nothing
     ("auto", 10, True, 8 * GIB, True, "mmap"),  # layers on a GPU: mapped, as llama-server does
     ("auto", 0, True, 8 * GIB, True, "mmap"),  # a GPU build would read into pinned host memory instead
     ("auto", 0, True, GIB, False, "mmap"),  # a copy of a 1 GiB file does not fit beside what is free
     ("mmap", 0, True, 8 * GIB, False, "mmap"), ("none", 5, False, GIB, True, "none"),
     ("dio", 0, True, 8 * GIB, False, "dio")],
)  # fmt: skip
def test_load_mode(mode: str, ngl: int, huge: bool, available: int, gpu_build: bool, resolved: str) -> None:
    options = RunnerOptions(model=Path("m.gguf"), load_mode=mode, n_gpu_layers=ngl)
    assert resolve_load_mode(options, GIB, huge, available, gpu_build) == resolved


@pytest.mark.parametrize(
    ("proc", "files", "free"),
    [("0::/user.slice/app\n", {"user.slice/app/memory.max": "4096\n", "user.slice/app/memory.current": "1024\n"}, 3072),
     ("0::/a\n", {"a/memory.max": "max\n", "a/memory.current": "1024\n"}, None),
     ("4:memory:/box\n0::/\n", {"memory/box/memory.limit_in_bytes": "8192",
                                 "memory/box/memory.usage_in_bytes": "9000"}, 0),
     ("4:cpu,memory:/box\n", {"memory/box/memory.limit_in_bytes": "9223372036854771712",
                              "memory/box/memory.usage_in_bytes": "1"}, None),
     ("garbage\n0::/gone\n", {}, None)],
)  # fmt: skip
def test_cgroup_free_reads_v2_and_v1_limits(tmp_path: Path, proc: str, files: dict[str, str], free: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "cgroup").write_text(proc)
    assert cgroup_free(tmp_path, tmp_path / "cgroup") == free


@pytest.mark.parametrize(
    ("flags", "mode", "mlock"),
    [([], "auto", False), (["--load-mode", "mlock"], "none", True), (["-lm", "mmap+mlock"], "mmap", True),
     (["--no-mmap", "--mlock"], "none", True), (["--mmap"], "mmap", False), (["--load-mode", "none"], "none", False),
     (["--mlock"], "auto", True)],
)  # fmt: skip
def test_load_mode_flags_are_llama_servers_and_the_older_ones(flags: list[str], mode: str, mlock: bool) -> None:
    options = parse_args(["-m", "m.gguf", *flags])
    assert (options.load_mode, options.mlock) == (mode, mlock)


@pytest.mark.parametrize(
    ("use_mmap", "use_mlock", "args"),
    [(None, False, []), (True, False, ["--load-mode", "mmap"]), (False, False, ["--load-mode", "none"]),
     (None, True, ["--load-mode", "mmap+mlock"]), (True, True, ["--load-mode", "mmap+mlock"]),
     (False, True, ["--load-mode", "mlock"])],
)  # fmt: skip
def test_ollamas_use_mmap_and_use_mlock_become_a_load_mode(
    use_mmap: bool | None, use_mlock: bool, args: list[str]
) -> None:
    assert load_mode_args(use_mmap, use_mlock) == args


def _loaded_line(runner: RunnerProcess, seconds: float = 60) -> str:
    """The runner's `model loaded` line, read with a deadline so a runner that never says it fails the test."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in runner.proc.stderr:  # type: ignore[union-attr]
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line.startswith("model loaded"):
            return line
    raise AssertionError("the runner never logged `model loaded`")


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().partition("=")[::2] for p in pairs if p)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_runner_started_by_hand_puts_its_model_in_huge_pages_where_this_machine_has_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real thing on this machine: started without the tunable, the runner restarts itself with it
    (same process id), reads the model into memory and holds it in huge pages; where the kernel or C
    library offers none, it keeps the file mapped and its environment unchanged."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("LOAM_HUGE_PAGES", raising=False)
    # 17 MB of f32 weights beside a KV cache of 1 MB and 4 MB of compute buffers: mapped, the process
    # still has about 10 MiB in huge pages (Python's heap, those buffers); read in, more than the weights
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_embd=256, n_head=4, n_layer=4, n_ff=1024)
    with RunnerProcess(model, "--ctx-size", "256", "--threads", "2", by_hand=True) as runner:
        env = _environ(runner.proc.pid)
        huge = hugepages.huge_bytes(runner.proc.pid)
        weights = httpx.get(runner.url + "/props").json()["memory"]["model"]
        answer = httpx.post(runner.url + "/completion", json={"prompt": "a b", "n_predict": 4}).json()
        loaded = _loaded_line(runner)
    assert answer["tokens_predicted"] == 4
    assert hugepages.has_tunable(env) is HERE_SUPPORTED
    assert ("read into memory" in loaded) is HERE_SUPPORTED
    if HERE_SUPPORTED:  # a kernel that gives huge pages unasked ("always") may do so anyway where glibc cannot
        assert huge >= weights > 16 << 20, loaded


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loam_huge_pages_0_keeps_the_file_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("LOAM_HUGE_PAGES", "0")
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    with RunnerProcess(model, "--ctx-size", "256", "--threads", "2", by_hand=True) as runner:
        env = _environ(runner.proc.pid)
        loaded = _loaded_line(runner)
    assert not hugepages.has_tunable(env) and "LOAM_HUGE_PAGES_EXEC" not in env
    assert loaded.startswith("model loaded (mmap,"), loaded


def test_greedy_text_is_the_same_read_into_huge_pages_or_mapped(
    smollm2_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bytes at other addresses: SmolLM2's greedy tokens match token for token, read into
    memory (in huge pages where this machine has them) or mapped."""
    monkeypatch.delenv("LOAM_HUGE_PAGES", raising=False)
    model = BlobStore(smollm2_store).path("sha256:" + SMOLLM2_SHA256)
    body = {"prompt": "Write a short story about a lighthouse.", "n_predict": 48, "temperature": 0}
    answers = []
    for flags in (("--load-mode", "none"), ("--load-mode", "mmap")):
        with RunnerProcess(model, "--ctx-size", "512", "--threads", "2", *flags) as runner:
            answers.append(runner.complete(**body, ignore_eos=True)["tokens"])
    assert len(answers[0]) == 48 and answers[0] == answers[1]


@pytest.mark.parametrize("value", ["bogus", "", "MMAP", "mmap+"])
def test_a_load_mode_that_does_not_exist_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["-m", "m.gguf", "--load-mode", value])
    assert exit_.value.code == 2 and "--load-mode" in capsys.readouterr().err


@pytest.mark.parametrize("tunables", ["::", "=", "glibc.malloc.hugetlb", "glibc.malloc.hugetlbx=1", ":=1:"])
def test_garbled_glibc_tunables_name_no_hugetlb_setting(tunables: str) -> None:
    env = {"GLIBC_TUNABLES": tunables}
    assert hugepages.hugetlb_setting(env) is None and not hugepages.has_tunable(env)
    assert hugepages.with_tunable(env)["GLIBC_TUNABLES"].endswith(":glibc.malloc.hugetlb=1")
