"""The ``edgeseq`` command line: a thin layer over the library.

Each subcommand lives in its own module ``edgeseq.cli.<name>`` exposing

* ``HELP`` — one line for ``edgeseq --help``;
* ``add_arguments(parser)`` — its options;
* ``run(args) -> object`` — calls one library function and returns its result (a JSON-able
  object). With ``--json`` the dispatcher prints exactly that object on stdout; without it the
  command may print tables itself and return ``None`` or the object (then printed as JSON too,
  indented, only if the command did not print anything itself — see ``printed``).

Errors: :class:`edgeseq.errors.EdgeseqError` subclasses become one line on stderr with exit code
2 (bad input) or 1 (failure); ``OSError``/``UnicodeError`` are mapped to one line naming the file
or option; with ``--json`` the same error is also printed on stdout as one object
``{"error": ..., "kind": ...}``. ``--debug`` (top-level or after the command) prints the traceback
too, with the same exit code. Ctrl-C and SIGTERM at any moment (even while torch is imported)
run the same clean-ups and end with one line (exit 130 / 143).
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


_USAGE_ERROR: str | None = None  # the last usage error (for the --json error object)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        global _USAGE_ERROR
        _USAGE_ERROR = f"{self.prog}: {message}"
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
        # SUPPRESS: the subcommand's --debug must not reset the top-level `edgeseq --debug CMD`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every ``finally`` clean-up runs as on Ctrl-C."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise _Terminated()


def error_kind(exc: BaseException) -> str:
    """The ``kind`` of the ``--json`` error object."""
    from edgeseq.errors import InputError, MissingDependencyError

    if isinstance(exc, _Terminated):
        return "terminated"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, MissingDependencyError):
        return "missing_dependency"
    if isinstance(exc, OSError):
        return "os"
    if isinstance(exc, UnicodeError):
        return "encoding"
    from edgeseq.errors import EdgeseqError

    return "failure" if isinstance(exc, EdgeseqError) else "internal"


def _option_for(args: argparse.Namespace | None, filename: str | None) -> str | None:
    """The command-line option whose value is (or holds) ``filename``, e.g. ``--output``."""
    from pathlib import Path

    if args is None or not filename:
        return None
    try:
        target = Path(str(filename)).expanduser().absolute()
    except (OSError, ValueError):
        return None
    for key, value in vars(args).items():
        if key.startswith("_") or not isinstance(value, str) or not value:
            continue
        try:
            path = Path(value).expanduser().absolute()
        except (OSError, ValueError):
            continue
        staging = any(t.parent == path.parent and t.name.startswith(f".{path.name}.")  # its temp files
                      for t in (target, *target.parents))
        if target == path or path in target.parents or target in path.parents or staging:
            return key.upper() if key in ("model", "artifact") else "--" + key.replace("_", "-")
    return None


def describe_os_error(exc: OSError, args: argparse.Namespace | None = None) -> tuple[str, int]:
    """One line and an exit code for an OSError (2 when the user can fix the path, 1 otherwise)."""
    import errno

    filename = exc.filename if exc.filename is not None else None
    where = str(filename) if filename is not None else "a file"
    option = _option_for(args, filename)
    if option:
        where = f"{where} (from {option})"
    reason = exc.strerror or str(exc)
    hints = {
        errno.ENOSPC: "no space left on the device: free some space or choose another output folder",
        errno.EDQUOT: "disk quota exceeded: free some space or choose another output folder",
        errno.EROFS: "the file system is read-only: choose a writable output folder",
        errno.EACCES: "permission denied: choose a folder you can write (or read) or fix its permissions",
        errno.EPERM: "operation not permitted: choose a folder you own",
        errno.ENOENT: "no such file or folder: check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder; a file was expected",
        errno.EEXIST: "it exists and is not a folder (a part of the path is a file)",
    }
    message = hints.get(exc.errno, reason)
    code = 1 if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) or exc.errno is None else 2
    return f"{where}: {message}", code


def describe_unicode_error(exc: UnicodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return (f"invalid {exc.encoding} data (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
                "a text input is not UTF-8 text; convert it to UTF-8")
    return f"text is not valid UTF-8 ({exc.reason}); pass UTF-8 text"


def _check_text_arguments(args: argparse.Namespace) -> None:
    """Arguments with bytes that are not UTF-8 (Python keeps them as lone surrogates) are refused
    up front, naming the option, instead of failing later with a bare UnicodeEncodeError."""
    from edgeseq.errors import InputError

    for key, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str) and any("\udc80" <= ch <= "\udcff" for ch in item):
                name = key.upper() if key in ("model", "artifact") else "--" + key.replace("_", "-")
                raise InputError(f"{name} is not valid UTF-8 text; pass UTF-8 (check the terminal's encoding)")


def _report(command: str, exc: BaseException, want_json: bool, message: str | None = None) -> None:
    """Write the one-line error (and the JSON error object on stdout under ``--json``)."""
    from edgeseq.errors import EdgeseqError

    if message is None:
        message = str(exc) if isinstance(exc, EdgeseqError) else f"{type(exc).__name__}: {exc}"
    message = " ".join(message.split("\n")).strip()  # always one line
    prefix = f"edgeseq {command}" if command else "edgeseq"
    sys.stderr.write(f"{prefix}: error: {message}\n")
    sys.stderr.flush()
    if want_json:
        emit_json({"error": message, "kind": error_kind(exc)})


class _deferred_signals:
    """Record SIGINT/SIGTERM instead of acting on them (the main thread only); restores the
    handlers on exit. ``with _deferred_signals() as pending:`` — ``pending`` lists what arrived."""

    def __enter__(self) -> list[int]:
        import signal

        self.pending: list[int] = []
        self.previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, lambda signum, frame: self.pending.append(signum))
            except ValueError:  # not the main thread
                pass
        return self.pending

    def __exit__(self, *exc_info: Any) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends as one line on stderr (and a JSON object under --json)."""
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv
    debug = "--debug" in argv
    command = ""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        previous = None
    args = None
    try:
        global _USAGE_ERROR
        _USAGE_ERROR = None
        # Start-up (building the parser, importing torch) with Ctrl-C/SIGTERM deferred: an interrupt
        # inside torch's C++ import code aborts the process (pybind11 terminate) instead of raising.
        with _deferred_signals() as pending:
            parser = build_parser()
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:
                if exc.code not in (0, None) and want_json and _USAGE_ERROR:
                    emit_json({"error": _USAGE_ERROR, "kind": "usage"})
                raise
            if getattr(args, "_module", None):
                import torch  # noqa: F401 - nearly every command needs it; imported while signals wait
        if pending:
            raise _Terminated() if pending[0] == signal.SIGTERM else KeyboardInterrupt()
        if not getattr(args, "_module", None):
            parser.print_help(sys.stderr)
            return 2
        command = args.command
        want_json = bool(getattr(args, "json", False))
        debug = bool(getattr(args, "debug", False))
        _check_text_arguments(args)
        result = args._module.run(args)
        if want_json and result is not None:
            text = _dumps_strict(result)
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        return 0
    except KeyboardInterrupt as exc:
        # Ctrl-C (or SIGTERM) at any moment, even while torch is imported: clean-ups ran, one line
        terminated = isinstance(exc, _Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        prefix = f"edgeseq {command}" if command else "edgeseq"
        sys.stderr.write(f"{prefix}: {what}\n")
        if want_json:
            emit_json({"error": what, "kind": error_kind(exc)})
        return 143 if terminated else 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure ends as one line
        from edgeseq.errors import EdgeseqError

        if isinstance(exc, EdgeseqError):
            code, message = exc.exit_code, None
        elif isinstance(exc, OSError):
            message, code = describe_os_error(exc, args)
        elif isinstance(exc, UnicodeError):
            message, code = describe_unicode_error(exc), 2
        elif isinstance(exc, MemoryError):
            message, code = "out of memory: use a smaller model, batch or --max-bytes", 1
        elif isinstance(exc, Exception):
            message, code = f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1
        else:
            raise
        if debug:
            import traceback

            traceback.print_exc()
        _report(command, exc, want_json, message)
        return code
    finally:
        if previous is not None:
            try:
                signal.signal(signal.SIGTERM, previous)
            except (ValueError, TypeError):
                pass


def _dumps_strict(result: Any) -> str:
    """The ``--json`` result as one line; NaN/Inf anywhere is a failure, never a bare ``NaN``."""
    from edgeseq.errors import EdgeseqError

    try:
        return json.dumps(result, default=_json_default, indent=None, allow_nan=False)
    except ValueError as exc:
        if "JSON compliant" not in str(exc) and "Out of range float" not in str(exc):
            raise
        raise EdgeseqError("the result holds a non-finite number (NaN or Inf): the model's output overflowed; "
                           "check its weights (`edgeseq info`) and inputs") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
