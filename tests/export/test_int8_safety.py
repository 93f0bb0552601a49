"""Integer artifacts exact on every CPU kernel family, tested on the ISA paths CI may not have.

Oracles: exact int32 arithmetic; a model of ONNX Runtime's x86 u8×s8 pairwise-saturating kernel
(``VPMADDUBSW``, AVX2 / AVX-512 without VNNI) checked against the real kernel under QEMU's
Haswell CPU model when ``qemu-x86_64-static`` is installed; the PyTorch fake-quant model.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from edgeseq.errors import EdgeseqError
from export.artifact import export_artifact
from export.int8_safety import PAIR_LIMIT, pairwise_risks, saturating_u8s8_matmul, unsafe_pairs
from export.verify import verify_runner
from quantize.recipes import RECIPES, with_overrides

from .conftest import haswell_reference_check, needs_qemu_haswell, quantized



def _qdq_matmul(weight_kn: np.ndarray, scale_a=0.05, scale_w=0.01):
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "sa", "za"], ["xq"]),
        oh.make_node("DequantizeLinear", ["xq", "sa", "za"], ["xd"]),
        oh.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"]),
        oh.make_node("MatMul", ["xd", "wd"], ["y"], name="layer"),
    ]
    inits = [numpy_helper.from_array(weight_kn.astype(np.int8), "w"),
             numpy_helper.from_array(np.array(scale_a, np.float32), "sa"), numpy_helper.from_array(np.array(0, np.int8), "za"),
             numpy_helper.from_array(np.array(scale_w, np.float32), "sw"), numpy_helper.from_array(np.array(0, np.int8), "zw")]
    k, n = weight_kn.shape
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)


def test_pair_rule_is_exactly_the_saturation_condition():
    rng = np.random.default_rng(0)
    activations = np.concatenate([rng.integers(-128, 128, (64, 96)), np.full((1, 96), 127), np.full((1, 96), -128)]).astype(np.int8)
    safe = rng.integers(-64, 65, (96, 32))
    exact = activations.astype(np.int64) @ safe
    assert not unsafe_pairs(safe)[0].any()
    assert np.array_equal(saturating_u8s8_matmul(activations, safe), exact)  # 7-bit range: exact on every kernel
    wide = rng.integers(-127, 128, (96, 32))
    flags, worst = unsafe_pairs(wide)
    assert flags.any() and worst > PAIR_LIMIT
    assert not np.array_equal(saturating_u8s8_matmul(activations, wide), activations.astype(np.int64) @ wide)
    # the boundary: a same-sign pair summing to 128 never saturates, 129 can
    edge = np.array([[64], [64]])
    top = np.array([[127, 127]], np.int8)
    assert saturating_u8s8_matmul(top, edge)[0, 0] == 127 * 128 and not unsafe_pairs(edge)[0].any()
    assert unsafe_pairs(np.array([[65], [64]]))[0].all()


def test_static_check_finds_every_risky_layer_in_a_graph():
    rng = np.random.default_rng(1)
    risks = pairwise_risks(_qdq_matmul(rng.integers(-127, 128, (64, 16))))
    assert len(risks) == 1 and risks[0].node == "layer" and risks[0].columns == 16
    assert pairwise_risks(_qdq_matmul(rng.integers(-64, 65, (64, 16)))) == []


def test_int8_recipes_use_the_safe_range_and_the_full_range_is_refused_at_export(tiny_mamba, tmp_path):
    for name, recipe in RECIPES.items():
        # block recipes run in MatMulNBits, whose AVX2 kernels do not saturate (test_matmul_nbits.py)
        if recipe.weight_bits == 8 and recipe.act_bits == 8 and name != "w8a8-fullrange" and recipe.act_granularity == "tensor":
            assert recipe.weight_levels == 64, name
    qmodel = quantized(tiny_mamba, "w8a8")
    # static int8×int8 layers (u8×s8 kernels) keep [-64, 64]; the head's own blocked copy runs in
    # MatMulNBits (dynamic per-block activations), which keeps the full range
    weights = [m.weight_int for m in qmodel.modules() if hasattr(m, "weight_int") and m.weight_bits == 8 and not m.act_block]
    assert weights and max(int(w.abs().max()) for w in weights) <= 64
    assert qmodel.lm_head.act_block and int(qmodel.lm_head.weight_int.abs().max()) > 64
    wide = quantized(tiny_mamba, "w8a8-fullrange")
    with pytest.raises(EdgeseqError, match=r"without VNNI: .*in_proj.*summing to .* > 128.*w8a8"):
        export_artifact(wide, tmp_path / "wide", steps=4, prefill=False)
    assert not (tmp_path / "wide").exists()


class _SaturatingRunner:
    """The quantized PyTorch model with every int8×int8 linear computed as the u8×s8 AVX2 kernel does."""

    runtime = "emulated-avx2"
    prefill_length = 0

    def __init__(self, qmodel):
        import copy

        self.model = copy.deepcopy(qmodel)
        for module in self.model.modules():
            if type(module).__name__ == "QuantLinear" and module.input_scale is not None and module.act_bits == 8:
                module.forward = self._saturating(module)

    @staticmethod
    def _saturating(layer):
        from quantize.qdq import expand_group_scale, quantize_int

        def forward(x):
            x = layer.quantize_input(x)  # rotation + fake-quant: x = q · s exactly
            q = quantize_int(x, layer.input_scale, 8).reshape(-1, x.shape[-1]).numpy()
            acc = saturating_u8s8_matmul(q, layer.weight_int.numpy().T)  # [M, out] int32
            scale = expand_group_scale(layer.weight_scale, tuple(layer.weight_int.shape), layer.group_size)
            w_scale = scale.reshape(-1).numpy() if scale.dim() else float(scale)
            y = torch.from_numpy((acc * (float(layer.input_scale) * w_scale)).astype(np.float32)).reshape(*x.shape[:-1], -1)
            return y if layer.bias is None else y + layer.bias

        return forward

    def init_state(self, batch):
        return self.model.init_state(batch)

    def step(self, x, state):
        return self.model.step(x, state)


@pytest.mark.parametrize("recipe, refused", [("w8a8-fullrange", True), ("w8a8", False)])
def test_verification_refuses_what_a_saturating_cpu_computes(tiny_mamba, recipe, refused):
    """On a VNNI machine too: the emulated AVX2 kernel's function is refused for full-range int8
    weights and is the fake-quant function itself for the 7-bit range."""
    qmodel = quantized(tiny_mamba, recipe)
    for module in qmodel.modules():  # large activations so that u8 inputs reach the extremes
        if type(module).__name__ == "QuantLinear" and module.input_scale is not None:
            module.input_scale.mul_(0.05)
    result = verify_runner(qmodel, _SaturatingRunner(qmodel), steps=32, batch=2, quantized=True)
    assert result.passed != refused, result.note
    if not refused:
        assert result.inexact_fraction <= result.reference_inexact_fraction + 0.05


@needs_qemu_haswell
@pytest.mark.parametrize("recipe, passes", [("w8a8", True), ("w8a8-norotate", True), ("w8a8-fullrange", False)])
def test_artifact_on_a_real_avx2_cpu_without_vnni(tiny_mamba, tmp_path, recipe, passes):
    """ONNX Runtime's real AVX2 kernels, under QEMU's Haswell CPU model (AVX2, no AVX-512, no VNNI):
    the shipped reference stream passes for the 7-bit range and fails for the full range. Where this
    host's own kernels saturate (an AVX2 CPU without VNNI), export verification already refuses the
    full-range artifact, which is that same finding one step earlier."""
    from targets.hostinfo import int8_accumulation, read_cpuinfo

    qmodel = quantized(tiny_mamba, recipe)
    folder = tmp_path / recipe
    if recipe == "w8a8-fullrange":  # what an earlier edgeseq wrote: skip the static check to build it
        import export.artifact as artifact

        original = artifact.check_pairwise_safe
        artifact.check_pairwise_safe = lambda proto, what="": {"skipped": True}
        try:
            if int8_accumulation(read_cpuinfo()["features"]).startswith("pairwise"):
                with pytest.raises(EdgeseqError, match="verification failed on onnxruntime"):
                    export_artifact(qmodel, folder, steps=32, prefill=False)
                return
            export_artifact(qmodel, folder, steps=32, prefill=False)
        finally:
            artifact.check_pairwise_safe = original
    else:
        export_artifact(qmodel, folder, steps=32, prefill=False)
    result = haswell_reference_check(folder)
    assert result["passed"] is passes, result


def test_int8_decode_state_artifact_exports_and_verifies(tiny_mamba, tmp_path):
    """w8a8-s8 (int8 decode state): the state crosses the graph boundary as int8 and the float64
    noise reference keeps integer state tensors as they are."""
    manifest = export_artifact(quantized(tiny_mamba, "w8a8-s8"), tmp_path / "s8", steps=16, prefill_length=8, recipe="w8a8-s8")
    v = manifest["verification"]
    assert v["passed"] and v["max_rel_state_error"] < 1e-2
    assert any(t["dtype"] == "int8" for t in manifest["graphs"]["step"]["inputs"])


def test_keep_failed_keeps_a_refused_artifact_and_never_a_users_folder(tiny_mamba, tmp_path, monkeypatch):
    import export.verify as verify

    monkeypatch.setattr(verify, "allowed_inexact", lambda *args: -1.0)  # no artifact can pass
    kept = tmp_path / "kept"
    with pytest.raises(EdgeseqError, match="verification failed"):
        export_artifact(tiny_mamba, tmp_path / "a", steps=4, prefill=False, keep_failed=kept)
    assert not (tmp_path / "a").exists()
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["verification"]["passed"] is False and (kept / "step.onnx").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text("{}")  # a user's file that happens to share the name
    with pytest.raises(Exception, match="keep-failed"):
        export_artifact(tiny_mamba, tmp_path / "b", steps=4, prefill=False, keep_failed=mine)
    assert (mine / "manifest.json").read_text() == "{}"
