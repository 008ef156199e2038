import os
from pathlib import Path

import pytest

from app import config
from app.errors import ConfigError


def test_paths_follow_xdg_and_loam_models(loam_home: Path) -> None:
    p = config.paths()
    assert p.data == loam_home / "data" / "loam"
    assert p.config_file == loam_home / "config" / "loam" / "config.toml"
    assert p.logs == loam_home / "state" / "loam" / "logs"
    assert p.models == loam_home / "models"


def test_models_default_to_data_dir(loam_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOAM_MODELS")
    assert config.paths().models == loam_home / "data" / "loam" / "models"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "127.0.0.1:11435"), ("0.0.0.0", "0.0.0.0:11435"), ("http://localhost:9000/", "localhost:9000")],
)
def test_host_from_environment(loam_home: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("LOAM_HOST", value)
    assert config.host() == expected


def test_bad_host_is_a_clear_error(loam_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOAM_HOST", "localhost:http")
    with pytest.raises(ConfigError, match="LOAM_HOST"):
        config.host()


def test_keep_alive_default_and_override(loam_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.keep_alive() == "5m"
    monkeypatch.setenv("LOAM_KEEP_ALIVE", "-1")
    assert config.keep_alive() == "-1"


def test_config_round_trip_and_default_model(loam_home: Path) -> None:
    assert config.load_config() == {}
    assert config.default_model("smollm2:135m") == "smollm2:135m"
    config.save_config({"default_model": "gemma3:270m", "theme": "loam-light"})
    assert config.load_config() == {"default_model": "gemma3:270m", "theme": "loam-light"}
    assert config.default_model("smollm2:135m") == "gemma3:270m"
    assert not list(config.paths().config.glob(".*tmp"))


def test_broken_config_names_the_file(loam_home: Path) -> None:
    config.paths().config.mkdir(parents=True)
    config.paths().config_file.write_text("default_model = ")
    with pytest.raises(ConfigError, match="config.toml"):
        config.load_config()


def test_shipped_files_are_found() -> None:
    assert config.shipped_file("models.toml").is_file()
    assert (config.shipped_file("themes") / "loam-dark.toml").is_file()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_config_and_logs_are_private_while_the_store_stays_shareable(loam_home: Path) -> None:
    config.save_config({"default_model": "tiny:1"})
    assert _mode(config.paths().config_file) == 0o600
    assert _mode(config.paths().config) == 0o700
    log = config.paths().logs / "server.log"
    with config.open_private_log(log) as f:
        f.write(b"line\n")
    log.chmod(0o644)  # an older loam's log is tightened when opened again
    with config.open_private_log(log) as f:
        f.write(b"more\n")
    assert _mode(log) == 0o600 and _mode(log.parent) == 0o700
    assert log.read_bytes() == b"line\nmore\n"
    fd, name = config.temp_file(loam_home, "blob")
    os.close(fd)
    assert _mode(Path(name)) == config.FILE_MODE and config.FILE_MODE & 0o044  # store files: others may read
