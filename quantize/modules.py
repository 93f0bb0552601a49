"""Quantized modules that replace a model's layers in place (fake-quant semantics).

* :class:`QuantLinear` replaces an ``nn.Linear`` at a ``kind="linear"`` quantization point;
* :class:`QuantConv1d` / :class:`QuantConv2d` replace ``nn.Conv1d`` / ``nn.Conv2d`` at ``kind="conv"``;
* :class:`QuantAct` replaces an :class:`edgeseq.streaming.ActPoint`.

Every quantized layer holds (as buffers, so they are in the state dict and saved as they are):

* ``weight_int`` — int8 tensor of the weight's shape (4-bit values stored one per int8);
* ``weight_scale`` — float32: ``[]`` per tensor, ``[out]`` per output channel, or
  ``[out, in // group_size]`` per group of ``group_size`` consecutive input columns;
* ``bias`` — float32 or None;
* ``input_scale`` — float32 scalar, or None when the input is not quantized (weight-only recipes,
  spike inputs, or an input already quantized at an ActPoint);

and the attributes ``weight_bits``, ``group_size`` (0 = not grouped), ``act_bits``, ``rotate``,
``act_block`` (linear layers: 0 = the static ``input_scale``; ``b`` > 0 = int8 activations quantized
*dynamically* per block of ``b`` input features, see :func:`block_fake_quant`).

``forward``: ``rotate`` → ``x = hadamard_transform(x)`` over the feature dimension (last for linear
layers, the channel dimension 1 for pointwise convs; the weight already holds ``W·Hᵀ``) →
``x = fake_quant(x, input_scale, act_bits)`` → ``linear(x, weight_int · weight_scale) + bias``.
The arithmetic is :mod:`quantize.qdq` (symmetric, zero point 0, round half to even, activation
saturation ``[-128, 127]`` as ONNX QuantizeLinear). ``.weight`` returns the dequantized weight, so
model code that reads ``layer.weight`` directly keeps working.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantize.hadamard import hadamard_transform
from quantize.qdq import dequantize_weight, fake_quant


def rotate_channels(x: Tensor, channel_dim: int = -1) -> Tensor:
    """The online Hadamard transform over the feature dimension (last for linear, 1 for conv)."""
    if channel_dim in (-1, x.dim() - 1):
        return hadamard_transform(x)
    # non-negative axes throughout: the ONNX exporter turns a -1 into an invalid Transpose perm
    last, channel_dim = x.dim() - 1, channel_dim % x.dim()
    return hadamard_transform(x.movedim(channel_dim, last)).movedim(last, channel_dim)


def block_fake_quant(x: Tensor, block: int) -> Tensor:
    """Dynamic symmetric int8 fake quantization per block of ``block`` consecutive features (last dim).

    Per block: ``amax = max|x|``, ``q = round_half_even(x · (127 / amax))`` (``q = 0`` when
    ``amax = 0``), value ``q · (amax / 127)``. This is, to float rounding, what ONNX Runtime's
    ``MatMulNBits`` computes at ``accuracy_level`` 4 (its "CompInt8" kernels quantize each block of
    the activation row this way, take the integer dot product with the block's integer weights and
    scale it by both scales), so a layer with ``act_block`` exports to that kernel and verifies.
    """
    shape = x.shape
    blocks = x.reshape(*shape[:-1], shape[-1] // block, block)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inverse)
    return (q * (amax / 127.0)).reshape(shape)


def _scale_shape(out_features: int, in_features: int, granularity: str, group_size: int) -> tuple[int, ...]:
    if granularity == "tensor":
        return ()
    if granularity == "channel":
        return (out_features,)
    if granularity == "group":
        return (out_features, in_features // group_size)
    raise ValueError(f"unknown weight granularity {granularity!r} (tensor, channel, group)")


def granularity_of(weight_scale: Tensor, group_size: int) -> str:
    if group_size:
        return "group"
    return "tensor" if weight_scale.dim() == 0 else "channel"


class _QuantWeightMixin(nn.Module):
    """Shared storage/behaviour of quantized weight layers."""

    weight_bits: int
    group_size: int
    act_bits: int
    rotate: bool

    def _init_quant(
        self,
        weight_shape: tuple[int, ...],
        has_bias: bool,
        weight_bits: int,
        granularity: str,
        group_size: int,
        act_bits: int,
        has_input_scale: bool,
        rotate: bool,
    ) -> None:
        self.weight_bits = int(weight_bits)
        self.group_size = int(group_size) if granularity == "group" else 0
        self.act_bits = int(act_bits)
        self.rotate = bool(rotate)
        self.act_block = 0
        out_features, in_flat = weight_shape[0], int(torch.Size(weight_shape[1:]).numel())
        self.register_buffer("weight_int", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer(
            "weight_scale", torch.ones(_scale_shape(out_features, in_flat, granularity, self.group_size), dtype=torch.float32)
        )
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if has_bias else None)
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32) if has_input_scale else None)
        self._cached_weight: Tensor | None = None

    # the dequantized weight, computed once and dropped whenever the buffers may change
    @property
    def weight(self) -> Tensor:
        cached = self._cached_weight
        if cached is None or cached.device != self.weight_int.device or cached.dtype != self.weight_scale.dtype:
            cached = dequantize_weight(self.weight_int, self.weight_scale, self.group_size, dtype=self.weight_scale.dtype)
            self._cached_weight = cached
        return cached

    def invalidate_cache(self) -> None:
        self._cached_weight = None

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(): the cache follows lazily
        self._cached_weight = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cached_weight = None
        return super()._load_from_state_dict(*args, **kwargs)

    @property
    def granularity(self) -> str:
        return granularity_of(self.weight_scale, self.group_size)

    def set_quantized(self, weight_int: Tensor, weight_scale: Tensor, bias: Tensor | None, input_scale: Tensor | None) -> None:
        """Fill the buffers (shapes must match those given at construction)."""
        with torch.no_grad():
            self.weight_int.copy_(weight_int)
            self.weight_scale.copy_(weight_scale)
            if bias is not None:
                self.bias.copy_(bias)
            if input_scale is not None:
                self.input_scale.copy_(torch.as_tensor(input_scale, dtype=torch.float32))
        self._cached_weight = None

    channel_dim = -1  # where the input's features are (linear: last; conv: 1)

    def quantize_input(self, x: Tensor) -> Tensor:
        if self.rotate:
            x = rotate_channels(x, self.channel_dim)
        if self.input_scale is not None:
            x = fake_quant(x, self.input_scale.to(x.dtype), self.act_bits)
        elif self.act_block:
            x = block_fake_quant(x, self.act_block)
        return x

    synaptic_kind = "linear"

    def synaptic_spec(self) -> dict[str, Any]:
        """This layer as edgeseq's spiking simulator executes and counts it (the duck-typed protocol
        ``edgeseq.spiking.engine.SYNAPTIC_PROTOCOL``): the values multiplied, integer storage in bytes
        (``weight_bits`` per weight plus the float scales), and the input transform of ``forward``."""
        scale_bytes = self.weight_scale.numel() * self.weight_scale.element_size()
        transforms = self.rotate or self.input_scale is not None
        return {
            "kind": self.synaptic_kind,
            "weight": self.weight,
            "bias": self.bias,
            "transform_input": self.quantize_input if transforms else None,
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits if self.input_scale is not None or self.act_block else 0,
            "weight_bytes": self.weight_int.numel() * self.weight_bits / 8 + scale_bytes,
            "scale_bytes": scale_bytes,
            "group_size": self.group_size,
        }

    def quant_spec(self) -> dict[str, Any]:
        """What ``quantize.io`` needs to rebuild this module empty (JSON-able)."""
        return {
            "weight_shape": list(self.weight_int.shape),
            "has_bias": self.bias is not None,
            "weight_bits": self.weight_bits,
            "granularity": self.granularity,
            "group_size": self.group_size,
            "act_bits": self.act_bits,
            "has_input_scale": self.input_scale is not None,
            "rotate": self.rotate,
            **({"act_block": self.act_block} if self.act_block else {}),
        }


class QuantLinear(_QuantWeightMixin):
    """``nn.Linear`` with an integer weight and an optional static input quantizer (see module docs)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_bits: int = 8,
        granularity: str = "channel",
        group_size: int = 0,
        act_bits: int = 8,
        has_input_scale: bool = True,
        rotate: bool = False,
        act_block: int = 0,
    ):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_quant((out_features, in_features), bias, weight_bits, granularity, group_size, act_bits, has_input_scale, rotate)
        if act_block and (has_input_scale or in_features % act_block):
            raise ValueError(f"dynamic block activations (act_block {act_block}) need no static input scale and a "
                             f"block dividing the input size {in_features}")
        self.act_block = int(act_block)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def quant_spec(self) -> dict[str, Any]:
        return {"type": "QuantLinear", "in_features": self.in_features, "out_features": self.out_features, **super().quant_spec()}

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, w{self.weight_bits} {self.granularity}"
            f"{f' g{self.group_size}' if self.group_size else ''}, "
            f"a{self.act_bits if self.input_scale is not None else '-'}"
            f"{f' dynamic per {self.act_block}' if self.act_block else ''}, rotate={self.rotate}"
        )


class _QuantConvNd(_QuantWeightMixin):
    """Conv with integer weights; ``rotate`` (pointwise convs only) rotates the channel dimension."""

    _dims = 1
    channel_dim = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        weight_bits: int = 8,
        granularity: str = "channel",
        group_size: int = 0,
        act_bits: int = 8,
        has_input_scale: bool = True,
        rotate: bool = False,
    ):
        super().__init__()
        if granularity == "group":
            raise ValueError("per-group weight scales are for linear layers; conv layers use per-channel scales")
        n = self._dims

        def tup(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n

        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = tup(kernel_size), tup(stride), tup(dilation)
        self.padding = padding if isinstance(padding, str) else tup(padding)
        if rotate and not (groups == 1 and all(k == 1 for k in self.kernel_size)):
            raise ValueError("Hadamard rotation needs a pointwise (kernel 1, groups 1) convolution")
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_quant(shape, bias, weight_bits, granularity, 0, act_bits, has_input_scale, rotate)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv(self.quantize_input(x), self.weight.to(x.dtype), bias)

    def synaptic_spec(self) -> dict[str, Any]:
        return {**super().synaptic_spec(), "kind": f"conv{self._dims}d", "stride": self.stride,
                "padding": self.padding, "dilation": self.dilation, "groups": self.groups}

    def quant_spec(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            **super().quant_spec(),
        }


class QuantConv1d(_QuantConvNd):
    """``nn.Conv1d`` with an integer (per-channel or per-tensor) weight and an optional input quantizer."""

    _dims = 1

    def _conv(self, x, weight, bias):
        return F.conv1d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class QuantConv2d(_QuantConvNd):
    """``nn.Conv2d`` with an integer (per-channel or per-tensor) weight and an optional input quantizer."""

    _dims = 2

    def _conv(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class QuantAct(nn.Module):
    """Static symmetric fake quantization of one activation (replaces an ActPoint).

    ``scale`` is a scalar, or a vector over the activation's last dimension (``channels`` values:
    per-group or clustered scales, see :mod:`quantize.grouping`)."""

    def __init__(self, bits: int = 8, scale: float | Tensor = 1.0, channels: int = 0):
        super().__init__()
        self.bits = int(bits)
        value = torch.as_tensor(scale, dtype=torch.float32)
        if channels:
            value = value.expand(channels) if value.numel() == 1 else value
        value = value.reshape(()) if value.numel() == 1 and not channels else value.reshape(-1)
        self.register_buffer("scale", value.clone())

    def forward(self, x: Tensor) -> Tensor:
        return fake_quant(x, self.scale.to(x.dtype), self.bits)

    def quant_spec(self) -> dict[str, Any]:
        spec = {"type": "QuantAct", "bits": self.bits}
        if self.scale.dim():
            spec["channels"] = int(self.scale.numel())
        return spec

    def extra_repr(self) -> str:
        if self.scale.dim():
            return f"a{self.bits}, {self.scale.numel()} channel scales ({int(torch.unique(self.scale).numel())} distinct)"
        return f"a{self.bits}, scale={float(self.scale):.4g}"


QUANT_MODULES: dict[str, type[nn.Module]] = {
    "QuantLinear": QuantLinear,
    "QuantConv1d": QuantConv1d,
    "QuantConv2d": QuantConv2d,
    "QuantAct": QuantAct,
}


def module_from_spec(spec: dict[str, Any]) -> nn.Module:
    """An empty quantized module from its :meth:`quant_spec` (buffers filled by load_state_dict)."""
    kind = spec.get("type")
    if kind == "QuantAct":
        return QuantAct(spec["bits"], channels=int(spec.get("channels", 0)))
    common = dict(
        bias=spec["has_bias"],
        weight_bits=spec["weight_bits"],
        granularity=spec["granularity"],
        group_size=spec["group_size"],
        act_bits=spec["act_bits"],
        has_input_scale=spec["has_input_scale"],
        rotate=spec["rotate"],
    )
    if kind == "QuantLinear":
        return QuantLinear(spec["in_features"], spec["out_features"], act_block=int(spec.get("act_block", 0)), **common)
    if kind in ("QuantConv1d", "QuantConv2d"):
        cls = QUANT_MODULES[kind]
        padding = spec["padding"]
        return cls(
            spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]), tuple(spec["stride"]),
            padding if isinstance(padding, str) else tuple(padding), tuple(spec["dilation"]), spec["groups"], **common,
        )
    raise ValueError(f"unknown quantized module type {kind!r}; known: {', '.join(QUANT_MODULES)}")


def is_quantized_module(module: nn.Module) -> bool:
    return isinstance(module, (_QuantWeightMixin, QuantAct))


__all__ = [
    "QUANT_MODULES",
    "QuantAct",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLinear",
    "block_fake_quant",
    "granularity_of",
    "is_quantized_module",
    "module_from_spec",
    "rotate_channels",
]
