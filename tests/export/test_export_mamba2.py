"""Mamba-2 exports through the generic export path unchanged (ONNX, float32 and w8a8) and its
artifact streams like PyTorch (oracle: the model's own ``step``/``prefill``; float32 tolerance 1e-4
relative, see ``export.verify``). The prefill graph is the SSD block decomposition (chunk 8 over a
prefill of 16: two chunks and the carried state)."""

import numpy as np
import pytest
import torch

from edgeseq.models.mamba2 import Mamba2, Mamba2Config
from export.artifact import export_artifact

from .conftest import quantized


@pytest.fixture
def tiny_mamba2():
    torch.manual_seed(0)
    return Mamba2(Mamba2Config(vocab_size=256, d_model=24, n_layer=2, d_state=8, headdim=12, ngroups=2,
                               chunk_size=8)).eval()


@pytest.mark.parametrize("recipe", ["fp32", "w8a8"])
def test_mamba2_onnx_streams_like_pytorch(tiny_mamba2, recipe, tmp_path):
    model = tiny_mamba2 if recipe == "fp32" else quantized(tiny_mamba2, recipe)
    manifest = export_artifact(model, tmp_path / recipe, steps=48, prefill_length=16)
    v = manifest["verification"]
    assert v["passed"] and v["max_rel_error"] < 1e-4 and v["prefill_max_rel_error"] < 1e-4
    graphs = manifest["graphs"]
    assert [i["shape"] for i in graphs["step"]["inputs"] if i["name"] == "ssm_0"] == [["batch", 4, 12, 8]]
    # the batch stays dynamic inside the graphs (traced at 2; no reshape may bake it in)
    ort = pytest.importorskip("onnxruntime")
    dtypes = {"int64": np.int64, "float32": np.float32}
    for graph in graphs.values():
        session = ort.InferenceSession(str(tmp_path / recipe / graph["file"]))
        for batch in (1, 3):
            feed = {i["name"]: np.zeros([batch if d == "batch" else d for d in i["shape"]], dtypes[i["dtype"]])
                    for i in graph["inputs"]}
            outputs = session.run(None, feed)
            assert all(o.shape[0] == batch for o in outputs)


def test_mamba2_tvm_step_and_prefill_match_pytorch(tiny_mamba2, tmp_path):
    manifest = export_artifact(tiny_mamba2, tmp_path / "tvm", format="tvm", target="llvm", steps=16, prefill_length=16)
    v = manifest["verification"]
    assert v["passed"] and v["max_rel_error"] < 1e-4 and v["prefill_max_rel_error"] < 1e-4


@pytest.mark.parametrize("fields", [
    {"state_scales": "element", "act_group_scales": True, "act_head_clusters": 2, "act_channel_clusters": 2},
    {"ssm_state_bits": 16},
], ids=["element-int8-state+clustered-x", "int8-conv+float16-ssm"])
def test_mamba2_quamba2_fields_export_and_verify(tiny_mamba2, fields, tmp_path):
    """Per-channel (grouped/clustered) activation scales become per-axis QuantizeLinear pairs; int8 and
    float16 state tensors stay int8/float16 graph inputs and outputs; the artifact verifies."""
    from quantize.recipes import get_recipe, with_overrides

    recipe = with_overrides(get_recipe("w8a8-s8"), name="q2", **fields)
    model = quantized(tiny_mamba2, recipe)
    manifest = export_artifact(model, tmp_path / "q2", steps=48, prefill_length=16)
    v = manifest["verification"]
    assert v["passed"] and v["max_rel_error"] < 1e-4 and v["prefill_max_rel_error"] < 1e-4
    expected = {"conv_0": "int8", "ssm_0": "float16" if fields.get("ssm_state_bits") == 16 else "int8"}
    for graph in manifest["graphs"].values():
        dtypes = {i["name"]: i["dtype"] for i in graph["inputs"] + graph["outputs"]}
        assert {k: dtypes[k] for k in expected} == expected
    # `edgeseq info ARTIFACT`: the state bytes per sequence of the artifact's int8/float16 state inputs
    from edgeseq.checkpoints import load_model, model_info

    expected_bytes = sum(torch.Size(s.shape).numel() * torch.empty((), dtype=s.dtype).element_size()
                         for s in model.state_spec())
    assert model_info(load_model(tmp_path / "q2"))["state_bytes"] == expected_bytes
    onnx = pytest.importorskip("onnx")
    step = onnx.load(str(tmp_path / "q2" / manifest["graphs"]["step"]["file"]))
    if fields.get("act_group_scales"):
        inits = {i.name: i for i in step.graph.initializer}
        per_axis = [n for n in step.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in inits
                    and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
        assert len(per_axis) >= 6  # x, B and C of both layers


def test_mamba2_integer_state_tvm_artifact_verifies(tiny_mamba2, tmp_path):
    """The split decode state (int8 conv window, float16 SSM state) compiles with TVM too: the
    library takes and returns int8/float16 state and matches PyTorch's fake-quant model."""
    model = quantized(tiny_mamba2, "w8a8-conv8-ssm16")
    manifest = export_artifact(model, tmp_path / "tvm", format="tvm", target="host", steps=16, prefill_length=8)
    assert manifest["verification"]["passed"]
    dtypes = {i["name"]: i["dtype"] for i in manifest["graphs"]["step"]["inputs"]}
    assert dtypes["conv_0"] == "int8" and dtypes["ssm_0"] == "float16"
