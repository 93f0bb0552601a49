"""``quantize_model``: calibrate a copy of a model and replace its declared points in place.

The model says where (``model.quant_points()``), the recipe says how; the result is a copy of
the model whose layers at those points are :mod:`quantize.modules` (so ``forward``, ``step`` and
``prefill`` keep working and ``step`` ≡ ``forward`` still holds), and a JSON-able report with the
per-layer scales, clipping and calibration error.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from edgeseq.errors import InputError
from edgeseq.streaming import ActPoint, QuantizationRecord, QuantPoint
from quantize.calibrate import Calibration, calibrate, rotates
from quantize.gptq import gptq_quantize
from quantize.grouping import grouped_clips
from quantize.observers import ChannelObserver
from quantize.hadamard import fuse_rotation
from quantize.modules import QuantAct, QuantConv1d, QuantConv2d, QuantLinear, is_quantized_module
from quantize.observers import mse_weight_clip
from quantize.qdq import dequantize_weight, quantize_embeddings, quantize_weight, relative_error, scale_from_clip, weight_clip
from quantize.recipes import QuantRecipe, get_recipe


def quantize_model(
    model: nn.Module,
    recipe: str | QuantRecipe,
    calib_batches: Iterable[Tensor] | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Quantized copy of ``model`` under ``recipe`` (a name, a recipe file, or a QuantRecipe).

    ``calib_batches``: an iterable of model inputs (``[B, T]`` token ids for LMs, ``[B, T, F]``
    frames for classifiers; ``(inputs, targets)`` pairs are accepted). Needed when the recipe
    quantizes activations or uses GPTQ. Returns ``(qmodel, report)``.
    """
    recipe = get_recipe(recipe)
    if recipe.changes_state and calib_batches is not None and not isinstance(calib_batches, (list, tuple)):
        calib_batches = list(calib_batches)  # read twice: the points, then the decode state
    start = time.perf_counter()
    qmodel = copy.deepcopy(model).eval()
    points = _checked_points(qmodel)
    if recipe.float_dtype == "float16":
        _round_floats_to_half(qmodel)
    layers: list[dict[str, Any]] = []
    calibration = Calibration()
    embeddings: list[str] = []
    if not recipe.is_float and recipe.embedding_bits and getattr(qmodel, "embeddings_quantizable", True):
        # before calibration, so activation scales are measured on the tables that get deployed
        embeddings = sorted(quantize_embeddings(qmodel, recipe.embedding_bits))
    qmodel.quantization = QuantizationRecord(recipe=recipe.name, embedding_bits=recipe.embedding_bits if embeddings else 0,
                                             embedding_tables=embeddings, state_bits=recipe.state_bits)
    if not recipe.is_float:
        plans = [_plan(qmodel, point, recipe) for point in points]  # validates group sizes before any work
        calibration = calibrate(qmodel, points, recipe, calib_batches, progress=progress)
        for point, plan in zip(points, plans):
            layer = _replace(qmodel, point, plan, recipe, calibration)
            if layer:
                layers.append(layer)
    if recipe.head_bits:
        head = _quantize_tied_head(qmodel, recipe)
        if head:
            layers.append(head)
    if recipe.changes_state:
        from quantize.state import attach_state_quant, calibrate_state

        quant = attach_state_quant(qmodel, recipe)
        if quant.names and calib_batches is None:
            raise InputError(f"recipe {recipe.name!r} quantizes the decode state: calibration data is needed (--calib)")
        state_report = calibrate_state(qmodel, calib_batches, max_steps=None, percentile=recipe.state_percentile)
    report = {
        "recipe": recipe.name,
        "recipe_spec": recipe.to_dict(),
        "family": getattr(getattr(model, "config", None), "family", ""),
        "calibration": calibration.summary(),
        "layers": layers,
        "embeddings": {"bits": qmodel.quantization.embedding_bits, "tables": embeddings},
        "summary": _summary(layers),
        **({"state": state_report} if recipe.changes_state else {}),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return qmodel, report


# --------------------------------------------------------------------------------------------
# planning and checks
# --------------------------------------------------------------------------------------------


def needs_calibration_data(model: nn.Module, recipe: str | QuantRecipe) -> bool:
    """Whether quantizing ``model`` under ``recipe`` needs calibration batches (static activation
    scales, GPTQ, or an integer decode state)."""
    from quantize.calibrate import needs_calibration

    recipe = get_recipe(recipe)
    return needs_calibration(_checked_points(model), recipe) or recipe.changes_state


def _checked_points(model: nn.Module) -> list[QuantPoint]:
    if not hasattr(model, "quant_points"):
        raise InputError(f"{type(model).__name__} declares no quantization points (quant_points)")
    points = list(model.quant_points())
    for point in points:
        try:
            module = model.get_submodule(point.path)
        except AttributeError:
            raise InputError(f"quantization point {point.path!r} names no module of {type(model).__name__}") from None
        if is_quantized_module(module):
            raise InputError(f"{point.path} is already quantized: quantize the float model instead")
        expected = {"linear": nn.Linear, "conv": (nn.Conv1d, nn.Conv2d), "act": ActPoint}[point.kind]
        if not isinstance(module, expected):
            raise InputError(f"quantization point {point.path!r} is a {type(module).__name__}, expected {point.kind}")
    return points


def _plan(model: nn.Module, point: QuantPoint, recipe: QuantRecipe) -> dict[str, Any]:
    """Granularity and group size a point gets (raises on a group size that does not divide)."""
    module = model.get_submodule(point.path)
    if point.kind == "act" or not recipe.quantizes_weights:
        return {}
    granularity, group = recipe.weight_granularity, recipe.group_size
    if granularity == "group":
        in_features = module.in_features if isinstance(module, nn.Linear) else None
        if in_features is None:
            granularity, group = "channel", 0  # conv layers: per-channel scales
        elif in_features % group and recipe.act_granularity == "block":
            group = block_fallback(in_features, group)
            if not group:  # e.g. a tiny low-rank dt_proj: stays float (see the recipe docs)
                return {"skip": True}
        elif in_features % group:
            if recipe.group_fallback == "channel":
                granularity, group = "channel", 0
            else:
                raise InputError(
                    f"group size {group} does not divide {point.path} (input size {in_features}); pick a "
                    f"group size that divides every quantized layer, or set group_fallback = \"channel\""
                )
    else:
        group = 0
    return {"granularity": granularity, "group_size": group}


def block_fallback(in_features: int, group: int) -> int:
    """The largest power-of-two block in ``[16, group]`` dividing ``in_features`` (0 if none)."""
    while group >= 16 and in_features % group:
        group //= 2
    return group if group >= 16 else 0


def _round_floats_to_half(model: nn.Module) -> None:
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().to(tensor.dtype))


# --------------------------------------------------------------------------------------------
# replacing one point
# --------------------------------------------------------------------------------------------


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def _replace(model: nn.Module, point: QuantPoint, plan: dict, recipe: QuantRecipe, calib: Calibration) -> dict | None:
    module = model.get_submodule(point.path)
    observer = calib.observers.get(point.path)
    info: dict[str, Any] = {"path": point.path, "kind": point.kind, "input": point.input}
    if point.kind == "act":
        if observer is None:
            return None
        stats = observer.describe()
        if isinstance(observer, ChannelObserver):  # per-group / clustered scales (quantize.grouping)
            clips = grouped_clips(observer.channel_clips(), point.groups, point.heads, recipe.act_group_scales,
                                  recipe.act_head_clusters, recipe.act_channel_clusters, pooled=observer.pooled_clip)
            scales = scale_from_clip(clips, recipe.act_bits)
            _set_module(model, point.path, QuantAct(recipe.act_bits, scales))
            return {**info, "act_bits": recipe.act_bits, "input_scale": float(scales.max()),
                    "distinct_scales": int(torch.unique(scales).numel()), "input_scale_min": float(scales.min()),
                    **_act_info(stats)}
        _set_module(model, point.path, QuantAct(recipe.act_bits, stats["scale"]))
        return {**info, "act_bits": recipe.act_bits, "input_scale": stats["scale"], **_act_info(stats)}

    if not recipe.quantizes_weights or plan.get("skip"):
        return None
    rotate = rotates(point, recipe, module)
    weight = module.weight.detach().float()
    if rotate:  # linear [out, in] or pointwise conv [out, in, 1, ...]: fuse W·Hᵀ on the input dimension
        flat = weight.reshape(weight.shape[0], weight.shape[1])
        weight = fuse_rotation(flat.double()).float().reshape(weight.shape)
    granularity, group = plan["granularity"], plan["group_size"]
    clip = weight_clip(weight, granularity, group)
    if recipe.weight_observer == "mse":
        clip = mse_weight_clip(weight, clip, recipe.weight_bits, group, levels=recipe.weight_levels)
    weight_scale = scale_from_clip(clip, recipe.weight_bits, levels=recipe.weight_levels)
    hessian = calib.hessians.get(point.path)
    if recipe.gptq and hessian is not None and weight.dim() == 2:
        weight_int = gptq_quantize(weight, hessian, weight_scale, recipe.weight_bits, group, levels=recipe.weight_levels)
    else:
        weight_int = quantize_weight(weight, weight_scale, recipe.weight_bits, group, levels=recipe.weight_levels)
    stats = observer.describe() if observer is not None else None
    input_scale = torch.tensor(stats["scale"], dtype=torch.float32) if stats else None
    block = group if recipe.act_granularity == "block" and isinstance(module, nn.Linear) else 0
    common = dict(
        bias=module.bias is not None, weight_bits=recipe.weight_bits, granularity=granularity, group_size=group,
        act_bits=recipe.act_bits if stats or block else 0, has_input_scale=stats is not None,
    )
    if isinstance(module, nn.Linear):
        new = QuantLinear(module.in_features, module.out_features, rotate=rotate, act_block=block, **common)
    else:
        cls = QuantConv1d if isinstance(module, nn.Conv1d) else QuantConv2d
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, module.groups, rotate=rotate, **common)
    bias = None if module.bias is None else module.bias.detach().float()
    new.set_quantized(weight_int, weight_scale, bias, input_scale)
    new.to(module.weight.device)
    _set_module(model, point.path, new)
    deq = dequantize_weight(weight_int, weight_scale, group)
    info.update(
        weight_bits=recipe.weight_bits,
        granularity=granularity,
        group_size=group,
        rotate=rotate,
        gptq=bool(recipe.gptq and hessian is not None),
        weight_scale_min=float(weight_scale.min()),
        weight_scale_max=float(weight_scale.max()),
        weight_error=relative_error(weight, deq),
        act_bits=recipe.act_bits if stats or block else 0,
        act_block=block,
        input_scale=None if stats is None else stats["scale"],
        input_quantized_at=point.input_quantized_at,
    )
    if stats:
        info.update(_act_info(stats))
    return info


HEAD_BLOCK = 32  # a static-int8 recipe's head block (block recipes: their own group_size)


def head_recipe_of(recipe: QuantRecipe) -> QuantRecipe:
    """How a tied head's own copy is quantized under ``recipe`` (``head_bits`` > 0).

    * int8-activation recipes (static or block): ``head_bits`` weights in blocks with int8
      activations quantized dynamically per block (``act_granularity = "block"``, ONNX Runtime's
      ``MatMulNBits`` at accuracy level 4): the recipe's own ``group_size`` for block recipes, 32
      (``HEAD_BLOCK``) for static ones. A static per-tensor scale would need the head's input
      calibrated, and the dynamic block scale is both the more accurate and the faster kernel;
      full-range weights, since that kernel does not saturate on AVX2 (docs/quantization.md).
    * float-activation recipes: ``head_bits`` weights in the recipe's own groups (``MatMulNBits``
      with float activations).

    Never rotated (the online transform would cost every step) and never GPTQ'd (no Hessian).
    """
    fields: dict[str, Any] = dict(weight_bits=recipe.head_bits, rotate=False, gptq=False)
    if recipe.act_bits == 8:
        block = recipe.group_size if recipe.act_granularity == "block" else HEAD_BLOCK
        fields.update(weight_granularity="group", group_size=block, act_granularity="block", weight_levels=0)
    return dataclasses.replace(recipe, **fields)


def _quantize_tied_head(model: nn.Module, recipe: QuantRecipe) -> dict | None:
    """Give a tied LM head (``lm_head`` None, reading ``embedding.weight``) its own quantized copy.

    The copy is quantized from the table the lookup uses (already rounded to ``embedding_bits``
    when the recipe rounds embeddings), with ``head_bits`` weights in the recipe's groups and its
    activation form, so the head fuses into one integer kernel instead of dequantizing the table
    every step. Models without that slot are left as they are.
    """
    embedding = getattr(model, "embedding", None)
    if not isinstance(embedding, nn.Embedding) or not hasattr(model, "lm_head") or model.lm_head is not None:
        return None
    weight = embedding.weight.detach().float()
    out_features, in_features = weight.shape
    head_recipe = head_recipe_of(recipe)
    plan = {"granularity": head_recipe.weight_granularity, "group_size": head_recipe.group_size}
    if head_recipe.weight_granularity == "group" and in_features % head_recipe.group_size:
        group = block_fallback(in_features, head_recipe.group_size)
        if not group and head_recipe.act_granularity == "block":
            return None
        plan = {"granularity": "group", "group_size": group} if group else {"granularity": "channel", "group_size": 0}
    model.lm_head = nn.Linear(in_features, out_features, bias=False).to(weight.device)
    with torch.no_grad():
        model.lm_head.weight.copy_(weight)
    point = QuantPoint("lm_head", "linear", note="tied LM head, its own quantized copy")
    info = _replace(model, point, plan, head_recipe, Calibration())
    return info


def _act_info(stats: dict) -> dict:
    keys = ("observer", "amax", "clip", "clip_ratio", "calib_error", "percentile")
    return {k: stats[k] for k in keys if k in stats}


def _summary(layers: list[dict]) -> dict:
    weights = [layer for layer in layers if "weight_error" in layer]
    acts = [layer for layer in layers if "calib_error" in layer]
    return {
        "quantized_weights": len(weights),
        "quantized_activations": len(acts),
        "rotated": sum(1 for layer in weights if layer.get("rotate")),
        "max_weight_error": max((layer["weight_error"] for layer in weights), default=0.0),
        "max_calib_error": max((layer["calib_error"] for layer in acts), default=0.0),
        "clipped_points": sum(1 for layer in acts if layer.get("clip_ratio", 1.0) < 1.0),
    }





# --------------------------------------------------------------------------------------------
# the whole pipeline (what `edgeseq quantize` calls)
# --------------------------------------------------------------------------------------------


def quantize_checkpoint(
    source: str,
    recipe: str | QuantRecipe,
    output: str,
    *,
    calib: str | None = None,
    calib_split: str = "train",
    calib_samples: int = 64,
    seq_len: int = 256,
    batch_size: int = 8,
    group_size: int | None = None,
    percentile: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``source``, calibrate on ``calib`` (default: the model's own task), quantize, save to
    ``output``; returns a JSON-able summary (per-layer scales/clipping, sizes, paths)."""
    from edgeseq.checkpoints import load_model
    from quantize.calibrate import calibration_batches
    from quantize.io import model_bytes, save_quantized
    from quantize.recipes import with_overrides

    recipe = with_overrides(get_recipe(recipe), group_size=group_size, percentile=percentile)
    loaded = load_model(source)
    if loaded.format in ("quantized", "artifact"):
        raise InputError(f"{source} is already a {loaded.format} model; quantize the float checkpoint it came from")
    model = loaded.model
    batches, described = None, {}
    if needs_calibration_data(model, recipe):
        torch.manual_seed(seed)
        batches, described = calibration_batches(
            model, calib, tokenizer=loaded.tokenizer, meta=loaded.meta, samples=calib_samples, seq_len=seq_len,
            batch_size=batch_size, split=calib_split, seed=seed,
        )
    qmodel, report = quantize_model(model, recipe, batches, progress=progress)
    report["calibration"].update(described)
    folder = save_quantized(qmodel, output, recipe, report, source=str(source), tokenizer=loaded.tokenizer,
                            source_meta=loaded.meta)
    return {
        "output": str(folder),
        "source": str(source),
        "family": report["family"],
        "recipe": recipe.name,
        "recipe_spec": recipe.to_dict(),
        "calibration": report["calibration"],
        "summary": report["summary"],
        "bytes": {"float": model_bytes(model)["stored"], **{f"quantized_{k}": v for k, v in model_bytes(qmodel).items()}},
        "layers": report["layers"],
        "embeddings": report["embeddings"],
        "seconds": report["seconds"],
    }

__all__ = ["needs_calibration_data", "quantize_checkpoint", "quantize_model"]
