"""Cross-compiled TVM artifacts: what can be checked here (no Jetson, no GPU in CI).

The Jetson library must be an aarch64 ELF with kernels compiled for sm_87; its numerics are
verified on a build of the same Relax module for this CPU (tolerance 1e-4 relative, float32).
Skipped when the aarch64 cross compiler or nvcc is missing (both are system packages).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from export.artifact import export_artifact
from export.tvm_build import cubin_arch, elf_machine

needs_toolchains = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("nvcc") is None,
    reason="needs g++-aarch64-linux-gnu and nvcc",
)


@needs_toolchains
@pytest.mark.slow
def test_jetson_artifact_is_aarch64_with_sm87_kernels(tiny_mamba, tmp_path):
    out = tmp_path / "jetson"
    manifest = export_artifact(tiny_mamba, out, format="tvm", target="jetson-orin-nano-8gb", steps=16, prefill=False)
    assert elf_machine(out / "step.so") == "aarch64"
    assert cubin_arch(out / "step.cubin") == "sm_87"
    assert manifest["target"]["cuda_arch"] == "sm_87" and manifest["graphs"]["step"]["cubin"] == "step.cubin"
    v = manifest["verification"]
    assert v["passed"] and "cannot run here" in v["note"]
    assert any("sm_87" in check for check in v["checks"])
    script = Path(__file__).parents[2] / "scripts" / "check_aarch64_qemu.sh"
    if shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64"):
        done = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "OK loaded" in done.stdout, done.stdout + done.stderr
