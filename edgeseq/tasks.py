"""The task registry: what a model is trained and evaluated on.

``TASKS`` maps a task name to ``"module:function"`` (resolved lazily, so ``import edgeseq`` loads
no dataset code):

* language-model tasks (``LM_TASKS``) return a :class:`edgeseq.corpus.TextSplit` for a split;
* classification tasks live in ``edgeseq/datasets/<name>.py`` modules exposing
  ``load_split(split: str, **options) -> (frames [N, T, F] float32, labels [N] int64)`` and
  ``INFO = {"n_classes": ..., "frame_dim": ...}``.

Besides registered names, a language-model data spec may be a text file path (see
``edgeseq.corpus``) and a classification data spec may be a ``.npz`` file holding arrays
``frames`` ``[N, T, F]`` and ``labels`` ``[N]`` (one file per split; ``{split}`` in the path is
replaced by the split name, e.g. ``mydata-{split}.npz``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from edgeseq.errors import InputError

TASKS: dict[str, str] = {
    "shakespeare": "edgeseq.corpus:shakespeare_split",
    "stdlib": "edgeseq.corpus:stdlib_split",
    "digits": "edgeseq.datasets.digits:load_split",
    "speech-commands": "edgeseq.datasets.speech_commands:load_split",
}
LM_TASKS = frozenset({"shakespeare", "stdlib"})


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise InputError(f"the task module {module} is not available in this installation") from None
        raise


def task_loader(name: str) -> Callable[..., Any]:
    """The split loader of a registered task."""
    try:
        return _resolve(TASKS[name])
    except KeyError:
        raise InputError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None


def task_kind(name: str) -> str:
    """``"lm"`` or ``"classify"`` for a registered task name."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return "lm" if name in LM_TASKS else "classify"


def task_info(name: str) -> dict:
    """``INFO`` of a classification task's module (``n_classes``, ``frame_dim``, ...)."""
    if task_kind(name) != "classify":
        return {}
    module = TASKS[name].partition(":")[0]
    try:
        return dict(getattr(importlib.import_module(module), "INFO", {}))
    except ModuleNotFoundError:
        raise InputError(f"the task module {module} is not available in this installation") from None


def _check_classification(frames: Any, labels: Any, source: str) -> tuple[Tensor, Tensor]:
    frames = torch.as_tensor(frames, dtype=torch.float32)
    labels = torch.as_tensor(labels).to(torch.int64)
    if frames.dim() != 3:
        raise InputError(f"{source}: frames must be [N, T, F], got shape {tuple(frames.shape)}")
    if labels.dim() != 1 or labels.shape[0] != frames.shape[0]:
        raise InputError(f"{source}: labels must be [N] with N = {frames.shape[0]}, got shape {tuple(labels.shape)}")
    if frames.shape[0] == 0:
        raise InputError(f"{source}: no samples")
    return frames, labels


def load_npz_split(path: str | Path, split: str) -> tuple[Tensor, Tensor]:
    import numpy as np

    path = Path(str(path).replace("{split}", split)).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            frames, labels = arrays["frames"], arrays["labels"]
    except KeyError:
        raise InputError(f"{path}: needs arrays 'frames' [N, T, F] and 'labels' [N]") from None
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    return _check_classification(frames, labels, str(path))


def load_classification(data: str, split: str, **options: Any) -> tuple[Tensor, Tensor]:
    """Frames ``[N, T, F]`` float32 and labels ``[N]`` int64 of a task name or ``.npz`` file."""
    if str(data).endswith(".npz"):
        return load_npz_split(data, split)
    if task_kind(data) != "classify":
        raise InputError(f"{data!r} is a language-model task, not a classification task")
    frames, labels = task_loader(data)(split, **options)
    return _check_classification(frames, labels, f"task {data} ({split})")


def data_kind(data: str) -> str:
    """``"lm"`` or ``"classify"`` for a data spec (task name, ``.npz`` file or text file)."""
    if data in TASKS:
        return task_kind(data)
    return "classify" if str(data).endswith(".npz") else "lm"


__all__ = [
    "LM_TASKS",
    "TASKS",
    "data_kind",
    "load_classification",
    "load_npz_split",
    "task_info",
    "task_kind",
    "task_loader",
]
