"""The fused Triton Mamba step behind the ``targets.runtimes.Runtime`` interface (``edgeseq profile``).

``open_fused(model, device)`` builds it and verifies it before use: one step from a random state
against ``Mamba.step`` in fp32 with the same (bf16-rounded) weights on the same device; a relative
logits error over 1e-3 (the kernels reach ~2e-6 at the 130m shape) refuses the runtime. Batch 1
only. The state it returns aliases its own device buffers (no copy per step): feeding it back is
free, keeping an old one past the next step is not safe (clone it).
"""

from __future__ import annotations

from typing import Any, Sequence

from edgeseq.errors import EdgeseqError, InputError
from targets.runtime_base import Runtime, step_io_from_model

VERIFY_TOLERANCE = 1e-3


class TritonMambaRuntime(Runtime):
    name = "triton-fused"
    has_prefill = False

    def __init__(self, model: Any, device: str = "cuda", weights: str = "bf16", source: str = "", **kw):
        import torch

        from targets.gpu.mamba import FusedMambaStep

        self.torch = torch
        self.fused = FusedMambaStep(model, device=device, weights=weights, **kw)
        super().__init__(step_io_from_model(model), self.fused.weight_bytes, source)
        self.device = str(self.fused.device)
        self.device_name = torch.cuda.get_device_name(self.fused.device) if self.fused.device.type == "cuda" else "cpu"
        self.names = self.io.state_names
        f = self.fused
        views = {}
        for i in range(len(f.layers)):
            views[f"conv_{i}"] = f.conv[i].view(1, f.E, f.K - 1)
            views[f"ssm_{i}"] = f.ssm[i].view(1, f.E, f.N)
        self._views = [views[n] for n in self.names]

    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:
        torch = self.torch
        token = x_t if isinstance(x_t, torch.Tensor) else torch.as_tensor(x_t)
        if token.numel() != 1:
            raise InputError(f"the {self.name} runtime runs batch 1 (one token), got input of shape {tuple(token.shape)}")
        if not all(a is b for a, b in zip(state, self._views)):  # a state from elsewhere: copy it in
            self.fused.load_state({n: torch.as_tensor(s).to(self.fused.device) for n, s in zip(self.names, state)})
        logits = self.fused.step(token.to(self.fused.device))
        return [logits.view(1, -1), *self._views]

    def synchronize(self) -> None:
        if self.fused.device.type == "cuda":
            self.torch.cuda.synchronize(self.fused.device)

    def peak_memory_bytes(self) -> int:
        if self.fused.device.type == "cuda":
            return int(self.torch.cuda.max_memory_allocated(self.fused.device))
        return super().peak_memory_bytes()


def verify(rt: TritonMambaRuntime, model: Any) -> float:
    """Relative logits error of one fused step vs ``Mamba.step`` (fp32, the same weights, a random
    state, the same device); the runtime's state is zeroed afterwards."""
    torch = rt.torch
    ref = rt.fused.dequantized_model(model).to(rt.fused.device)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen).to(rt.fused.device) for k, v in ref.init_state(1).items()}
    token = torch.tensor([min(3, rt.fused.V - 1)], device=rt.fused.device)
    rt.fused.load_state(state)
    got = rt.fused.step(token).clone()
    with torch.inference_mode():
        want, _ = ref.step(token, state)
    rt.fused.reset()
    err = float((got - want[0].float()).norm() / want[0].float().norm())
    del ref
    return err


def open_fused(model: Any, device: str, source: str = "", required: bool = False) -> TritonMambaRuntime | None:
    """The verified fused runtime for `model` on `device`, or None when it does not apply (not a
    Mamba LM, no CUDA device or Triton) unless `required`, which raises instead."""
    from targets.gpu.mamba import available

    why = None
    if getattr(getattr(model, "config", None), "family", None) != "mamba":
        why = "it runs Mamba models only"
    elif not device.startswith("cuda") or not available():
        why = "it needs a CUDA device and Triton"
    if why is None:
        try:
            rt = TritonMambaRuntime(model, device=device, source=source)
        except InputError as exc:
            why = str(exc)
        else:
            err = verify(rt, model)
            if err <= VERIFY_TOLERANCE:
                return rt
            why = f"its step differs from Mamba.step by {err:.2e} (relative), over {VERIFY_TOLERANCE:g}"
    if required:
        raise InputError(f"the triton runtime cannot run this source: {why}")
    return None


__all__ = ["TritonMambaRuntime", "open_fused", "verify", "EdgeseqError"]
