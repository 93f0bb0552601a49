"""Leaky integrate-and-fire neurons with surrogate gradients.

Semantics (SpikeGPT / LMUFormer defaults, Zhu et al. 2023; Liu et al. 2024)::

    v_t = v_{t-1} + (I_t - v_{t-1}) / tau          (charge; decay_input form, v_reset = 0)
    s_t = H(v_t - threshold)                         (fire; H(0) = 1, i.e. v >= threshold)
    v_t = v_t * (1 - s_t)            (hard reset)   or   v_t - s_t * threshold   (soft reset)

``fire_on="ge"`` (the default, as the original SpikeGPT/spikingjelly code) fires when
``v >= threshold``; ``fire_on="gt"`` fires when ``v > threshold`` (snntorch's comparison). The
backward pass uses the ATan surrogate ``d s / d v = alpha / 2 / (1 + (pi/2 * alpha * (v - thr))^2)``.

The membrane before reset is what the reset acts on; ``state`` holds the membrane *after* reset.
The reset is not detached from the graph (spikingjelly's default ``detach_reset=False``).

Mapping to ``snntorch.Leaky`` (hard reset; bit-identical spikes and membranes on dyadic currents in
``tests/edgeseq/test_lif.py``; on real-valued currents the two update formulas round differently,
up to 2.4e-7 in float32 membranes, see docs/spiking.md)::

    beta = 1 - 1/tau,  input = I / tau,  reset_mechanism = "zero",
    threshold = threshold                          for fire_on="gt"
    threshold = nextafter(threshold, -inf)         for fire_on="ge" (as a tensor of the input dtype)

snntorch's ``mem`` is our membrane before reset. Its zero reset acts one step late but before the
decay, which yields the same spikes. The soft reset differs: snntorch subtracts the threshold after
the next decay, we (and spikingjelly) right after the spike.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn


class _ATanSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float, inclusive: bool) -> Tensor:  # x = v - threshold
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype) if inclusive else (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        return grad * atan_surrogate(x, alpha), None, None


def atan_spike(x: Tensor, alpha: float = 2.0, inclusive: bool = True) -> Tensor:
    """Heaviside step in the forward pass (``x >= 0`` when inclusive), ATan surrogate backward."""
    return _ATanSpike.apply(x, alpha, inclusive)


def heaviside(x: Tensor, inclusive: bool = True) -> Tensor:
    return (x >= 0).to(x.dtype) if inclusive else (x > 0).to(x.dtype)


@dataclass(frozen=True)
class LIFConfig:
    tau: float = 2.0
    threshold: float = 1.0
    reset: Literal["hard", "soft"] = "hard"
    fire_on: Literal["ge", "gt"] = "ge"
    surrogate_alpha: float = 2.0


class LIF(nn.Module):
    """A population of LIF neurons; ``forward`` runs a sequence ``[B, T, ...]``, ``step`` one time step.

    The time loop of ``forward`` is the neuron's own recurrence (elementwise, cheap); everything
    around it stays parallel. ``counter``, when set by the spiking simulator, receives
    ``(self, spikes)`` after every step so that spike rates and neuron updates can be counted.
    """

    def __init__(self, tau: float = 2.0, threshold: float = 1.0, reset: str = "hard",
                 fire_on: str = "ge", surrogate_alpha: float = 2.0):
        super().__init__()
        if reset not in ("hard", "soft"):
            raise ValueError(f"reset must be 'hard' or 'soft', not {reset!r}")
        if fire_on not in ("ge", "gt"):
            raise ValueError(f"fire_on must be 'ge' or 'gt', not {fire_on!r}")
        self.cfg = LIFConfig(float(tau), float(threshold), reset, fire_on, float(surrogate_alpha))  # type: ignore[arg-type]
        self.counter = None

    def extra_repr(self) -> str:
        c = self.cfg
        return f"tau={c.tau}, threshold={c.threshold}, reset={c.reset}, fire_on={c.fire_on}"

    def step(self, current: Tensor, membrane: Tensor) -> tuple[Tensor, Tensor]:
        """One time step: ``(I_t, v_{t-1}) -> (s_t, v_t)`` with ``v_t`` after reset."""
        c = self.cfg
        v = membrane + (current - membrane) / c.tau
        if torch.is_grad_enabled() and (v.requires_grad or current.requires_grad):
            spikes = atan_spike(v - c.threshold, c.surrogate_alpha, inclusive=c.fire_on == "ge")
        else:  # inference: the same Heaviside step without the autograd Function's overhead
            spikes = heaviside(v - c.threshold, inclusive=c.fire_on == "ge")
        if c.reset == "hard":
            v = v * (1.0 - spikes)
        else:
            v = v - spikes * c.threshold
        if self.counter is not None:
            self.counter(self, spikes)
        return spikes, v

    def forward(self, current: Tensor, membrane: Tensor | None = None, time_dim: int = 1) -> Tensor:
        """Spikes for a whole sequence; ``current`` has time at ``time_dim`` (default ``[B, T, ...]``)."""
        spikes, _ = self.run(current, membrane, time_dim)
        return spikes

    def run(self, current: Tensor, membrane: Tensor | None = None, time_dim: int = 1) -> tuple[Tensor, Tensor]:
        """Spikes for a sequence and the final membrane.

        Without a ``counter`` this runs :func:`lif_sequence` (the same arithmetic as ``step``, bit
        for bit, with a hand-written backward pass, so a long sequence builds no autograd graph per
        time step); with a ``counter`` it calls ``step`` at every time step so each one is counted.
        """
        current = current.movedim(time_dim, 0)
        v = torch.zeros_like(current[0]) if membrane is None else membrane
        if self.counter is None:
            spikes, v = lif_sequence(current, v, self.cfg)
            return spikes.movedim(0, time_dim), v
        out = []
        for t in range(current.shape[0]):
            s, v = self.step(current[t], v)
            out.append(s)
        return torch.stack(out, 0).movedim(0, time_dim), v


def atan_surrogate(x: Tensor, alpha: float = 2.0) -> Tensor:
    """The ATan surrogate derivative ``alpha / 2 / (1 + (pi/2 * alpha * x)^2)`` of the Heaviside step."""
    return alpha / 2 / (1 + (math.pi / 2 * alpha * x) ** 2)


class _LIFSequence(torch.autograd.Function):
    """A whole LIF sequence ``[T, ...]``; backward propagates through the membrane (reset included:
    the reset is not detached, as in spikingjelly's default ``detach_reset=False``)."""

    @staticmethod
    def forward(ctx, current: Tensor, membrane: Tensor, cfg: LIFConfig):  # type: ignore[override]
        inclusive = cfg.fire_on == "ge"
        v = membrane
        charged, spikes = [], []
        for t in range(current.shape[0]):
            h = v + (current[t] - v) / cfg.tau  # exactly LIF.step's arithmetic
            s = heaviside(h - cfg.threshold, inclusive)
            v = h * (1.0 - s) if cfg.reset == "hard" else h - s * cfg.threshold
            charged.append(h)
            spikes.append(s)
        charged_t, spikes_t = torch.stack(charged), torch.stack(spikes)
        ctx.save_for_backward(charged_t, spikes_t)
        ctx.cfg = cfg
        return spikes_t, v

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, grad_membrane: Tensor):  # type: ignore[override]
        charged, spikes = ctx.saved_tensors
        cfg: LIFConfig = ctx.cfg
        # everything that does not depend on the carried gradient, for all t at once
        surrogate = atan_surrogate(charged - cfg.threshold, cfg.surrogate_alpha)  # ds/dh
        if cfg.reset == "hard":  # v = h (1 - s(h))
            dv_dh = (1.0 - spikes) - charged * surrogate
        else:  # v = h - threshold s(h)
            dv_dh = 1.0 - cfg.threshold * surrogate
        direct = grad_spikes * surrogate  # dL/dh through s_t
        keep = 1.0 - 1.0 / cfg.tau  # dh_t / dv_{t-1}
        grad_v = torch.zeros_like(charged[0]) if grad_membrane is None else grad_membrane
        grad_h = torch.empty_like(charged)
        for t in range(charged.shape[0] - 1, -1, -1):
            grad_h[t] = torch.addcmul(direct[t], grad_v, dv_dh[t])
            grad_v = grad_h[t] * keep
        return grad_h / cfg.tau, grad_v, None


def _exact_in(value: float, dtype: torch.dtype) -> bool:
    """``value`` is representable in ``dtype`` (so ``h >= value`` and ``h - value >= 0`` agree)."""
    return float(torch.tensor(value, dtype=dtype)) == value


def _lif_loop(current: Tensor, v: Tensor, fired: Tensor, tau: float, threshold: float, inclusive: bool,
              direct: bool) -> Tensor:
    """The hard-reset LIF time loop in place: ``v`` (the membrane) is updated, ``fired[t]`` written."""
    keep = torch.empty(v.shape, dtype=torch.bool, device=v.device)
    delta = torch.empty_like(v)
    for t in range(current.shape[0]):
        torch.sub(current[t], v, out=delta)
        delta.div_(tau)
        v.add_(delta)  # h = v + (I_t - v) / tau
        if not direct:
            torch.sub(v, threshold, out=delta)  # h - threshold, compared with 0
        x = v if direct else delta
        level = threshold if direct else 0.0
        if inclusive:
            torch.ge(x, level, out=fired[t])
            torch.lt(x, level, out=keep)
        else:
            torch.gt(x, level, out=fired[t])
            torch.le(x, level, out=keep)
        v.mul_(keep)  # hard reset: h * (1 - s)
    return v


_SCRIPTED_LOOP: object = None  # the TorchScript build of _lif_loop; False when unavailable or disabled


def _loop_impl():
    """``_lif_loop`` compiled with TorchScript (the same ATen kernels without the Python interpreter
    between them: 1.5-2.5x faster on small populations), or the eager function. TorchScript is
    deprecated in torch 2.13; it is used while it works (``EDGESEQ_LIF_SCRIPT=0`` turns it off)."""
    global _SCRIPTED_LOOP
    if _SCRIPTED_LOOP is None:
        _SCRIPTED_LOOP = False
        if os.environ.get("EDGESEQ_LIF_SCRIPT", "1") != "0":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _SCRIPTED_LOOP = torch.jit.script(_lif_loop)
            except Exception:  # noqa: BLE001 - no TorchScript in this build: the eager loop
                _SCRIPTED_LOOP = False
    return _SCRIPTED_LOOP or _lif_loop


def _lif_sequence_inference(current: Tensor, membrane: Tensor, cfg: LIFConfig, scripted: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`lif_sequence` without autograd: :meth:`LIF.step`'s arithmetic, bit for bit, done in place
    into preallocated outputs (no per-step tensors, no graph, no stacking).

    Per step: ``d = I_t − v``, ``d /= τ``, ``v += d`` (``h = v + (I_t − v)/τ``), then the comparison
    and the hard reset ``v *= (h < θ)`` (= ``h · (1 − s)``: the same products, NaN/inf included). When
    θ is exactly representable in the dtype, ``h ≥ θ`` is the same test as ``h − θ ≥ 0``: the sign of
    a rounded IEEE difference is the sign of the exact one; otherwise the difference is formed first.
    """
    current = current.contiguous()
    fired = torch.empty(current.shape, dtype=torch.bool, device=current.device)
    loop = _loop_impl() if scripted else _lif_loop
    v = loop(current, membrane.clone(), fired, float(cfg.tau), float(cfg.threshold), cfg.fire_on == "ge",
             _exact_in(cfg.threshold, current.dtype))
    return fired.to(current.dtype), v


def lif_sequence(current: Tensor, membrane: Tensor, cfg: LIFConfig) -> tuple[Tensor, Tensor]:
    """Run LIF neurons over ``current`` ``[T, ...]`` from ``membrane`` ``[...]``: (spikes ``[T, ...]``, final membrane).

    Same values as calling :meth:`LIF.step` T times, and the same gradients (ATan surrogate). Without
    a gradient to track (inference) a hard-reset population runs :func:`_lif_sequence_inference`.
    """
    needs_grad = torch.is_grad_enabled() and (current.requires_grad or membrane.requires_grad)
    if (not needs_grad and cfg.reset == "hard" and membrane.shape == current.shape[1:]
            and membrane.dtype == current.dtype and current.is_floating_point()
            and not torch.jit.is_tracing() and not bool(getattr(torch.compiler, "is_exporting", lambda: False)())
            and not bool(getattr(torch.compiler, "is_compiling", lambda: False)())):
        return _lif_sequence_inference(current, membrane, cfg)
    if torch.jit.is_tracing() or bool(getattr(torch.compiler, "is_exporting", lambda: False)()):
        v, out = membrane, []
        for t in range(current.shape[0]):  # plain ops: what tracers can record
            h = v + (current[t] - v) / cfg.tau
            s = heaviside(h - cfg.threshold, cfg.fire_on == "ge")
            v = h * (1.0 - s) if cfg.reset == "hard" else h - s * cfg.threshold
            out.append(s)
        return torch.stack(out), v
    return _LIFSequence.apply(current, membrane, cfg)
