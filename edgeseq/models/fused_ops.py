"""Mamba's selective-state update and scan as single ONNX ops of edgeseq's own (domain ``edgeseq.ops``).

Traced into ONNX step and prefill graphs only inside :func:`emitting` (``edgeseq export --fused-ops``):
each layer's update — softplus, the decay ``exp(Δ ⊗ A)``, the drive ``(Δ·x) ⊗ B``, ``h ← a ⊙ h + b``,
``y = C·h + D·x`` — is then one node instead of ~36 (the step) and the prefill's unrolled scan one
node instead of ~80 per layer. ONNX Runtime runs them from the C library the artifact carries
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
OPS = ("SelectiveStateUpdate", "SelectiveScan")

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
    """One step: ``dt`` [B, Di] before softplus, x [B, Di], A [Di, N], B/C [B, N], D [Di], h [B, Di, N]
    → (y [B, Di], h' [B, Di, N])."""

    @staticmethod
    def forward(ctx, dt: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        delta = F.softplus(dt)
        h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * x).unsqueeze(-1) * B.unsqueeze(1)
        return torch.matmul(h, C.unsqueeze(-1)).squeeze(-1) + D * x, h

    @staticmethod
    def symbolic(g, dt, x, A, B, C, D, h):
        y, state = g.op(f"{DOMAIN}::SelectiveStateUpdate", dt, x, A, B, C, D, h, outputs=2)
        return _typed(y, x), _typed(state, h)


class SelectiveScan(torch.autograd.Function):
    """L steps: ``delta`` [B, L, Di] after softplus, x [B, L, Di], A [Di, N], B/C [B, L, N], D [Di],
    h0 [B, Di, N] → (y [B, L, Di], h_L [B, Di, N])."""

    @staticmethod
    def forward(ctx, delta: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        ys = []
        for t in range(x.shape[1]):
            h = torch.exp(delta[:, t].unsqueeze(-1) * A) * h + (delta[:, t] * x[:, t]).unsqueeze(-1) * B[:, t].unsqueeze(1)
            ys.append(torch.matmul(h, C[:, t].unsqueeze(-1)).squeeze(-1))
        return torch.stack(ys, 1) + x * D, h

    @staticmethod
    def symbolic(g, delta, x, A, B, C, D, h):
        y, state = g.op(f"{DOMAIN}::SelectiveScan", delta, x, A, B, C, D, h, outputs=2)
        return _typed(y, x), _typed(state, h)


__all__ = ["DOMAIN", "OPS", "SelectiveScan", "SelectiveStateUpdate", "active", "emitting"]
