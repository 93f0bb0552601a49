"""edgeseq's fused CPU kernels (``export --fused-ops``): the C ops against a float64 oracle, both x86-64
ISA paths against each other, and artifacts built with them verified like any other.

Tolerances: the kernels compute in float32 with their own ``exp`` (relative error ~2e-7) and softplus
(2.4e-7); a state element is a sum of a decayed term and a drive, ``y`` a 16-term dot product, so
1e-5 relative to the largest magnitude is ~50 float32 ulps: room for accumulation, far below any
real error (a wrong decay or a dropped term moves the result by whole percents).
"""

import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeseq.errors import EdgeseqError, InputError
from export import fused_ops
from export.artifact import export_artifact
from targets.hostinfo import host_arch
from targets.ort_capi import fused_ops_library
from targets.runtimes import open_artifact

FUSED_OPS_LIBRARY = fused_ops_library(host_arch())

from .conftest import quantized

pytestmark = pytest.mark.skipif(fused_ops.compiler() is None, reason="needs a C compiler (cc, gcc or clang)")


def _build(folder, *defines):
    library = folder / FUSED_OPS_LIBRARY
    subprocess.run([fused_ops.compiler(), *fused_ops.FLAGS, *defines, "-o", str(library), str(fused_ops.SOURCE), "-lm"],
                   check=True, capture_output=True)
    return library


def _op_graph(path, op, batch, length, d_inner, n_state):
    """A graph of one ``edgeseq.ops`` node with all seven inputs fed."""
    seq = [batch, length] if op in ("SelectiveScan", "CausalConv1d") else [batch]
    if op.startswith("CausalConv1d"):  # n_state stands for the conv width K
        shapes = {"h": [batch, d_inner, n_state - 1], "x": seq + [d_inner], "w": [d_inner, n_state], "bias": [d_inner]}
    else:
        shapes = {"dt": seq + [d_inner], "x": seq + [d_inner], "A": [d_inner, n_state], "B": seq + [n_state],
                  "C": seq + [n_state], "D": [d_inner], "h": [batch, d_inner, n_state], "z": seq + [d_inner]}
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None)]
    node = helper.make_node(op, list(shapes), ["y", "h_out"], domain="edgeseq.ops")
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("edgeseq.ops", 1)])
    onnx.save(model, str(path))
    return shapes


def _run(graph, library, feeds, threads=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds(shapes, seed):
    rng = np.random.default_rng(seed)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    if "A" in feeds:
        feeds["A"] = -np.exp(rng.uniform(-1, 3, shapes["A"])).astype(np.float32)  # decays from mild to ~e^-20 a step
        feeds["dt"] = (feeds["dt"] * 6 - 2).astype(np.float32)  # softplus tails: below -8 and above 20 occur
        feeds["dt"].flat[:3] = [25.0, -30.0, 20.0]
    feeds["x"] = (feeds["x"] * 4).astype(np.float32)
    feeds["x"].flat[:2] = [-100.0, 95.0]  # silu's tails (the conv's x, the gate's z through the scan's x)
    if "z" in feeds:
        feeds["z"] = (feeds["z"] * 4).astype(np.float32)
        feeds["z"].flat[:2] = [-100.0, 95.0]
    return feeds


def _oracle(op, f):
    """float64, written from the recurrence (not the kernels' or the model's code)."""
    d = {k: v.astype(np.float64) for k, v in f.items()}

    def silu(v):
        return v / (1 + np.exp(-v))

    if op == "CausalConv1dStep":
        window = np.concatenate([d["h"], d["x"][..., None]], -1)
        return silu((window * d["w"]).sum(-1) + d["bias"]), window[..., 1:]
    if op == "CausalConv1d":  # position t reads inputs t .. t+K-1 of [state, x]
        k = d["w"].shape[1]
        inputs = np.concatenate([d["h"], d["x"].transpose(0, 2, 1)], -1)  # [B, Di, K-1+L]
        length = d["x"].shape[1]
        conv = sum(d["w"][None, :, j, None] * inputs[:, :, j:j + length] for j in range(k)) + d["bias"][None, :, None]
        return silu(conv).transpose(0, 2, 1), inputs[:, :, length:]
    if op == "SelectiveStateUpdate":
        delta = np.where(d["dt"] > 20, d["dt"], np.log1p(np.exp(np.minimum(d["dt"], 20))))
        h = np.exp(delta[..., None] * d["A"]) * d["h"] + (delta * d["x"])[..., None] * d["B"][:, None, :]
        return ((h * d["C"][:, None, :]).sum(-1) + d["D"] * d["x"]) * silu(d["z"]), h
    delta = d["dt"]  # SelectiveScan takes Δ after softplus
    h, ys = d["h"], []
    for t in range(d["x"].shape[1]):
        h = np.exp(delta[:, t, :, None] * d["A"]) * h + (delta[:, t] * d["x"][:, t])[..., None] * d["B"][:, t, None, :]
        ys.append((h * d["C"][:, t, None, :]).sum(-1))
    return (np.stack(ys, 1) + d["D"] * d["x"]) * silu(d["z"]), h


@pytest.mark.parametrize("op", ["SelectiveStateUpdate", "SelectiveScan", "CausalConv1dStep", "CausalConv1d"])
@pytest.mark.parametrize("n_state", [16, 5])  # 16: the in-place path; 5: rows padded to 8 lanes (conv: width)
def test_kernels_match_float64_oracle(tmp_path, op, n_state):
    library = _build(tmp_path)
    shapes = _op_graph(tmp_path / "g.onnx", op, batch=2, length=7, d_inner=37, n_state=n_state)
    feeds = _feeds(shapes, seed=n_state)
    if op == "SelectiveScan":
        feeds["dt"] = (np.abs(feeds["dt"]) * 0.3).astype(np.float32)
    y, h = _run(tmp_path / "g.onnx", library, feeds)
    y_ref, h_ref = _oracle(op, feeds)
    assert y.shape == y_ref.shape and h.shape == h_ref.shape
    assert np.abs(y - y_ref).max() <= 1e-5 * np.abs(y_ref).max()
    assert np.abs(h - h_ref).max() <= 1e-5 * np.abs(h_ref).max()


def test_prefill_conv_and_step_conv_agree_bit_for_bit(tmp_path):
    """A chunk through CausalConv1d and the same inputs stepped one position at a time through
    CausalConv1dStep: the same outputs and the same final state, bit for bit (each position sums its
    taps in the same order), so a prompt's conv does not depend on how the runtime chunked it."""
    library = _build(tmp_path)
    shapes = _op_graph(tmp_path / "seq.onnx", "CausalConv1d", batch=2, length=6, d_inner=37, n_state=4)
    _op_graph(tmp_path / "step.onnx", "CausalConv1dStep", batch=2, length=1, d_inner=37, n_state=4)
    feeds = _feeds(shapes, seed=11)
    out, state = _run(tmp_path / "seq.onnx", library, feeds)
    h = feeds["h"]
    for t in range(feeds["x"].shape[1]):
        y, h = _run(tmp_path / "step.onnx", library, {**feeds, "h": h, "x": np.ascontiguousarray(feeds["x"][:, t])})
        assert np.array_equal(y, out[:, t])
    assert np.array_equal(h, state)


@pytest.mark.skipif(__import__("platform").machine() != "x86_64", reason="the ISA clones are x86-64's")
def test_avx2_and_baseline_paths_compute_the_same_bits(tmp_path):
    """The library's AVX2 loops (this CPU picks them when it has AVX2) and its baseline SSE2 loops (what
    a CPU without AVX2 gets), built alone, give identical outputs: the artifact computes the same on
    every x86-64 CPU, not only on the ISA that verified it."""
    (tmp_path / "clones").mkdir()
    (tmp_path / "base").mkdir()
    clones, base = _build(tmp_path / "clones"), _build(tmp_path / "base", "-DEDGESEQ_NO_CLONES")
    for op in ("SelectiveStateUpdate", "SelectiveScan", "CausalConv1dStep", "CausalConv1d"):
        shapes = _op_graph(tmp_path / f"{op}.onnx", op, batch=2, length=9, d_inner=64, n_state=16 if op[0] == "S" else 4)
        feeds = _feeds(shapes, seed=3)
        if op == "SelectiveScan":
            feeds["dt"] = np.abs(feeds["dt"])
        for a, b in zip(_run(tmp_path / f"{op}.onnx", clones, feeds), _run(tmp_path / f"{op}.onnx", base, feeds)):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("op", ["SelectiveStateUpdate", "SelectiveScan"])
def test_work_split_over_threads_changes_no_bit(tmp_path, op):
    """Large calls run as blocks of channels on ONNX Runtime's intra-op threads: the same arithmetic per
    channel, so 1 and 4 threads agree bit for bit, and both the float64 oracle."""
    library = _build(tmp_path)
    batch = 5 if op == "SelectiveStateUpdate" else 2  # over the kernels' threshold of 65,536 state elements
    shapes = _op_graph(tmp_path / "g.onnx", op, batch=batch, length=16, d_inner=900, n_state=16)
    feeds = _feeds(shapes, seed=7)
    if op == "SelectiveScan":
        feeds["dt"] = (np.abs(feeds["dt"]) * 0.3).astype(np.float32)
    one, four = _run(tmp_path / "g.onnx", library, feeds, 1), _run(tmp_path / "g.onnx", library, feeds, 4)
    for a, b, ref in zip(one, four, _oracle(op, feeds)):
        assert np.array_equal(a, b)
        assert np.abs(a - ref).max() <= 1e-5 * np.abs(ref).max()


def _nodes(path):
    return [n for n in onnx.load(str(path), load_external_data=False).graph.node]


@pytest.mark.parametrize("recipe", [None, "w8a8"])
def test_fused_artifact_verifies_with_fewer_kernels(tiny_mamba, tmp_path, recipe):
    model = quantized(tiny_mamba, recipe) if recipe else tiny_mamba
    plain = export_artifact(model, tmp_path / "plain", steps=48, prefill_length=16, recipe=recipe, fused_ops=False)
    fused = export_artifact(model, tmp_path / "fused", steps=48, prefill_length=16, recipe=recipe)  # the default
    assert fused["verification"]["passed"]
    record = fused["fused_ops"]
    assert set(record["ops"]) == {"SelectiveStateUpdate", "SelectiveScan", "CausalConv1dStep", "CausalConv1d"}
    assert record["libraries"][host_arch()] == {"file": FUSED_OPS_LIBRARY, "compiler": record["libraries"][host_arch()]["compiler"],
                                                "verified_at_export": True}
    files = {f["path"] for f in fused["files"]}
    assert {lib["file"] for lib in record["libraries"].values()} <= files  # hashed like the graphs
    if shutil.which("aarch64-linux-gnu-gcc") and host_arch() == "x86_64":  # the other architecture's build
        library = tmp_path / "fused" / fused_ops_library("aarch64")
        assert library.read_bytes()[18:20] == (183).to_bytes(2, "little")  # ELF e_machine: EM_AARCH64
    assert plain["fused_ops"] == {"used": False, "why": "not asked for (--no-fused-ops)"}
    # static int8 activations (w8a8): the prefill chunk keeps ONNX Runtime's scan (export.fused_ops.choose_graphs)
    assert record["graphs"] == (["step"] if recipe == "w8a8" else ["step", "prefill"])
    layers = len(tiny_mamba.layers)
    for kind, op in (("step", "SelectiveStateUpdate"), ("step", "CausalConv1dStep"), ("prefill", "SelectiveScan"),
                     ("prefill", "CausalConv1d")):
        nodes = _nodes(tmp_path / "fused" / f"{kind}.onnx")
        fused_here = kind in record["graphs"]
        assert sum(n.op_type == op and n.domain == "edgeseq.ops" for n in nodes) == (layers if fused_here else 0)
        plain_nodes = len(_nodes(tmp_path / "plain" / f"{kind}.onnx"))
        assert len(nodes) < plain_nodes - 20 * layers if fused_here else len(nodes) == plain_nodes
    # the two artifacts agree on a stream (prefill, then steps) through the runtime `edgeseq run` uses
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    runs = [open_artifact(tmp_path / name) for name in ("plain", "fused")]
    outs = [r.prefill(ids[:, :16])[0] for r in runs]
    assert torch.allclose(outs[0], outs[1], rtol=1e-3, atol=1e-3 * outs[0].abs().max().item())


def test_missing_library_is_one_line_error(tiny_mamba, tmp_path):
    export_artifact(tiny_mamba, tmp_path / "a", steps=8, prefill=False, fused_ops=True)
    (tmp_path / "a" / FUSED_OPS_LIBRARY).unlink()
    with pytest.raises(EdgeseqError, match=FUSED_OPS_LIBRARY) as info:
        open_artifact(tmp_path / "a")
    assert "\n" not in str(info.value)


def test_fused_ops_refused_where_they_cannot_apply(tiny_mamba, tmp_path, monkeypatch):
    from edgeseq.models.lmuformer import LMUFormer, LMUFormerConfig

    with pytest.raises(InputError, match="Mamba"):
        export_artifact(LMUFormer(LMUFormerConfig()).eval(), tmp_path / "l", steps=4, fused_ops=True)
    with pytest.raises(InputError, match="--format onnx"):
        export_artifact(tiny_mamba, tmp_path / "t", format="tvm", steps=4, fused_ops=True)
    with pytest.raises(InputError, match="float32"):
        export_artifact(tiny_mamba, tmp_path / "h", dtype="float16", steps=4, fused_ops=True)
    monkeypatch.setattr(fused_ops, "compiler", lambda: None)
    with pytest.raises(EdgeseqError, match="C compiler"):
        export_artifact(tiny_mamba, tmp_path / "c", steps=4, fused_ops=True)
    assert not any(tmp_path.iterdir())  # nothing half-written
    # by default they are left out where they cannot apply, and the manifest says why
    manifest = export_artifact(tiny_mamba, tmp_path / "d", steps=4, prefill=False)
    assert manifest["fused_ops"] == {"used": False, "why": "no C compiler (cc, gcc or clang) here"}
    assert not (tmp_path / "d" / FUSED_OPS_LIBRARY).exists()
    assert "SelectiveStateUpdate" not in {n.op_type for n in _nodes(tmp_path / "d" / "step.onnx")}


@pytest.mark.skipif(__import__("platform").machine() != "x86_64", reason="the ISA passes are x86-64's")
def test_avx2_cpu_runs_the_avx2_loops(tmp_path):
    """On a CPU with AVX2 the library runs its AVX2 pass, not the baseline one (which computes the same
    bits, so the bit-for-bit tests alone would not notice a broken dispatch); a baseline-only build
    says so."""
    import ctypes

    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    (tmp_path / "full").mkdir()
    (tmp_path / "base").mkdir()
    for folder, defines, expected in (("full", (), "avx2" if "avx2" in flags else "baseline"),
                                      ("base", ("-DEDGESEQ_NO_CLONES",), "baseline")):
        library = ctypes.CDLL(str(_build(tmp_path / folder, *defines)))
        library.EdgeseqOpsLoops.restype = ctypes.c_char_p
        assert library.EdgeseqOpsLoops().decode() == expected
