"""The fused Triton Mamba and SpikeGPT steps behind the ``targets.runtimes.Runtime`` interface (``edgeseq profile``).

``open_fused(model, device)`` builds it and verifies it before use: one step from a random state
against ``Mamba.step`` in fp32 with the same (bf16-rounded) weights on the same device; a relative
logits error over 1e-3 (the kernels reach ~2e-6 at the 130m shape) refuses the runtime. Batch 1
only. Which one: a float model gets the bf16 fused step (``triton-fused``; the fastest verified
runtime of a float model on an H200, benchmarks/decode_gpu.json: 0.26 ms against 2.1 ms for the
PyTorch CUDA graph); a model quantized by an edgeseq recipe (W4A16, W8A8, ...) gets the fused
quantized step that computes its fake-quant function (``triton-fused-w4a16`` ...), verified against
it (int8-activation recipes step by step, see ``verify``). A float SpikeGPT model gets the fused
SpikeGPT step (``triton-fused``, ``targets.gpu.spikegpt``), verified against ``SpikeGPT.step`` the
same way (``verify_spikegpt``: spikes are thresholds, so the best of 4 single steps); an LMUFormer or
Spiking LMUFormer the one-kernel frame step (``targets.gpu.lmuformer``, ``verify_lmuformer``), up to
``LMUFORMER_FUSED_MAX_BYTES`` of weights. The Mamba and SpikeGPT runtimes return a state that aliases
their own device buffers (no copy per step): feeding it back is free, keeping an old one past the
next step is not safe (clone it).
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
        if is_recipe_quantized(model):
            from targets.gpu.qmamba import QuantFusedMambaStep

            self.fused = QuantFusedMambaStep(model, device=device, **kw)
            self.name = f"triton-fused-{self.fused.weights}"
        else:
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


class TritonSpikeGPTRuntime(Runtime):
    """The fused SpikeGPT step (``targets.gpu.spikegpt``) behind the Runtime interface; the state it
    returns aliases its device buffers, as for Mamba."""

    name = "triton-fused"
    has_prefill = False

    def __init__(self, model: Any, device: str = "cuda", source: str = "", **kw):
        import torch

        from targets.gpu.spikegpt import FusedSpikeGPTStep

        self.torch = torch
        self.fused = FusedSpikeGPTStep(model, device=device, **kw)
        super().__init__(step_io_from_model(model), self.fused.weight_bytes, source)
        self.device = str(self.fused.device)
        self.device_name = torch.cuda.get_device_name(self.fused.device) if self.fused.device.type == "cuda" else "cpu"
        self.names = self.io.state_names
        f = self.fused
        views = {f"{n}_{i}": t.view(1, f.D) for (n, i), t in f.state.items()}
        self._views = [views[n] for n in self.names]

    def init_state(self, batch: int = 1) -> list[Any]:
        """The model's initial state (``SpikeGPT.init_state``: the WKV exponent at "no history yet",
        not zero), as the runtime's own device buffers."""
        if batch != 1:
            raise InputError(f"the {self.name} runtime runs batch 1, not {batch}")
        self.fused.reset()
        return list(self._views)

    _step = TritonMambaRuntime._step
    synchronize = TritonMambaRuntime.synchronize
    peak_memory_bytes = TritonMambaRuntime.peak_memory_bytes


class TritonLMUFormerRuntime(Runtime):
    """The fused LMUFormer / Spiking LMUFormer frame step (``targets.gpu.lmuformer``, one kernel a frame)
    behind the Runtime interface; frames in, per-frame scores out, the state aliasing its device buffers
    only where the layouts agree (memories, membranes) — windows are copied (they are stored transposed)."""

    name = "triton-fused"
    has_prefill = False

    def __init__(self, model: Any, device: str = "cuda", source: str = "", **kw):
        import torch

        from targets.gpu.lmuformer import FusedLMUFormerStep

        self.torch = torch
        self.fused = FusedLMUFormerStep(model, device=device, **kw)
        super().__init__(step_io_from_model(model), self.fused.weight_bytes, source)
        self.device = str(self.fused.device)
        self.device_name = torch.cuda.get_device_name(self.fused.device) if self.fused.device.type == "cuda" else "cpu"
        self.names = self.io.state_names
        self._last: list = []

    def init_state(self, batch: int = 1) -> list[Any]:
        if batch != 1:
            raise InputError(f"the {self.name} runtime runs batch 1, not {batch}")
        self.fused.reset()
        self._last = [t for t in (self.fused.state_dict()[n] for n in self.names)]
        return list(self._last)

    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:
        torch = self.torch
        frame = x_t if isinstance(x_t, torch.Tensor) else torch.as_tensor(x_t)
        if frame.dim() != 2 or frame.shape[0] != 1:
            raise InputError(f"the {self.name} runtime runs batch 1 (one frame [1, features]), got shape {tuple(frame.shape)}")
        if not all(a is b for a, b in zip(state, self._last)):  # a state from elsewhere: copy it in
            self.fused.load_state({n: torch.as_tensor(s).to(self.fused.device) for n, s in zip(self.names, state)})
        scores = self.fused.step(frame.to(self.fused.device, torch.float32)).view(1, -1).clone()
        named = self.fused.state_dict()
        self._last = [named[n] for n in self.names]
        return [scores, *self._last]

    synchronize = TritonMambaRuntime.synchronize
    peak_memory_bytes = TritonMambaRuntime.peak_memory_bytes


def verify_lmuformer(rt: TritonLMUFormerRuntime, model: Any) -> float:
    """Relative score error of the fused frame step vs the model's ``step`` (fp32, the same weights, the
    same device), the smallest over 4 single steps from the zero state with random frames (spiking
    models: a membrane within rounding of its threshold can fire on one side only)."""
    torch = rt.torch
    f = rt.fused
    ref = f.dequantized_model(model).to(f.device)
    gen = torch.Generator().manual_seed(0)
    errors = []
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # cuDNN's fp32 convolutions default to TF32 (~1e-4 off, spikes flip)
    try:
        for _ in range(4):
            frame = torch.rand(1, f.F, generator=gen).to(f.device)
            f.reset()
            got = f.step(frame).clone()
            with torch.inference_mode():
                want, _ = ref.step(frame, ref.init_state(1, device=f.device))
            errors.append(float((got - want[0].float()).norm() / max(float(want[0].float().norm()), 1e-30)))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    f.reset()
    del ref
    return min(errors)


# the one-kernel LMUFormer step runs on one multiprocessor: it beats the PyTorch CUDA graph 4-8x at the zoo
# models' size (0.2-0.3 MB of weights) and loses 1.7x at 8.7 MB (benchmarks/decode_gpu_lmuformer.json), so
# it is chosen by default up to this many weight bytes (``--runtime triton`` takes it at any size)
LMUFORMER_FUSED_MAX_BYTES = 1 << 20


def verify_spikegpt(rt: TritonSpikeGPTRuntime, model: Any) -> float:
    """Relative logits error of the fused SpikeGPT step vs ``SpikeGPT.step`` (fp32, the same
    bf16-rounded weights, the same device), the smallest over 4 single steps from the initial
    state: a LIF membrane within fp32 rounding of its threshold can fire on one side only (a
    boundary flip, which moves the rest of that step), so a flip-free step shows the kernels right."""
    torch = rt.torch
    f = rt.fused
    ref = f.dequantized_model(model).to(f.device)
    errors = []
    for seed in range(4):
        token = torch.tensor([min(3 + 1000 * seed, f.V - 1)], device=f.device)
        f.reset()
        got = f.step(token).clone()
        with torch.inference_mode():
            want, _ = ref.step(token, ref.init_state(1, device=f.device))
        errors.append(float((got - want[0].float()).norm() / want[0].float().norm()))
    f.reset()
    del ref
    return min(errors)


def is_recipe_quantized(model: Any) -> bool:
    """The model holds layers quantized by an edgeseq recipe (``quantize.modules``)."""
    try:
        from quantize.modules import is_quantized_module
    except ImportError:  # pragma: no cover
        return False
    return any(is_quantized_module(m) for m in model.modules())


def verify(rt: TritonMambaRuntime, model: Any) -> float:
    """Relative logits error of one fused step vs ``Mamba.step`` (fp32, the same weights, a random
    state, the same device); the runtime's state is zeroed afterwards. With int8 activations the
    fake-quant function is discontinuous (a last-bit difference before a rounding can move an
    activation one level, and the step to the recipe's quantization noise), so the error is the
    smallest over 4 steps from random states: a flip-free step shows the integer path right."""
    torch = rt.torch
    if getattr(rt.fused, "aq", {}).get("in"):
        errors = []
        for seed in range(4):
            errors.append(_verify_once(rt, model, seed))
        return min(errors)
    return _verify_once(rt, model, 0)


def _verify_once(rt: TritonMambaRuntime, model: Any, seed: int) -> float:
    torch = rt.torch
    ref = rt.fused.dequantized_model(model).to(rt.fused.device)
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen).to(rt.fused.device) for k, v in ref.init_state(1).items()}
    token = torch.tensor([min(3 + 1000 * seed, rt.fused.V - 1)], device=rt.fused.device)
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
    Mamba / SpikeGPT / LMUFormer model, no CUDA device or Triton) unless `required`, which raises instead."""
    from targets.gpu.mamba import available

    why = None
    family = getattr(getattr(model, "config", None), "family", None)
    if family not in ("mamba", "spikegpt", "lmuformer", "spiking-lmuformer"):
        why = "it runs Mamba, SpikeGPT and LMUFormer models only"
    elif family != "mamba" and is_recipe_quantized(model):
        why = f"it runs float {family} models only (no fused quantized step for them yet)"
    elif not device.startswith("cuda") or not available():
        why = "it needs a CUDA device and Triton"
    if why is None:
        kind, check = {"mamba": (TritonMambaRuntime, verify), "spikegpt": (TritonSpikeGPTRuntime, verify_spikegpt)}.get(
            family, (TritonLMUFormerRuntime, verify_lmuformer))
        try:
            rt = kind(model, device=device, source=source)
        except InputError as exc:
            why = str(exc)
        else:
            if kind is TritonLMUFormerRuntime and not required and rt.fused.weight_bytes > LMUFORMER_FUSED_MAX_BYTES:
                return None  # slower than the PyTorch CUDA graph at this size (measured); --runtime triton forces it
            err = check(rt, model)
            if err <= VERIFY_TOLERANCE:
                return rt
            why = (f"its step differs from {type(model).__name__}.step by {err:.2e} (relative), "
                   f"over {VERIFY_TOLERANCE:g}")
    if required:
        raise InputError(f"the triton runtime cannot run this source: {why}")
    return None


__all__ = ["TritonLMUFormerRuntime", "TritonMambaRuntime", "TritonSpikeGPTRuntime", "is_recipe_quantized", "open_fused",
           "verify", "verify_lmuformer", "verify_spikegpt", "EdgeseqError", "LMUFORMER_FUSED_MAX_BYTES"]
