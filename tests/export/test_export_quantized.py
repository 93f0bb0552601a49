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
