"""The ``edgeseq`` command line: a thin layer over the library.

Each subcommand lives in its own module ``edgeseq.cli.<name>`` exposing

* ``HELP`` — one line for ``edgeseq --help``;
* ``add_arguments(parser)`` — its options;
* ``run(args) -> object`` — calls one library function and returns its result (a JSON-able
  object). With ``--json`` the dispatcher prints exactly that object on stdout; without it the
  command may print tables itself and return ``None`` or the object (then printed as JSON too,
  indented, only if the command did not print anything itself — see ``printed``).

Errors: :class:`edgeseq.errors.EdgeseqError` subclasses become one line on stderr with exit code
2 (bad input) or 1 (failure); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

# command name -> module (in the order ``edgeseq --help`` lists them)
COMMANDS: dict[str, str] = {
    "models": "edgeseq.cli.models",
    "info": "edgeseq.cli.info",
    "train": "edgeseq.cli.train",
    "eval": "edgeseq.cli.eval",
    "generate": "edgeseq.cli.generate",
    "quantize": "edgeseq.cli.quantize",
    "export": "edgeseq.cli.export",
    "run": "edgeseq.cli.run",
    "profile": "edgeseq.cli.profile",
    "simulate": "edgeseq.cli.simulate",
    "targets": "edgeseq.cli.targets",
    "device-server": "edgeseq.cli.device_server",
    "report": "edgeseq.cli.report",
    "pipeline": "edgeseq.cli.pipeline",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _json_default(obj: Any) -> Any:
    import dataclasses
    from pathlib import Path

    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout (what ``--json`` promises)."""
    sys.stdout.write(json.dumps(obj, default=_json_default, indent=None) + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    from edgeseq import __version__

    parser = _Parser(prog="edgeseq", description="Streaming sequence models to the edge: "
                     "train, quantize, export, profile and simulate Mamba, SpikeGPT and LMUFormer.")
    parser.add_argument("--version", action="version", version=f"edgeseq {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not built yet
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help(sys.stderr)
        return 2
    from edgeseq.errors import EdgeseqError

    try:
        result = args._module.run(args)
        if args.json and result is not None:
            emit_json(result)
        return 0
    except EdgeseqError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"edgeseq {args.command}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"edgeseq {args.command}: interrupted\n")
        return 130
    except Exception as exc:  # a failure we did not foresee: still one line unless --debug
        if args.debug:
            raise
        sys.stderr.write(f"edgeseq {args.command}: error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
