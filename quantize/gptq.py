"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"): quantize a linear weight column by column, pushing each column's
rounding error onto the columns not yet quantized through the inverse Hessian of the layer's
input (``H = Σ xᵀx``), in its Cholesky form.

Scales are fixed before the pass (from the weight's own per-channel / per-group clip), so the
result is stored exactly like a round-to-nearest weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quantize.qdq import weight_limit


def gptq_quantize(
    weight: Tensor, hessian: Tensor, scale: Tensor, bits: int, group_size: int = 0, block_size: int = 128, damp: float = 0.01,
    levels: int = 0,
) -> Tensor:
    """Integer weight ``[out, in]`` (int8) minimising ``||(W - Ŵ) X||`` for the given scales.

    ``scale``: ``[]``, ``[out]`` or ``[out, in // group_size]``; ``hessian``: ``[in, in]``.
    """
    W = weight.detach().double().clone()  # [out, in]
    H = hessian.detach().to(device=W.device, dtype=torch.float64).clone()
    out_features, in_features = W.shape
    limit = weight_limit(bits, levels)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(in_features, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    scale = scale.to(device=W.device, dtype=torch.float64)

    def column_scale(col: int) -> Tensor:
        if scale.dim() == 0:
            return scale.expand(out_features)
        if group_size:
            return scale[:, col // group_size]
        return scale

    Q = torch.zeros(out_features, in_features, dtype=torch.int8, device=W.device)
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        block = W[:, start:end].clone()
        errors = torch.zeros_like(block)
        Hblock = Hinv[start:end, start:end]
        for i in range(end - start):
            w = block[:, i]
            s = column_scale(start + i)
            q = torch.clamp(torch.round(w / s), -limit, limit)
            Q[:, start + i] = q.to(torch.int8)
            err = (w - q * s) / Hblock[i, i]
            block[:, i:] -= err.unsqueeze(1) * Hblock[i, i:].unsqueeze(0)
            errors[:, i] = err
        W[:, end:] -= errors @ Hinv[start:end, end:]
    return Q


__all__ = ["gptq_quantize"]
