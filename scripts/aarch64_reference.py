"""Write the PyTorch reference stream an artifact is compared with on another machine or emulator.

    python scripts/aarch64_reference.py ARTIFACT_DIR -o REFERENCE.npz [--steps 32] [--batch 1] [--seed 0] [--model M]

Loads the model the artifact was exported from (``manifest.json`` ``model.source``, or ``--model``:
a zoo name or checkpoint/quantized folder), feeds it the seeded inputs verification uses
(``export.graphs.sample_inputs``) for ``--steps`` consecutive steps from its initial state, and saves

* ``inputs`` [B, T] token ids or [B, T, F] frames, in the step graph's input dtype;
* ``outputs`` [B, T, ...] PyTorch step outputs;
* ``init_<state>`` the initial state, ``state_<state>`` [T, B, ...] the state after every step,
* ``rule_*`` the exactness rule of ``export.verify`` derived on this very stream: the same model in
  float64, stepped from the float32 reference's state, gives the noise level (``rule_exact_tolerance``,
  ``rule_reference_inexact_fraction``, ``rule_allowed_inexact_fraction``), ``rule_sanity_bound``
  and ``rule_drift_bound`` (free-running: the larger of the sanity bound and 1.5 × the float64
  reference's own drift),
* ``prefill_inputs`` / ``prefill_outputs`` [B, L, ...]: one chunk of the prefill graph's length from
  the initial state (when the artifact has a prefill graph; ``--no-prefill`` leaves it out), with
  ``rule_prefill_*`` derived the same way per (sample, position),

which ``scripts/aarch64_artifact_run.py`` (numpy + TVM runtime only) and
``scripts/aarch64_onnx_run.py`` (numpy + ONNX Runtime only) read. Runs on the host, with torch and
edgeseq.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch


def reference_model(manifest: dict, model_source: str | None):
    """The PyTorch model that was exported, as export verified it (quantized: int8 embedding table)."""
    from edgeseq.checkpoints import load_model

    source = model_source or manifest["model"].get("source")
    if not source:
        sys.exit("the manifest names no model source; pass --model")
    model = load_model(source).model.eval()
    if manifest["model"].get("family") != model.config.family or manifest["model"].get("config") != model.config.to_dict():
        sys.exit(f"{source}: its config differs from the artifact's manifest (re-export, or pass the right --model)")
    return as_exported(model, manifest)


def as_exported(model, manifest: dict):
    """``model`` as export verified it: quantized models with the int8 embedding table export stored."""
    bits = manifest.get("embedding_bits")
    if bits:  # export.artifact quantizes the embedding table of quantized models before export
        from export.qdq import quantize_embeddings

        model = copy.deepcopy(model).float().eval()
        quantize_embeddings(model, bits)  # the rounded table export stored as integers
    return model


@torch.no_grad()
def write_stream(model, path: str | Path, steps: int, batch: int = 1, seed: int = 0, input_dtype: str | None = None,
                 prefill_length: int = 0) -> None:
    from export.graphs import sample_inputs
    from targets.selfcheck import step_errors

    inputs = sample_inputs(model, batch, steps, seed=seed)
    if input_dtype and model.task != "lm":
        inputs = inputs.to(getattr(torch, input_dtype))
    state = model.init_state(batch)
    arrays = {f"init_{name}": value.numpy() for name, value in state.items()}
    outputs, states = [], {name: [] for name in state}
    exact64 = copy.deepcopy(model).double().eval()  # export.verify's second correct implementation

    def as64(s):
        return {k: v.double() if v.is_floating_point() else v for k, v in s.items()}

    free64 = as64(state)
    noise, drift64 = [], 0.0
    for t in range(steps):
        x_t = inputs[:, t]
        y64, state64 = exact64.step(x_t if model.task == "lm" else x_t.double(), as64(state))
        free_y64, free64 = exact64.step(x_t if model.task == "lm" else x_t.double(), free64)
        y, state = model.step(x_t, state)
        outputs.append(y.float())
        for name, value in state.items():
            states[name].append(value.float().numpy())
        noise.append(step_errors(y, [state[n] for n in state], y64, [state64[n] for n in state]))
        drift64 = max(drift64, _rel(y, free_y64), *(_rel(state[n], free64[n]) for n in state))
    arrays.update({f"state_{name}": np.stack(values) for name, values in states.items()})
    rule = stream_rule(model, np.concatenate(noise), drift64)
    arrays.update({f"rule_{k}": np.float64(v) for k, v in rule.items()})
    if prefill_length:
        arrays.update(prefill_stream(model, exact64, batch, prefill_length, seed, input_dtype, rule))
    np.savez(path, inputs=inputs.numpy(), outputs=torch.stack(outputs, 1).numpy(), **arrays)


def prefill_stream(model, exact64, batch: int, length: int, seed: int, input_dtype: str | None, rule: dict) -> dict:
    """One prefill chunk from the initial state (``prefill_inputs``, ``prefill_outputs`` [B, L, ...]) and
    export.verify's prefill rule for it: per (sample, position), thresholds from the float64 prefill."""
    from export.graphs import sample_inputs
    from export.verify import DRIFT_SLACK, allowed_inexact, exact_tolerance, tolerance_for

    chunk = sample_inputs(model, batch, length, seed=seed + 1)
    if input_dtype and model.task != "lm":
        chunk = chunk.to(getattr(torch, input_dtype))
    ref_y, _ = model.prefill(chunk, model.init_state(batch))
    y64, _ = exact64.prefill(chunk if model.task == "lm" else chunk.double(), exact64.init_state(batch, dtype=torch.float64))
    r, g = ref_y.double(), y64.double()
    noise = ((r - g).abs().reshape(r.shape[0], r.shape[1], -1).amax(-1) / max(float(r.abs().max()), 1e-12)).reshape(-1).numpy()
    quantized = bool(rule["quantized"])
    tolerance = exact_tolerance(noise, tolerance_for("float32", quantized))
    p_ref = float((noise > tolerance).mean())
    return {"prefill_inputs": chunk.numpy(), "prefill_outputs": ref_y.float().numpy(),
            "rule_prefill_exact_tolerance": np.float64(tolerance),
            "rule_prefill_allowed_inexact_fraction": np.float64(allowed_inexact(p_ref, noise.size, quantized)),
            "rule_prefill_bound": np.float64(max(rule["sanity_bound"], DRIFT_SLACK * float(noise.max())))}


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    r, g = ref.double(), got.double()
    return float((r - g).abs().max()) / max(float(r.abs().max()) if r.numel() else 0.0, 1e-12)


def stream_rule(model, noise: np.ndarray, drift64: float) -> dict[str, float]:
    """export.verify's exactness rule for this stream: thresholds from the float64 reference's own errors."""
    from export.verify import DRIFT_SLACK, SANITY_BOUND, allowed_inexact, exact_tolerance, tolerance_for

    quantized = any(hasattr(m, "weight_int") or type(m).__name__ == "QuantAct" for m in model.modules())
    floor = tolerance_for("float32", quantized)
    tolerance = exact_tolerance(noise, floor)
    p_ref = float((noise > tolerance).mean()) if noise.size else 0.0
    sanity = SANITY_BOUND["quantized"] if quantized else 10.0 * tolerance
    return {"exact_tolerance": tolerance, "reference_inexact_fraction": p_ref,
            "allowed_inexact_fraction": allowed_inexact(p_ref, noise.size, quantized), "sanity_bound": sanity,
            "drift_bound": max(sanity, DRIFT_SLACK * drift64), "quantized": float(quantized)}


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch reference stream (.npz) for an exported artifact")
    parser.add_argument("artifact", help="artifact folder (reads manifest.json)")
    parser.add_argument("-o", "--output", required=True, help="the .npz to write")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="model to run instead of the manifest's model.source")
    parser.add_argument("--no-prefill", action="store_true", help="leave out the prefill chunk (default: one chunk "
                        "of the prefill graph's length when the artifact has one)")
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 1:
        sys.exit("--steps and --batch must be positive")
    manifest = json.loads((Path(args.artifact) / "manifest.json").read_text())
    model = reference_model(manifest, args.model)
    prefill = 0 if args.no_prefill else int((manifest["graphs"].get("prefill") or {}).get("length") or 0)
    write_stream(model, args.output, args.steps, args.batch, args.seed, manifest["graphs"]["step"]["inputs"][0]["dtype"],
                 prefill_length=prefill)
    print(f"wrote {args.output}: {args.steps} steps" + (f" and a {prefill}-position prefill" if prefill else "")
          + f", batch {args.batch}, seed {args.seed} ({manifest['model']['family']})")


if __name__ == "__main__":
    main()
