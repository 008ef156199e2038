#!/usr/bin/env python3
"""Stand-in for the llama-server binary that llama.cpp's server tests start.

The suite names hub-hosted test models (``--hf-repo``, ``--hf-file``); no hub is
reachable here, so this drops those flags and loads a local GGUF instead
(``STANDIN_MODEL``). Every other flag passes through untouched, so the program
under test (``STANDIN_TARGET``: ``runner`` for loam's runner, or a path to a
llama-server binary) sees exactly what llama-server would.
"""

import os
import sys

# The same list as app.runner.options.HUB_FLAGS: this script runs before (and without) loam's package.
HUB_FLAGS_WITH_VALUE = {
    "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-mu", "--model-url",
    "-hfd", "-hfrd", "--hf-repo-draft",
}  # fmt: skip
HUB_SWITCHES = {"--offline"}


def substitute(args: list[str], model: str) -> list[str]:
    """The suite's arguments with hub flags dropped and ``model`` loaded."""
    out: list[str] = []
    has_model = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in HUB_FLAGS_WITH_VALUE:
            i += 2
            continue
        if arg not in HUB_SWITCHES:
            has_model = has_model or arg in ("-m", "--model")
            out.append(arg)
        i += 1
    return out if has_model else ["--model", model, *out]


def main() -> None:
    """Replace this process by the program under test."""
    model = os.environ["STANDIN_MODEL"]
    target = os.environ.get("STANDIN_TARGET", "runner")
    args = substitute(sys.argv[1:], model)
    if target == "runner":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.environ.get("STANDIN_REPO", ""), env.get("PYTHONPATH", "")) if p
        )
        os.execve(sys.executable, [sys.executable, "-m", "app.runner", *args], env)
    os.execv(target, [target, *args])


if __name__ == "__main__":
    main()
