"""Deployed sizes: a 4-bit artifact holds its weights packed two per byte in the graph itself, so
its size is below the 8-bit one's and equals packed weights + scales + float parameters."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgeseq.checkpoints import load_model, save_model  # noqa: E402
from edgeseq.models.mamba import Mamba, MambaConfig  # noqa: E402
from edgeseq.app.report import _artifact_bytes  # noqa: E402
from export.qdq import pack_int4  # noqa: E402


def test_pack_int4_matches_the_onnx_layout():
    from onnx import TensorProto, numpy_helper

    values = np.array([[1, -2, 3], [-8, 7, 0], [5, -1, -7]], dtype=np.int8)  # odd count: padded
    packed = pack_int4(values)
    assert len(packed) == 5 and packed[0] == (1 | ((-2 & 0xF) << 4))
    tensor = TensorProto(name="w", data_type=TensorProto.INT4, dims=[3, 3])
    tensor.raw_data = packed
    assert np.array_equal(numpy_helper.to_array(tensor).astype(np.int8), values)
    with pytest.raises(ValueError):
        pack_int4(np.array([8], dtype=np.int8))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from export.artifact import export_loaded
    from quantize.apply import quantize_checkpoint

    root = tmp_path_factory.mktemp("sizes")
    torch.manual_seed(0)
    model = Mamba(MambaConfig(d_model=32, n_layer=1, d_state=4))
    with torch.no_grad():  # norms that are not all ones, so that no exporter folds them away
        model.norm_f.weight.uniform_(0.5, 1.5)
        model.layers[0].norm.weight.uniform_(0.5, 1.5)
    save_model(model, root / "m", meta={"task": "lm", "dataset": "shakespeare"})
    out = {}
    for recipe in ("w8a8", "w4a16"):
        quantize_checkpoint(str(root / "m"), recipe, str(root / f"q-{recipe}"), calib_samples=4, progress=False)
        loaded = load_model(str(root / f"q-{recipe}"))
        export_loaded(loaded, str(root / f"a-{recipe}"), format="onnx", target="cpu", steps=8, force=True)
        out[recipe] = (loaded.model, root / f"a-{recipe}")
    return out


def test_4bit_artifact_is_smaller_and_holds_exactly_packed_weights_scales_and_floats(artifacts):
    from quantize.modules import is_quantized_module

    w8 = _artifact_bytes(str(artifacts["w8a8"][1]), "onnx")
    w4 = _artifact_bytes(str(artifacts["w4a16"][1]), "onnx")
    assert w4 < w8

    qmodel, folder = artifacts["w4a16"]
    modules = {name: m for name, m in qmodel.named_modules() if is_quantized_module(m)}
    assert modules and all(m.weight_bits == 4 for m in modules.values())
    packed_weights = scales = floats = 0
    for name, tensor in qmodel.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if owner in modules and leaf == "weight_int":
            packed_weights += (tensor.numel() + 1) // 2  # two 4-bit values per byte
        elif owner in modules and leaf == "weight_scale":
            scales += tensor.numel() * 4
        elif name == "embedding.weight":  # the int8 lookup table: only gathered (one row a step), not counted;
            continue                        # the head reads its own 4-bit copy (head_bits), counted above
        else:
            floats += tensor.numel() * tensor.element_size()
    graph = onnx.load(str(folder / "step.onnx")).graph
    # the graph's only other tensors: int64 index constants of the int8 embedding gather
    index = sum(len(t.raw_data) for t in graph.initializer if t.data_type == onnx.TensorProto.INT64)
    assert index <= 16
    assert w4 == packed_weights + scales + floats + index
    # and the file itself stores the int4 weights packed, not one int32 per value
    int4 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert int4 and all(not t.int32_data and len(t.raw_data) == (int(np.prod(t.dims)) + 1) // 2 for t in int4)
