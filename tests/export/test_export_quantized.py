"""Quantized exports: integer weights in the ONNX file, integer kernels in ONNX Runtime, and the
artifact matching the fake-quant PyTorch model (the oracle: ``quantize.modules`` arithmetic).

Tolerance: see ``export.verify.TOLERANCES``: QDQ runtimes may land an exact tie one level away;
on these seeded inputs the measured error is ~1e-7 (no ties hit).
"""

import numpy as np
import onnx
import pytest
import torch

from export.artifact import export_artifact
from export.qdq import runtime_kernels
from targets.runtimes import open_artifact

from .conftest import quantized


def _initializer_types(path):
    proto = onnx.load(str(path))
    return {init.name: init.data_type for init in proto.graph.initializer}


# opset 21 for both: the tied head's own blocked copy (head_bits) needs blocked scales
@pytest.mark.parametrize("recipe, kernel, opset", [("w8a8", "MatMulIntegerToFloat", 21), ("w4a16", "MatMulNBits", 21)])
def test_quantized_onnx_matches_fake_quant_model(tiny_mamba, tmp_path, recipe, kernel, opset):
    qmodel = quantized(tiny_mamba, recipe)
    out = tmp_path / recipe
    manifest = export_artifact(qmodel, out, steps=64, prefill_length=16, recipe=recipe)
    v = manifest["verification"]
    assert v["passed"] and v["max_rel_error"] < 1e-2 and v["argmax_agreement"] == 1.0
    assert manifest["opset"] == opset and manifest["recipe"] == recipe and manifest["embedding_bits"] == 8
    types = _initializer_types(out / "step.onnx")
    int_type = onnx.TensorProto.INT8 if recipe == "w8a8" else onnx.TensorProto.INT4
    assert types["model.layers.0.mixer.in_proj.qweight_t_int"] == int_type
    assert types["model.embedding.weight_int"] == onnx.TensorProto.INT8  # the lookup's rows (the head has its own copy)
    assert "model.lm_head.qweight_t_int" in types or "model.lm_head.qweight_t_nbits" in types
    assert not any(t == onnx.TensorProto.FLOAT and name.startswith("model.embedding") for name, t in types.items() if "scale" not in name)
    assert not any(name.endswith("qweight_t") for name in types)  # no float copy left
    assert kernel in runtime_kernels(str(out / "step.onnx"), str(tmp_path))


def test_w8a8_rotated_out_proj_is_graph_ops(tiny_mamba, tmp_path):
    """The online Hadamard transform of out_proj's input stays in the graph (w8a8 rotates)."""
    qmodel = quantized(tiny_mamba, "w8a8")
    assert qmodel.layers[0].mixer.out_proj.rotate
    export_artifact(qmodel, tmp_path / "a", steps=8, prefill=False)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "a" / "step.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= ops


def test_int8_file_is_small(tmp_path):
    """Weights dominate a wider model: the w8a8 artifact's weights are well under half the float32
    ones (int8 layers, an int8 lookup table and the head's own 8-bit copy, against one float table
    and float layers: about a third of the bytes here)."""
    from edgeseq.models.mamba import Mamba, MambaConfig

    model = Mamba(MambaConfig(vocab_size=256, d_model=192, n_layer=1, d_state=8)).eval()
    export_artifact(model, tmp_path / "fp32", steps=2, prefill=False)
    export_artifact(quantized(model, "w8a8", batches=1), tmp_path / "int8", steps=2, prefill=False)
    fp32 = sum(f.stat().st_size for f in (tmp_path / "fp32").glob("*.onnx")) + (tmp_path / "fp32" / "weights.bin").stat().st_size
    int8 = sum(f.stat().st_size for f in (tmp_path / "int8").glob("*.onnx")) + (tmp_path / "int8" / "weights.bin").stat().st_size
    assert int8 / fp32 < 0.36, (int8, fp32)


@pytest.mark.slow
def test_tvm_llvm_runs_the_quantized_model(tmp_path):
    from edgeseq.models.mamba import Mamba, MambaConfig

    model = Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=1, d_state=8)).eval()
    qmodel = quantized(model, "w8a8")
    manifest = export_artifact(qmodel, tmp_path / "tvm", format="tvm", target="cpu", steps=64, prefill=False)
    assert manifest["verification"]["passed"] and manifest["verification"]["max_rel_error"] < 1e-2


@pytest.mark.parametrize("recipe, kernel", [("w8a8-norotate", "MatMulIntegerToFloat"), ("w4a8", "MatMulNBits")])
def test_static_int8_layers_run_integer_kernels_not_per_step_dequantization(tmp_path, recipe, kernel):
    """What ONNX Runtime runs for in_proj / out_proj / dt_proj under static int8 activations: an
    integer kernel on the stored weight, never a DequantizeLinear of that weight on every call.
    w8a8-norotate's out_proj (residual add) and dt_proj (bias) used to become float Gemms
    (MatMulAddFusion ran before the QDQ fusion); w4a8's 4-bit weights had no fused form."""
    from edgeseq.models.mamba import Mamba, MambaConfig
    from targets.runtimes import ort_session

    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=256, d_model=128, n_layer=1, d_state=8)).eval()
    out = tmp_path / recipe
    manifest = export_artifact(quantized(model, recipe), out, steps=16, prefill=False, recipe=recipe)
    assert manifest["verification"]["passed"]
    optimized = tmp_path / "optimized.onnx"
    ort_session(out / "step.onnx", optimized_model=optimized)
    graph = onnx.load(str(optimized), load_external_data=False).graph
    # w4a8's dt_proj (8 inputs here, 48 at the 130m width) has per-channel scales (its group of 128
    # does not divide), which MatMulNBits cannot hold: it stays a small per-call dequantization
    layers = ("in_proj.qweight", "out_proj.qweight") + (("dt_proj.qweight",) if recipe != "w4a8" else ())
    per_call = [n.name for n in graph.node if n.op_type == "DequantizeLinear"
                and any(p in i for i in n.input for p in layers)]
    assert not per_call, per_call
    kernels = [n for n in graph.node if n.op_type == kernel]
    assert len(kernels) >= 2  # in_proj and out_proj at least
    if kernel == "MatMulNBits":  # float activations (the dequantized int8 ones): the recipe's function
        levels = {next(a.i for a in n.attribute if a.name == "accuracy_level") for n in kernels if "lm_head" not in n.name}
        assert levels == {1}
