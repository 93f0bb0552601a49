"""Symmetric integer quantize / dequantize: the arithmetic every quantized module uses.

Conventions (the same everywhere in edgeseq, and what the ONNX export emits):

* symmetric, zero point 0;
* rounding half to even (``torch.round``), as ONNX ``QuantizeLinear`` does;
* ``quantize_int(x, scale) = clamp(round(x / scale), qmin, qmax)`` with the **full** signed range
  ``[-2^(b-1), 2^(b-1) - 1]`` (``[-128, 127]`` for 8 bits): exactly ONNX ``QuantizeLinear``'s
  saturation for int8, so a QDQ graph computes bit-for-bit what :func:`fake_quant` computes;
* scales are chosen from a clipping value ``c`` as ``scale = c / (2^(b-1) - 1)`` (``c / 127``), so
  ``[-c, c]`` maps onto the symmetric range ``[-127, 127]``; only values below ``-127.5·scale``
  reach ``-128``;
* weights are stored already quantized with :func:`quantize_weight`, which clamps to the
  *narrow* symmetric range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (``[-127, 127]``, ``[-7, 7]`` for 4 bits):
  their scales come from their own max, so nothing is lost, and the integer weights are exactly
  symmetric (what int8 GEMM kernels with symmetric weights expect).

4-bit values are stored in ``int8`` tensors (one value per byte); packing two per byte is the
exporter's business (ONNX ``int4`` / ``MatMulNBits``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# ranges
# --------------------------------------------------------------------------------------------


def qrange(bits: int) -> tuple[int, int]:
    """Full signed range ``(-2^(b-1), 2^(b-1) - 1)``: the saturation range of activations."""
    _check_bits(bits)
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def qmax(bits: int) -> int:
    """Largest positive level ``2^(b-1) - 1`` (127 for int8, 7 for int4): scale = clip / qmax."""
    _check_bits(bits)
    return 2 ** (bits - 1) - 1


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")


def weight_limit(bits: int, levels: int = 0) -> int:
    """Largest integer weight magnitude: ``levels`` when given (a narrowed range), else ``qmax(bits)``."""
    limit = qmax(bits)
    if levels:
        if not 1 <= levels <= limit:
            raise ValueError(f"a {bits}-bit weight range holds at most {limit} levels, got {levels}")
        return levels
    return limit


def scale_from_clip(clip: Tensor | float, bits: int, eps: float = 1e-12, levels: int = 0) -> Tensor:
    """Symmetric scale that maps ``[-clip, clip]`` onto ``[-qmax, qmax]`` (never zero).

    ``levels`` narrows the integer range to ``[-levels, levels]`` (see :func:`weight_limit`).
    """
    clip = torch.as_tensor(clip, dtype=torch.float32)
    return (clip / weight_limit(bits, levels)).clamp(min=eps).to(torch.float32)


# --------------------------------------------------------------------------------------------
# activations (per-tensor, full range, as ONNX QuantizeLinear)
# --------------------------------------------------------------------------------------------


def quantize_int(x: Tensor, scale: Tensor | float, bits: int = 8) -> Tensor:
    """``clamp(round_half_even(x / scale), -2^(b-1), 2^(b-1)-1)`` as int8 (bits <= 8) or int16/int32."""
    lo, hi = qrange(bits)
    q = torch.clamp(torch.round(x / scale), lo, hi)
    return q.to(torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32)


def dequantize(q: Tensor, scale: Tensor | float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``q · scale`` (zero point 0)."""
    return q.to(dtype) * scale


def fake_quant(x: Tensor, scale: Tensor | float, bits: int = 8) -> Tensor:
    """``dequantize(quantize_int(x, scale, bits), scale)`` computed in x's float dtype.

    Eager arithmetic (``x / scale``, round half to even, clamp, ``· scale``), bit-identical to an
    ONNX ``QuantizeLinear``→``DequantizeLinear`` pair with the same scale and zero point 0.
    """
    lo, hi = qrange(bits)
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return torch.clamp(torch.round(x / scale), lo, hi) * scale


def fake_quant_op(x: Tensor, scale: Tensor, bits: int = 8) -> Tensor:
    """The same as :func:`fake_quant` through ``torch.fake_quantize_per_tensor_affine``.

    The ONNX exporter maps this op to a QuantizeLinear/DequantizeLinear pair. Note torch computes
    ``x · (1/scale)`` rather than ``x / scale``: the two can differ by one level on exact ties.
    """
    lo, hi = qrange(bits)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(())
    zero = torch.zeros((), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, lo, hi).to(x.dtype)


# --------------------------------------------------------------------------------------------
# weights (per-tensor, per-channel, per-group; narrow symmetric range)
# --------------------------------------------------------------------------------------------


def expand_group_scale(scale: Tensor, shape: tuple[int, ...], group_size: int) -> Tensor:
    """Broadcast a weight scale to the weight's shape.

    ``scale`` is ``[]`` (per tensor), ``[out]`` (per output channel) or ``[out, in // group]``
    (per group of ``group_size`` consecutive input columns; 2-D weights only).
    """
    if scale.dim() == 0:
        return scale
    if group_size:
        return scale.repeat_interleave(group_size, dim=1)  # [out, in]
    return scale.reshape(-1, *([1] * (len(shape) - 1)))  # [out, 1, ...]


def weight_clip(weight: Tensor, granularity: str, group_size: int = 0) -> Tensor:
    """Max |w| per tensor (``[]``), per output channel (``[out]``) or per group (``[out, in // g]``)."""
    w = weight.detach().abs().float()
    if granularity == "tensor":
        return w.amax()
    if granularity == "channel":
        return w.reshape(w.shape[0], -1).amax(dim=1)
    if granularity == "group":
        out_features, in_features = w.shape[0], w[0].numel()
        return w.reshape(out_features, in_features // group_size, group_size).amax(dim=2)
    raise ValueError(f"unknown weight granularity {granularity!r} (tensor, channel, group)")


def quantize_weight(weight: Tensor, scale: Tensor, bits: int, group_size: int = 0, levels: int = 0) -> Tensor:
    """Integer weight ``clamp(round(w / scale), -limit, limit)`` as int8 (4-bit values too).

    ``limit`` is ``qmax(bits)`` or the narrowed ``levels`` (:func:`weight_limit`).
    """
    if bits > 8:
        raise ValueError(f"weights are stored in int8: bits must be <= 8, got {bits}")
    limit = weight_limit(bits, levels)
    flat = weight.detach().float().reshape(weight.shape[0], -1) if group_size else weight.detach().float()
    full_scale = expand_group_scale(scale.float(), tuple(flat.shape), group_size)
    q = torch.clamp(torch.round(flat / full_scale), -limit, limit).to(torch.int8)
    return q.reshape(weight.shape)


def dequantize_weight(weight_int: Tensor, scale: Tensor, group_size: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Float weight ``weight_int · scale`` broadcast per tensor / channel / group."""
    flat = weight_int.reshape(weight_int.shape[0], -1) if group_size else weight_int
    full_scale = expand_group_scale(scale.to(dtype), tuple(flat.shape), group_size)
    return (flat.to(dtype) * full_scale).reshape(weight_int.shape)


def relative_error(reference: Tensor, approx: Tensor) -> float:
    """``||approx - reference|| / ||reference||`` (0 for an all-zero reference)."""
    ref = reference.detach().double()
    norm = ref.norm()
    if norm == 0:
        return 0.0
    return float((approx.detach().double() - ref).norm() / norm)


__all__ = [
    "dequantize",
    "dequantize_weight",
    "expand_group_scale",
    "fake_quant",
    "fake_quant_op",
    "qmax",
    "qrange",
    "quantize_embeddings",
    "quantize_int",
    "quantize_weight",
    "relative_error",
    "scale_from_clip",
    "weight_clip",
]


def quantize_embeddings(model: nn.Module, bits: int = 8) -> dict[str, tuple[Tensor, Tensor]]:
    """Round every ``nn.Embedding`` table of ``model`` (in place) to ``bits``-bit integers per row.

    In a deployed LM the embedding is a large share of the bytes (38.6M of mamba-130m's 129M
    parameters), so integer recipes store it as integers too: symmetric per-row scales
    ``max|row| / qmax``. The table is rounded in place (a tied LM head that still shares it sees
    the same values), so the quantized model computes what its exported artifact computes.
    Rounding is idempotent: a rounded table rounds to itself. Returns ``{module path: (integer
    table, per-row scale)}``.
    """
    tables = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            weight = module.weight.detach().float()
            scale = scale_from_clip(weight_clip(weight, "channel"), bits)
            values = quantize_weight(weight, scale, bits)
            with torch.no_grad():
                module.weight.copy_(dequantize_weight(values, scale).to(module.weight.dtype))
            tables[name] = (values, scale)
    return tables
