"""The stored decode state (recipe fields ``state_bits``, ``conv_state_bits``, ``ssm_state_bits``,
``state_scales``, ``state_percentile``): the recurrent state is stored and carried between
``step`` calls as int8 with static scales from calibration (Quamba's cached state), or as float16.

Storage per state tensor: ``state_bits`` for all, overridden by ``conv_state_bits`` /
``ssm_state_bits`` for the tensors named ``conv_*`` / ``ssm_*`` (8 int8, 16 float16, 32 float32).

Scales of the int8 tensors (model-agnostic, ``state_scales``): ``row`` — one per index of all
dimensions but the last (Mamba's conv window and SSM state per channel; Mamba-2's conv window per
channel and its SSM state ``[H, P, N]`` per ``(h, p)``); ``head`` — one per index of the first
dimension; ``element`` — one per element (a table the size of one state, shared by every sequence).
Each element's clip is the largest absolute value it reached over every ``step`` of the
calibration batches (``state_percentile`` < 100: that percentile of its values), then the maximum
over the elements sharing a scale. Measured on 20k-token streams of held-out text
(docs/quantization.md): Mamba-1 +0.27% bits/byte over w8a8 with row scales, -0.09% with element
scales; Mamba-2 +4.0% (row), +7.1% (head), and safe with element scales or with an int8 conv
window and a float16 SSM state. Quantization: ``q = clamp(round(s / scale), -127, 127)`` as int8;
``s = q · scale``.

What changes: ``step`` takes and returns the stored state (dequantized/upcast on entry,
quantized/downcast on exit), ``prefill`` returns its final state stored so (the prompt itself runs
in float, as the parallel form has no carried state), ``state_spec`` and ``init_state`` say
``int8``/``float16``. So the state a device holds per sequence shrinks 4× from float32 for int8
(2× from the float16 state of Quamba's baseline), and ``step`` no longer equals ``forward``: the
state is rounded after every token, an error the recurrence carries; measure it on long streams.

The change is attached to one quantized model instance (its class becomes a subclass with the
wrappers, the scales are a submodule ``state_quant``, so they travel in its state dict);
:func:`quantize.io.load_quantized` attaches it again from the recipe.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import torch
from torch import Tensor, nn

from edgeseq.errors import InputError

STATE_MODULE = "state_quant"


class StateQuant(nn.Module):
    """The storage of each state tensor and, for int8 ones, their static scales and the rounding.

    ``storage``: state name -> 8 (int8 with static scales), 16 (float16) or 32 (float32).
    ``granularity``: ``row`` (a scale per index of all dimensions but the last; buffer shape
    ``shape[:-1]``), ``head`` (per index of the first dimension) or ``element`` (one per element);
    the last two are stored with the state's rank (``[H, 1, 1]``, ``[H, P, N]``)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], bits: int | dict[str, int] = 8, granularity: str = "row"):
        super().__init__()
        storage = {name: bits for name in shapes} if isinstance(bits, int) else {n: b for n, b in bits.items() if b}
        bad = sorted({b for b in storage.values()} - {8, 16, 32})
        if bad:
            raise InputError(f"state storage must be 8 (int8), 16 (float16) or 32 (float32) bits, got {bad[0]}")
        if granularity not in ("row", "head", "element"):
            raise InputError(f"state_scales must be row, head or element, got {granularity!r}")
        self.bits = 8
        self.granularity = granularity
        self.storage = {name: storage[name] for name in shapes if name in storage}
        self.names = [name for name, b in self.storage.items() if b == 8]  # the integer ones (scaled)
        for name in self.names:
            self.register_buffer(f"scale_{name}", torch.ones(self.scale_shape(shapes[name])))

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.granularity == "element":
            return tuple(shape)
        if self.granularity == "head":
            return (shape[0],) + (1,) * (len(shape) - 1)
        return tuple(shape[:-1]) if len(shape) > 1 else (1,)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def dtype_of(self, name: str) -> torch.dtype | None:
        """The stored dtype of state ``name`` (None: as the model's float)."""
        return {8: torch.int8, 16: torch.float16, 32: torch.float32}.get(self.storage.get(name, 0))

    def _scale(self, name: str, like: Tensor) -> Tensor:
        scale = getattr(self, f"scale_{name}").to(like.device)
        if self.granularity != "row":
            return scale.unsqueeze(0)
        return scale.unsqueeze(0).unsqueeze(-1) if like.dim() > 2 else scale

    def quantize(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for name, tensor in state.items():
            bits = self.storage.get(name, 0)
            if tensor.is_floating_point() and bits == 8:
                scale = self._scale(name, tensor)
                tensor = torch.clamp(torch.round(tensor / scale.to(tensor.dtype)), -self.qmax, self.qmax).to(torch.int8)
            elif tensor.is_floating_point() and bits in (16, 32):
                tensor = tensor.to(self.dtype_of(name))
            out[name] = tensor
        return out

    def dequantize(self, state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        out = {}
        for name, tensor in state.items():
            if tensor.dtype == torch.int8 and name in self.names:
                tensor = tensor.to(dtype) * self._scale(name, tensor).to(dtype)
            elif name in self.storage and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            out[name] = tensor
        return out


class _IntegerState:
    """Mixin placed before the model's own class: the integer state at the step boundary."""

    def _float_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def step(self, x_t, state):
        y, new_state = super().step(x_t, self.state_quant.dequantize(state, self._float_dtype()))
        return y, self.state_quant.quantize(new_state)

    def prefill(self, x, state=None):
        if state is not None:
            state = self.state_quant.dequantize(state, self._float_dtype())
        y, new_state = super().prefill(x, state)
        return y, self.state_quant.quantize(new_state)

    def state_spec(self):
        quant = self.state_quant
        return [dataclasses.replace(spec, dtype=quant.dtype_of(spec.name)) if quant.dtype_of(spec.name) is not None
                and spec.dtype.is_floating_point else spec for spec in super().state_spec()]

    def init_state(self, batch_size, device=None, dtype=None):
        state = super().init_state(batch_size, device=device, dtype=dtype)
        return {name: t.to(self.state_quant.dtype_of(name)) if name in self.state_quant.storage and t.is_floating_point()
                else t for name, t in state.items()}


_CLASSES: dict[type, type] = {}


def attach_state_quant(model: nn.Module, bits, granularity: str = "row") -> StateQuant:
    """Give ``model`` the decode-state storage ``bits`` (scales 1 until calibrated).

    ``bits``: 8 for every float state tensor, a :class:`~quantize.recipes.QuantRecipe` (its
    ``state_bits``/``conv_state_bits``/``ssm_state_bits`` per tensor, and its ``state_scales``), or
    a dict name -> 8/16/32."""
    if isinstance(model, _IntegerState):
        raise InputError(f"{type(model).__name__} already carries an integer state")
    specs = [spec for spec in model.state_spec() if spec.dtype.is_floating_point]
    if hasattr(bits, "bits_of_state"):
        recipe, granularity = bits, bits.state_scales
        bits = {spec.name: recipe.bits_of_state(spec.name) for spec in specs}
        bits = {name: (0 if b == 32 and spec.dtype == torch.float32 else b)
                for (name, b), spec in zip(bits.items(), specs)}
    quant = StateQuant({spec.name: tuple(spec.shape) for spec in specs}, bits, granularity)
    base = type(model)
    if base not in _CLASSES:
        _CLASSES[base] = type(base.__name__, (_IntegerState, base), {"__module__": base.__module__,
                                                                      "__doc__": base.__doc__})
    model.__class__ = _CLASSES[base]
    setattr(model, STATE_MODULE, quant)
    return quant


def has_integer_state(model: nn.Module) -> bool:
    return isinstance(model, _IntegerState)


@torch.no_grad()
def calibrate_state(model: nn.Module, batches: Iterable, max_steps: int | None = 256,
                    percentile: float = 100.0) -> dict[str, dict]:
    """Set the scales of ``model.state_quant`` from the float state of every ``step`` over ``batches``
    (inputs ``[B, T, ...]``, or ``(inputs, targets)`` pairs; at most ``max_steps`` steps each, None =
    the whole windows: longer calibration windows show the state the ranges it reaches later in a
    stream).

    The state is observed as the float model carries it (the scales are not yet known), with the
    model's other quantizers already in place. Each element's clip is its maximum over the steps
    (``percentile`` < 100: that percentile of its values over the steps and sequences, kept as a
    running top-k), then the maximum over the elements sharing a scale (``state_scales``).
    Returns per-state summaries for the report."""
    quant: StateQuant = getattr(model, STATE_MODULE)
    if not quant.names:  # float16/float32 storage only: nothing to calibrate
        return {"bits": {n: b for n, b in quant.storage.items()}, "steps": 0, "states": {}}
    base_step = super(_IntegerState, model).step  # the float-state step
    inputs = [b[0] if isinstance(b, (tuple, list)) else b for b in (batches if batches is not None else [])]
    max_steps = max_steps or max((int(b.shape[1]) for b in inputs), default=0)
    total = sum(int(b.shape[0]) * min(int(b.shape[1]), max_steps) for b in inputs)
    keep = max(1, math.ceil((1.0 - percentile / 100.0) * max(total - 1, 0)) + 2) if percentile < 100 else 0
    amax: dict[str, Tensor] = {}
    top: dict[str, Tensor] = {}
    seen = 0
    float_dtype = model._float_dtype()
    for batch in inputs:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        batch = batch.to(device)
        state = {k: v.to(float_dtype) if v.dtype == torch.int8 or k in quant.storage else v
                 for k, v in model.init_state(batch.shape[0]).items()}
        for t in range(min(batch.shape[1], max_steps)):
            _, state = base_step(batch[:, t], state)
            for name in quant.names:
                tensor = state[name]
                if tensor.shape[-1] == 0:  # e.g. the conv window of a kernel-1 conv: nothing to scale
                    continue
                values = tensor.detach().abs().float()
                peak = values.amax(0)
                amax[name] = peak if name not in amax else torch.maximum(amax[name], peak)
                if keep:
                    flat = values.reshape(values.shape[0], -1).T  # [elements, batch]
                    merged = flat if name not in top else torch.cat([top[name], flat], 1)
                    top[name] = torch.topk(merged, min(keep, merged.shape[1]), dim=1).values if merged.shape[1] > keep else merged
            seen += 1
    if not amax:
        raise InputError("state_bits: calibration data is needed to set the state scales (--calib)")
    summary = {}
    for name in quant.names:
        buffer = getattr(quant, f"scale_{name}")
        if name not in amax:
            continue
        clip = amax[name]
        if keep and name in top:
            ranked = torch.sort(top[name], dim=1, descending=True).values
            position = (1.0 - percentile / 100.0) * (total - 1)
            lo = min(int(math.floor(position)), ranked.shape[1] - 1)
            hi = min(lo + 1, ranked.shape[1] - 1)
            frac = position - math.floor(position)
            clip = (ranked[:, lo] * (1 - frac) + ranked[:, hi] * frac).reshape(clip.shape)
        peak = _group_max(clip, quant.granularity).reshape(buffer.shape).float()
        scale = torch.where(peak > 0, peak / quant.qmax, torch.ones_like(peak))
        buffer.copy_(scale.cpu())
        summary[name] = {"amax": float(amax[name].max()), "clip_max": float(peak.max()), "scale_min": float(scale.min()),
                         "scale_max": float(scale.max()), "scales": int(scale.numel())}
    return {"bits": quant.bits, "granularity": quant.granularity, "percentile": percentile,
            "storage": dict(quant.storage), "steps": seen, "states": summary}


def _group_max(clip: Tensor, granularity: str) -> Tensor:
    """Per-element clips [*shape] -> the maximum over each scale's elements."""
    if granularity == "element":
        return clip
    if granularity == "head":
        return clip.reshape(clip.shape[0], -1).amax(-1) if clip.dim() > 1 else clip
    return clip.amax(-1) if clip.dim() > 1 else clip.amax().reshape(1)


__all__ = ["StateQuant", "attach_state_quant", "calibrate_state", "has_integer_state"]
