"""edgeseq: streaming recurrent sequence models (Mamba, SpikeGPT, LMUFormer) taken to the edge.

``import edgeseq`` is light: it imports torch and edgeseq's contract, never TVM or ONNX Runtime.
"""

from edgeseq.errors import EdgeseqError, InputError
from edgeseq.models import MODEL_FAMILIES, build_model
from edgeseq.streaming import ModelConfig, QuantPoint, StateSpec, StreamingModel

__version__ = "0.1.0"


def load(source: str, **kwargs):
    """Load a model from a zoo name, a local checkpoint folder/file, or a hub id (online only).

    Returns :class:`edgeseq.checkpoints.LoadedModel` (``.model``, ``.tokenizer``, ``.source``).
    """
    from edgeseq.checkpoints import load_model

    return load_model(source, **kwargs)


__all__ = [
    "EdgeseqError",
    "InputError",
    "MODEL_FAMILIES",
    "ModelConfig",
    "QuantPoint",
    "StateSpec",
    "StreamingModel",
    "build_model",
    "load",
    "__version__",
]
