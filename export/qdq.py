"""Quantized models as ONNX QDQ graphs with integer weights.

Two steps:

1. **Export twins** (:func:`quantized_for_export`): during tracing, each ``quantize.modules``
   layer is swapped for a twin that computes the same function in an exporter-friendly way:

   * the online Hadamard transform (``rotate``) becomes two small ``MatMul`` nodes with the
     normalised factors ``H_p`` and ``H_m`` of ``H_n = H_m ⊗ H_p``
     (:func:`quantize.hadamard.hadamard_transform_matmul`);
   * the input quantizer becomes ``torch.fake_quantize_per_tensor_affine``, which the exporter
     emits as a ``QuantizeLinear``→``DequantizeLinear`` pair (int8, zero point 0);
   * the weight becomes a float parameter named ``qweight_t`` (linear, stored transposed
     ``[in, out]`` so the graph is a plain ``MatMul``) or ``qweight`` (conv), holding
     ``weight_int · weight_scale`` exactly.

2. **Integer rewrite** (:func:`rewrite_integer_weights`): each of those float initializers is
   replaced by the integer tensor itself (``int8``; ``int4`` packed two per byte for weights of 4
   bits or fewer) and its scale, feeding a ``DequantizeLinear`` whose output keeps the old name.
   Per-channel scales use ``axis``; per-group scales use blocked quantization (``block_size``,
   opset 21). The file then holds one byte (or half a byte) per weight.

ONNX Runtime fuses ``DequantizeLinear`` pairs around ``MatMul`` into integer kernels
(``MatMulIntegerToFloat`` for int8 activations and weights); :func:`runtime_kernels` lists what it
actually runs. Blocked 4-bit weights read by ``MatMul`` are written as ``MatMulNBits`` nodes
directly (:func:`_matmul_nbits`), not left for ONNX Runtime's load-time fusion: a fused weight is a
new tensor each session builds for itself, which no two sessions can share
(``targets.ort_capi``).

Activation quantizers of other than 8 bits keep the eager fake-quant arithmetic
(``Div``/``Round``/``Clip``/``Mul``): ONNX ``QuantizeLinear`` saturates to the container's range.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantize.qdq import quantize_embeddings  # noqa: F401  (re-exported: export rounds embeddings with it)


def is_quantized(model: nn.Module) -> bool:
    try:
        from quantize.modules import is_quantized_module
    except ImportError:
        return False
    return any(is_quantized_module(m) for m in model.modules())


def needs_int4(model: nn.Module) -> bool:
    """True when a weight needs opset 21 (4-bit values, or per-group scales)."""
    return any(getattr(m, "weight_bits", 8) <= 4 or getattr(m, "group_size", 0) for m in model.modules()
               if hasattr(m, "weight_int"))


@dataclass
class IntegerWeight:
    """What the rewrite needs for one float weight initializer."""

    values: np.ndarray  # integers, the initializer's layout
    scale: np.ndarray  # float32: [] per tensor, [n] along ``axis``, or blocked like ``values``
    bits: int
    axis: int = 0
    block_size: int = 0
    act_block: int = 0  # > 0: the consuming MatMul becomes MatMulNBits at accuracy level 4 (int8 activations per block)


def _qdq_activation(x: Tensor, scale: float, bits: int) -> Tensor:
    if bits == 8:
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / scale), lo, hi) * scale


class _ExportQuantLinear(nn.Module):
    """Twin of ``QuantLinear`` for tracing: rotation ops, QDQ input, MatMul with ``qweight_t``."""

    def __init__(self, layer):
        super().__init__()
        self.rotate = bool(layer.rotate)
        self.channel_dim = getattr(layer, "channel_dim", -1)
        self.input_scale = None if layer.input_scale is None else float(layer.input_scale)
        self.act_bits = int(layer.act_bits)
        # dynamic per-block int8 activations: computed inside MatMulNBits (accuracy level 4), so the
        # traced graph is a plain MatMul that the integer rewrite replaces
        self.act_block = int(getattr(layer, "act_block", 0))
        self.qweight_t = nn.Parameter(layer.weight.detach().float().t().contiguous(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.rotate:
            # two small MatMuls (H_m ⊗ H_p), not the FWHT butterflies: a few kernels per step
            # instead of hundreds of Squeeze/Unsqueeze/Split/Concat; equal up to float rounding
            from quantize.hadamard import hadamard_transform_matmul

            x = hadamard_transform_matmul(x)
        if self.input_scale is not None:
            x = _qdq_activation(x, self.input_scale, self.act_bits)
        # act_block: no activation ops here; the MatMul becomes MatMulNBits (accuracy level 4)
        y = torch.matmul(x, self.qweight_t)
        return y if self.bias is None else y + self.bias


class _ExportQuantConv(nn.Module):
    """Twin of ``QuantConv1d``/``QuantConv2d``: QDQ input, conv with the ``qweight`` initializer."""

    def __init__(self, layer):
        super().__init__()
        self.rotate = bool(layer.rotate)
        self.channel_dim = getattr(layer, "channel_dim", 1)
        self.input_scale = None if layer.input_scale is None else float(layer.input_scale)
        self.act_bits = int(layer.act_bits)
        self.dims = len(layer.kernel_size)
        # the conv's geometry, as models read it from their layers (e.g. causal windows)
        self.kernel_size, self.in_channels, self.out_channels = layer.kernel_size, layer.in_channels, layer.out_channels
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        self.qweight = nn.Parameter(layer.weight.detach().float().clone(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.rotate:
            from quantize.modules import rotate_channels

            x = rotate_channels(x, self.channel_dim)
        if self.input_scale is not None:
            x = _qdq_activation(x, self.input_scale, self.act_bits)
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, self.qweight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _ChannelAffine(nn.Module):
    """An inference-mode BatchNorm as ``x·scale + shift`` over dim 1 (same numbers, no Conv+BN fusion)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        inv_std = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
        scale = inv_std * (bn.weight.detach().float() if bn.affine else 1.0)
        shift = -bn.running_mean.detach().float() * scale + (bn.bias.detach().float() if bn.affine else 0.0)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)


class _ExportQuantAct(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.bits = int(act.bits)
        self.channel_scales = act.scale.dim() > 0  # per-channel (grouped/clustered) scales: a per-axis QDQ
        if self.channel_scales:
            self.register_buffer("scale_vector", act.scale.detach().float().clone())
            self.register_buffer("zero_point", torch.zeros(act.scale.numel(), dtype=torch.int32))
            self.scale = None
        else:
            self.scale = float(act.scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_scales:
            if self.bits == 8:
                return torch.fake_quantize_per_channel_affine(x, self.scale_vector, self.zero_point, x.dim() - 1, -128, 127)
            lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
            return torch.clamp(torch.round(x / self.scale_vector), lo, hi) * self.scale_vector
        return _qdq_activation(x, self.scale, self.bits)


def _linear_weight(layer) -> IntegerWeight:
    """``qweight_t`` = ``Wᵀ`` ``[in, out]``: per-channel scales run along axis 1, groups along axis 0."""
    values = layer.weight_int.detach().cpu().numpy().T.copy()  # [in, out]
    scale = layer.weight_scale.detach().float().cpu().numpy()
    if layer.group_size:
        return IntegerWeight(values, scale.T.copy(), layer.weight_bits, axis=0, block_size=layer.group_size,
                             act_block=int(getattr(layer, "act_block", 0)))
    if scale.ndim == 0:
        return IntegerWeight(values, scale, layer.weight_bits)
    return IntegerWeight(values, scale, layer.weight_bits, axis=1)


def _conv_weight(layer) -> IntegerWeight:
    values = layer.weight_int.detach().cpu().numpy().copy()
    scale = layer.weight_scale.detach().float().cpu().numpy()
    return IntegerWeight(values, scale, layer.weight_bits, axis=0)


@contextlib.contextmanager
def quantized_for_export(model: nn.Module, prefix: str = "model.", int_embeddings: dict[str, Any] | None = None,
                         ) -> Iterator[tuple[nn.Module, dict[str, IntegerWeight]]]:
    """Yield ``(model_to_trace, {initializer name: IntegerWeight})``.

    Float models pass through unchanged (and an empty dict). Quantized models are deep-copied
    with their ``quantize.modules`` layers swapped for export twins; ``prefix`` is the path of
    the model inside the traced wrapper (``StepGraph.model``).
    """
    if not is_quantized(model):
        yield model, {}
        return
    from quantize.modules import QuantAct, QuantConv1d, QuantConv2d, QuantLinear

    twin = copy.deepcopy(model).eval()
    weights: dict[str, IntegerWeight] = {}
    for name, module in list(twin.named_modules()):
        if isinstance(module, QuantLinear):
            new: nn.Module = _ExportQuantLinear(module)
            weights[f"{prefix}{name}.qweight_t"] = _linear_weight(module)
        elif isinstance(module, (QuantConv1d, QuantConv2d)):
            new = _ExportQuantConv(module)
            weights[f"{prefix}{name}.qweight"] = _conv_weight(module)
        elif isinstance(module, QuantAct):
            new = _ExportQuantAct(module)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            # the exporter folds Conv→BatchNorm into new float constants, which would lose the
            # integer conv weights: trace BatchNorm as the per-channel affine it is at inference
            new = _ChannelAffine(module)
        else:
            continue
        parent_name, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent_name) if parent_name else twin, leaf, new)
    for name, (values, scale) in (int_embeddings or {}).items():
        weights[f"{prefix}{name}.weight"] = IntegerWeight(values.cpu().numpy(), scale.cpu().numpy(), 8, axis=0)
    yield twin, weights


def pack_int4(values: np.ndarray) -> bytes:
    """Signed 4-bit values (−8..7), row-major, two per byte: element ``2i`` in the low nibble and
    ``2i+1`` in the high nibble (the ONNX ``INT4`` layout); an odd count pads the last high nibble."""
    flat = np.asarray(values, dtype=np.int8).ravel()
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"int4 values must lie in -8..7 (got {int(flat.min())}..{int(flat.max())})")
    nibbles = (flat.astype(np.uint8) & 0x0F)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def _int_tensor(name: str, values: np.ndarray, bits: int):
    from onnx import TensorProto, numpy_helper

    if bits <= 4:
        # int4: two values per byte in raw_data, so the graph holds (and a device loads) the packed
        # bytes; onnx's helper would store one int32 per byte pair in int32_data instead
        tensor = TensorProto(name=name, data_type=TensorProto.INT4, dims=list(values.shape))
        tensor.raw_data = pack_int4(values)
        return tensor
    return numpy_helper.from_array(values.astype(np.int8), name)


def rewrite_integer_weights(proto, weights: dict[str, IntegerWeight], opset: int):
    """Replace float weight initializers by integer ones + ``DequantizeLinear`` (see module docs)."""
    from onnx import helper, numpy_helper

    from edgeseq.errors import EdgeseqError

    graph = proto.graph
    weights = dict(weights)
    _matmul_nbits(graph, weights)
    if any(node.domain == "com.microsoft" for node in graph.node) and not any(
            entry.domain == "com.microsoft" for entry in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    tied_nodes = _tied_tables(graph, weights)
    initializers = {init.name: i for i, init in enumerate(graph.initializer)}
    missing = sorted(set(weights) - set(initializers))
    if missing:
        raise EdgeseqError(f"the traced ONNX graph lacks the weight initializer {missing[0]!r}; cannot store integer weights")
    new_nodes = []
    for name in sorted(weights, key=lambda n: initializers[n], reverse=True):
        w = weights[name]
        del graph.initializer[initializers[name]]
        if w.block_size and opset < 21:
            raise EdgeseqError(f"{name}: per-group weight scales need opset 21 (blocked DequantizeLinear)")
        graph.initializer.append(_int_tensor(f"{name}_int", w.values, w.bits))
        graph.initializer.append(numpy_helper.from_array(w.scale.astype(np.float32), f"{name}_scale"))
        attrs: dict[str, Any] = {}
        if w.scale.ndim > 0:
            attrs["axis"] = w.axis
        if w.block_size:
            attrs["block_size"] = w.block_size
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int", f"{name}_scale"], [name],
                                          name=f"{name}_dequantize", **attrs))
    new_nodes += _rewrite_transposed_copies(graph, weights) + tied_nodes
    # the new nodes go first (their inputs are constants)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + existing)
    return proto


def _remove_initializer(graph, name: str) -> None:
    """Delete one initializer in place (rebuilding the list would copy every weight tensor)."""
    for index, init in enumerate(graph.initializer):
        if init.name == name:
            del graph.initializer[index]
            return


MATMUL_NBITS_ACCURACY = 4  # int8 activations quantized per block (quantize.modules.block_fake_quant)


def matmul_nbits_weight(w: IntegerWeight) -> tuple[np.ndarray, np.ndarray]:
    """``(B, scales)`` inputs of ``com.microsoft.MatMulNBits`` for a ``[K, N]`` blocked weight.

    ``B`` is ``[N, K / block, block · bits / 8]`` uint8: row ``n`` of ``Wᵀ``, block by block, each
    signed value stored with the kernel's default zero point ``2^(bits-1)`` added (4-bit: two per
    byte, the first in the low nibble); ``scales`` is ``[N · K / block]`` float32, row-major.
    """
    k, n = w.values.shape
    block = w.block_size
    offset = 1 << (w.bits - 1)
    q = (w.values.T.astype(np.int16) + offset).astype(np.uint8).reshape(n, k // block, block)  # [N, blocks, block]
    if w.bits == 4:
        q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    scales = np.ascontiguousarray(w.scale.T, dtype=np.float32).reshape(-1)  # w.scale: [K / block, N]
    return np.ascontiguousarray(q), scales


def _matmul_nbits(graph, weights: dict[str, IntegerWeight]) -> None:
    """Weights of layers with dynamic block activations: their ``MatMul`` becomes one
    ``MatMulNBits`` node (``accuracy_level`` 4) holding the packed integers, which ONNX Runtime
    runs as int8×int{4,8} block dot products (see :func:`quantize.modules.block_fake_quant`);
    blocked 4-bit weights under float or static int8 activations become ``MatMulNBits`` at
    accuracy level 1 (:func:`_float_int4`). Removes the handled names from ``weights``."""
    from edgeseq.errors import EdgeseqError

    consumers: dict[str, list] = {}
    producers: dict[str, Any] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node
    for name, w in list(weights.items()):
        if not w.act_block:
            if _float_int4(graph, name, w, consumers):
                _replace_with_matmul_nbits(graph, name, w, consumers[name], accuracy_level=1)
                del weights[name]
            continue
        uses = consumers.get(name, [])
        if not uses or any(node.op_type != "MatMul" or list(node.input).index(name) != 1 for node in uses):
            raise EdgeseqError(f"{name}: a weight with dynamic block activations must feed MatMul nodes only "
                               f"(found {sorted({node.op_type for node in uses}) or 'no use'})")
        if w.bits not in (4, 8) or w.block_size != w.act_block:
            raise EdgeseqError(f"{name}: MatMulNBits needs 4- or 8-bit weights whose group is the activation block")
        _replace_with_matmul_nbits(graph, name, w, uses, accuracy_level=MATMUL_NBITS_ACCURACY)
        del weights[name]


def _float_int4(graph, name: str, w: IntegerWeight, consumers: dict) -> bool:
    """A blocked 4-bit float32 weight read only as ``MatMul``'s second input: ``MatMulNBits`` at
    accuracy level 1 computes ``x @ DQ(W)`` in float from the packed weight, the recipe's function.

    * Float activations (w4a16, w4a16-gptq): the same node ONNX Runtime's ``DequantizeLinear →
      MatMul`` fusion would build at load (same packing, zero point and scales: bitwise the same
      outputs), but stored once in the file, so that every session reads it in place.
    * A static int8 ``QuantizeLinear → DequantizeLinear`` activation (w4a8, w4a8-gptq): ONNX Runtime
      fuses such a pair into no kernel (its int8 matmuls need 8-bit weights, its 4-bit one float
      activations), so the int4 weight would be dequantized to float on every call (6-layer
      130m-width step: 2× the fp32 artifact's time); here the dequantized activation feeds it.
    """
    block = w.block_size
    if w.bits != 4 or not block or block < 16 or block & (block - 1) or w.values.ndim != 2:
        return False
    if next((init.data_type for init in graph.initializer if init.name == name), None) != 1:  # float32 only
        return False
    uses = consumers.get(name, [])
    return bool(uses) and all(node.op_type == "MatMul" and list(node.input).index(name) == 1 for node in uses)


# A packed weight larger than this is split along N into MatMulNBits nodes of at most about this
# size (their outputs concatenated): ONNX Runtime packs each shared weight again in every session
# before it finds the first session's copy (its key is a hash of the packed bytes), so a session
# opened second briefly holds one packed weight twice — 130m's 8-bit LM head alone is 41 MB.
# Splits fall on multiples of 256 columns, where the kernel's column tiles fall anyway: the outputs
# are bitwise those of the whole weight.
MATMUL_NBITS_PART_BYTES = 12 << 20


def matmul_nbits_parts(n: int, nbytes: int, part_bytes: int | None = None) -> list[tuple[int, int]]:
    """Column ranges ``[a, b)`` of an ``N``-column packed weight of ``nbytes``: one range when it
    is small, else ranges of about ``part_bytes`` (:data:`MATMUL_NBITS_PART_BYTES`) starting at
    multiples of 256 columns."""
    parts = -(-nbytes // (part_bytes or MATMUL_NBITS_PART_BYTES))
    if parts <= 1 or n < 512:
        return [(0, n)]
    width = -(-n // parts)
    width = -(-width // 256) * 256
    return [(a, min(n, a + width)) for a in range(0, n, width)]


def _replace_with_matmul_nbits(graph, name: str, w: IntegerWeight, uses: list, accuracy_level: int) -> None:
    """Each ``MatMul`` reading the weight initializer ``name`` becomes one ``MatMulNBits`` node, or
    for a large weight one per column range (:func:`matmul_nbits_parts`) and a ``Concat``."""
    from onnx import helper, numpy_helper

    k, n = w.values.shape
    packed, scales = matmul_nbits_weight(w)
    ranges = matmul_nbits_parts(n, packed.nbytes + scales.nbytes)
    tag = [""] if len(ranges) == 1 else [f"_part{i}" for i in range(len(ranges))]
    _remove_initializer(graph, name)
    by_row = scales.reshape(n, -1)
    for t, (a, b) in zip(tag, ranges):
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(packed[a:b]), f"{name}_nbits{t}"))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(by_row[a:b]).reshape(-1), f"{name}_scale{t}"))
    for k_use, node in enumerate(uses):
        index = next(i for i, n in enumerate(graph.node) if n.name == node.name and list(n.output) == list(node.output))
        del graph.node[index]
        outputs = list(node.output) if len(ranges) == 1 else [f"{node.output[0]}{t}" for t in tag]
        new = [helper.make_node(
            "MatMulNBits", [node.input[0], f"{name}_nbits{t}", f"{name}_scale{t}"], [out],
            name=f"{name}_matmul_nbits{k_use}{t}", domain="com.microsoft",
            K=k, N=b - a, bits=w.bits, block_size=w.block_size, accuracy_level=accuracy_level)
            for t, out, (a, b) in zip(tag, outputs, ranges)]
        if len(ranges) > 1:
            new.append(helper.make_node("Concat", outputs, list(node.output), name=f"{name}_matmul_nbits{k_use}_concat",
                                        axis=-1))
        for offset, made in enumerate(new):
            graph.node.insert(index + offset, made)


def _row_lookup(graph, name: str, w: IntegerWeight, uses: list) -> list:
    """An untied integer table read by ``Gather``: gather the int8 rows, then scale only those."""
    from onnx import TensorProto, helper, numpy_helper

    t_int, scale = f"{name}_int", f"{name}_scale"
    graph.initializer.append(numpy_helper.from_array(w.values.astype(np.int8), t_int))
    graph.initializer.append(numpy_helper.from_array(w.scale.astype(np.float32), scale))
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}_last"))
    _remove_initializer(graph, name)
    nodes = []
    for k, gather in enumerate(uses):
        ids, out, p = gather.input[1], gather.output[0], f"{name}_lookup{k}"
        nodes += [
            helper.make_node("Gather", [t_int, ids], [f"{p}_rows_int"], name=f"{p}_gather", axis=0),
            helper.make_node("Cast", [f"{p}_rows_int"], [f"{p}_rows"], name=f"{p}_cast", to=TensorProto.FLOAT),
            helper.make_node("Gather", [scale, ids], [f"{p}_scale"], name=f"{p}_gather_scale", axis=0),
            helper.make_node("Unsqueeze", [f"{p}_scale", f"{name}_last"], [f"{p}_scale_col"], name=f"{p}_unsqueeze"),
            helper.make_node("Mul", [f"{p}_rows", f"{p}_scale_col"], [out], name=f"{p}_mul"),
        ]
        graph.node.remove(gather)
    return nodes


def _tied_tables(graph, weights: dict[str, IntegerWeight]) -> list:
    """A tied embedding/LM head stored once, in the layout the head's ``MatMul`` wants.

    The traced graph reads the table ``E [V, D]`` with ``Gather`` and a transposed float copy
    ``Eᵀ [D, V]`` with ``MatMul``. Both become one int8 initializer ``Eᵀ`` with per-row scales:
    the head is ``DequantizeLinear(Eᵀ, axis=1)`` → ``MatMul`` (ONNX Runtime fuses it into an
    integer ``MatMulNBits`` kernel), and the lookup gathers int8 columns of ``Eᵀ`` and scales
    only the rows it needs, so no step dequantizes the whole table. Removes the handled names
    from ``weights``; returns the nodes to add.
    """
    from onnx import TensorProto, helper, numpy_helper

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes: list = []
    for name, w in list(weights.items()):
        if w.values.ndim != 2 or w.block_size or w.axis != 0 or w.scale.ndim != 1 or w.bits > 8:
            continue
        uses = consumers.get(name, [])
        if not uses or any(n.op_type != "Gather" or n.input[0] != name or
                           any(a.name == "axis" and a.i != 0 for a in n.attribute) for n in uses):
            continue
        table = (w.values.astype(np.float32) * w.scale[:, None]).T
        copy = next((init for init in graph.initializer if tuple(init.dims) == table.shape and init.data_type == 1
                     and np.array_equal(numpy_helper.to_array(init), table)), None)
        if copy is None:  # not tied (or the head has its own quantized copy): gather rows, scale those
            nodes += _row_lookup(graph, name, w, uses)
            del weights[name]
            continue
        head, t_int, scale = copy.name, f"{name}_t_int", f"{name}_scale"
        kept = [init for init in graph.initializer if init.name not in (name, head)]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        graph.initializer.append(numpy_helper.from_array(w.values.T.astype(np.int8).copy(), t_int))
        graph.initializer.append(numpy_helper.from_array(w.scale.astype(np.float32), scale))
        graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}_flat"))
        graph.initializer.append(numpy_helper.from_array(np.array([w.values.shape[1]], dtype=np.int64), f"{name}_width"))
        nodes.append(helper.make_node("DequantizeLinear", [t_int, scale], [head], name=f"{head}_dequantize", axis=1))
        for k, gather in enumerate(uses):
            ids, out, p = gather.input[1], gather.output[0], f"{name}_lookup{k}"
            nodes += [
                helper.make_node("Reshape", [ids, f"{name}_flat"], [f"{p}_ids"], name=f"{p}_flatten"),
                helper.make_node("Gather", [t_int, f"{p}_ids"], [f"{p}_cols"], name=f"{p}_gather", axis=1),
                helper.make_node("Transpose", [f"{p}_cols"], [f"{p}_rows_int"], name=f"{p}_transpose", perm=[1, 0]),
                helper.make_node("Cast", [f"{p}_rows_int"], [f"{p}_rows"], name=f"{p}_cast", to=TensorProto.FLOAT),
                helper.make_node("Gather", [scale, f"{p}_ids"], [f"{p}_scale"], name=f"{p}_gather_scale", axis=0),
                helper.make_node("Unsqueeze", [f"{p}_scale", f"{name}_flat"], [f"{p}_scale_col"], name=f"{p}_unsqueeze"),
                helper.make_node("Mul", [f"{p}_rows", f"{p}_scale_col"], [f"{p}_scaled"], name=f"{p}_mul"),
                helper.make_node("Shape", [ids], [f"{p}_ids_shape"], name=f"{p}_shape"),
                helper.make_node("Concat", [f"{p}_ids_shape", f"{name}_width"], [f"{p}_out_shape"], name=f"{p}_concat", axis=0),
                helper.make_node("Reshape", [f"{p}_scaled", f"{p}_out_shape"], [out], name=f"{p}_reshape"),
            ]
            graph.node.remove(gather)
        del weights[name]
    return nodes


def _rewrite_transposed_copies(graph, weights: dict[str, IntegerWeight]) -> list:
    """Constant folding may leave a transposed float copy of a weight (a tied LM head under
    ``MatMul``): store it as the transposed integers too."""
    from onnx import helper, numpy_helper

    by_shape: dict[tuple[int, ...], list[tuple[str, IntegerWeight]]] = {}
    for name, w in weights.items():
        if w.values.ndim == 2 and not w.block_size:
            by_shape.setdefault(tuple(reversed(w.values.shape)), []).append((name, w))
    nodes = []
    for index in reversed(range(len(graph.initializer))):
        init = graph.initializer[index]
        candidates = by_shape.get(tuple(init.dims))
        if not candidates or init.data_type != 1:  # float32
            continue
        array = numpy_helper.to_array(init)
        for name, w in candidates:
            scale = w.scale if w.scale.ndim == 0 else np.expand_dims(w.scale, 1 - w.axis)
            if np.array_equal(array, (w.values.astype(np.float32) * scale).T):
                # one integer copy in the file: Transpose of the integers (ONNX Runtime folds it
                # at load, an integer op is not part of a QDQ group), then DequantizeLinear
                new_name = init.name
                del graph.initializer[index]
                nodes.append(helper.make_node("Transpose", [f"{name}_int"], [f"{new_name}_int"], name=f"{new_name}_transpose",
                                              perm=[1, 0]))
                attrs = {"axis": 1 - w.axis} if w.scale.ndim else {}
                nodes.append(helper.make_node("DequantizeLinear", [f"{new_name}_int", f"{name}_scale"], [new_name],
                                              name=f"{new_name}_dequantize", **attrs))
                break
    return nodes


def dedupe_transposed(proto):
    """Store a float weight once when the graph holds it and its transpose (a tied LM head: the
    embedding for ``Gather`` and, from the exporter's constant folding, its transpose for ``MatMul``).

    The copy a ``MatMul`` reads as its second input is dropped and that ``MatMul`` becomes a
    ``Gemm`` with ``transB`` on the kept tensor (through a ``Reshape`` to two dimensions and back):
    both graphs of an artifact then read the one tensor in the file, shared between ONNX Runtime
    sessions (``targets.ort_capi``). A ``Transpose`` node in its place would be folded at load
    into a new tensor per session (130m fp32: 2 × 154 MB). A copy read any other way keeps the
    ``Transpose`` node.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    by_shape: dict[tuple[int, ...], list] = {}
    for init in graph.initializer:
        if len(init.dims) == 2 and init.data_type == 1 and init.dims[0] != init.dims[1]:
            by_shape.setdefault(tuple(init.dims), []).append(init)
    pairs: list[tuple[str, str]] = []  # (name, name of its transpose)
    paired: set[str] = set()
    for shape, inits in by_shape.items():
        partners = by_shape.get(tuple(reversed(shape)), [])
        if not partners or shape > tuple(reversed(shape)):
            continue
        for init in inits:
            array = numpy_helper.to_array(init)
            for other in partners:
                if other.name not in paired and np.array_equal(numpy_helper.to_array(other), array.T):
                    pairs.append((init.name, other.name))
                    paired.update((init.name, other.name))
                    break
    if not pairs:
        return proto
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def read_as_matmul_b(name: str) -> bool:
        uses = consumers.get(name, [])
        return bool(uses) and all(n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] == name
                                  and n.input[0] != name for n in uses)

    replace: dict[str, str] = {}  # dropped name -> kept name
    for a, b in pairs:
        dropped, kept = (b, a) if read_as_matmul_b(b) or not read_as_matmul_b(a) else (a, b)
        replace[dropped] = kept
    dims = {init.name: list(init.dims) for init in graph.initializer}
    ranks = _ranks(proto)
    kept_inits = [init for init in graph.initializer if init.name not in replace]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    head: list = []
    rewritten: dict[tuple[str, ...], list] = {}  # a MatMul node's outputs -> its Gemm form
    for dropped, kept in replace.items():
        if not read_as_matmul_b(dropped):
            head.append(helper.make_node("Transpose", [kept], [dropped], name=f"{dropped}_transpose", perm=[1, 0]))
            continue
        n_out, k_in = dims[kept]  # kept is [N, K]; the MatMul read its transpose [K, N]
        for index, node in enumerate(consumers[dropped]):
            p = f"{dropped}_gemm{index}"
            if ranks.get(node.input[0]) == 2:  # [rows, K] (a step's head): Gemm alone, no shape arithmetic
                rewritten[tuple(node.output)] = [helper.make_node("Gemm", [node.input[0], kept], list(node.output),
                                                                  name=p, transB=1)]
                continue
            graph.initializer.extend([
                numpy_helper.from_array(np.array([-1, k_in], dtype=np.int64), f"{p}_rows"),
                numpy_helper.from_array(np.array([0], dtype=np.int64), f"{p}_zero"),
                numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{p}_last"),
                numpy_helper.from_array(np.array([n_out], dtype=np.int64), f"{p}_n"),
            ])
            x, out = node.input[0], node.output[0]
            rewritten[tuple(node.output)] = [
                helper.make_node("Shape", [x], [f"{p}_shape"], name=f"{p}_shape"),
                helper.make_node("Slice", [f"{p}_shape", f"{p}_zero", f"{p}_last"], [f"{p}_lead"], name=f"{p}_lead"),
                helper.make_node("Concat", [f"{p}_lead", f"{p}_n"], [f"{p}_out_shape"], name=f"{p}_out_shape", axis=0),
                helper.make_node("Reshape", [x, f"{p}_rows"], [f"{p}_x2"], name=f"{p}_x2"),
                helper.make_node("Gemm", [f"{p}_x2", kept], [f"{p}_y2"], name=p, transB=1),
                helper.make_node("Reshape", [f"{p}_y2", f"{p}_out_shape"], [out], name=f"{p}_y"),
            ]
    nodes = list(head)
    for node in graph.node:
        nodes.extend(rewritten.get(tuple(node.output), [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def _ranks(proto) -> dict[str, int]:
    """The rank of each tensor of ``proto``'s main graph that ONNX shape inference can tell, run on
    a light copy (large initializers as typed inputs: no weight bytes are copied)."""
    from onnx import helper, shape_inference

    graph = proto.graph
    small, large = [], []
    for init in graph.initializer:
        if not init.external_data and len(init.raw_data) + len(init.int64_data) * 8 <= 4096:
            small.append(init)
        else:
            large.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light = helper.make_model(helper.make_graph(list(graph.node), "ranks", [*graph.input, *large], list(graph.output),
                                                small), opset_imports=list(proto.opset_import))
    try:
        inferred = shape_inference.infer_shapes(light).graph
    except Exception:  # no shapes: callers fall back to rank-free forms
        return {}
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.value_info, *inferred.input, *inferred.output]
            if v.type.tensor_type.HasField("shape")}


def runtime_kernels(onnx_path: str, scratch_dir: str) -> dict[str, int]:
    """Op types ONNX Runtime runs after its graph optimizations (shows the fused integer kernels),
    in the session every edgeseq runtime opens (:func:`targets.runtimes.ort_session`)."""
    import os

    import onnx

    from targets.runtimes import ort_session

    optimized = os.path.join(scratch_dir, "optimized.onnx")
    ort_session(onnx_path, optimized_model=optimized)
    counts: dict[str, int] = {}
    for node in onnx.load(optimized, load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    os.unlink(optimized)
    return dict(sorted(counts.items()))


__all__ = ["IntegerWeight", "dedupe_transposed", "is_quantized", "needs_int4", "quantized_for_export", "rewrite_integer_weights", "runtime_kernels"]
