"""Helpers of the reliability suite (issue 17): run the CLI, check one-line errors, and check that a
failure left nothing behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv):
    """``edgeseq ARGV`` in-process: ``(exit code, stdout, stderr)``."""
    from edgeseq.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, expected_code, needle, json_mode=False):
    """The contract of every failure: the exit code, one stderr line naming the problem, no
    traceback; under ``--json`` one JSON error object on stdout."""
    assert code == expected_code, (code, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]  # progress lines: "[export] ..."
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0] and err.rstrip().endswith(lines[0]), lines[0]
    if json_mode:
        obj = strict_json(out)
        assert set(obj) == {"error", "kind"} and needle in obj["error"], obj
    else:
        assert out == ""


def strict_json(text: str):
    """JSON as RFC 8259 has it: a bare ``NaN``/``Infinity`` (Python's extension) fails."""

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant} in {text[:200]!r}")

    return json.loads(text, parse_constant=refuse)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``folder`` with its sha256 (files) and mode: what must not change."""
    result = {".": ("dir", folder.stat().st_mode)}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_dir():
            result[key] = ("dir", path.stat().st_mode)
        else:
            result[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return result


def leftovers(folder: Path) -> list[str]:
    """Hidden staging/partial folders an interrupted or failed write would leave."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name))
