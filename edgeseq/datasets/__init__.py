"""Sequence-classification datasets: each module exposes ``INFO`` and
``load_split(split, **options) -> (frames [N, T, F] float32, labels [N] int64)``.

* ``digits`` — scikit-learn's bundled 8×8 digits read as a sequence (row by row, or pixel by
  pixel and optionally permuted like psMNIST); always available, no download.
* ``speech_commands`` — Google Speech Commands in its standard folder layout, as log-mel frames
  computed in PyTorch.

Names are resolved lazily so that ``import edgeseq.datasets`` imports neither scikit-learn nor
any audio code.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgeseq.errors import InputError

# dataset name -> module
DATASETS: dict[str, str] = {
    "digits": "edgeseq.datasets.digits",
    "speech-commands": "edgeseq.datasets.speech_commands",
}

SPLITS = ("train", "validation", "test")


def dataset_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(DATASETS[name])
    except KeyError:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def normalize_split(split: str) -> str:
    """``"val"``/``"valid"`` -> ``"validation"``; anything unknown is a one-line InputError."""
    aliases = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "test"}
    split = aliases.get(split, split)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def load_split(name: str, split: str, **options):
    """Frames ``[N, T, F]`` float32 and labels ``[N]`` int64 of one split of dataset ``name``."""
    return dataset_module(name).load_split(split, **options)


__all__ = ["DATASETS", "SPLITS", "dataset_module", "load_split", "normalize_split"]
