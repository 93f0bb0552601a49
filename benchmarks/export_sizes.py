"""Artifact sizes and step latency of a mamba-130m-shaped model: fp32 vs w8a8 vs w4a16 ONNX.

Random weights (the shape is what matters for bytes; no download), 24 layers x d_model 768,
vocab 50280. Each artifact is verified against PyTorch for --steps steps as usual; the table
prints the step-graph file size, its ratio to fp32, the verification error and the median ONNX
Runtime step latency (batch 1, --threads threads), all measured in this one run.

    python benchmarks/export_sizes.py [--layers 24] [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50280)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", default="fp32,w8a8,w4a16")
    parser.add_argument("--kernels", action="store_true", help="also list the integer kernels ONNX Runtime fuses")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from edgeseq.models.mamba import Mamba, MambaConfig
    from export.artifact import export_artifact
    from export.graphs import sample_inputs
    from export.qdq import runtime_kernels
    from targets.runtimes import open_artifact
    from quantize.apply import quantize_model

    model = Mamba(MambaConfig(vocab_size=args.vocab, d_model=args.d_model, n_layer=args.layers)).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            start = time.perf_counter()
            if recipe == "fp32":
                exported = model
            else:
                calib = [sample_inputs(model, 1, 32, seed=1)]
                exported, _ = quantize_model(model, recipe, calib, progress=False)
            out = Path(tmp) / recipe
            manifest = export_artifact(exported, out, steps=args.steps, batch=1, prefill=False, recipe=recipe,
                                       threads=args.threads)
            seconds = time.perf_counter() - start
            size = (out / "step.onnx").stat().st_size
            runner = open_artifact(out, threads=args.threads)
            state = runner.init_state(1)
            token = torch.tensor([1])
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                _, state = runner.step(token, state)
                times.append(time.perf_counter() - t0)
            kernels = runtime_kernels(str(out / "step.onnx"), tmp) if args.kernels else {}
            integer = {k: v for k, v in kernels.items() if k in ("MatMulIntegerToFloat", "MatMulNBits", "QLinearMatMul", "DynamicQuantizeMatMul")}
            v = manifest["verification"]
            rows.append((recipe, size, v["max_rel_error"], v["argmax_agreement"], statistics.median(times[5:]) * 1e3, integer, seconds))
            print(f"[bench] {recipe}: {size / 1e6:.1f} MB, {seconds:.0f} s", flush=True)
            del runner
    fp32 = next((r[1] for r in rows if r[0] == "fp32"), None)
    print(f"mamba {args.layers}x{args.d_model}, vocab {args.vocab}: ONNX step graph (onnxruntime, {args.threads} threads, batch 1)")
    print(f"{'recipe':8} {'step.onnx MB':>13} {'vs fp32':>8} {'max rel err':>12} {'top1 agree':>10} {'p50 ms/step':>12}  integer kernels  (export s)")
    for recipe, size, err, agree, ms, integer, seconds in rows:
        ratio = f"{size / fp32:.1%}" if fp32 else "-"
        print(f"{recipe:8} {size / 1e6:13.1f} {ratio:>8} {err:12.2e} {agree:10.3f} {ms:12.2f}  {integer}  ({seconds:.0f})")


if __name__ == "__main__":
    main()
