"""Fixtures of the reliability suite (issue 17): a tiny checkpoint and its verified artifact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import reliability_helpers` (pytest runs with importlib mode)


@pytest.fixture
def tiny_model():
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    return Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=1, d_state=4)).eval()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_model):
    from edgeseq.checkpoints import save_model

    return save_model(tiny_model, tmp_path / "ckpt", meta={"task": "lm"})


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    """A verified ONNX artifact of a tiny Mamba (step graph only), built once."""
    pytest.importorskip("onnxruntime")
    from edgeseq.models.mamba import Mamba, MambaConfig
    from export.artifact import export_artifact

    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=1, d_state=4)).eval()
    out = tmp_path_factory.mktemp("artifact") / "art"
    export_artifact(model, out, steps=2, prefill=False)
    return out
