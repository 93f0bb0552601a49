"""Verification of an artifact against PyTorch before an export succeeds.

The oracle is the PyTorch model that was exported (for quantized models: its fake-quant modules,
the arithmetic of :mod:`quantize.qdq`). Both run independently from the zero state over the same
seeded inputs for ``steps`` consecutive steps (each keeps its own recurrent state, so drift over
the stream is measured), then one prefill chunk is compared when the artifact has a prefill graph.

Errors are reported as the max absolute error and the max error relative to the largest reference
magnitude (of the outputs and, separately, of the states). The tolerance applies to the relative
output error and the relative state error:

* float32: ``1e-4`` — graph runtimes reorder and fuse float32 sums (errors ~1e-6 relative per
  step); the recurrences decay, so error does not grow over the stream; 100x margin;
* float16: ``2e-2`` — half precision keeps ~3 decimal digits (eps 1e-3) and is not fused the same;
* quantized: ``1e-2`` — a runtime may compute ``x · (1/s)`` where PyTorch computes ``x / s``
  (torch's own fake-quant op does this too): on exact ties one activation lands one level away
  (one quantization step, ~1/127 of the range), which then propagates through the state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from edgeseq.errors import EdgeseqError
from edgeseq.streaming import StreamingModel
from export.graphs import sample_inputs

# Max relative error (to the reference's peak magnitude) an artifact may show against PyTorch.
# Quantized artifacts are compared with the fake-quant PyTorch model. The runtime's integer kernels
# round their float epilogues differently (~1e-7), which flips an occasional activation to the next
# int8 level (one step = clip/127, ~0.8% of the range); in a trained recurrent model those flips
# compound over steps and layers: 3–12% on the zoo Mamba over 32–256 steps, with identical top-1
# tokens. So quantized artifacts get 15%, *and* language models must agree on the top-1 token at
# >= 95% of steps — a wrong scale, layout or graph fails both by far.
TOLERANCES = {"float32": 1e-4, "float16": 2e-2, "quantized": 0.15}
MIN_ARGMAX_AGREEMENT = {"quantized": 0.95}


@dataclass
class Verification:
    runtime: str
    steps: int
    batch: int
    tolerance: float
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    max_abs_state_error: float = 0.0
    max_rel_state_error: float = 0.0
    prefill_max_rel_error: float | None = None
    argmax_agreement: float | None = None  # LMs: fraction of steps with the same top token
    passed: bool = False
    note: str = ""
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tolerance_for(dtype: str, quantized: bool) -> float:
    return TOLERANCES["quantized"] if quantized else TOLERANCES[dtype]


@torch.no_grad()
def verify_runner(
    model: StreamingModel, runner, steps: int = 256, batch: int = 2, tolerance: float = 1e-4, seed: int = 0,
    float_dtype: torch.dtype = torch.float32, progress=None, min_argmax_agreement: float | None = None,
) -> Verification:
    """Stream ``steps`` steps through ``runner`` and ``model`` side by side; compare every output."""
    result = Verification(runtime=getattr(runner, "runtime", "?"), steps=steps, batch=batch, tolerance=tolerance)
    inputs = sample_inputs(model, batch, max(steps, 1), seed=seed)
    if model.task != "lm":
        inputs = inputs.to(float_dtype)
    ref_state = model.init_state(batch, dtype=float_dtype)
    art_state = runner.init_state(batch)
    ref_peak = state_peak = 0.0
    out_err = state_err = 0.0
    agree = 0
    for t in range(steps):
        ref_y, ref_state = model.step(inputs[:, t], ref_state)
        art_y, art_state = runner.step(inputs[:, t], art_state)
        ref_np, art_np = ref_y.float().numpy(), art_y.float().numpy()
        _check_finite(art_np, f"step {t} output")
        out_err = max(out_err, float(np.abs(ref_np - art_np).max()))
        ref_peak = max(ref_peak, float(np.abs(ref_np).max()))
        if model.task == "lm":
            agree += int((ref_np.argmax(-1) == art_np.argmax(-1)).all())
        for name, ref_s in ref_state.items():
            a = art_state[name].float().numpy()
            r = ref_s.float().numpy()
            _check_finite(a, f"step {t} state {name!r}")
            state_err = max(state_err, float(np.abs(r - a).max()))
            state_peak = max(state_peak, float(np.abs(r).max()))
        if progress is not None:
            progress(t + 1, steps)
    result.max_abs_error = out_err
    result.max_rel_error = out_err / max(ref_peak, 1e-12)
    result.max_abs_state_error = state_err
    result.max_rel_state_error = state_err / max(state_peak, 1e-12)
    result.checks.append(f"{steps} streaming steps, batch {batch}, outputs and state vs PyTorch")
    if model.task == "lm" and steps:
        result.argmax_agreement = agree / steps
    worst = max(result.max_rel_error, result.max_rel_state_error)
    length = getattr(runner, "prefill_length", 0)
    if length:
        chunk = inputs[:, :length] if inputs.shape[1] >= length else sample_inputs(model, batch, length, seed=seed + 1)
        ref_y, _ = model.prefill(chunk, model.init_state(batch, dtype=float_dtype))
        art_y, _ = runner.prefill(chunk, runner.init_state(batch))
        ref_np, art_np = ref_y.float().numpy(), art_y.float().numpy()
        _check_finite(art_np, "prefill output")
        result.prefill_max_rel_error = float(np.abs(ref_np - art_np).max()) / max(float(np.abs(ref_np).max()), 1e-12)
        result.checks.append(f"prefill of {length} positions vs PyTorch prefill")
        worst = max(worst, result.prefill_max_rel_error)
    result.passed = bool(worst <= tolerance)
    if min_argmax_agreement is not None and result.argmax_agreement is not None:
        result.checks.append(f"top-1 agreement >= {min_argmax_agreement:g}")
        if result.argmax_agreement < min_argmax_agreement:
            result.passed = False
            result.note = (f"top-1 agreement {result.argmax_agreement:.3f} is below {min_argmax_agreement:g}")
    return result


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise EdgeseqError(f"verification failed: the artifact's {what} holds NaN or Inf")


def require_passed(result: Verification) -> None:
    if not result.passed:
        worst = max(result.max_rel_error, result.max_rel_state_error, result.prefill_max_rel_error or 0.0)
        raise EdgeseqError(
            f"verification failed on {result.runtime}: max relative error {worst:.3g} (tolerance "
            f"{result.tolerance:g}; outputs {result.max_rel_error:.3g}, state {result.max_rel_state_error:.3g}"
            f"{'' if result.prefill_max_rel_error is None else f', prefill {result.prefill_max_rel_error:.3g}'})"
            f"{'; ' + result.note if result.note else ''}; nothing was written"
        )


__all__ = ["MIN_ARGMAX_AGREEMENT", "TOLERANCES", "Verification", "require_passed", "tolerance_for", "verify_runner"]
