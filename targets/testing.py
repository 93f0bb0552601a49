"""Small models for tests and examples of the runtime layer.

Artifacts for tests are written by ``export.artifact.export_artifact`` itself (see
``tests/targets/conftest.py``): there is one artifact writer, and the runtimes are tested on what
``edgeseq export`` produces.
"""

from __future__ import annotations

from typing import Any

import torch

from edgeseq.streaming import StreamingModel


def tiny_mamba(seed: int = 0, **overrides: Any) -> StreamingModel:
    """A Mamba small enough to export and compile in a second or two."""
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(seed)
    config = {"vocab_size": 32, "d_model": 16, "n_layer": 1, "d_state": 4, **overrides}
    return Mamba(MambaConfig(**config)).eval()


__all__ = ["tiny_mamba"]
