import shutil
import subprocess

from tests.conftest import REPO


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the test extra: pip install '.[test]'"
    result = subprocess.run([ruff, "check", "app", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
