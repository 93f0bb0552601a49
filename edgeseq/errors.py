"""Errors users see: one line, and an exit code (2 for bad input/usage, 1 for failures)."""

from __future__ import annotations


class EdgeseqError(Exception):
    """A failure edgeseq explains in one line (CLI exit code 1)."""

    exit_code = 1


class InputError(EdgeseqError):
    """Bad input from the user: a wrong path, name, option or file (CLI exit code 2)."""

    exit_code = 2


class MissingDependencyError(EdgeseqError):
    """An optional dependency (TVM, ONNX Runtime, a toolchain) is not installed."""

    def __init__(self, what: str, install: str):
        super().__init__(f"{what} is not installed: {install}")


def require(module: str, install: str | None = None):
    """Import an optional module or raise a one-line MissingDependencyError saying how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module, install or f"pip install {module.split('.')[0]}") from exc
