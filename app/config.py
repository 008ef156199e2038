"""Where loam keeps things and how a person changes that.

Paths come from platformdirs (so XDG_* variables are honoured on Linux); the
environment overrides a few of them; `config.toml` in the config dir holds
preferences, read with tomllib and written with tomli-w.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import platformdirs

from app.errors import ConfigError

#: Machines with this many cores or fewer give the model's threads every core: there, each wakeup of
#: another process (a streamed chunk relayed or read, a frame drawn) stalls a decode step.
FEW_CORES = 4


def few_cores(cores: int | None = None) -> bool:
    """Whether a machine of `cores` cores (this one by default) leaves the model no core to spare."""
    return (cores if cores is not None else os.cpu_count() or 1) <= FEW_CORES


APP_NAME = "loam"
DEFAULT_HOST = "127.0.0.1:11435"
DEFAULT_KEEP_ALIVE = "5m"
#: Seconds a partial download may sit untouched before it is pruned.
PARTIAL_GRACE_SECONDS = 7 * 24 * 3600

_PACKAGE_DIR = Path(__file__).resolve().parent


class Paths(NamedTuple):
    """The directories loam reads and writes (a NamedTuple: every command starts by importing this)."""

    data: Path
    config: Path
    state: Path
    cache: Path
    models: Path

    @property
    def config_file(self) -> Path:
        return self.config / "config.toml"

    @property
    def user_catalog(self) -> Path:
        return self.config / "models.toml"

    @property
    def logs(self) -> Path:
        return self.state / "logs"


def paths() -> Paths:
    """The current paths, with LOAM_MODELS taking precedence for the store."""
    data = platformdirs.user_data_path(APP_NAME, appauthor=False)
    models = os.environ.get("LOAM_MODELS")
    return Paths(
        data=data,
        config=platformdirs.user_config_path(APP_NAME, appauthor=False),
        state=platformdirs.user_state_path(APP_NAME, appauthor=False),
        cache=platformdirs.user_cache_path(APP_NAME, appauthor=False),
        models=Path(models).expanduser() if models else data / "models",
    )


def host() -> str:
    """The server address as `host:port`, from LOAM_HOST (scheme optional)."""
    value = os.environ.get("LOAM_HOST", "").strip() or DEFAULT_HOST
    for scheme in ("http://", "https://"):
        if value.startswith(scheme):
            value = value[len(scheme) :]
    value = value.rstrip("/")
    if ":" not in value:
        value = f"{value}:{DEFAULT_HOST.rsplit(':', 1)[1]}"
    name, _, port = value.rpartition(":")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"LOAM_HOST={value!r} is not host:port; set it like 127.0.0.1:11435")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
}


def parse_size(text: str) -> int:
    """A byte count written as a person would: 4GB, 512MiB, 1.5 GB, 0; ValueError otherwise."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; write it like 4GB or 512MB") from None
    if unit not in _SIZE_UNITS or not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a size; write it like 4GB or 512MB")
    return int(value * _SIZE_UNITS[unit])


#: How much the disk cache of conversation states may hold unless LOAM_CACHE_DISK says otherwise.
DEFAULT_CACHE_DISK = "4GB"


def cache_disk_bytes() -> int:
    """LOAM_CACHE_DISK: bytes for conversation states on disk (0 turns the disk cache off)."""
    raw = os.environ.get("LOAM_CACHE_DISK", "").strip() or DEFAULT_CACHE_DISK
    try:
        return parse_size(raw)
    except ValueError as e:
        raise ConfigError(f"LOAM_CACHE_DISK: {e}") from None


def keep_alive() -> str:
    """How long an idle model stays loaded (LOAM_KEEP_ALIVE, Ollama's duration syntax)."""
    return os.environ.get("LOAM_KEEP_ALIVE", "").strip() or DEFAULT_KEEP_ALIVE


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The user's config.toml as a dict; an absent file is an empty config."""
    path = path or paths().config_file
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return {}
    if sys.version_info >= (3, 11):  # imported here: `loam ask` without a config file never needs it
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    with f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}; fix or delete the file") from e


def save_config(data: dict[str, Any], path: Path | None = None) -> None:
    """Write config.toml atomically and privately (0600), so a crash never leaves half a file."""
    path = path or paths().config_file
    private_dir(path.parent)
    import tomli_w  # writing config is rare; reading it starts every command

    write_atomic(path, tomli_w.dumps(data).encode(), mode=PRIVATE_FILE_MODE)


def default_model(catalog_default: str) -> str:
    """The model `chat` and `ask` use: config's `default_model`, else the catalog's."""
    value = load_config().get("default_model")
    return value if isinstance(value, str) and value else catalog_default


def shipped_file(name: str) -> Path:
    """A top-level data file (models.toml, themes/) in a wheel or a source checkout.

    The wheel carries them under app/_data; a checkout has them beside app/.
    """
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{name} is missing from the loam installation; reinstall loam")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode for files loam makes: what open() would give, so another user's Ollama can read the store.
FILE_MODE = 0o666 & ~_umask()
#: Modes for what is the user's alone: chat history, config.toml, the server's and runners' logs.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Make `path` (and missing parents) and keep the folder itself 0700: its contents are nobody else's."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def open_private_log(path: Path, append: bool = True) -> BinaryIO:
    """Open a log for writing (appending, or from empty), created 0600 in a 0700 folder; an old log is made 0600."""
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return os.fdopen(fd, "ab" if append else "wb")


def temp_file(folder: Path, prefix: str, suffix: str = "", mode: int | None = None) -> tuple[int, str]:
    """mkstemp in `folder`, with the usual file mode (or `mode`) instead of mkstemp's 0600."""
    import tempfile  # here, not at the top: `loam ask` writes no file and starts faster without it

    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.fchmod(fd, FILE_MODE if mode is None else mode)
    return fd, name


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write bytes to a temp file beside `path`, fsync, then rename over it (with `mode` if given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, f".{path.name}.", ".tmp", mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- tools: [mcp.NAME] servers and the [tools] table ---------------------------

#: Names of the tools loam itself offers; an MCP server may not take one of them.
BUILTIN_TOOL_NAMES = ("current_time", "read_file")
#: Seconds one MCP tool call may take unless `timeout` says otherwise.
DEFAULT_TOOL_TIMEOUT = 60.0
_SERVER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class McpServer(NamedTuple):
    """One `[mcp.NAME]` table: a command to run over stdio, or a streamable HTTP URL."""

    name: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_TOOL_TIMEOUT

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f'config.toml: {where}.{key} must be a list of strings, e.g. {key} = ["-y", "server"]')
    return tuple(value)


def _string_table(where: str, key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f'config.toml: {where}.{key} must be a table of strings, e.g. {key} = {{ NAME = "value" }}')
    return tuple(sorted(value.items()))


def _mcp_server(name: str, table: Any) -> McpServer:
    where = f"[mcp.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f'config.toml: mcp.{name} must be a table, e.g. [mcp.{name}] command = "..."')
    if not name or set(name) - _SERVER_NAME_CHARS or len(name) > 32:
        raise ConfigError(f"config.toml: [mcp.{name}]: a server name is 1-32 letters, digits, _ or -")
    if name in BUILTIN_TOOL_NAMES:
        raise ConfigError(f"config.toml: [mcp.{name}]: {name} is a built-in tool's name; rename the server")
    known = {"command", "args", "env", "url", "headers", "timeout"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"config.toml: {where} has unknown key {unknown[0]!r}; use {', '.join(sorted(known))}")
    command, url = table.get("command", ""), table.get("url", "")
    if not isinstance(command, str) or not isinstance(url, str):
        raise ConfigError(f"config.toml: {where}: command and url are strings")
    if bool(command) == bool(url):
        raise ConfigError(f"config.toml: {where} needs either command (a stdio server) or url (HTTP), not both")
    if command and {"headers"} & set(table):
        raise ConfigError(f"config.toml: {where}: headers go with url; a command server takes args and env")
    if url and {"args", "env"} & set(table):
        raise ConfigError(f"config.toml: {where}: args and env go with command; a url server takes headers")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"config.toml: {where}: url {url!r} must start with http:// or https://")
    timeout = table.get("timeout", DEFAULT_TOOL_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise ConfigError(f"config.toml: {where}: timeout is seconds per tool call, between 0 and 3600")
    return McpServer(
        name=name,
        command=command,
        args=_strings(where, "args", table.get("args", [])),
        env=_string_table(where, "env", table.get("env", {})),
        url=url,
        headers=_string_table(where, "headers", table.get("headers", {})),
        timeout=float(timeout),
    )


def mcp_servers(data: dict[str, Any] | None = None) -> dict[str, McpServer]:
    """The `[mcp.NAME]` tables of config.toml, checked; ConfigError names the first bad one."""
    data = load_config() if data is None else data
    tables = data.get("mcp", {})
    if not isinstance(tables, dict):
        raise ConfigError('config.toml: mcp must hold tables, e.g. [mcp.files] command = "..."')
    return {name: _mcp_server(name, table) for name, table in tables.items()}


def read_roots(data: dict[str, Any] | None = None) -> list[Path]:
    """The folders `[tools] read_roots` lets the read_file tool read, user-expanded; [] when unset."""
    data = load_config() if data is None else data
    tools = data.get("tools", {})
    if not isinstance(tools, dict):
        raise ConfigError('config.toml: tools must be a table, e.g. [tools] read_roots = ["~/notes"]')
    unknown = sorted(set(tools) - {"read_roots"})
    if unknown:
        raise ConfigError(f"config.toml: [tools] has unknown key {unknown[0]!r}; it takes read_roots")
    roots = _strings("[tools]", "read_roots", tools.get("read_roots", []))
    if any(not root.strip() for root in roots):
        raise ConfigError("config.toml: [tools] read_roots holds an empty path; name folders like ~/notes")
    return [Path(root).expanduser() for root in roots]
