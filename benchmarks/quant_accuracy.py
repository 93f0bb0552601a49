"""Accuracy of every quantization recipe, side by side, on held-out data.

    python benchmarks/quant_accuracy.py MODEL [MODEL ...] [--recipes fp32,w8a8,...] [--data D]
        [--calib D] [--calib-samples N] [--seq-len L] [--max-bytes N] [--device cpu|cuda]
        [--inject-outliers K:S] [--json FILE]

For language models it prints bits per byte (and the relative change against fp32); for
classifiers, accuracy. Calibration uses ``--calib`` (default: the model's own task, train split);
evaluation uses ``--data`` (default: the model's own task, validation split) — pass text the model
was not trained on to measure generalisation. It also prints, per model, how heavy the
activation outliers are at the declared points (max|x| / rms), which is where rotation and
percentile clipping matter.

``--inject-outliers K:S`` (Mamba only) additionally benchmarks a copy of each model with K massive
outlier channels at every ``out_proj`` input: the gate ``z`` rows of those channels become
``S·(z + 3)`` (so SiLU(z) is ≈ linear there and the channel is ≈ S times larger) and ``out_proj``'s
column is divided by S. This is *not* exactly the original function (the gate changes), so that
model is compared against its own fp32 row.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_RECIPES = "fp32,fp16,w8a8-minmax,w8a8,w8a8-norotate,w8a8-noclip,w8a8-noclip-norotate,w4a8,w4a16,w4a16-gptq"


def outlier_stats(model, batches, device) -> dict[str, float]:
    """Mean over layers of max|x| / rms(x) at each kind of declared point (the float model)."""
    from edgeseq.streaming import QuantPoint

    ratios: dict[str, list[float]] = {}
    handles = []
    points: list[QuantPoint] = [p for p in model.quant_points() if p.input == "real" and not p.input_quantized_at]
    for point in points:
        name = point.path.rsplit(".", 1)[-1]

        def hook(module, args, name=name):
            x = args[0].detach().float()
            ratios.setdefault(name, []).append(float(x.abs().max() / x.pow(2).mean().sqrt().clamp(min=1e-12)))

        handles.append(model.get_submodule(point.path).register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in batches[:2]:
            model(batch.to(device))
    for handle in handles:
        handle.remove()
    return {name: sum(values) / len(values) for name, values in ratios.items()}


def inject_outliers(model, channels: int, scale: float, seed: int = 0):
    """A copy of a Mamba with ``channels`` huge outlier channels at every out_proj input (see module docs)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.layers:
            mixer = block.mixer
            d_inner = mixer.out_proj.in_features
            picked = torch.randperm(d_inner, generator=gen)[:channels]
            in_proj = mixer.in_proj
            if in_proj.bias is None:
                in_proj.bias = torch.nn.Parameter(torch.zeros(in_proj.out_features, device=in_proj.weight.device))
            # z rows live in the second half of in_proj: z -> S·(z + 3) makes SiLU(z) ≈ S·(z + 3)
            rows = d_inner + picked
            in_proj.bias[rows] += 3.0
            in_proj.weight[rows] *= scale
            in_proj.bias[rows] *= scale
            mixer.out_proj.weight[:, picked] /= scale
    return model


def evaluate_model(model, loaded, data, max_bytes, max_samples):
    from edgeseq.evaluate import evaluate

    result = evaluate(model, loaded.tokenizer, data, meta=loaded.meta, max_bytes=max_bytes, max_samples=max_samples,
                      quiet=True)
    return result.get("bits_per_byte", result.get("accuracy"))


def run_model(name, loaded, model, args, recipes, device):
    from quantize.apply import quantize_model
    from quantize.calibrate import calibration_batches

    batches, described = calibration_batches(
        model, args.calib, tokenizer=loaded.tokenizer, meta=loaded.meta, samples=args.calib_samples,
        seq_len=args.seq_len, batch_size=args.batch_size, split="train",
    )
    model = model.to(device).eval()
    stats = outlier_stats(model, batches, device)
    rows = []
    for recipe in recipes:
        start = time.perf_counter()
        qmodel, report = quantize_model(model, recipe, batches, progress=False)
        seconds = time.perf_counter() - start
        score = evaluate_model(qmodel.to(device), loaded, args.data, args.max_bytes, args.max_samples)
        rows.append({"model": name, "recipe": recipe, "score": score, "quantize_s": seconds,
                     "max_calib_error": report["summary"]["max_calib_error"]})
        print(f"  {name:28s} {recipe:22s} {score:.4f}  ({seconds:.1f} s)", file=sys.stderr, flush=True)
        del qmodel
    return {"model": name, "calibration": described, "outliers": stats, "rows": rows, "task": model.task}


def print_table(results) -> None:
    for result in results:
        lm = result["task"] == "lm"
        metric = "bits/byte" if lm else "accuracy"
        base = next((r["score"] for r in result["rows"] if r["recipe"] == "fp32"), None)
        print(f"\n## {result['model']}  (calibration: {result['calibration']})")
        print("outliers (max|x| / rms, mean over layers): "
              + ", ".join(f"{k} {v:.1f}" for k, v in result["outliers"].items()))
        print(f"| recipe | {metric} | Δ vs fp32 | max act calib error | quantize s |")
        print("|---|---|---|---|---|")
        for row in result["rows"]:
            delta = "" if base is None else (f"{100 * (row['score'] - base) / base:+.2f}%" if lm
                                             else f"{100 * (row['score'] - base):+.2f} pt")
            print(f"| {row['recipe']} | {row['score']:.4f} | {delta} | {row['max_calib_error']:.3g} | {row['quantize_s']:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="zoo names or checkpoint folders")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES)
    parser.add_argument("--data", default=None, help="evaluation data (default: the model's task, validation split)")
    parser.add_argument("--calib", default=None, help="calibration data (default: the model's task, train split)")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-bytes", type=int, default=None, help="LM: evaluate on the first N bytes only")
    parser.add_argument("--max-samples", type=int, default=None, help="classifiers: evaluate N samples only")
    parser.add_argument("--inject-outliers", default=None, metavar="K:S", help="also test copies with K outlier channels ×S")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from edgeseq.checkpoints import load_model

    recipes = [r for r in args.recipes.split(",") if r]
    results = []
    for source in args.models:
        loaded = load_model(source)
        results.append(run_model(source, loaded, loaded.model, args, recipes, args.device))
        if args.inject_outliers and loaded.model.family == "mamba":
            k, s = args.inject_outliers.split(":")
            injected = inject_outliers(loaded.model, int(k), float(s))
            results.append(run_model(f"{source}+outliers({k}x{s})", loaded, injected, args, recipes, args.device))
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
