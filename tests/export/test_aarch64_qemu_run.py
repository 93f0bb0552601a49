"""An aarch64 TVM CPU artifact run under qemu-user and compared with PyTorch step by step.

Needs a sysroot prepared beforehand (``scripts/aarch64_qemu_run.sh --setup-only --sysroot DIR``,
which downloads Debian arm64 packages and PyPI aarch64 wheels) named by EDGESEQ_AARCH64_SYSROOT,
plus g++-aarch64-linux-gnu and qemu-user-static; skipped otherwise. Nothing is downloaded here.
"""

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from export.artifact import export_artifact

SCRIPTS = Path(__file__).parents[2] / "scripts"
SYSROOT = os.environ.get("EDGESEQ_AARCH64_SYSROOT", "")

pytestmark = pytest.mark.skipif(
    not (SYSROOT and (Path(SYSROOT) / ".edgeseq-sysroot").is_file())
    or shutil.which("aarch64-linux-gnu-g++") is None
    or not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")),
    reason="needs EDGESEQ_AARCH64_SYSROOT (a sysroot prepared by scripts/aarch64_qemu_run.sh), "
    "g++-aarch64-linux-gnu and qemu-user-static",
)


@pytest.mark.slow
def test_aarch64_artifact_matches_pytorch_under_qemu(tiny_mamba, tmp_path):
    out = tmp_path / "a64"
    export_artifact(tiny_mamba, out, format="tvm", target="aarch64", steps=8, prefill=False)
    spec = importlib.util.spec_from_file_location("aarch64_reference", SCRIPTS / "aarch64_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    reference.write_stream(tiny_mamba, tmp_path / "ref.npz", steps=16, batch=2)
    done = subprocess.run(
        ["bash", str(SCRIPTS / "aarch64_qemu_run.sh"), "--no-setup", "--sysroot", SYSROOT, "--json",
         str(out), str(tmp_path / "ref.npz")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["machine"] == "aarch64" and report["steps"] == 16 and report["passed"]
    assert report["max_rel_error"] < 1e-4 and report["max_rel_state_error"] < 1e-4
    assert report["argmax_agreement"] == 1.0
