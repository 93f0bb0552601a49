"""The floors point down: the import-linter contracts of pyproject.toml hold.

edgeseq.cli > edgeseq.app > export > targets > quantize > the core (contract, models, checkpoints,
data, spiking simulation); every module of ``edgeseq`` is placed on a floor; no import cycles
between sibling modules. A new upward import (say, a model importing ``quantize``) fails here with
import-linter's report naming the chain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("contract", ["floors", "edgeseq-floors", "acyclic"])
def test_import_contract(contract, capsys, monkeypatch):
    lint = pytest.importorskip("importlinter.cli")
    monkeypatch.chdir(ROOT)  # the contracts name the source packages of this checkout
    code = lint.lint_imports(config_filename=str(ROOT / "pyproject.toml"), limit_to_contracts=(contract,), no_cache=True,
                             no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report


def test_the_core_never_imports_the_floors_above(monkeypatch):
    """The same rule at run time: importing every core module loads none of quantize/export/targets."""
    import subprocess
    import sys

    core = ["edgeseq.streaming", "edgeseq.models", "edgeseq.checkpoints", "edgeseq.tokenizer", "edgeseq.corpus",
            "edgeseq.evaluate", "edgeseq.tasks", "edgeseq.generate", "edgeseq.train", "edgeseq.spiking"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in core)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('quantize', 'export', 'targets') "
              "or m.startswith(('edgeseq.app', 'edgeseq.cli')))\nprint(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    assert out == "", f"core modules pulled in: {out}"
