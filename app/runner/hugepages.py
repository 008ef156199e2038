"""Model memory in transparent huge pages, where Linux and glibc offer them.

A CPU decode reads every weight once per token. Mapped from the model file,
the weights sit in 4 KiB page-cache pages, and every token's pass takes tens of
thousands of TLB misses; read into anonymous memory that the kernel backs with
2 MiB pages, it takes a few dozen. On SmolLM2-135M Q4_1 with 2 threads that
made single-stream generation about 10% faster (docs/benchmarks.md).

llama.cpp allocates the read-in weights, the KV cache and its compute buffers
with malloc, and glibc (2.35 on) asks for huge pages on malloc's large blocks
when the tunable `glibc.malloc.hugetlb=1` is in the environment at process
start. So the runner starts itself again with it set, before anything is
allocated, unless whoever started it already set it (loam's server does) or
`LOAM_HUGE_PAGES=0` says not to. Where the kernel's transparent huge pages are
off ("never") or the C library is not glibc, nothing changes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

_NAME = "glibc.malloc.hugetlb"
TUNABLE = f"{_NAME}=1"
#: Set to 0 to keep the runner's memory in ordinary pages (and the model file memory-mapped).
OPT_OUT = "LOAM_HUGE_PAGES"
#: Marks a process that already started itself again, so a C library that ignores the tunable causes no loop.
_REEXECED = "LOAM_HUGE_PAGES_EXEC"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)


def thp_mode(setting: Path = THP_SETTING) -> str:
    """The kernel's transparent huge page mode: "always", "madvise", "never", or "" where there is none."""
    try:
        text = setting.read_text()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def glibc_version(confstr: Callable[[str], str | None] | None = None) -> tuple[int, int] | None:
    """glibc's (major, minor), or None for another C library."""
    try:
        text = (confstr or os.confstr)("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    name, _, version = text.partition(" ")
    parts = version.split(".")
    if name != "glibc" or len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def supported(mode: str, glibc: tuple[int, int] | None) -> bool:
    """Whether malloc's large blocks can be put in huge pages here."""
    return mode in ("always", "madvise") and glibc is not None and glibc >= MIN_GLIBC


def wanted(env: Mapping[str, str]) -> bool:
    return env.get(OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off")


def offered(env: Mapping[str, str]) -> bool:
    """Whether huge pages are wanted under `env` and this kernel and C library can give them."""
    return wanted(env) and supported(thp_mode(), glibc_version())


def hugetlb_setting(env: Mapping[str, str]) -> str | None:
    """The value `GLIBC_TUNABLES` gives glibc.malloc.hugetlb (the last one, as glibc reads them), or None."""
    values = [t.partition("=")[2] for t in env.get("GLIBC_TUNABLES", "").split(":") if t.startswith(_NAME + "=")]
    return values[-1] if values else None


def has_tunable(env: Mapping[str, str]) -> bool:
    """Whether malloc's large blocks go to huge pages under `env`: transparent ones (1) or hugetlbfs ones (2)."""
    return hugetlb_setting(env) in ("1", "2")


def with_tunable(env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus the tunable, keeping any other glibc tunables it sets; a hugetlb setting of the user's stays."""
    out = dict(env)
    if hugetlb_setting(out) is None:
        out["GLIBC_TUNABLES"] = ":".join(filter(None, [out.get("GLIBC_TUNABLES", ""), TUNABLE]))
    return out


def active(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process's large allocations go to huge pages (the tunable was set when it started)."""
    env = os.environ if env is None else env
    return has_tunable(env) and offered(env)


def child_environ(env: Mapping[str, str]) -> dict[str, str]:
    """The environment to start a runner with: the tunable added where it would take effect."""
    return with_tunable(env) if offered(env) else dict(env)


def restart_with_tunable(
    env: Mapping[str, str] | None = None,
    argv: list[str] | None = None,
    execve: Callable[[str, list[str], dict[str, str]], object] = os.execve,
) -> bool:
    """Start this process again with the tunable set, where it would take effect and is missing.

    Called first thing, before llama.cpp is loaded or anything large allocated.
    Returns False when there is nothing to do (execve does not return).
    """
    env = os.environ if env is None else env
    if env.get(_REEXECED) or hugetlb_setting(env) is not None or not offered(env):
        return False  # already restarted, the user's own setting stands, or nothing to gain
    try:
        execve(sys.executable, argv or list(sys.orig_argv), {**with_tunable(env), _REEXECED: "1"})
    except OSError as e:  # the interpreter cannot be started again: serve from ordinary pages
        print(f"huge pages: cannot start again with {TUNABLE} ({e}); using ordinary pages", file=sys.stderr)
        return False
    return True


def huge_bytes(pid: int | str = "self") -> int:
    """Bytes of a process's anonymous memory in transparent huge pages (0 where the kernel does not say)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
