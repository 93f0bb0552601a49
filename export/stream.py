"""Classification through an artifact runner alone (what ``edgeseq run`` does for classifiers;
language models generate through :func:`edgeseq.generate.generate`, the loop ``edgeseq generate``
uses too)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseq.errors import InputError


def classify_frames(runner, path: str | None) -> dict[str, Any]:
    """Per-sequence class by the running mean of per-frame scores (the streaming prediction)."""
    if path is None:
        raise InputError("a classifier artifact needs --input FILE.npy holding frames [T, F] or [B, T, F]")
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    try:
        frames = np.load(file, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{file}: not a readable .npy array ({exc})") from None
    if frames.ndim == 2:
        frames = frames[None]
    features = int(runner.manifest["graphs"]["step"]["inputs"][0]["shape"][-1])
    if frames.ndim != 3 or frames.shape[-1] != features:
        raise InputError(f"{file}: expected frames [T, {features}] or [B, T, {features}], got {list(frames.shape)}")
    start = time.perf_counter()
    scores, _ = runner.prefill(torch.from_numpy(frames.astype(np.float32)))
    seconds = time.perf_counter() - start
    mean = scores.float().mean(dim=1)  # [B, C]
    return {
        "predictions": mean.argmax(-1).tolist(),
        "confidence": mean.max(-1).values.tolist(),
        "mean_scores": mean.tolist(),
        "frames": int(frames.shape[1]),
        "seconds": seconds,
        "runtime": runner.runtime,
    }


__all__ = ["classify_frames"]
