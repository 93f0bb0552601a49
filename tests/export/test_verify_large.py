"""The verification rule at the size people deploy: a 24-layer, 768-wide Mamba (mamba-130m's
blocks with random weights and a byte vocabulary), batch 32 — correct artifacts must pass.

Under the previous rule (every step of the batch within 1e-4, or >= 90% of steps) the fp32 export
of this shape was refused (float32 reordering across 24 layers: ~6e-4) and exact int8 artifacts
were refused at batch 32 (75% of steps free of level flips). The rule now counts per sample and
takes its noise level from a float64 run of the reference.
"""

import pytest
import torch

from export.artifact import export_artifact

from .conftest import quantized


@pytest.fixture(scope="module")
def mamba_130m_blocks():
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    return Mamba(MambaConfig(vocab_size=256, d_model=768, n_layer=24, d_state=16)).eval()


@pytest.mark.parametrize("recipe", ["fp32", "w8a8"])
def test_correct_artifacts_of_a_24x768_model_pass_at_batch_32(mamba_130m_blocks, tmp_path, recipe):
    model = mamba_130m_blocks if recipe == "fp32" else quantized(mamba_130m_blocks, recipe, batches=1)
    manifest = export_artifact(model, tmp_path / recipe, steps=6, batch=32, prefill=False, recipe=recipe)
    v = manifest["verification"]
    assert v["passed"] and v["sample_steps"] == 6 * 32
    assert v["inexact_fraction"] <= v["allowed_inexact_fraction"]
    assert manifest["reference"]["steps"] >= 1 and manifest["arithmetic"]["integer_kernels"] == (recipe != "fp32")
