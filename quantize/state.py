"""int8 decode state (recipe field ``state_bits``): the recurrent state is stored and carried
between ``step`` calls as integers with static scales from calibration (Quamba's cached state).

Model-agnostic: every tensor of ``state_spec()`` gets one symmetric scale per row of its last
dimension (per index of all dimensions but the last: Mamba's conv window and SSM state get a
scale per channel, Mamba-2's conv window per channel and its SSM state ``[H, P, N]`` per head
channel ``(h, p)``), the absolute maximum that row reached over every ``step`` of the
calibration batches, so rows of very different ranges (x versus B/C in a Mamba-2 conv window)
each keep their resolution. Measured on 20k-token streams of held-out text (docs/quantization.md):
Mamba-1 +0.27% bits/byte over w8a8 (safe); Mamba-2 +4.0% with these per-row scales and +7.1% with
one scale per head (not safe with static int8 scales). Quantization: ``q = clamp(round(s / scale), -(2^(b-1) - 1), 2^(b-1) - 1)`` as int8;
``s = q · scale``.

What changes: ``step`` takes and returns the integer state (dequantized on entry, quantized on
exit), ``prefill`` returns its final state quantized (the prompt itself runs in float, as the
parallel form has no carried state), ``state_spec`` says ``int8``, ``init_state`` gives int8 zeros.
So the state a device holds per sequence shrinks 4× from float32 (2× from the float16 state of
Quamba's baseline), and ``step`` no longer equals ``forward``: the state is rounded after every
token, an error the recurrence carries; measure it on long streams (docs/quantization.md).

The change is attached to one quantized model instance (its class becomes a subclass with the
wrappers, the scales are a submodule ``state_quant``, so they travel in its state dict);
:func:`quantize.io.load_quantized` attaches it again from the recipe.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch
from torch import Tensor, nn

from edgeseq.errors import InputError

STATE_MODULE = "state_quant"


class StateQuant(nn.Module):
    """Per-state-tensor scales (one per index of the first non-batch dimension) and the rounding."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], bits: int = 8):
        super().__init__()
        if bits != 8:
            raise InputError(f"state_bits must be 0 (float) or 8, got {bits}")
        self.bits = bits
        self.names = list(shapes)
        for name, shape in shapes.items():
            self.register_buffer(f"scale_{name}", torch.ones(shape[:-1] if len(shape) > 1 else (1,)))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def _scale(self, name: str, like: Tensor) -> Tensor:
        scale = getattr(self, f"scale_{name}").to(like.device)
        return scale.unsqueeze(0).unsqueeze(-1) if like.dim() > 2 else scale

    def quantize(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for name, tensor in state.items():
            if tensor.is_floating_point() and name in self.names:
                scale = self._scale(name, tensor)
                tensor = torch.clamp(torch.round(tensor / scale.to(tensor.dtype)), -self.qmax, self.qmax).to(torch.int8)
            out[name] = tensor
        return out

    def dequantize(self, state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        out = {}
        for name, tensor in state.items():
            if tensor.dtype == torch.int8 and name in self.names:
                tensor = tensor.to(dtype) * self._scale(name, tensor).to(dtype)
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
        return [dataclasses.replace(spec, dtype=torch.int8) if spec.name in self.state_quant.names else spec
                for spec in super().state_spec()]


_CLASSES: dict[type, type] = {}


def attach_state_quant(model: nn.Module, bits: int) -> StateQuant:
    """Give ``model`` an integer decode state of ``bits`` (scales 1 until calibrated)."""
    if isinstance(model, _IntegerState):
        raise InputError(f"{type(model).__name__} already carries an integer state")
    specs = model.state_spec()
    quant = StateQuant({spec.name: tuple(spec.shape) for spec in specs if spec.dtype.is_floating_point}, bits)
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
def calibrate_state(model: nn.Module, batches: Iterable, max_steps: int = 256) -> dict[str, dict]:
    """Set the scales of ``model.state_quant`` from the float state of every ``step`` over ``batches``
    (inputs ``[B, T, ...]``, or ``(inputs, targets)`` pairs; at most ``max_steps`` steps each).

    The state is observed as the float model carries it (the scales are not yet known), with the
    model's other quantizers already in place. Returns per-state summaries for the report."""
    quant: StateQuant = getattr(model, STATE_MODULE)
    base_step = super(_IntegerState, model).step  # the float-state step
    amax: dict[str, Tensor] = {}
    seen = 0
    for batch in batches if batches is not None else []:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        batch = batch.to(device)
        state = {k: v.to(model._float_dtype()) if v.dtype == torch.int8 else v
                 for k, v in model.init_state(batch.shape[0]).items()}
        for t in range(min(batch.shape[1], max_steps)):
            _, state = base_step(batch[:, t], state)
            for name in quant.names:
                tensor = state[name]
                if tensor.shape[-1] == 0:  # e.g. the conv window of a kernel-1 conv: nothing to scale
                    continue
                if tensor.dim() > 2:
                    value = tensor.abs().amax(dim=-1).amax(dim=0)  # per row of the last dimension
                else:
                    value = tensor.abs().amax().reshape(1)  # a vector state: one scale
                amax[name] = value if name not in amax else torch.maximum(amax[name], value)
            seen += 1
    if not amax:
        raise InputError("state_bits: calibration data is needed to set the state scales (--calib)")
    summary = {}
    for name in quant.names:
        peak = amax.get(name, torch.zeros(getattr(quant, f"scale_{name}").shape)).float()
        scale = torch.where(peak > 0, peak / quant.qmax, torch.ones_like(peak))
        getattr(quant, f"scale_{name}").copy_(scale.cpu())
        summary[name] = {"amax": float(peak.max()), "scale_min": float(scale.min()), "scale_max": float(scale.max()),
                         "scales": int(scale.numel())}
    return {"bits": quant.bits, "steps": seen, "states": summary}


__all__ = ["StateQuant", "attach_state_quant", "calibrate_state", "has_integer_state"]
