"""Tiny models for the export tests (built in memory; seeds fixed)."""

import pytest
import torch


@pytest.fixture
def tiny_mamba():
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    return Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=2, d_state=8)).eval()
