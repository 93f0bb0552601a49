"""Block-wise dynamic int8 activations (``act_granularity = "block"``) and their MatMulNBits export.

Oracles: ONNX Runtime's own ``MatMulNBits`` kernel at ``accuracy_level`` 4 for the arithmetic of
:func:`quantize.modules.block_fake_quant`; the float-activation kernel (level 0) as the function
it must *not* match; the PyTorch fake-quant model for the exported artifacts (``verify_runner``);
the AVX2 kernels under QEMU's Haswell CPU model (no VNNI) when ``qemu-x86_64-static`` is there.
"""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch

from export.artifact import export_artifact
from export.qdq import IntegerWeight, matmul_nbits_weight
from quantize.apply import quantize_model
from quantize.modules import QuantLinear, block_fake_quant

from .conftest import haswell_reference_check, needs_qemu_haswell



def _kernel_model(w: IntegerWeight, level: int, rows: int):
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.values.shape
    packed, scales = matmul_nbits_weight(w)
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n, bits=w.bits,
                            block_size=w.block_size, accuracy_level=level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, n])],
                              [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)


@pytest.mark.parametrize("bits, block", [(8, 32), (4, 32), (4, 16)])
def test_block_fake_quant_is_what_matmul_nbits_level4_computes(bits, block):
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(bits + block)
    k, n, rows = 256, 96, 3
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    weight_int = torch.randint(lo, hi + 1, (n, k), generator=gen, dtype=torch.int8)
    weight_scale = torch.rand(n, k // block, generator=gen) * 0.01 + 1e-3
    layer = QuantLinear(k, n, bias=False, weight_bits=bits, granularity="group", group_size=block,
                        has_input_scale=False, act_block=block)
    layer.set_quantized(weight_int, weight_scale, None, None)
    x = torch.randn(rows, k, generator=gen) * 3
    x[0, :block] = 0.0  # an all-zero block: scale 0, quantized to zeros
    expected = layer(x).detach().numpy()
    w = IntegerWeight(weight_int.numpy().T.copy(), weight_scale.numpy().T.copy(), bits, axis=0, block_size=block,
                      act_block=block)
    results = {}
    for level in (4, 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(_kernel_model(w, level, rows).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        got = session.run(None, {"A": x.numpy()})[0]
        results[level] = np.abs(got - expected).max() / np.abs(expected).max()
    assert results[4] < 1e-5, results  # the same function up to float summation order
    assert results[0] > 1e-3, results  # float activations: measurably another function


def test_block_fake_quant_zero_and_rounding():
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, -0.5, 0.25, 127.0 / 254.0]])
    y = block_fake_quant(x, 4)
    assert torch.equal(y[0, :4], torch.zeros(4))
    # amax 1: q = round(127 · x) with halves to even; 63.5 -> 64, 31.75 -> 32
    assert torch.allclose(y[0, 4:] * 127, torch.tensor([127.0, -64.0, 32.0, 64.0]))


@pytest.fixture
def small_mamba():
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    return Mamba(MambaConfig(vocab_size=256, d_model=64, n_layer=2, d_state=8)).eval()


@pytest.mark.parametrize("recipe", ["w8a8-block", "w4a8-block"])
def test_block_recipe_step_matches_forward_and_the_head_has_its_own_copy(small_mamba, recipe):
    qmodel, report = quantize_model(small_mamba, recipe, None, progress=False)  # no calibration needed
    assert isinstance(qmodel.lm_head, QuantLinear) and qmodel.lm_head.act_block == 64  # the recipe's block
    assert qmodel.layers[0].mixer.in_proj.act_block == 64
    assert isinstance(qmodel.layers[0].mixer.dt_proj, torch.nn.Linear)  # rank 4: no block >= 16 divides it: float
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = qmodel(x)
        state, steps = qmodel.init_state(2), []
        for t in range(x.shape[1]):
            y, state = qmodel.step(x[:, t], state)
            steps.append(y)
    # dynamic int8 levels: a float-rounding difference between the two forms can move one level
    # (then that position differs by a quantization step), so count exact positions
    stepped = torch.stack(steps, 1)
    error = (stepped - full).norm(dim=-1) / full.norm(dim=-1)
    assert (error < 1e-5).float().mean() >= 0.75, error
    assert error.max() < 0.05, error.max()


def test_quantized_folder_round_trip_keeps_the_head(small_mamba, tmp_path):
    from quantize.io import load_quantized, save_quantized
    from quantize.recipes import get_recipe

    qmodel, report = quantize_model(small_mamba, "w4a8-block", None, progress=False)
    save_quantized(qmodel, tmp_path / "q", get_recipe("w4a8-block"), report)
    loaded, _ = load_quantized(tmp_path / "q")
    x = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), qmodel(x))
    assert loaded.lm_head.act_block == 64


@pytest.mark.parametrize("recipe", ["w8a8-block", "w4a8-block"])
def test_block_recipe_exports_to_matmul_nbits_and_verifies(small_mamba, tmp_path, recipe):
    qmodel, _ = quantize_model(small_mamba, recipe, None, progress=False)
    manifest = export_artifact(qmodel, tmp_path / recipe, steps=32, prefill_length=8, recipe=recipe)
    v = manifest["verification"]
    assert v["passed"] and v["inexact_fraction"] <= v["allowed_inexact_fraction"], v
    proto = onnx.load(str(tmp_path / recipe / "step.onnx"))
    nbits = [node for node in proto.graph.node if node.op_type == "MatMulNBits"]
    # in_proj, x_proj, out_proj per layer and the head
    assert len(nbits) == 3 * 2 + 1
    assert all({a.name: a.i for a in node.attribute}["accuracy_level"] == 4 for node in nbits)
    # no float copy of the vocabulary table, and nothing dequantizes the whole table
    vocab = 256
    for init in proto.graph.initializer:
        assert not (init.data_type == onnx.TensorProto.FLOAT and vocab in init.dims and 64 in init.dims), init.name
    assert not any(node.op_type == "DequantizeLinear" and "embedding" in node.input[0] for node in proto.graph.node)
    kernels = manifest["export_host"]["onnxruntime"]["kernels"]["step"]
    assert kernels["MatMulNBits"] == 7 and "DequantizeLinear" not in kernels


@needs_qemu_haswell
def test_block_artifact_on_an_avx2_cpu_without_vnni(small_mamba, tmp_path):
    """MatMulNBits' AVX2 int8 kernels (QEMU Haswell: no AVX-512, no VNNI) with full-range 8-bit
    weights: the shipped reference stream passes (no 16-bit saturation in this kernel family)."""
    qmodel, _ = quantize_model(small_mamba, "w8a8-block", None, progress=False)
    folder = tmp_path / "w8a8-block"
    export_artifact(qmodel, folder, steps=16, prefill=False)
    assert haswell_reference_check(folder)["passed"] is True


def test_rotated_recipe_exports_the_hadamard_as_matmuls(small_mamba, tmp_path):
    """w8a8's online rotation: two MatMuls per rotated layer, not FWHT butterflies; still verifies."""
    from export.graphs import sample_inputs

    calib = [sample_inputs(small_mamba, 2, 16, seed=i) for i in range(2)]
    qmodel, _ = quantize_model(small_mamba, "w8a8", calib, progress=False)
    manifest = export_artifact(qmodel, tmp_path / "w8a8", steps=32, prefill=False, recipe="w8a8")
    assert manifest["verification"]["passed"]
    ops = [node.op_type for node in onnx.load(str(tmp_path / "w8a8" / "step.onnx")).graph.node]
    assert ops.count("Concat") + ops.count("Split") + ops.count("Squeeze") + ops.count("Unsqueeze") < 40, ops


@pytest.mark.parametrize("recipe, bits, level", [("w8a8", 8, 4), ("w4a16", 4, 1)])
def test_static_recipes_give_the_tied_head_a_fused_copy(small_mamba, tmp_path, recipe, bits, level):
    """Static recipes too: the tied head gets its own copy (``head_bits``), so the step runs it as one
    MatMulNBits kernel instead of dequantizing the whole vocabulary table every step (issue 15).
    int8-activation recipes: blocks of 32 with dynamic int8 activations (accuracy level 4, set on
    the node); float-activation recipes: the recipe's groups, fused by ONNX Runtime at level 1."""
    from export.graphs import sample_inputs
    from quantize.apply import head_recipe_of
    from quantize.recipes import get_recipe

    calib = [sample_inputs(small_mamba, 2, 16, seed=i) for i in range(2)]
    qmodel, _ = quantize_model(small_mamba, recipe, calib, progress=False)
    head = qmodel.lm_head
    assert isinstance(head, QuantLinear) and head.weight_bits == bits and not head.rotate
    assert head.act_block == (32 if level == 4 else 0)
    assert head_recipe_of(get_recipe(recipe)).weight_levels == 0  # MatMulNBits does not saturate: full range
    manifest = export_artifact(qmodel, tmp_path / recipe, steps=32, prefill=False, recipe=recipe)
    assert manifest["verification"]["passed"], manifest["verification"]
    proto = onnx.load(str(tmp_path / recipe / "step.onnx"))
    # nothing dequantizes the vocabulary table in the step: the lookup gathers rows, the head is its own copy
    assert not any(node.op_type == "DequantizeLinear" and "embedding" in node.input[0] for node in proto.graph.node)
    assert any(node.op_type == "Gather" and node.input[0].endswith("embedding.weight_int") for node in proto.graph.node)
    kernels = manifest["export_host"]["onnxruntime"]["kernels"]["step"]
    assert kernels.get("MatMulNBits", 0) >= 1, kernels
    if level == 4:
        heads = [node for node in proto.graph.node if node.op_type == "MatMulNBits"]
        assert len(heads) == 1 and {a.name: a.i for a in heads[0].attribute}["accuracy_level"] == 4


def test_matmul_nbits_parts_fall_on_256_columns():
    from export.qdq import matmul_nbits_parts

    assert matmul_nbits_parts(50280, 10 << 20, part_bytes=12 << 20) == [(0, 50280)]
    parts = matmul_nbits_parts(50280, 41 << 20, part_bytes=12 << 20)
    assert len(parts) == 4 and parts[0] == (0, 12800) and parts[-1][1] == 50280
    assert all(b == c for (_, b), (c, _) in zip(parts, parts[1:])) and all(a % 256 == 0 for a, _ in parts)
    assert matmul_nbits_parts(300, 1 << 30, part_bytes=1) == [(0, 300)]  # too narrow to split


def test_a_split_head_is_bitwise_the_whole_one(tmp_path, monkeypatch):
    """A large MatMulNBits weight (a 130m head: 41 MB) is written as column ranges and a Concat, so a
    second ONNX Runtime session re-packs (and drops) a part at a time; the artifact's outputs are
    bitwise those of the unsplit graph (splits on 256-column boundaries) and it verifies."""
    from edgeseq.models.mamba import Mamba, MambaConfig
    from export import qdq
    from targets.manifest import read_artifact
    from targets.runtimes import OnnxRuntime

    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=1100, d_model=64, n_layer=1, d_state=8)).eval()
    qmodel, _ = quantize_model(model, "w8a8-block", None, progress=False)
    export_artifact(qmodel, tmp_path / "whole", steps=16, prefill_length=8, recipe="w8a8-block")
    monkeypatch.setattr(qdq, "MATMUL_NBITS_PART_BYTES", 24 << 10)  # the head (1100 × 64 + scales): 3 parts
    manifest = export_artifact(qmodel, tmp_path / "split", steps=16, prefill_length=8, recipe="w8a8-block")
    assert manifest["verification"]["passed"]
    proto = onnx.load(str(tmp_path / "split" / "step.onnx"))
    head = [n for n in proto.graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.input[1]]
    assert [{a.name: a.i for a in n.attribute}["N"] for n in head] == [512, 512, 76]
    assert any(n.op_type == "Concat" and list(n.input) == [h.output[0] for h in head] for n in proto.graph.node)
    whole, split = (OnnxRuntime(read_artifact(tmp_path / k), threads=1) for k in ("whole", "split"))
    prompt = np.random.default_rng(0).integers(0, 1100, size=(1, 8))
    (y1, s1), (y2, s2) = whole.prefill(prompt), split.prefill(prompt)
    assert np.array_equal(y1, y2)
    token = prompt[:, -1]
    for _ in range(6):
        (y1, s1), (y2, s2) = whole.step(token, s1), split.step(token, s2)
        assert np.array_equal(y1, y2) and all(np.array_equal(a, b) for a, b in zip(s1, s2, strict=True))
        token = np.argmax(y1, axis=-1)
