"""edgeseq: streaming recurrent sequence models (Mamba, SpikeGPT, LMUFormer) taken to the edge.

``import edgeseq`` is light: the model contract (and torch) load on first use, never TVM or ONNX Runtime.

The front door (:mod:`edgeseq.app.api`)::

    model = edgeseq.load("mamba-shakespeare").model
    qmodel = edgeseq.quantize(model, "w8a8")
    edgeseq.export(qmodel, "out/q8-onnx", target="host")
    edgeseq.profile("out/q8-onnx", target="host")
"""

from edgeseq.errors import EdgeseqError, InputError

# The rest is imported on first use (PEP 562), so that `edgeseq.cli` starts without importing
# torch first: a Ctrl-C in the first seconds then lands inside the CLI's error handling.
_LAZY = {
    "MODEL_FAMILIES": "edgeseq.models", "build_model": "edgeseq.models",
    "ModelConfig": "edgeseq.streaming", "QuantPoint": "edgeseq.streaming", "StateSpec": "edgeseq.streaming",
    "StreamingModel": "edgeseq.streaming", "QuantizationRecord": "edgeseq.streaming",
    # the front door: the application floor, imported on first use
    "quantize": "edgeseq.app.api", "export": "edgeseq.app.api", "profile": "edgeseq.app.api",
    "ExportOptions": "edgeseq.app.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeseq' has no attribute {name!r}")

__version__ = "0.1.0"


def load(source: str, **kwargs):
    """Load a model from a zoo name, a local checkpoint folder/file, or a hub id (online only).

    Returns :class:`edgeseq.checkpoints.LoadedModel` (``.model``, ``.tokenizer``, ``.source``).
    """
    from edgeseq.checkpoints import load_model

    return load_model(source, **kwargs)


__all__ = [
    "EdgeseqError",
    "ExportOptions",
    "InputError",
    "MODEL_FAMILIES",
    "ModelConfig",
    "QuantPoint",
    "QuantizationRecord",
    "StateSpec",
    "StreamingModel",
    "build_model",
    "export",
    "load",
    "profile",
    "quantize",
    "__version__",
]
