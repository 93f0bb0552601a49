"""Quamba-style post-training quantization for edgeseq models (observers, Hadamard rotations, recipes).

Main entry points (imported lazily)::

    from quantize import quantize_model, save_quantized, load_quantized, RECIPES

* :func:`quantize.apply.quantize_model` — calibrate and quantize a copy of a model;
* :func:`quantize.apply.quantize_checkpoint` — the whole ``edgeseq quantize`` pipeline;
* :func:`quantize.io.save_quantized` / :func:`quantize.io.load_quantized` — the saved format;
* :data:`quantize.recipes.RECIPES` — the named recipes; :func:`quantize.recipes.get_recipe`.

See ``docs/quantization.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "quantize_model": "quantize.apply",
    "quantize_checkpoint": "quantize.apply",
    "save_quantized": "quantize.io",
    "load_quantized": "quantize.io",
    "RECIPES": "quantize.recipes",
    "QuantRecipe": "quantize.recipes",
    "get_recipe": "quantize.recipes",
    "hadamard_transform": "quantize.hadamard",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quantize' has no attribute {name!r}")


__all__ = sorted(_LAZY)
