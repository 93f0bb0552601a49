"""Fake-quant arithmetic and quantized modules."""

import pytest
import torch

from quantize.modules import QuantAct, QuantConv1d, QuantLinear, module_from_spec
from quantize.qdq import (
    dequantize,
    dequantize_weight,
    fake_quant,
    fake_quant_op,
    qrange,
    quantize_int,
    quantize_weight,
    scale_from_clip,
    weight_clip,
)


def test_ranges():
    assert qrange(8) == (-128, 127)
    assert qrange(4) == (-8, 7)


def test_round_half_even_and_saturation_like_onnx():
    scale = torch.tensor(0.5)
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, 100.0, -100.0])
    q = quantize_int(x, scale, 8)
    assert q.dtype == torch.int8
    assert q.tolist() == [0, 2, 2, 0, 127, -128]
    assert torch.equal(fake_quant(x, scale), dequantize(q, scale))


def test_fake_quant_op_matches_eager_off_ties():
    x = torch.randn(1000) * 3
    scale = scale_from_clip(x.abs().max(), 8)
    assert torch.allclose(fake_quant_op(x, scale), fake_quant(x, scale), atol=float(scale) * 1.0001)
    assert (fake_quant_op(x, scale) != fake_quant(x, scale)).sum() <= 2


@pytest.mark.parametrize("granularity,group", [("tensor", 0), ("channel", 0), ("group", 16)])
@pytest.mark.parametrize("bits", [8, 4])
def test_weight_roundtrip_error_bounded_by_half_step(granularity, group, bits):
    w = torch.randn(8, 64)
    clip = weight_clip(w, granularity, group)
    scale = scale_from_clip(clip, bits)
    q = quantize_weight(w, scale, bits, group)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 2 ** (bits - 1) - 1
    deq = dequantize_weight(q, scale, group)
    step = dequantize_weight(torch.ones_like(q), scale, group)
    assert ((deq - w).abs() <= step / 2 + 1e-7).all()


def test_quant_linear_forward_and_weight_property():
    layer = QuantLinear(16, 4, bias=True, weight_bits=8, granularity="channel", act_bits=8)
    w = torch.randn(4, 16)
    scale = scale_from_clip(weight_clip(w, "channel"), 8)
    layer.set_quantized(quantize_weight(w, scale, 8), scale, torch.zeros(4), torch.tensor(0.05))
    x = torch.randn(3, 16)
    expected = fake_quant(x, torch.tensor(0.05)) @ dequantize_weight(layer.weight_int, scale).T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert layer.weight.shape == (4, 16)
    rebuilt = module_from_spec(layer.quant_spec())
    rebuilt.load_state_dict(layer.state_dict())
    assert torch.equal(rebuilt(x), layer(x))


def test_quant_conv_and_act():
    conv = QuantConv1d(4, 6, 3, padding=1, bias=False, act_bits=8)
    assert conv(torch.randn(2, 4, 10)).shape == (2, 6, 10)
    rebuilt = module_from_spec(conv.quant_spec())
    assert rebuilt.weight_int.shape == conv.weight_int.shape
    act = QuantAct(8, 0.1)
    assert torch.allclose(act(torch.tensor([0.04, 1.0, 50.0])), torch.tensor([0.0, 1.0, 12.7]))
