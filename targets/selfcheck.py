"""Proof on the device: an artifact checks, on first load, that this device computes its function.

Verification at export ran on the export host's CPU and runtime. The device may pick other
kernels (another ISA, another ONNX Runtime build, a GPU). So every artifact ships a short
**reference stream** (``reference.npz``): the inputs, the PyTorch reference's states and its
outputs and new states for ``N`` teacher-forced steps, with the exactness rule verification
derived (``manifest["reference"]``: exact tolerance, allowed fraction of inexact sample-steps,
sanity bound). On first load on a device the runtime steps from each recorded state and applies
that rule; a device that computes another function (a saturating integer kernel, a miscompiled
operator) is refused with one line. A pass is remembered per artifact × device × runtime in
``$EDGESEQ_CACHE_DIR`` (default ``~/.cache/edgeseq``) so later loads cost nothing.

The file is plain ``.npz`` read with ``allow_pickle=False``; the numpy core here serves the ONNX
Runtime, TVM and PyTorch-adapter runners alike (each passes a numpy ``step`` function).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeseq.errors import EdgeseqError
from targets.hostinfo import int8_accumulation, read_cpuinfo

REFERENCE_FILE = "reference.npz"
REFERENCE_STEPS = 6

StepFn = Callable[[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]


def cpu_features() -> dict[str, Any]:
    """This CPU's model and the ISA features that select integer kernels (Linux; empty elsewhere)."""
    info = read_cpuinfo()
    return {"cpu": info["model"], "machine": info["machine"], "features": info["features"],
            "int8_accumulation": int8_accumulation(info["features"], info["machine"])}


def write_reference(folder: Path, x: np.ndarray, y: np.ndarray, states: dict[str, np.ndarray],
                    rule: dict[str, float]) -> dict[str, Any]:
    """Store a teacher-forced stream and return the manifest entry.

    ``x``/``y``: ``[N, B, ...]`` inputs and outputs; ``states[name]``: ``[N + 1, B, ...]``, the
    state before each step and after the last (step ``t`` maps ``states[t]`` to ``states[t + 1]``).
    """
    arrays = {"x": x, "y": y, **{f"state.{name}": value for name, value in states.items()}}
    with open(folder / REFERENCE_FILE, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return {"file": REFERENCE_FILE, "steps": int(x.shape[0]), "batch": int(x.shape[1]), "state": list(states), **rule}


def per_sample_errors(ref: Any, got: Any) -> np.ndarray:
    """``[B]``: per sample, max |Δ| ÷ the tensor's peak |ref| (numpy arrays or CPU tensors)."""
    ref, got = np.asarray(ref).astype(np.float64), np.asarray(got).astype(np.float64)
    if ref.shape != got.shape:
        raise EdgeseqError(f"reference check: the runtime returned shape {got.shape}, the reference holds {ref.shape}")
    peak = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12)
    diff = np.abs(ref - got)
    return diff.reshape(diff.shape[0], -1).max(axis=1) / peak if diff.size else np.zeros(ref.shape[:1])


def state_errors(ref_state: Sequence[Any], state: Sequence[Any], batch: int) -> list[np.ndarray]:
    """``[B]`` errors of each new state tensor, per sample (a state without the batch first gives
    one figure for every sample)."""
    rows = []
    for ref, got in zip(ref_state, state):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.ndim and ref.shape[0] == batch:
            rows.append(per_sample_errors(ref, got))
        else:
            rows.append(np.full(batch, float(per_sample_errors(ref.reshape(1, -1), got.reshape(1, -1))[0])))
    return rows


def step_errors(ref_y: Any, ref_state: Sequence[Any], y: Any, state: Sequence[Any]) -> np.ndarray:
    """``[B]`` errors of one teacher-forced step: the output and every new state tensor, per sample
    (a state without the batch first gives one figure for every sample)."""
    errors = per_sample_errors(ref_y, y)
    return np.maximum.reduce([errors, *state_errors(ref_state, state, errors.shape[0])])


def compare_reference(folder: Path, entry: dict[str, Any], step: StepFn) -> dict[str, Any]:
    """Run the reference stream through ``step``; the result of the exactness rule (no caching)."""
    path = Path(folder) / entry.get("file", REFERENCE_FILE)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EdgeseqError(f"{path}: the reference stream cannot be read ({exc}); re-export the artifact") from None
    names = list(entry.get("state", []))
    errors = []
    worst = 0.0
    for t in range(int(entry["steps"])):
        state = [np.ascontiguousarray(data[f"state.{n}"][t]) for n in names]
        y, new_state = step(np.ascontiguousarray(data["x"][t]), state)
        if not np.isfinite(np.asarray(y, dtype=np.float64)).all():
            return {"passed": False, "detail": f"step {t} returned NaN or Inf"}
        e = step_errors(data["y"][t], [data[f"state.{n}"][t + 1] for n in names], y, new_state)
        errors.append(e)
        worst = max(worst, float(e.max()))
    errors_all = np.concatenate(errors)
    inexact = float((errors_all > entry["exact_tolerance"]).mean())
    passed = inexact <= entry["allowed_inexact_fraction"] and worst <= entry["sanity_bound"]
    return {"passed": bool(passed), "inexact_fraction": inexact, "max_rel_error": worst, "sample_steps": int(errors_all.size),
            "detail": (f"{inexact:.0%} of {errors_all.size} reference sample-steps differ beyond {entry['exact_tolerance']:.2g} "
                       f"(allowed {entry['allowed_inexact_fraction']:.0%}), worst relative error {worst:.3g}")}


def arm_without_dot_product(device: dict[str, Any], runtime: str = "onnxruntime") -> str | None:
    """Why ONNX Runtime on an Arm CPU without ``sdot`` computes another function, or None elsewhere
    (measured under qemu: docs/export.md, "ONNX artifacts on Arm CPUs")."""
    arm = str(device.get("machine", "")).lower() in ("aarch64", "arm64")
    if arm and runtime.startswith("onnxruntime") and "asimddp" not in device.get("features", []):
        return ("this Arm CPU has no dot-product instructions (asimddp), so ONNX Runtime runs MatMulNBits at "
                "accuracy level 4 (the block recipes' layers, the LM head of int8-activation recipes) with float "
                "activations; export a float-activation recipe (w4a16, fp32) or a TVM artifact for it")
    return None


def _remedy(device: dict[str, Any], runtime: str) -> str:
    """What to do about a refused device."""
    return arm_without_dot_product(device, runtime) or (
        "re-export the model on this device, or with a recipe whose integer ranges every kernel computes exactly (w8a8)")


def _cache_file(manifest: dict[str, Any], runtime: str) -> Path:
    files = sorted((f.get("path", ""), f.get("sha256", "")) for f in manifest.get("files", []) if isinstance(f, dict))
    key = json.dumps({"files": files, "device": cpu_features(), "runtime": runtime,
                      "versions": _runtime_versions()}, sort_keys=True)
    root = Path(os.environ.get("EDGESEQ_CACHE_DIR") or Path.home() / ".cache" / "edgeseq")
    return root / "selfcheck" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _runtime_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions = {}
    for dist in ("onnxruntime", "apache-tvm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def check_on_device(folder: str | Path, manifest: dict[str, Any], runtime: str, step: StepFn,
                    use_cache: bool = True) -> dict[str, Any] | None:
    """Refuse (one line) a device that computes another function; None when the artifact has no stream."""
    entry = manifest.get("reference")
    if not isinstance(entry, dict):
        return None
    cache = _cache_file(manifest, runtime)
    if use_cache and os.environ.get("EDGESEQ_SELFCHECK", "1") != "0" and cache.is_file():
        try:
            return {**json.loads(cache.read_text()), "cached": True}
        except (OSError, ValueError):
            pass
    result = compare_reference(Path(folder), entry, step)
    if not result["passed"]:
        device = cpu_features()
        raise EdgeseqError(
            f"{folder}: this device computes another function than the artifact was verified for on "
            f"{manifest.get('export_host', {}).get('cpu') or 'the export host'}: {result['detail']} "
            f"({runtime} on {device['cpu'] or device['machine']}, int8 accumulation {device['int8_accumulation']}); "
            + _remedy(device, runtime)
        )
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    except OSError:
        pass  # a read-only home: the check simply runs again next time
    return result


__all__ = ["REFERENCE_FILE", "REFERENCE_STEPS", "arm_without_dot_product", "check_on_device", "compare_reference", "cpu_features", "per_sample_errors", "state_errors", "step_errors", "write_reference"]
