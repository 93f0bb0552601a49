"""Sequential digits: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes;
no download) read as a sequence of frames.

* ``mode="rows"`` — one image row per frame: ``T = 8`` frames of ``F = 8`` pixels;
* ``mode="pixels"`` — one pixel per frame: ``T = 64`` frames of ``F = 1`` (the small cousin of
  sequential MNIST); ``permute=True`` shuffles the pixel order with a fixed permutation
  (``permute_seed``), like permuted sequential MNIST (psMNIST).

Pixels are scaled to [0, 1]. The train/validation/test split (70/15/15 %, stratified by class) is
deterministic: it depends only on ``split_seed``.
"""

from __future__ import annotations

import numpy as np

from edgeseq.datasets import normalize_split
from edgeseq.errors import InputError, require

INFO = {"n_classes": 10, "frame_dim": 8, "frames": 8, "modes": {"rows": (8, 8), "pixels": (64, 1)}}

FRACTIONS = {"train": 0.70, "validation": 0.15, "test": 0.15}


def frame_shape(mode: str = "rows") -> tuple[int, int]:
    """``(T, F)`` of one sequence in ``mode``."""
    try:
        return INFO["modes"][mode]
    except KeyError:
        raise InputError(f"unknown digits mode {mode!r}; use 'rows' (T=8, F=8) or 'pixels' (T=64, F=1)") from None


def split_indices(labels: np.ndarray, split: str, split_seed: int = 0) -> np.ndarray:
    """Indices of ``split``: per class, a fixed shuffle cut 70/15/15 % (sorted, disjoint)."""
    split = normalize_split(split)
    rng = np.random.default_rng(split_seed)
    chosen = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(FRACTIONS["train"] * len(idx)))
        n_val = int(round(FRACTIONS["validation"] * len(idx)))
        bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, len(idx))}
        lo, hi = bounds[split]
        chosen.append(idx[lo:hi])
    return np.sort(np.concatenate(chosen))


def pixel_permutation(permute_seed: int = 0) -> np.ndarray:
    return np.random.default_rng(permute_seed).permutation(64)


def load_split(split: str = "train", mode: str = "rows", permute: bool = False, permute_seed: int = 0,
               split_seed: int = 0, limit: int | None = None):
    """Frames ``[N, T, F]`` float32 in [0, 1] and labels ``[N]`` int64 of one split.

    ``limit`` keeps the first ``limit`` examples of the split (for quick checks).
    """
    frame_shape(mode)
    if permute and mode != "pixels":
        raise InputError("digits: permute=True needs mode='pixels' (psMNIST-style pixel permutation)")
    datasets = require("sklearn.datasets", "pip install scikit-learn  (edgeseq[data])")
    bunch = datasets.load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # [1797, 8, 8]
    labels = np.asarray(bunch.target, dtype=np.int64)
    idx = split_indices(labels, split, split_seed)
    if limit is not None:
        idx = idx[: int(limit)]
    images, labels = images[idx], labels[idx]
    if mode == "rows":
        frames = images  # [N, 8, 8]: row t is frame t
    else:
        frames = images.reshape(len(images), 64)
        if permute:
            frames = frames[:, pixel_permutation(permute_seed)]
        frames = frames[:, :, None]  # [N, 64, 1]
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(labels)


__all__ = ["FRACTIONS", "INFO", "frame_shape", "load_split", "pixel_permutation", "split_indices"]
