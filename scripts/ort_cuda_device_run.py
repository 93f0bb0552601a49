"""Run an ONNX artifact with ONNX Runtime's CUDA provider (and its CPU provider, side by side).

Needs only numpy and onnxruntime (the GPU build for CUDA): no edgeseq, no PyTorch.

    python scripts/ort_cuda_device_run.py ARTIFACT_DIR REFERENCE.npz [--steps N] [--warmup W]

REFERENCE.npz (``export.verify.write_reference_npz``) holds the seeded inputs, the PyTorch outputs of
a stream of steps and the initial state. For each available provider the script streams the
step graph through the reference inputs (carrying its own state), reports the max relative
error against PyTorch, then times single steps (p50/p90, after warm-up; I/O bound to the
device with IOBinding when the provider is CUDA). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _session(path: Path, provider: str):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")  # as edgeseq verifies
    options.add_session_config_entry("mlas.disable_kleidiai", "1")  # as targets.runtimes.ORT_SESSION_CONFIG
    return ort.InferenceSession(str(path), options, providers=[provider])


def run(artifact: Path, reference: Path, provider: str, steps: int, warmup: int) -> dict:
    manifest = json.loads((artifact / "manifest.json").read_text())
    spec = manifest["graphs"]["step"]
    session = _session(artifact / spec["file"], provider)
    ref = np.load(reference)
    inputs, outputs = ref["inputs"], ref["outputs"]
    in_names = [t["name"] for t in spec["inputs"]]
    out_names = [t["name"] for t in spec["outputs"]]
    state_names = in_names[1:]
    state = {n: ref[f"init_{n}"] for n in state_names}
    steps = min(steps, inputs.shape[1])
    err = peak = 0.0
    for t in range(steps):
        result = session.run(None, {in_names[0]: inputs[:, t], **state})
        y = result[0].astype(np.float32)
        err = max(err, float(np.abs(y - outputs[:, t]).max()))
        peak = max(peak, float(np.abs(outputs[:, t]).max()))
        state = dict(zip(state_names, result[1:]))
    feed = {in_names[0]: inputs[:, 0], **state}
    times = []
    if provider == "CUDAExecutionProvider":
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for name in out_names:
            binding.bind_output(name, "cuda")
        for i in range(warmup + 200):
            start = time.perf_counter()
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    else:
        for i in range(warmup + 50):
            start = time.perf_counter()
            session.run(None, feed)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "provider": provider, "providers_used": session.get_providers(), "steps": steps,
        "max_rel_error": err / max(peak, 1e-12), "p50_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    available = ort.get_available_providers()
    report = {"onnxruntime": ort.__version__, "available": available, "artifact": str(args.artifact), "runs": []}
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        if provider in available:
            try:
                report["runs"].append(run(args.artifact, args.reference, provider, args.steps, args.warmup))
            except Exception as exc:  # report and go on with the next provider
                report["runs"].append({"provider": provider, "error": str(exc).splitlines()[0][:300]})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
