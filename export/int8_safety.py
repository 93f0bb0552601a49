"""Integer artifacts that no CPU kernel family can overflow: a static check and a kernel model.

ONNX Runtime on x86 turns a signed int8 activation ``QuantizeLinear`` into uint8 (zero point 128)
and fuses ``DequantizeLinear → MatMul`` pairs into ``MatMulIntegerToFloat`` (``ConvInteger`` for
convolutions). Without VNNI (AVX2, AVX-512F/BW — AMD Zen 3 and many laptops) MLAS multiplies
with ``VPMADDUBSW``: two adjacent u8×s8 products along the reduction axis are added into a
**saturating** signed 16-bit sum before the 32-bit accumulation. With u8 activations up to 255
a pair of same-sign weights overflows when ``255 · (|w0| + |w1|) > 32767``, i.e. when
``|w0| + |w1| > 128``. VNNI (``VPDPBUSD``), Arm ``SDOT`` and CUDA accumulate in 32 bits and are
exact. So an artifact is exact on every CPU when no pair of its fused int8 layers can exceed 128;
the int8-activation recipes guarantee it with ``weight_levels = 64``.

* :func:`pairwise_risks` reads an ONNX graph (the file that ships), finds every matmul/conv whose
  activation comes through an 8-bit ``QuantizeLinear`` and whose weight is an int8 initializer,
  and reports the pairs that could saturate — independent of the CPU running the check.
* :func:`saturating_u8s8_matmul` is a model of that kernel (numpy), used by the tests to show
  what a saturating CPU computes without needing one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeseq.errors import EdgeseqError

PAIR_LIMIT = 128  # |w0| + |w1| of a same-sign pair above this can saturate 16 bits with u8 inputs up to 255
_INT16_MAX = 32767


@dataclass
class PairRisk:
    """One fused int8 layer whose weights could saturate pairwise 16-bit accumulation."""

    node: str  # the ONNX node (matmul/conv) that ONNX Runtime fuses into an integer kernel
    weight: str  # its int8 initializer
    columns: int  # output columns (channels) holding at least one unsafe pair
    total_columns: int
    worst_pair: int  # largest |w0| + |w1| over same-sign pairs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"{self.node} ({self.weight}): {self.columns} of {self.total_columns} output columns hold same-sign "
                f"int8 weight pairs summing to {self.worst_pair} > {PAIR_LIMIT}")


def unsafe_pairs(weight_kn: np.ndarray) -> tuple[np.ndarray, int]:
    """For a ``[K, N]`` integer weight: per-column flags of an unsafe aligned pair, and the worst pair sum.

    Pairs are reduction indices ``(2i, 2i+1)``, as the 16-bit pairwise kernels pack them (an odd
    ``K`` is padded with a zero).
    """
    w = np.asarray(weight_kn, dtype=np.int32)
    if w.shape[0] % 2:
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int32)])
    first, second = w[0::2], w[1::2]
    same_sign = (first * second) > 0
    sums = np.where(same_sign, np.abs(first) + np.abs(second), 0)
    return (sums > PAIR_LIMIT).any(axis=0), int(sums.max()) if sums.size else 0


def pairwise_risks(proto) -> list[PairRisk]:
    """Every integer-fusable matmul/conv of an ONNX graph whose int8 weights could saturate (see module docs)."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def int8_activation(name: str) -> bool:  # DequantizeLinear(QuantizeLinear(x)) with an int8 zero point/output
        deq = producer.get(name)
        if deq is None or deq.op_type != "DequantizeLinear":
            return False
        quant = producer.get(deq.input[0])
        if quant is None or quant.op_type != "QuantizeLinear":
            return False
        zero = inits.get(quant.input[2]) if len(quant.input) > 2 else None
        return zero is None or zero.data_type in (2, 3)  # uint8 / int8: 8-bit activations

    def int8_weight(name: str, transpose: bool = False) -> tuple[str, np.ndarray] | None:
        node = producer.get(name)
        perm = None
        if node is not None and node.op_type == "Transpose":
            perm = [a.ints for a in node.attribute if a.name == "perm"]
            node = producer.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            return None
        init = inits[node.input[0]]
        if init.data_type != 3:  # int8 only: 4-bit weights (|w| <= 8) cannot overflow
            return None
        values = numpy_helper.to_array(init)
        if perm is not None:
            values = np.transpose(values, list(perm[0]) if perm and perm[0] else None)
        return init.name, values

    risks: list[PairRisk] = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        if not int8_activation(node.input[0]):
            continue
        found = int8_weight(node.input[1])
        if found is None:
            continue
        name, values = found
        if node.op_type == "Conv":  # [O, C/g, k...] -> [K, N]
            kn = values.reshape(values.shape[0], -1).T
        elif node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            kn = values.T
        else:
            kn = values.reshape(-1, values.shape[-1]) if values.ndim > 2 else values
        flags, worst = unsafe_pairs(kn)
        if flags.any():
            risks.append(PairRisk(node.name or node.output[0], name, int(flags.sum()), int(flags.size), worst))
    return risks


def check_pairwise_safe(proto, what: str = "the graph") -> dict[str, Any]:
    """Refuse (one line) an ONNX graph whose fused int8 layers could saturate; else a manifest record."""
    risks = pairwise_risks(proto)
    if risks:
        more = f" (and {len(risks) - 1} more layer{'s' if len(risks) > 2 else ''})" if len(risks) > 1 else ""
        raise EdgeseqError(
            f"{what} would compute another function on x86 CPUs without VNNI: {risks[0].describe()}{more}; "
            f"ONNX Runtime's u8×s8 AVX2 kernel adds such pairs into a saturating 16-bit sum. Re-quantize with a "
            f"recipe that keeps int8 weights within ±64 (w8a8, w8a8-minmax: weight_levels = 64)"
        )
    return {"rule": f"same-sign int8 weight pairs |w0|+|w1| <= {PAIR_LIMIT} in every fused int8 layer",
            "kernels_covered": ["x86 u8s8 VPMADDUBSW (AVX2, AVX-512BW)", "x86 VNNI", "Arm SDOT", "CUDA"],
            "passed": True}


def saturating_u8s8_matmul(activation_s8: np.ndarray, weight_kn: np.ndarray) -> np.ndarray:
    """``activation @ weight`` as the pairwise-16-bit u8×s8 kernel computes it (int32 result).

    ``activation_s8``: ``[M, K]`` int8 levels; ``weight_kn``: ``[K, N]`` int8. The activation is
    shifted to uint8 (+128); adjacent products are summed and saturated to int16; the pair sums
    are accumulated in int32 and the zero-point term ``128 · Σ_k w[k, n]`` is removed exactly.
    """
    a = activation_s8.astype(np.int32) + 128  # [M, K] in [0, 255]
    w = weight_kn.astype(np.int32)
    if a.shape[1] % 2:
        a = np.concatenate([a, np.zeros((a.shape[0], 1), np.int32)], axis=1)
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int32)])
    pairs = a[:, 0::2, None] * w[None, 0::2, :] + a[:, 1::2, None] * w[None, 1::2, :]  # [M, K/2, N]
    pairs = np.clip(pairs, -_INT16_MAX - 1, _INT16_MAX)
    return pairs.sum(axis=1) - 128 * w.sum(axis=0)[None, :]


__all__ = ["PAIR_LIMIT", "PairRisk", "check_pairwise_safe", "pairwise_risks", "saturating_u8s8_matmul", "unsafe_pairs"]
