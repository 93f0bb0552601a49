"""Mamba's selective-state update and scan as single ONNX ops of edgeseq's own (domain ``edgeseq.ops``).

Traced into ONNX step and prefill graphs only inside :func:`emitting` (``edgeseq export``, where the
fused kernels apply): each layer's update — softplus, the decay ``exp(Δ ⊗ A)``, the drive
``(Δ·x) ⊗ B``, ``h ← a ⊙ h + b``, ``y = C·h + D·x``, the gate ``y · silu(z)`` — is then one node
instead of ~40 (the step), the step's conv window and its SiLU one instead of ~8, and the
prefill's unrolled scan one node instead of ~80 per layer. ONNX Runtime runs them from the C library the artifact carries
(``export/kernels/edgeseq_ops.c``, built by :mod:`export.fused_ops`, registered by
:mod:`targets.runtimes` before a session opens).

In PyTorch both ops are the model's own arithmetic (:meth:`SelectiveStateUpdate.forward` and
:meth:`SelectiveScan.forward`); only the exported graph differs. Everywhere else — eager, training,
``torch.compile``, ``torch.export`` (TVM) — the model never reaches them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

DOMAIN = "edgeseq.ops"
OPS = ("SelectiveStateUpdate", "SelectiveScan", "CausalConv1dStep", "CausalConv1d")

_emitting = False


@contextlib.contextmanager
def emitting() -> Iterator[None]:
    """Trace Mamba's updates as ``edgeseq.ops`` nodes while inside (ONNX export only)."""
    global _emitting
    before, _emitting = _emitting, True
    try:
        yield
    finally:
        _emitting = before


def active() -> bool:
    """Inside :func:`emitting` and under the TorchScript tracer (the ONNX exporter)."""
    return _emitting and torch.jit.is_tracing()


def _typed(value, like):
    value.setType(like.type())
    return value


class SelectiveStateUpdate(torch.autograd.Function):
    """One step: ``dt`` [B, Di] before softplus, x [B, Di], A [Di, N], B/C [B, N], D [Di], h [B, Di, N],
    z [B, Di] (the gate) → (y · silu(z) [B, Di], h' [B, Di, N])."""

    @staticmethod
    def forward(ctx, dt: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h: Tensor,
                z: Tensor) -> tuple[Tensor, Tensor]:
        delta = F.softplus(dt)
        h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * x).unsqueeze(-1) * B.unsqueeze(1)
        return (torch.matmul(h, C.unsqueeze(-1)).squeeze(-1) + D * x) * F.silu(z), h

    @staticmethod
    def symbolic(g, dt, x, A, B, C, D, h, z):
        y, state = g.op(f"{DOMAIN}::SelectiveStateUpdate", dt, x, A, B, C, D, h, z, outputs=2)
        return _typed(y, x), _typed(state, h)


class SelectiveScan(torch.autograd.Function):
    """L steps: ``delta`` [B, L, Di] after softplus, x [B, L, Di], A [Di, N], B/C [B, L, N], D [Di],
    h0 [B, Di, N], z [B, L, Di] → (y · silu(z) [B, L, Di], h_L [B, Di, N])."""

    @staticmethod
    def forward(ctx, delta: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h: Tensor,
                z: Tensor) -> tuple[Tensor, Tensor]:
        ys = []
        for t in range(x.shape[1]):
            h = torch.exp(delta[:, t].unsqueeze(-1) * A) * h + (delta[:, t] * x[:, t]).unsqueeze(-1) * B[:, t].unsqueeze(1)
            ys.append(torch.matmul(h, C[:, t].unsqueeze(-1)).squeeze(-1))
        return (torch.stack(ys, 1) + x * D) * F.silu(z), h

    @staticmethod
    def symbolic(g, delta, x, A, B, C, D, h, z):
        y, state = g.op(f"{DOMAIN}::SelectiveScan", delta, x, A, B, C, D, h, z, outputs=2)
        return _typed(y, x), _typed(state, h)


class CausalConv1dStep(torch.autograd.Function):
    """One position of the depthwise causal conv: state [B, Di, K-1] (the last K-1 inputs), x [B, Di],
    w [Di, K], bias [Di] → (silu(w · [state, x] + bias) [B, Di], the shifted window [B, Di, K-1])."""

    @staticmethod
    def forward(ctx, state: Tensor, x: Tensor, w: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        window = torch.cat([state, x.unsqueeze(-1)], dim=-1)
        return F.silu((window * w).sum(-1) + bias), window[:, :, 1:]

    @staticmethod
    def symbolic(g, state, x, w, bias):
        out, window = g.op(f"{DOMAIN}::CausalConv1dStep", state, x, w, bias, outputs=2)
        return _typed(out, x), _typed(window, state)


class CausalConv1d(torch.autograd.Function):
    """The depthwise causal conv over a chunk, in the scan's layout: state [B, Di, K-1], x [B, L, Di],
    w [Di, K], bias [Di] → (silu(conv) [B, L, Di], the last K-1 inputs of [state, x] [B, Di, K-1])."""

    @staticmethod
    def forward(ctx, state: Tensor, x: Tensor, w: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        k = w.shape[1]
        padded = torch.cat([state, x.transpose(1, 2)], dim=-1)  # [B, Di, K-1+L]
        conv = F.conv1d(padded, w.unsqueeze(1), bias, groups=w.shape[0])
        return F.silu(conv).transpose(1, 2), padded[:, :, padded.shape[-1] - (k - 1):]

    @staticmethod
    def symbolic(g, state, x, w, bias):
        out, new_state = g.op(f"{DOMAIN}::CausalConv1d", state, x, w, bias, outputs=2)
        return _typed(out, x), _typed(new_state, state)


__all__ = ["DOMAIN", "OPS", "CausalConv1d", "CausalConv1dStep", "SelectiveScan", "SelectiveStateUpdate", "active", "emitting"]
