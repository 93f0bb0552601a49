"""Quantized models as ONNX QDQ graphs with integer weights (filled in below)."""

from __future__ import annotations

import contextlib

from torch import nn


def is_quantized(model: nn.Module) -> bool:
    try:
        from quantize.modules import is_quantized_module
    except ImportError:
        return False
    return any(is_quantized_module(m) for m in model.modules())


@contextlib.contextmanager
def quantized_for_export(model: nn.Module):
    """Yield ``(model_to_trace, integer_weights)``; float models pass through unchanged."""
    yield model, {}


def rewrite_integer_weights(proto, weights, opset):
    return proto


def needs_int4(model: nn.Module) -> bool:
    return any(getattr(m, "weight_bits", 8) <= 4 for m in model.modules())
