"""Tiny models for the export tests (built in memory; seeds fixed), and the AVX2 check under QEMU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def tiny_mamba():
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    return Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=2, d_state=8)).eval()


def quantized(model, recipe, batches=2, seed=0):
    """A quantized copy of ``model`` calibrated on seeded random inputs (no data files)."""
    from export.graphs import sample_inputs
    from quantize.apply import quantize_model

    calib = [sample_inputs(model, 2, 16, seed=seed + i) for i in range(batches)]
    qmodel, _ = quantize_model(model, recipe, calib, progress=False)
    return qmodel.eval()


QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
needs_qemu_haswell = pytest.mark.skipif(QEMU is None or os.uname().machine != "x86_64",
                                        reason="needs qemu-x86_64 (Debian qemu-user-static) on x86_64")

# run under QEMU: the artifact's ONNX engine, opened by the runtime layer as `edgeseq run` opens it,
# steps the shipped reference stream (targets.selfcheck) and prints the comparison as JSON
_HASWELL_CHECK = """
import json, sys
sys.path.insert(0, {root!r})
from targets.runtimes import open_artifact_runtime
from targets.selfcheck import compare_reference
engine = open_artifact_runtime({folder!r}, selfcheck=False)
print(json.dumps(compare_reference(engine.artifact.folder, engine.manifest["reference"], engine.step)))
"""


def haswell_reference_check(folder) -> dict:
    """The artifact's reference stream through ONNX Runtime's real AVX2 kernels under QEMU's Haswell
    CPU model (AVX2, no AVX-512, no VNNI): the ISA path this machine does not have."""
    root = Path(__file__).resolve().parents[2]
    script = _HASWELL_CHECK.format(root=str(root), folder=str(folder))
    proc = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
