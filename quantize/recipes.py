"""Quantization recipes: a plain dict from name to :class:`QuantRecipe`, plus custom recipe files.

A recipe says, for every quantization point a model declares (see
:class:`edgeseq.streaming.QuantPoint`):

* weights: ``weight_bits`` (0 = keep float), ``weight_granularity`` (``tensor`` / ``channel`` /
  ``group``), ``group_size`` for 4-bit per-group, ``weight_observer`` (``minmax`` or ``mse``), and
  ``gptq`` (GPTQ error compensation, Frantar et al. 2023);
* activations: ``act_bits`` (0 = not quantized, e.g. W4A16), ``act_observer`` for points the model
  marks ``clip="max"`` and ``clip_observer`` for points it marks ``clip="percentile"`` (Quamba's
  SSM-input clipping), with ``percentile``;
* ``rotate`` — apply the online Hadamard transform at ``rotatable`` points, with the inverse fused
  offline into the layer weight (Quamba's ``out_proj`` rotation);
* ``float_dtype`` — ``float16`` stores every float parameter in half precision (the ``fp16`` recipe);
* ``weight_levels`` — narrow the integer weight range to ``[-weight_levels, weight_levels]``
  (0 = the full ``[-(2^(b-1)-1), 2^(b-1)-1]``). The int8-activation recipes use 64: on x86 CPUs
  without VNNI (AVX2, AVX-512F/BW) ONNX Runtime shifts int8 activations to uint8 and multiplies
  them with ``VPMADDUBSW``, which adds two adjacent u8×s8 products into a *saturating* 16-bit
  sum; ``255 · (|w0| + |w1|)`` must stay below 32,768, which holds for every pair when
  ``|w| <= 64``. Such artifacts then compute the same function on every CPU (VNNI, Arm SDOT and
  CUDA accumulate in 32 bits anyway); the accuracy cost is measured in ``docs/quantization.md``;
* ``state_bits`` — 8 stores and carries the recurrent decode state (``state_spec()``) as int8
  between ``step`` calls, with static per-channel scales from calibration (Quamba's int8 cache;
  see :mod:`quantize.state`); 0 keeps it float;
* ``conv_state_bits`` / ``ssm_state_bits`` — the same for the state tensors named ``conv_*`` /
  ``ssm_*`` alone (Mamba's conv window and SSM state): 0 = as ``state_bits``, 8 = int8, 16 =
  float16, 32 = float32. ``state_bits = 8`` with ``ssm_state_bits = 16`` is the split form (int8
  conv window, float16 SSM state);
* ``state_scales`` — the granularity of the static int8 state scales: ``row`` (one per index of all
  dimensions but the last: per channel, or per ``(head, channel)`` of a Mamba-2 SSM state),
  ``head`` (one per index of the first dimension), ``element`` (one per state element: a table the
  size of one state, shared by every sequence); ``state_percentile`` clips each element at this
  percentile of its calibrated values over time (100 = the maximum) before the group maximum;
* ``act_group_scales`` — activation points that declare SSD groups (``QuantPoint.groups``, Mamba-2's
  x, B and C) get one static scale per group (Quamba2's per-state-group scales for B and C);
* ``act_head_clusters`` / ``act_channel_clusters`` — Quamba2's sort-and-cluster for points that
  declare heads (Mamba-2's x): inside each group, heads are sorted by their calibrated clip and
  clustered into ``act_head_clusters`` clusters, and inside each head cluster the head channels
  into ``act_channel_clusters``; every cluster gets one static scale (0 = off). The scale is a
  per-channel vector holding the cluster's value, so no channel is reordered at run time;
* ``act_granularity`` — ``tensor`` (default): static per-tensor activation scales from
  calibration; ``block``: int8 activations quantized *dynamically* per block of ``group_size``
  input features of each quantized linear layer (no calibration; ``ActPoint`` points stay float) —
  exactly the arithmetic of ONNX Runtime's ``MatMulNBits`` at ``accuracy_level`` 4, which the
  export uses (:func:`quantize.modules.block_fake_quant`). Needs ``weight_granularity = "group"``
  and ``act_bits = 8``; a layer the group does not divide gets the largest power-of-two block
  (≥ 16, the kernel's least) that does; a layer no such block divides keeps float weights
  (then the graph holds no ``DequantizeLinear`` → ``MatMul`` pair that ONNX Runtime could fuse
  under its own ``session.qdq_matmulnbits_accuracy_level``, so the artifact computes the same
  function whatever that session setting is);
* ``head_bits`` — a tied LM head (reading the embedding table) gets its own quantized copy with
  this many bits (0 = the head reads the embedding table, which an ONNX step must then dequantize
  whole every step); int8-activation recipes quantize it in blocks (the recipe's ``group_size``
  for block recipes, 32 for static ones) with dynamic int8 activations per block (as
  ``act_granularity = "block"``), float-activation recipes in their own
  weight groups (``quantize.apply.head_recipe_of``); never rotated. Every named integer recipe
  sets it; the embedding lookup keeps its per-row table (``embedding_bits``);
* ``embedding_bits`` — integer recipes round the token-embedding tables to this many bits per row
  (default 8; 0 keeps them float). Models whose embedding feeds a spiking threshold opt out
  (``StreamingModel.embeddings_quantizable``).

Custom recipes: a TOML or JSON file with a ``base`` recipe name and any of the fields above, e.g.::

    base = "w4a16"
    group_size = 64
    gptq = true
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseq.errors import InputError


@dataclass(frozen=True)
class QuantRecipe:
    name: str
    description: str = ""
    # weights
    weight_bits: int = 0  # 0 = keep float
    weight_granularity: str = "channel"  # tensor | channel | group
    group_size: int = 0  # for granularity "group"
    group_fallback: str = "error"  # what a layer the group size does not divide gets: "error" | "channel"
    weight_observer: str = "minmax"  # minmax | mse
    gptq: bool = False
    weight_levels: int = 0  # 0 = full range; 64 = pairwise-16-bit-safe int8 (see the module docs)
    # activations
    act_bits: int = 0  # 0 = activations stay float
    act_observer: str = "minmax"  # for points with clip="max"
    clip_observer: str = "percentile"  # for points with clip="percentile"
    percentile: float = 99.999
    # rotations
    rotate: bool = False
    # float storage
    float_dtype: str = "float32"  # float32 | float16
    act_granularity: str = "tensor"  # tensor (static, calibrated) | block (dynamic per weight group)
    head_bits: int = 0  # a tied LM head's own quantized copy (0 = it reads the embedding table)
    # embeddings (integer recipes only; models may opt out)
    embedding_bits: int = 8  # 0 = keep float
    # decode state carried between steps as integers with static scales (0 = float); see quantize.state
    state_bits: int = 0
    conv_state_bits: int = 0  # 0 = as state_bits; 8 int8, 16 float16, 32 float32
    ssm_state_bits: int = 0
    state_scales: str = "row"  # row | head | element
    state_percentile: float = 100.0  # per-element clip over the calibration steps (100 = max)
    # Quamba2: per-group scales and sort-and-cluster of the SSM inputs (points that declare groups/heads)
    act_group_scales: bool = False
    act_head_clusters: int = 0
    act_channel_clusters: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantRecipe":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown recipe field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        check_field_types(data)
        recipe = cls(**data)
        validate_recipe(recipe)
        return recipe

    @property
    def quantizes_weights(self) -> bool:
        return self.weight_bits > 0

    @property
    def quantizes_activations(self) -> bool:
        return self.act_bits > 0

    def bits_of_state(self, name: str) -> int:
        """Storage of the state tensor ``name``: 0 = float as the model, 8 = int8, 16 = float16, 32 = float32."""
        kind = name.split("_", 1)[0]
        override = {"conv": self.conv_state_bits, "ssm": self.ssm_state_bits}.get(kind, 0)
        return override or self.state_bits

    @property
    def changes_state(self) -> bool:
        """Whether any decode state tensor is stored other than as the model's float."""
        return bool(self.state_bits or self.conv_state_bits or self.ssm_state_bits)

    @property
    def is_float(self) -> bool:
        return not self.quantizes_weights and not self.quantizes_activations


_FIELD_TYPES = {"int": "an integer (e.g. 8)", "float": "a number (e.g. 99.99)", "bool": "true or false",
                "str": "a string (in quotes)"}


def check_field_types(data: dict[str, Any]) -> None:
    """Each recipe field has its declared type, checked before any work: ``weight_bits = "8"`` or
    ``8.0``, ``percentile = "high"`` are one-line errors naming the field and the type it needs."""
    declared = {f.name: str(f.type) for f in dataclasses.fields(QuantRecipe)}
    for name, value in data.items():
        kind = declared.get(name)
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "str":
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise InputError(f"recipe field {name!r} must be {_FIELD_TYPES[kind]}, got {value!r} ({type(value).__name__})")


_W4_GROUP = 128
# the block recipes' block: one float32 scale per 64 weights is 8.5 / 4.5 bits per weight, what
# llama.cpp's Q8_0 / Q4_0 (an fp16 scale per 32) store; ONNX Runtime's level-4 kernel runs it ~10%
# faster than blocks of 32 (benchmarks/decode_cpu.py), at the same accuracy (docs/quantization.md)
_BLOCK = 64
_PAIR_SAFE = 64  # weight_levels of the int8-activation recipes: no u8×s8 pair sum can saturate 16 bits

RECIPES: dict[str, QuantRecipe] = {
    "fp32": QuantRecipe("fp32", "no quantization (the reference)"),
    "fp16": QuantRecipe("fp16", "float parameters stored in float16", float_dtype="float16"),
    "w8a8-minmax": QuantRecipe(
        "w8a8-minmax",
        "naive baseline: int8 per-tensor weights, static int8 activations with min/max scales everywhere",
        weight_bits=8, weight_granularity="tensor", act_bits=8, act_observer="minmax", clip_observer="minmax",
        weight_levels=_PAIR_SAFE, head_bits=8,
    ),
    "w8a8": QuantRecipe(
        "w8a8",
        "Quamba: int8 per-channel weights, static int8 activations, percentile-clipped SSM input, "
        "Hadamard-rotated out_proj input",
        weight_bits=8, weight_granularity="channel", act_bits=8, act_observer="minmax", clip_observer="percentile",
        rotate=True, weight_levels=_PAIR_SAFE, head_bits=8,
    ),
    "w8a8-norotate": QuantRecipe(
        "w8a8-norotate", "ablation: w8a8 without the Hadamard rotation",
        weight_bits=8, weight_granularity="channel", act_bits=8, clip_observer="percentile", rotate=False,
        weight_levels=_PAIR_SAFE, head_bits=8,
    ),
    "w8a8-noclip": QuantRecipe(
        "w8a8-noclip", "ablation: w8a8 without percentile clipping (min/max everywhere)",
        weight_bits=8, weight_granularity="channel", act_bits=8, clip_observer="minmax", rotate=True,
        weight_levels=_PAIR_SAFE, head_bits=8,
    ),
    "w8a8-noclip-norotate": QuantRecipe(
        "w8a8-noclip-norotate", "ablation: w8a8 with neither rotation nor percentile clipping",
        weight_bits=8, weight_granularity="channel", act_bits=8, clip_observer="minmax", rotate=False,
        weight_levels=_PAIR_SAFE, head_bits=8,
    ),
    "w8a8-fullrange": QuantRecipe(
        "w8a8-fullrange",
        "ablation: w8a8 with the full int8 weight range [-127, 127]; exact only where int8 kernels accumulate "
        "in 32 bits (x86 VNNI, Arm SDOT, CUDA): ONNX export refuses it (x86 without VNNI saturates)",
        weight_bits=8, weight_granularity="channel", act_bits=8, clip_observer="percentile", rotate=True, head_bits=8,
    ),
    "w4a8": QuantRecipe(
        "w4a8",
        f"int4 per-group weights (group {_W4_GROUP}, per-channel where it does not divide), static int8 "
        "activations as w8a8, with the rotation",
        weight_bits=4, weight_granularity="group", group_size=_W4_GROUP, group_fallback="channel",
        weight_observer="mse", act_bits=8, clip_observer="percentile", rotate=True, head_bits=8,
    ),
    "w8a8-s8": QuantRecipe(
        "w8a8-s8", "w8a8 with the decode state (conv and SSM states) stored and carried as int8 (static per-channel scales)",
        weight_bits=8, weight_granularity="channel", act_bits=8, act_observer="minmax", clip_observer="percentile",
        rotate=True, state_bits=8, weight_levels=_PAIR_SAFE, head_bits=8,
    ),
    "w8a8-s8-element": QuantRecipe(
        "w8a8-s8-element", "w8a8-s8 with one static scale per state element (a scale table the size of one state, "
        "shared by every sequence): int8 state that holds on Mamba-2",
        weight_bits=8, weight_granularity="channel", act_bits=8, act_observer="minmax", clip_observer="percentile",
        rotate=True, state_bits=8, state_scales="element", weight_levels=_PAIR_SAFE, head_bits=8,
    ),
    "w8a8-conv8-ssm16": QuantRecipe(
        "w8a8-conv8-ssm16", "w8a8 with the conv window stored as int8 (per-channel scales) and the SSM state as float16",
        weight_bits=8, weight_granularity="channel", act_bits=8, act_observer="minmax", clip_observer="percentile",
        rotate=True, state_bits=8, ssm_state_bits=16, weight_levels=_PAIR_SAFE, head_bits=8,
    ),
    "w8a8-block": QuantRecipe(
        "w8a8-block",
        "int8 weights in blocks of 64 (per-block scales), int8 activations quantized dynamically per block of 64 "
        "(ONNX Runtime MatMulNBits, accuracy level 4), the tied LM head its own 8-bit copy; no calibration",
        weight_bits=8, weight_granularity="group", group_size=_BLOCK, act_bits=8, act_granularity="block", head_bits=8,
    ),
    "w4a8-block": QuantRecipe(
        "w4a8-block",
        "int4 weights in blocks of 64 (per-block scales, MSE clipping), int8 activations quantized dynamically per "
        "block of 64 (ONNX Runtime MatMulNBits, accuracy level 4), the tied LM head its own 4-bit copy",
        weight_bits=4, weight_granularity="group", group_size=_BLOCK, weight_observer="mse", act_bits=8,
        act_granularity="block", head_bits=4,
    ),
    "w4a16": QuantRecipe(
        "w4a16",
        f"int4 per-group weights (group {_W4_GROUP}, per-channel where it does not divide), float "
        "activations, with the rotation",
        weight_bits=4, weight_granularity="group", group_size=_W4_GROUP, group_fallback="channel",
        weight_observer="mse", rotate=True, head_bits=4,
    ),
    "w4a16-gptq": QuantRecipe(
        "w4a16-gptq", "w4a16 with GPTQ error compensation",
        weight_bits=4, weight_granularity="group", group_size=_W4_GROUP, group_fallback="channel",
        weight_observer="mse", rotate=True, gptq=True, head_bits=4,
    ),
    "w4a8-gptq": QuantRecipe(
        "w4a8-gptq", "w4a8 with GPTQ error compensation",
        weight_bits=4, weight_granularity="group", group_size=_W4_GROUP, group_fallback="channel",
        weight_observer="mse", act_bits=8, clip_observer="percentile", rotate=True, gptq=True, head_bits=8,
    ),
}


def validate_recipe(recipe: QuantRecipe) -> None:
    """One-line InputError for a recipe that cannot work."""
    where = f"recipe {recipe.name!r}"
    if recipe.weight_bits not in (0, 2, 3, 4, 5, 6, 7, 8):
        raise InputError(f"{where}: weight_bits must be 0 (float) or 2..8, got {recipe.weight_bits}")
    if recipe.act_bits not in (0, 8, 16) and not 2 <= recipe.act_bits <= 16:
        raise InputError(f"{where}: act_bits must be 0 (float) or 2..16, got {recipe.act_bits}")
    if recipe.weight_granularity not in ("tensor", "channel", "group"):
        raise InputError(f"{where}: weight_granularity must be tensor, channel or group, got {recipe.weight_granularity!r}")
    if recipe.weight_granularity == "group" and recipe.group_size <= 0:
        raise InputError(f"{where}: per-group weights need group_size > 0 (e.g. 32, 64, 128)")
    if recipe.group_fallback not in ("error", "channel"):
        raise InputError(f"{where}: group_fallback must be 'error' or 'channel', got {recipe.group_fallback!r}")
    for field_name in ("act_observer", "clip_observer"):
        if getattr(recipe, field_name) not in ("minmax", "percentile", "mse"):
            raise InputError(f"{where}: {field_name} must be minmax, percentile or mse, got {getattr(recipe, field_name)!r}")
    if recipe.weight_observer not in ("minmax", "mse"):
        raise InputError(f"{where}: weight_observer must be minmax or mse, got {recipe.weight_observer!r}")
    if not 50.0 <= recipe.percentile <= 100.0:
        raise InputError(f"{where}: percentile must be in [50, 100], got {recipe.percentile}")
    if recipe.float_dtype not in ("float32", "float16"):
        raise InputError(f"{where}: float_dtype must be float32 or float16, got {recipe.float_dtype!r}")
    if recipe.weight_levels and recipe.weight_bits and not 1 <= recipe.weight_levels <= 2 ** (recipe.weight_bits - 1) - 1:
        raise InputError(f"{where}: weight_levels must be 0 (full range) or 1..{2 ** (recipe.weight_bits - 1) - 1} "
                         f"for {recipe.weight_bits}-bit weights, got {recipe.weight_levels}")
    if recipe.embedding_bits not in (0, 2, 3, 4, 5, 6, 7, 8):
        raise InputError(f"{where}: embedding_bits must be 0 (float) or 2..8, got {recipe.embedding_bits}")
    if recipe.state_bits not in (0, 8):
        raise InputError(f"{where}: state_bits must be 0 (float state) or 8, got {recipe.state_bits}")
    for field_name in ("conv_state_bits", "ssm_state_bits"):
        if getattr(recipe, field_name) not in (0, 8, 16, 32):
            raise InputError(f"{where}: {field_name} must be 0 (as state_bits), 8 (int8), 16 (float16) or 32 (float32), "
                             f"got {getattr(recipe, field_name)}")
    if recipe.state_scales not in ("row", "head", "element"):
        raise InputError(f"{where}: state_scales must be row, head or element, got {recipe.state_scales!r}")
    if not 50.0 <= recipe.state_percentile <= 100.0:
        raise InputError(f"{where}: state_percentile must be in [50, 100], got {recipe.state_percentile}")
    for field_name in ("act_head_clusters", "act_channel_clusters"):
        if getattr(recipe, field_name) < 0:
            raise InputError(f"{where}: {field_name} must be 0 (off) or a positive number of clusters")
    if recipe.act_channel_clusters and not recipe.act_head_clusters:
        raise InputError(f"{where}: act_channel_clusters needs act_head_clusters (channels are clustered inside head clusters)")
    if recipe.act_granularity not in ("tensor", "block"):
        raise InputError(f"{where}: act_granularity must be tensor or block, got {recipe.act_granularity!r}")
    if recipe.act_granularity == "block" and (recipe.act_bits != 8 or recipe.weight_granularity != "group"
                                              or recipe.group_size < 16 or recipe.group_size & (recipe.group_size - 1)):
        raise InputError(f"{where}: act_granularity block needs act_bits 8 and per-group weights with a power-of-two "
                         f"group_size >= 16 (the activation block is the weight group)")
    if recipe.act_granularity == "block" and (recipe.rotate or recipe.gptq or recipe.state_bits):
        raise InputError(f"{where}: act_granularity block does not combine with rotate, gptq or state_bits here")
    if recipe.head_bits not in (0, 4, 8) or (recipe.head_bits and not recipe.weight_bits):
        raise InputError(f"{where}: head_bits must be 0, 4 or 8 (and needs weight_bits), got {recipe.head_bits}")
    if recipe.act_bits and not recipe.weight_bits:
        raise InputError(f"{where}: quantized activations need quantized weights too (set weight_bits)")
    if recipe.gptq and not recipe.quantizes_weights:
        raise InputError(f"{where}: gptq needs quantized weights (weight_bits > 0)")


def _toml_module():
    """``tomllib`` (Python 3.11+) or the ``tomli`` backport."""
    try:
        import tomllib

        return tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli

            return tomli
        except ImportError:
            raise InputError("TOML recipe files need Python 3.11+ or `pip install tomli`; or write the recipe as .json") from None


def load_recipe_file(path: str | Path) -> QuantRecipe:
    """A custom recipe from a ``.toml`` or ``.json`` file (``base`` names the recipe it starts from)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: recipe file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text recipe file (byte {exc.start} is not UTF-8); write the recipe as TOML or JSON") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the recipe file ({exc.strerror})") from None
    try:
        if path.suffix == ".toml":
            data = _toml_module().loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise InputError(f"{path}: not a valid {'TOML' if path.suffix == '.toml' else 'JSON'} recipe ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a recipe file holds a table of fields")
    base_name = data.pop("base", "fp32")
    base = get_recipe(base_name)
    merged = {**base.to_dict(), "name": data.pop("name", path.stem), **data}
    if "group_size" in data and "group_fallback" not in data:
        merged["group_fallback"] = "error"  # an explicit group size must divide every layer
    if "group_size" in data and data["group_size"] and "weight_granularity" not in data:
        merged["weight_granularity"] = "group"
    try:
        return QuantRecipe.from_dict(merged)
    except TypeError as exc:
        raise InputError(f"{path}: {exc}") from None
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def get_recipe(name_or_path: str | Path | QuantRecipe) -> QuantRecipe:
    """A named recipe, a recipe file (``.toml``/``.json``), or a recipe object as it is."""
    if isinstance(name_or_path, QuantRecipe):
        validate_recipe(name_or_path)
        return name_or_path
    text = str(name_or_path)
    if text in RECIPES:
        return RECIPES[text]
    if text.endswith((".toml", ".json")) or Path(text).is_file():
        return load_recipe_file(text)
    raise InputError(f"unknown recipe {text!r}; known: {', '.join(RECIPES)} (or a .toml/.json recipe file)")


def with_overrides(recipe: QuantRecipe, **overrides: Any) -> QuantRecipe:
    """A copy of ``recipe`` with some fields changed (None values are ignored), validated."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return recipe
    if "group_size" in changes:
        changes.setdefault("group_fallback", "error")
        if changes["group_size"]:
            changes.setdefault("weight_granularity", "group")
    updated = dataclasses.replace(recipe, **changes)
    validate_recipe(updated)
    return updated


__all__ = ["QuantRecipe", "RECIPES", "get_recipe", "load_recipe_file", "validate_recipe", "with_overrides"]
