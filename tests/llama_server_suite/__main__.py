"""Run llama.cpp's server test suite against loam's runner and llama-server.

    python -m tests.llama_server_suite --llama-server $LLAMA_CPP_BIN_DIR/llama-server

runs the seven protocol files of the suite (in the llama.cpp tree that holds
that binary) once against llama-server and once against loam's runner, both
loading the same local GGUF through ``shim.py``, and prints each side's pass
count and every test that passes on llama-server but not on the runner.
Figures go to stderr; with ``--json`` the per-test outcomes go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FILES = ("basic", "tokenize", "completion", "ctx_shift", "ignore_eos", "embedding", "metrics")
DEFAULT_MODEL = Path("/work/models/smollm2-q4_1.gguf")


def suite_dir(llama_server: Path) -> Path:
    """The server tests of the llama.cpp tree whose build holds ``llama_server``."""
    for parent in llama_server.resolve().parents:
        candidate = parent / "tools" / "server" / "tests"
        if (candidate / "utils.py").is_file():
            return candidate
    raise SystemExit(f"error: no tools/server/tests above {llama_server}; pass --suite")


def run_suite(suite: Path, target: str, model: Path, select: list[str]) -> dict[str, str]:
    """Outcome (passed, failed, error, skipped) of each test id against ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = dict(os.environ)
        env.update(
            LLAMA_SERVER_BIN_PATH=str(HERE / "shim.py"),
            STANDIN_TARGET=target,
            STANDIN_MODEL=str(model),
            STANDIN_REPO=str(REPO),
            PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
            LLAMA_CACHE=str(Path(tmp) / "cache"),
        )
        files = [f"unit/test_{name}.py" for name in FILES]
        cmd = [sys.executable, "-m", "pytest", "-p", "standin_plugin", "-p", "no:cacheprovider",
               "-m", "not slow", "-q", f"--junitxml={report}", *select, *files]  # fmt: skip
        subprocess.run(cmd, cwd=suite, env=env, stdout=sys.stderr, check=False)
        return outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    """Parse a JUnit XML report into ``{test id: outcome}``."""
    result: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = "passed"
        for tag in ("error", "failure", "skipped"):
            if tag in kinds:
                outcome = {"failure": "failed"}.get(tag, tag)
        result[name] = outcome
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; exit 1 when a llama-server pass fails on the runner."""
    parser = argparse.ArgumentParser(prog="python -m tests.llama_server_suite")
    parser.add_argument("--llama-server", type=Path, required=True, help="llama-server binary")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF both sides load")
    parser.add_argument("--suite", type=Path, help="tools/server/tests of the llama.cpp tree")
    parser.add_argument("--only", choices=("runner", "llama-server"), help="run one side")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--json", action="store_true", help="per-test outcomes on stdout")
    args = parser.parse_args(argv)
    suite = args.suite or suite_dir(args.llama_server)
    select = ["-k", args.keyword] if args.keyword else []
    sides = {"llama-server": str(args.llama_server.resolve()), "runner": "runner"}
    results = {
        side: run_suite(suite, target, args.model, select)
        for side, target in sides.items()
        if args.only in (None, side)
    }
    for side, result in results.items():
        passed = sum(1 for outcome in result.values() if outcome == "passed")
        print(f"{side}: {passed} passed of {len(result)}", file=sys.stderr)
    missing: list[str] = []
    if len(results) == 2:
        ours, theirs = results["runner"], results["llama-server"]
        missing = sorted(t for t, o in theirs.items() if o == "passed" and ours.get(t) != "passed")
        extra = sorted(t for t, o in ours.items() if o == "passed" and theirs.get(t) != "passed")
        for test in missing:
            print(f"passes on llama-server only: {test}", file=sys.stderr)
        for test in extra:
            print(f"passes on the runner only: {test}", file=sys.stderr)
    if args.json:
        json.dump(results, sys.stdout, indent=1, sort_keys=True)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
