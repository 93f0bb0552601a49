"""Every zoo model × recipe × runtime: verification errors and the metric through the artifact.

For each zoo model and recipe (fp32, w8a8, w4a16) the model is quantized once (calibration on
the model's own train/calibration split), evaluated in PyTorch, then exported to ONNX (ONNX
Runtime) and to TVM (llvm for this CPU). Each export verifies itself (256 streaming steps and
256 teacher-forced steps against PyTorch); the same held-out data is then evaluated through the
artifact alone and compared with the PyTorch number — bits per byte for the language models
(the first ``--max-bytes`` of the validation split), accuracy for the classifiers (the whole
validation split).

    python benchmarks/export_matrix.py [--models ...] [--recipes ...] [--formats onnx tvm]
                                       [--max-bytes 20000] [--json out.json] [--work DIR]

Prints one table; ``--json`` keeps every row (verification dicts included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ZOO = ["mamba-shakespeare", "spikegpt-shakespeare", "lmuformer-digits", "spiking-lmuformer-digits"]


def _evaluate(model, tokenizer, meta, task, max_bytes):
    from edgeseq.evaluate import evaluate

    kwargs = {"max_bytes": max_bytes} if task == "lm" else {}
    result = evaluate(model, tokenizer, None, meta=meta, quiet=True, **kwargs)
    return result["bits_per_byte" if task == "lm" else "accuracy"]


def run(models, recipes, formats, max_bytes, work: Path, steps: int):
    from edgeseq.checkpoints import load_model
    from export.artifact import export_loaded
    from quantize.apply import quantize_checkpoint

    rows = []
    for name in models:
        base = load_model(name)
        for recipe in recipes:
            source = name
            if recipe != "fp32":
                source = str(work / f"{name}-{recipe}")
                quantize_checkpoint(name, recipe, source, progress=False)
            loaded = load_model(source)
            task = loaded.model.task
            t0 = time.perf_counter()
            torch_metric = _evaluate(loaded.model, loaded.tokenizer, base.meta, task, max_bytes)
            torch_s = time.perf_counter() - t0
            for fmt in formats:
                row = {"model": name, "recipe": recipe, "format": fmt, "task": task, "torch_metric": torch_metric,
                       "torch_eval_s": round(torch_s, 1)}
                out = work / f"{name}-{recipe}-{fmt}"
                t0 = time.perf_counter()
                try:
                    manifest = export_loaded(load_model(source), out, format=fmt, target="cpu", steps=steps, force=True)
                except Exception as exc:  # a refused export is a row too
                    row.update(status="refused", error=str(exc).splitlines()[0][:300])
                    rows.append(row)
                    print(_line(row), flush=True)
                    continue
                row["export_s"] = round(time.perf_counter() - t0, 1)
                v = manifest["verification"]
                row.update(status="ok", verification=v, embedding_bits=manifest.get("embedding_bits"))
                artifact = load_model(str(out))
                t0 = time.perf_counter()
                row["artifact_metric"] = _evaluate(artifact.model, artifact.tokenizer, base.meta, task, max_bytes)
                row["artifact_eval_s"] = round(time.perf_counter() - t0, 1)
                row["same_to_3_decimals"] = abs(row["artifact_metric"] - torch_metric) < 5e-4  # equal to 3 decimals: |Δ| < 0.0005
                row["abs_diff"] = abs(row["artifact_metric"] - torch_metric)
                rows.append(row)
                print(_line(row), flush=True)
                shutil.rmtree(out, ignore_errors=True)
    return rows


def _line(row):
    if row["status"] != "ok":
        return f"{row['model']:<26} {row['recipe']:<6} {row['format']:<5} REFUSED: {row['error']}"
    v = row["verification"]
    return (f"{row['model']:<26} {row['recipe']:<6} {row['format']:<5} "
            f"free {v['max_rel_error']:.1e}/{v['max_rel_state_error']:.1e}  "
            f"forced {v['teacher_forced_exact_fraction']:.0%} max {v['teacher_forced_max_rel_error']:.1e}  "
            f"torch {row['torch_metric']:.4f}  artifact {row['artifact_metric']:.4f}  "
            f"{'=' if row['same_to_3_decimals'] else '≠'} (|Δ| {row['abs_diff']:.1e})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=ZOO)
    parser.add_argument("--recipes", nargs="+", default=["fp32", "w8a8", "w4a16"])
    parser.add_argument("--formats", nargs="+", default=["onnx", "tvm"])
    parser.add_argument("--max-bytes", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--json")
    parser.add_argument("--work", help="folder for quantized models and artifacts (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgeseq-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    print("model                      recipe fmt   verification (rel. errors)                        metric: PyTorch vs artifact")
    rows = run(args.models, args.recipes, args.formats, args.max_bytes, work, args.steps)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")
    ok = [r for r in rows if r["status"] == "ok"]
    print(f"{sum(r['same_to_3_decimals'] for r in ok)}/{len(ok)} artifacts give the PyTorch metric to 3 decimals; "
          f"{len(rows) - len(ok)} exports refused")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
