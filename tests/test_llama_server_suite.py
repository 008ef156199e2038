"""llama.cpp's own server tests, run against llama-server and against the runner, both on SmolLM2.

Skipped unless LLAMA_CPP_BIN_DIR names the build/bin of the llama.cpp tree vendored
in llama-cpp-python's sdist (docs/benchmarks.md says how to build it), since the
suite and the binary come from there; the suite also needs the `wget` and
`filelock` packages it imports. Every test that passes on llama-server must pass
on the runner (docs/runner.md lists the counts and the deliberate differences).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SMOLLM2_SHA256

BIN_DIR = os.environ.get("LLAMA_CPP_BIN_DIR", "")
pytestmark = [
    pytest.mark.skipif(not BIN_DIR, reason="set LLAMA_CPP_BIN_DIR to llama.cpp's build/bin (see docs/benchmarks.md)"),
    pytest.mark.skipif(
        not all(importlib.util.find_spec(m) for m in ("wget", "filelock")),
        reason="llama.cpp's server tests import wget and filelock: pip install wget filelock",
    ),
]


def test_every_llama_server_pass_is_a_runner_pass(smollm2_store: Path) -> None:
    model = smollm2_store / "blobs" / f"sha256-{SMOLLM2_SHA256}"
    done = subprocess.run(
        [sys.executable, "-m", "tests.llama_server_suite", "--llama-server", str(Path(BIN_DIR) / "llama-server"),
         "--model", str(model), "--json"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    results = json.loads(done.stdout)
    theirs, ours = results["llama-server"], results["runner"]
    missing = sorted(t for t, outcome in theirs.items() if outcome == "passed" and ours.get(t) != "passed")
    assert not missing, done.stderr[-4000:]
    assert sum(o == "passed" for o in theirs.values()) >= 60  # the shim really ran the suite
