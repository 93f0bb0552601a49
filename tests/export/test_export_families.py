"""Every other model family exports to ONNX and streams like PyTorch (oracle: the model's own
``step``/``prefill``; float32 tolerance 1e-4 relative, see ``export.verify``)."""

import pytest
import torch

from edgeseq.models import build_model
from export.artifact import export_artifact
from targets.runtimes import open_artifact

FAMILIES = {
    "spikegpt": dict(d_model=32, n_layer=2),
    "lmuformer": dict(dim=16, input_dim=4, n_classes=3),
    "spiking-lmuformer": dict(dim=16, input_dim=4, n_classes=3),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_onnx_streams_like_pytorch(family, tmp_path):
    torch.manual_seed(0)
    model = build_model(family, **FAMILIES[family]).eval()
    manifest = export_artifact(model, tmp_path / family, steps=64, prefill_length=8)
    v = manifest["verification"]
    assert v["passed"] and v["max_rel_state_error"] < 1e-4
    runner = open_artifact(tmp_path / family)
    state = runner.init_state(3)
    reference = model.init_state(3)
    for name, value in reference.items():  # non-zero initial states (SpikeGPT's WKV p) travel with it
        assert torch.equal(state[name], value)


def test_spikegpt_tvm_step_and_prefill_match_pytorch(tmp_path):
    """SpikeGPT's prefill uses aten.amax (stable WKV), which TVM 0.27's importer cannot convert
    on its own (export.tvm_frontend supplies it)."""
    torch.manual_seed(0)
    model = build_model("spikegpt", **FAMILIES["spikegpt"]).eval()
    manifest = export_artifact(model, tmp_path / "tvm", format="tvm", target="llvm", steps=16, prefill_length=16)
    v = manifest["verification"]
    assert v["passed"] and v["max_rel_error"] < 1e-4 and v["prefill_max_rel_error"] < 1e-4
