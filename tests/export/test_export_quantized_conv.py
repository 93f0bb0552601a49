"""Quantized LMUFormers (convs followed by BatchNorm, rotated pointwise convs) export with their
integer conv weights intact and match the fake-quant PyTorch model in ONNX Runtime."""

import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")

from edgeseq.models import build_model  # noqa: E402
from export.artifact import export_artifact  # noqa: E402
from quantize.apply import quantize_model  # noqa: E402


@pytest.mark.parametrize("family", ["lmuformer", "spiking-lmuformer"])
def test_quantized_lmuformer_keeps_integer_conv_weights(family, tmp_path):
    torch.manual_seed(0)
    model = build_model(family, dim=16, input_dim=4, n_classes=3).eval()
    calib = [torch.randn(4, 12, 4) for _ in range(2)]
    qmodel, _ = quantize_model(model, "w8a8", calib, progress=False)
    manifest = export_artifact(qmodel, tmp_path / "a", format="onnx", target="cpu", steps=16, prefill=False)
    assert manifest["verification"]["passed"]
    graph = onnx.load(str(tmp_path / "a" / "step.onnx")).graph
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    by_output = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:  # every conv weight = DequantizeLinear(int8 initializer): nothing was folded away
        producer = by_output.get(conv.input[1])
        assert producer is not None and producer.op_type == "DequantizeLinear", conv.name
        assert producer.input[0] in int8, conv.name
