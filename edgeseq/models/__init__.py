"""The model registry: family name -> ``"module:ClassName"`` of the model and its config.

Entries are strings so that ``import edgeseq`` imports no model code; :func:`model_class`
resolves them on use.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgeseq.errors import InputError

# family -> (model class, config class)
MODEL_FAMILIES: dict[str, tuple[str, str]] = {
    "mamba": ("edgeseq.models.mamba:Mamba", "edgeseq.models.mamba:MambaConfig"),
    "mamba2": ("edgeseq.models.mamba2:Mamba2", "edgeseq.models.mamba2:Mamba2Config"),
    "spikegpt": ("edgeseq.models.spikegpt:SpikeGPT", "edgeseq.models.spikegpt:SpikeGPTConfig"),
    "lmuformer": ("edgeseq.models.lmuformer:LMUFormer", "edgeseq.models.lmuformer:LMUFormerConfig"),
    "spiking-lmuformer": (
        "edgeseq.models.lmuformer:SpikingLMUFormer",
        "edgeseq.models.lmuformer:SpikingLMUFormerConfig",
    ),
}


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _entry(family: str) -> tuple[str, str]:
    try:
        return MODEL_FAMILIES[family]
    except KeyError:
        raise InputError(f"unknown model family {family!r}; known: {', '.join(sorted(MODEL_FAMILIES))}") from None


def model_class(family: str):
    return _resolve(_entry(family)[0])


def config_class(family: str):
    return _resolve(_entry(family)[1])


def build_model(family: str, config: Any = None, **overrides: Any):
    """Build a model of ``family`` from a config object, a dict, or keyword overrides."""
    cfg_cls = config_class(family)
    if config is None:
        config = cfg_cls(**overrides)
    elif isinstance(config, dict):
        config = cfg_cls.from_dict({**config, **overrides})
    return model_class(family)(config)


__all__ = ["MODEL_FAMILIES", "build_model", "config_class", "model_class"]
