"""Tiny models for the export tests (built in memory; seeds fixed)."""

import pytest
import torch


@pytest.fixture
def tiny_mamba():
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    return Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=2, d_state=8)).eval()


def quantized(model, recipe, batches=2, seed=0):
    """A quantized copy of ``model`` calibrated on seeded random inputs (no data files)."""
    from export.graphs import sample_inputs
    from quantize.apply import quantize_model

    calib = [sample_inputs(model, 2, 16, seed=seed + i) for i in range(batches)]
    qmodel, _ = quantize_model(model, recipe, calib, progress=False)
    return qmodel.eval()
