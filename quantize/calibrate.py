"""Calibration: run the float model over batches and collect what each quantization point needs.

Hooks on the modules at the declared points record

* the input of every ``linear``/``conv`` point whose input is real-valued and quantized by the
  layer itself (as the layer will see it: Hadamard-rotated at ``rotatable`` points when the recipe
  rotates), into an :class:`~quantize.observers.Observer`;
* the value at every ``act`` point;
* for GPTQ, the Hessian ``Σ xᵀx`` of every linear point's (rotated) input.

Calibration is static and non-sequential, as in Quamba: every point is observed on the float
model in one pass over the data.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor, nn

from edgeseq.errors import InputError
from edgeseq.streaming import QuantPoint
from quantize.hadamard import supports_hadamard
from quantize.modules import rotate_channels
from quantize.grouping import uses_channel_scales
from quantize.observers import ChannelObserver, Observer, make_observer
from quantize.recipes import QuantRecipe


@dataclass
class Calibration:
    """What a calibration pass collected."""

    observers: dict[str, Observer] = field(default_factory=dict)  # point path -> observer
    hessians: dict[str, Tensor] = field(default_factory=dict)  # linear path -> Σ xᵀx  [in, in]
    hessian_rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    items: int = 0  # tokens (LMs) or frames (classifiers) seen
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"batches": self.batches, "items": self.items, "seconds": round(self.seconds, 3)}


def rotates(point: QuantPoint, recipe: QuantRecipe, module: nn.Module) -> bool:
    """Whether this point gets the online Hadamard transform under ``recipe``.

    Linear layers and pointwise (kernel 1, groups 1) convolutions whose input size has a
    Hadamard matrix; other points the model marks rotatable stay unrotated.
    """
    if not (recipe.rotate and point.rotatable and point.input == "real"):
        return False
    if isinstance(module, nn.Linear):
        return supports_hadamard(module.in_features)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        pointwise = module.groups == 1 and all(k == 1 for k in module.kernel_size)
        return pointwise and supports_hadamard(module.in_channels)
    return False


def channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def needs_input_observer(point: QuantPoint, recipe: QuantRecipe) -> bool:
    if not recipe.quantizes_activations or recipe.act_granularity == "block":  # block: dynamic, no observers
        return False
    if point.kind == "act":
        return True
    return point.input == "real" and not point.input_quantized_at


def observer_kind(point: QuantPoint, recipe: QuantRecipe) -> str:
    return recipe.clip_observer if point.clip == "percentile" else recipe.act_observer


def needs_calibration(points: list[QuantPoint], recipe: QuantRecipe) -> bool:
    return recipe.gptq or any(needs_input_observer(p, recipe) for p in points)


def check_batch(batch: Tensor, index: int, vocab_size: int | None = None) -> Tensor:
    """One-line InputError for a calibration batch that is not a finite tensor (or holds token ids
    outside ``[0, vocab_size)``)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]  # (inputs, targets) pairs: calibration needs the inputs only
    if not isinstance(batch, Tensor):
        raise InputError(f"calibration batch {index} is a {type(batch).__name__}, expected a tensor of model inputs")
    if batch.numel() == 0:
        raise InputError(f"calibration batch {index} is empty (shape {tuple(batch.shape)})")
    if batch.is_floating_point() and not torch.isfinite(batch).all():
        bad = int((~torch.isfinite(batch)).sum())
        raise InputError(f"calibration batch {index} holds {bad} NaN/Inf value(s); clean the calibration data")
    if vocab_size and not batch.is_floating_point() and (int(batch.min()) < 0 or int(batch.max()) >= vocab_size):
        raise InputError(
            f"calibration batch {index} holds token ids outside [0, {vocab_size}) (min {int(batch.min())}, "
            f"max {int(batch.max())}); was it tokenized with this model's tokenizer?"
        )
    return batch


def calibrate(
    model: nn.Module,
    points: list[QuantPoint],
    recipe: QuantRecipe,
    batches: Iterable[Tensor] | None,
    progress: bool = True,
) -> Calibration:
    """Observe every point that ``recipe`` quantizes over ``batches`` (one float forward each)."""
    result = Calibration()
    if not needs_calibration(points, recipe):
        return result
    if batches is None:
        raise InputError(f"recipe {recipe.name!r} quantizes activations: calibration data is needed (--calib)")
    handles = []
    rows = _rows_per_channel(batches)
    for point in points:
        module = model.get_submodule(point.path)
        rotate = rotates(point, recipe, module)
        observer = None
        if needs_input_observer(point, recipe) and uses_channel_scales(point, recipe):
            percentile = recipe.percentile if observer_kind(point, recipe) == "percentile" else 100.0
            observer = ChannelObserver(point.path, recipe.act_bits, percentile=percentile, expected_rows=rows)
            result.observers[point.path] = observer
        elif needs_input_observer(point, recipe):
            observer = make_observer(observer_kind(point, recipe), point.path, recipe.act_bits, recipe.percentile)
            result.observers[point.path] = observer
        want_hessian = recipe.gptq and point.kind == "linear" and isinstance(module, nn.Linear)
        if observer is None and not want_hessian:
            continue
        hook = _make_hook(point.path, observer, channel_dim(module) if rotate else None, want_hessian, result)
        handles.append(module.register_forward_pre_hook(hook))

    from tqdm import tqdm

    total = len(batches) if hasattr(batches, "__len__") else None
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    start = time.perf_counter()
    try:
        with torch.no_grad():
            bar = tqdm(batches, total=total, desc=f"calibrating ({recipe.name})", unit="batch", file=sys.stderr,
                       disable=not progress, leave=False)
            for index, batch in enumerate(bar):
                batch = check_batch(batch, index, vocab_size=model.io_spec().vocab_size if hasattr(model, "io_spec") else None)
                model(batch.to(device))
                result.batches += 1
                result.items += int(batch.shape[0] * (batch.shape[1] if batch.dim() > 1 else 1))
    finally:
        for handle in handles:
            handle.remove()
    result.seconds = time.perf_counter() - start
    if result.batches == 0:
        raise InputError("the calibration set is empty: give at least one batch (e.g. --calib-samples 64)")
    return result


def _rows_per_channel(batches) -> int:
    """Values per channel over the whole calibration (``B·T`` summed; 0 when not known up front): it
    sizes the per-channel percentile top-k so that the percentile is exact."""
    if not isinstance(batches, (list, tuple)):
        return 0
    total = 0
    for batch in batches:
        batch = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(batch, Tensor) or batch.dim() < 2:
            return 0
        total += int(batch.shape[0] * batch.shape[1])
    return total


def _make_hook(path: str, observer: Observer | None, rotate_dim: int | None, want_hessian: bool, result: Calibration):
    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        if rotate_dim is not None:
            x = rotate_channels(x, rotate_dim)
        if observer is not None:
            observer.update(x)
        if want_hessian:
            rows = x.detach().reshape(-1, x.shape[-1]).double()
            result.hessians[path] = result.hessians.get(path, 0) + rows.T @ rows
            result.hessian_rows[path] = result.hessian_rows.get(path, 0) + rows.shape[0]

    return hook




# --------------------------------------------------------------------------------------------
# calibration data from a data spec
# --------------------------------------------------------------------------------------------


def calibration_batches(
    model: nn.Module,
    data: str | None = None,
    *,
    tokenizer=None,
    meta: dict | None = None,
    samples: int = 64,
    seq_len: int = 256,
    batch_size: int = 8,
    split: str = "train",
    seed: int = 0,
) -> tuple[list[Tensor], dict]:
    """Calibration batches drawn from a data spec (default: the model's own task).

    Language models: ``samples`` random windows of ``seq_len`` tokens from the text split
    (``shakespeare``, ``stdlib``, or a text file; the train split by default, the validation split
    where the train split is not available). Classifiers: ``samples`` random sequences of frames
    from the task (or ``.npz``). Returns ``(batches, description)``.
    """
    from edgeseq.evaluate import default_data, model_task

    if samples < 1:
        raise InputError(f"the calibration set is empty (--calib-samples {samples}); give at least 1 sample")
    if seq_len < 1 or batch_size < 1:
        raise InputError(f"--seq-len and --batch-size must be positive, got {seq_len} and {batch_size}")
    data = default_data(model, meta) if data is None else str(data)
    generator = torch.Generator().manual_seed(seed)
    if model_task(model) == "lm":
        from edgeseq.corpus import encode_text, load_split, random_windows
        from edgeseq.tokenizer import ByteTokenizer

        note = ""
        try:
            text = load_split(data, split)
        except InputError:
            if split != "train":
                raise
            try:  # e.g. shakespeare ships a calibration slice of its train part, not the whole split
                text = load_split(data, "calibration")
            except InputError:
                text = load_split(data, "validation")
                note = (f"{data} has no train split here: calibrating on its validation split (evaluations on "
                        f"that split are then not held out; pass --calib FILE to calibrate on other text)")
                print(f"note: {note}", file=sys.stderr)
        ids = encode_text(tokenizer or ByteTokenizer(), text.text)
        if ids.numel() < 2:  # an empty file is the data's fault, whatever --seq-len says
            raise InputError(f"{text.source}: the calibration text ({text.split} split) holds {ids.numel()} token(s); "
                             "calibration needs at least 2: pass --calib with more text")
        length = min(seq_len, max(1, ids.numel() - 1))
        windows = random_windows(ids, samples, length, generator)[:, :-1]  # [N, L]
        described = {"data": text.dataset, "split": text.split, "samples": samples, "seq_len": length}
        if note:
            described["note"] = note
    else:
        from edgeseq.tasks import load_classification

        options = (meta or {}).get("dataset_options") or getattr(getattr(model, "config", None), "dataset_options", None) or {}
        try:
            frames, _ = load_classification(data, split, **options)
        except InputError:
            if split != "train":
                raise
            frames, _ = load_classification(data, "validation", **options)
            split = "validation"
        order = torch.randperm(frames.shape[0], generator=generator)[:samples]
        windows = frames[order]
        described = {"data": data, "split": split, "samples": int(windows.shape[0]), "seq_len": int(windows.shape[1])}
    return list(windows.split(batch_size)), described


__all__ = ["Calibration", "calibrate", "calibration_batches", "check_batch", "needs_calibration", "needs_input_observer", "observer_kind", "rotates"]
