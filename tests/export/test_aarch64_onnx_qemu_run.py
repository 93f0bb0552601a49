"""ONNX artifacts through the aarch64 ONNX Runtime wheel under qemu-user, against PyTorch.

The host part (always): ``scripts/aarch64_onnx_run.py`` opens sessions as ``ort_session`` does and
its checks pass a correct artifact and refuse a stream it does not compute.

The emulated part needs a sysroot prepared beforehand (``scripts/aarch64_qemu_run.sh --setup-only
--sysroot DIR``, which downloads Debian arm64 packages and PyPI aarch64 wheels, onnxruntime among
them) named by EDGESEQ_AARCH64_SYSROOT, plus qemu-user-static; skipped otherwise. Nothing is
downloaded here. Oracles: the PyTorch model (the artifact's stream, export verification's rule) and,
for single ``MatMulNBits`` kernels, the x86-64 host's ONNX Runtime at accuracy level 4 (int8
activations per block, what the block recipes mean) and level 0 (float activations).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.artifact import export_artifact
from quantize.apply import quantize_model

SCRIPTS = Path(__file__).parents[2] / "scripts"
SYSROOT = os.environ.get("EDGESEQ_AARCH64_SYSROOT", "")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sysroot_has_onnxruntime() -> bool:
    stamp = Path(SYSROOT) / ".edgeseq-sysroot" if SYSROOT else None
    return bool(stamp and stamp.is_file() and "onnxruntime=" in stamp.read_text())


needs_sysroot = pytest.mark.skipif(
    not _sysroot_has_onnxruntime() or not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")),
    reason="needs EDGESEQ_AARCH64_SYSROOT (a sysroot with onnxruntime, prepared by scripts/aarch64_qemu_run.sh "
    "--setup-only) and qemu-user-static",
)


@pytest.fixture
def small_mamba():
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    return Mamba(MambaConfig(vocab_size=256, d_model=64, n_layer=2, d_state=8)).eval()


def _artifact_and_stream(model, recipe, tmp_path, steps=12, prefill_length=0):
    """An ONNX artifact of ``model`` (quantized with ``recipe``) and its PyTorch stream (batch 2)."""
    if recipe != "fp32":
        model, _ = quantize_model(model, recipe, None, progress=False)
    folder = tmp_path / recipe
    if prefill_length:
        manifest = export_artifact(model, folder, steps=16, prefill_length=prefill_length)
    else:
        manifest = export_artifact(model, folder, steps=16, prefill=False)
    reference = _load("aarch64_reference")
    stream = tmp_path / f"{recipe}.npz"
    reference.write_stream(reference.as_exported(model, manifest), stream, steps=steps, batch=2,
                           prefill_length=prefill_length)
    return folder, stream


def _host_run(*args):
    done = subprocess.run([sys.executable, str(SCRIPTS / "aarch64_onnx_run.py"), "--json", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else done.stderr


def _qemu(cpu, *args, config=()):
    extra = [a for kv in config for a in ("--session-config", kv)]
    return subprocess.run(["bash", str(SCRIPTS / "aarch64_qemu_run.sh"), "--no-setup", "--sysroot", SYSROOT, "--cpu", cpu,
                           *extra, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_runner_opens_sessions_as_the_runtime_does():
    from targets.runtimes import ORT_SESSION_CONFIG

    assert _load("aarch64_onnx_run").ORT_SESSION_CONFIG == ORT_SESSION_CONFIG


def test_runner_passes_a_correct_artifact_and_refuses_another_function(tiny_mamba, tmp_path):
    folder, stream = _artifact_and_stream(tiny_mamba, "fp32", tmp_path, prefill_length=8)
    rc, report = _host_run(folder, stream, "--save", tmp_path / "host.npz")
    assert rc == 0 and report["passed"], report
    assert report["shipped"]["passed"] and report["stream"]["teacher_forced"]["inexact_fraction"] == 0.0
    assert report["prefill"]["passed"] and report["prefill"]["positions"] == 16 and report["prefill"]["inexact_fraction"] == 0.0
    assert report["stream"]["free_running"]["top1_agreement"] == 1.0
    rc, report = _host_run(folder, stream, "--compare", tmp_path / "host.npz")
    assert rc == 0 and report["compare"]["bit_identical"] is True
    # a stream whose outputs are 1% off (another function): every teacher-forced step is inexact
    with np.load(stream) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["outputs"] = arrays["outputs"] * 1.01
    np.savez(tmp_path / "off.npz", **arrays)
    rc, report = _host_run(folder, tmp_path / "off.npz")
    assert rc == 1 and not report["stream"]["passed"] and report["stream"]["teacher_forced"]["inexact_fraction"] == 1.0
    arrays["outputs"] = arrays["outputs"] / 1.01
    arrays["prefill_outputs"] = arrays["prefill_outputs"] * 1.01  # only the prefill is off
    np.savez(tmp_path / "off-prefill.npz", **arrays)
    rc, report = _host_run(folder, tmp_path / "off-prefill.npz")
    assert rc == 1 and report["stream"]["passed"] and not report["prefill"]["passed"], report


@needs_sysroot
@pytest.mark.slow
@pytest.mark.parametrize("recipe, cpu, config, passes", [
    ("fp32", "cortex-a57", (), True),
    ("w8a8-block", "max", (), True),  # i8mm: MLAS's int8 block kernel
    ("w4a8-block", "neoverse-n1", (), True),  # sdot, no i8mm; KleidiAI off (ORT_SESSION_CONFIG)
    # ONNX Runtime's default on the same CPU: KleidiAI's 4-bit kernel, activations quantized per row
    ("w4a8-block", "neoverse-n1", ("mlas.disable_kleidiai=0",), False),
    # no sdot: MatMulNBits at accuracy level 4 falls back to float activations, another function;
    # the artifact's self-check refuses the device (what edgeseq's runtime does on first load)
    ("w8a8-block", "cortex-a57", (), False),
])
def test_onnx_artifact_under_aarch64_qemu(small_mamba, tmp_path, recipe, cpu, config, passes):
    prefill = 8 if recipe == "fp32" else 0  # the prefill graph's own kernels too (float: every CPU)
    folder, stream = _artifact_and_stream(small_mamba, recipe, tmp_path, prefill_length=prefill)
    done = _qemu(cpu, "--json", folder, stream, config=config)
    assert done.returncode == (0 if passes else 1), done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["machine"] == "aarch64" and report["passed"] is passes
    assert ("asimddp" in report["hwcaps"]) is (cpu != "cortex-a57")
    tf = report["stream"]["teacher_forced"]
    assert ("prefill" in report) is bool(prefill) and (not prefill or report["prefill"]["passed"])
    if passes:
        assert tf["inexact_fraction"] <= report["stream"]["rule"]["allowed_inexact_fraction"]
        assert report["stream"]["free_running"]["top1_agreement"] == 1.0
    else:
        assert report["shipped"]["passed"] is False and tf["inexact_fraction"] > 0.5


_KERNEL_PROBE = """
import json, sys
import numpy as np, onnxruntime as ort
config = dict(kv.split("=", 1) for kv in sys.argv[2:])
data = np.load(sys.argv[1])
out = {}
for bits in (8, 4):
    options = ort.SessionOptions()
    for k, v in config.items():
        options.add_session_config_entry(k, v)
    session = ort.InferenceSession(sys.argv[1].replace(".npz", f"-{bits}.onnx"), options, providers=["CPUExecutionProvider"])
    y = session.run(None, {"A": data["x"]})[0]
    peak = float(np.abs(data[f"level4_{bits}"]).max())
    out[bits] = {lvl: float(np.abs(y - data[f"level{lvl}_{bits}"]).max()) / peak for lvl in (4, 0)}
print(json.dumps(out))
"""


def _kernel_files(tmp_path):
    """MatMulNBits nodes (8 and 4 bits, blocks of 32, accuracy level 4) and the host's outputs at levels 4 and 0."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n, rows, block = 256, 96, 3, 32
    x = (rng.standard_normal((rows, k)) * 3).astype(np.float32)
    arrays = {"x": x}
    for bits in (8, 4):
        q = rng.integers(0, 2 ** bits, (n, k // block, block)).astype(np.uint8)
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else q
        scales = (rng.random(n * (k // block)) * 0.01 + 1e-3).astype(np.float32)
        for level in (4, 0):
            node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                                    block_size=block, accuracy_level=level)
            graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, k])],
                                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, n])],
                                      [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")])
            proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
            proto.ir_version = 10
            if level == 4:
                (tmp_path / f"probe-{bits}.onnx").write_bytes(proto.SerializeToString())
            session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            arrays[f"level{level}_{bits}"] = session.run(None, {"A": x})[0]
    np.savez(tmp_path / "probe.npz", **arrays)
    (tmp_path / "probe.py").write_text(_KERNEL_PROBE)
    return tmp_path / "probe.py", tmp_path / "probe.npz"


@needs_sysroot
@pytest.mark.slow
def test_matmul_nbits_level4_kernel_paths_on_aarch64(tmp_path):
    """Which function MatMulNBits(accuracy_level=4) computes on each aarch64 kernel path, against the
    x86-64 host's int8-activation (level 4) and float-activation (level 0) results."""
    script, data = _kernel_files(tmp_path)

    def probe(cpu, *config):
        done = _qemu(cpu, "--exec", script, data, *config)
        assert done.returncode == 0, done.stderr[-2000:]
        return {int(k): {int(lvl): e for lvl, e in v.items()} for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}

    # sdot, as edgeseq opens sessions (KleidiAI off): MLAS's int8 block kernels, the host's level-4 function
    dot = probe("neoverse-n1", "mlas.disable_kleidiai=1")
    assert dot[8][4] < 1e-5 and dot[4][4] < 1e-5 and dot[8][0] > 1e-3
    # sdot, ONNX Runtime's default: 4-bit weights go to KleidiAI, whose activations are quantized per
    # row, not per block of 32: neither the block function nor float activations
    kleidi = probe("neoverse-n1")
    assert kleidi[8][4] < 1e-5 and kleidi[4][4] > 1e-3 and kleidi[4][0] > 1e-3
    # no sdot: no int8 kernel; the level-4 node silently computes with float activations
    plain = probe("cortex-a57", "mlas.disable_kleidiai=1")
    assert plain[8][0] == 0.0 and plain[4][0] == 0.0 and plain[8][4] > 1e-3


_OPS_PROBE = """
import sys
import numpy as np, onnxruntime as ort
library, data = sys.argv[1], np.load(sys.argv[2])
out = {}
for op in str(data["ops"]).split(","):
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    session = ort.InferenceSession(sys.argv[2].replace(".npz", f"-{op}.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = {k[len(op) + 1:]: data[k] for k in data.files if k.startswith(op + ":")}
    for name, value in zip(("y", "h"), session.run(None, feeds)):
        out[f"{op}:{name}"] = value
np.savez(sys.argv[3], **out)
"""


@needs_sysroot
@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"), reason="needs aarch64-linux-gnu-gcc")
@pytest.mark.parametrize("cpu", ["cortex-a57", "max"])
def test_fused_kernels_on_aarch64_compute_the_x86_bits(tmp_path, cpu):
    """edgeseq's fused kernels built for aarch64 (as export cross-builds them: the same source and flags,
    NEON through the same vector code) and run by the aarch64 ONNX Runtime under qemu give the same
    outputs and states, bit for bit, as this host's x86-64 build: ``-ffp-contract=off`` and one order of
    operations on every ISA, so an artifact verified here computes the same on an ARM board."""
    from export import fused_ops
    from .test_fused_ops import _feeds, _op_graph, _run

    if platform.machine() != "x86_64":
        pytest.skip("compares the x86-64 build with the aarch64 one")
    host = tmp_path / "edgeseq_ops-x86_64.so"
    arm = tmp_path / "edgeseq_ops-aarch64.so"
    for cc, library in ((fused_ops.compiler(), host), ("aarch64-linux-gnu-gcc", arm)):
        subprocess.run([cc, *fused_ops.FLAGS, "-o", str(library), str(fused_ops.SOURCE), "-lm"], check=True,
                       capture_output=True)
    ops = ("SelectiveStateUpdate", "SelectiveScan", "CausalConv1dStep", "CausalConv1d")
    arrays, expected = {"ops": np.array(",".join(ops))}, {}
    for op in ops:  # 37 channels and 5 states: the vector loops' tails as well as their bodies
        n_state = (16 if op == "SelectiveScan" else 5) if op[0] == "S" else 4
        shapes = _op_graph(tmp_path / f"ops-{op}.onnx", op, batch=2, length=9, d_inner=37, n_state=n_state)
        feeds = _feeds(shapes, seed=5)
        if op == "SelectiveScan":
            feeds["dt"] = (np.abs(feeds["dt"]) * 0.3).astype(np.float32)
        arrays.update({f"{op}:{k}": v for k, v in feeds.items()})
        for name, value in zip(("y", "h"), _run(tmp_path / f"ops-{op}.onnx", host, feeds)):
            expected[f"{op}:{name}"] = value
    np.savez(tmp_path / "ops.npz", **arrays)
    (tmp_path / "ops_probe.py").write_text(_OPS_PROBE)
    done = _qemu(cpu, "--exec", tmp_path / "ops_probe.py", arm, tmp_path / "ops.npz", tmp_path / "arm.npz")
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.load(tmp_path / "arm.npz")
    assert sorted(got.files) == sorted(expected)
    for key, value in expected.items():
        assert got[key].shape == value.shape and np.array_equal(got[key], value), key
