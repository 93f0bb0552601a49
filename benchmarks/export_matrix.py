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

``--emulate-cpu Haswell`` (ONNX rows; needs ``qemu-x86_64-static``) also evaluates each artifact
on ONNX Runtime's kernels for that CPU model — QEMU's Haswell has AVX2 and neither AVX-512 nor
VNNI, so the u8×s8 pairwise-16-bit kernels run — through ``edgeseq eval`` in a QEMU process;
opening the artifact there also runs its shipped reference check (``targets.selfcheck``).
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


def _eval_emulated(cpu: str, artifact: Path, task: str, max_bytes: int):
    """The held-out metric of an artifact under ``qemu-x86_64 -cpu CPU`` (the CPU's own kernels)."""
    import os
    import subprocess

    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("--emulate-cpu needs qemu-x86_64-static (apt-get install qemu-user-static)")
    cmd = [qemu, "-cpu", cpu, sys.executable, "-m", "edgeseq", "eval", str(artifact), "--json"]
    if task == "lm":
        cmd += ["--max-bytes", str(max_bytes)]
    env = {**os.environ, "EDGESEQ_CACHE_DIR": str(artifact.parent / f".cache-{cpu}")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(Path(__file__).resolve().parents[1]))
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else f"exit {proc.returncode}"
    result = json.loads(proc.stdout)
    return result["bits_per_byte" if task == "lm" else "accuracy"], None


def run(models, recipes, formats, max_bytes, work: Path, steps: int, emulate_cpu: str | None = None):
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
                if emulate_cpu and fmt == "onnx":
                    t0 = time.perf_counter()
                    metric, error = _eval_emulated(emulate_cpu, out, task, max_bytes)
                    row.update(emulated_cpu=emulate_cpu, emulated_metric=metric, emulated_error=error,
                               emulated_eval_s=round(time.perf_counter() - t0, 1),
                               emulated_same_to_3_decimals=metric is not None and abs(metric - torch_metric) < 5e-4)
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
            f"{'=' if row['same_to_3_decimals'] else '≠'} (|Δ| {row['abs_diff']:.1e})"
            + ("" if "emulated_cpu" not in row else
               f"  {row['emulated_cpu']}: " + (f"{row['emulated_metric']:.4f} {'=' if row['emulated_same_to_3_decimals'] else '≠'}"
                                               if row["emulated_metric"] is not None else f"REFUSED: {row['emulated_error']}")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=ZOO)
    parser.add_argument("--recipes", nargs="+", default=["fp32", "w8a8", "w4a16"])
    parser.add_argument("--formats", nargs="+", default=["onnx", "tvm"])
    parser.add_argument("--max-bytes", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--json")
    parser.add_argument("--emulate-cpu", metavar="QEMU_CPU", default=None,
                        help="also evaluate ONNX artifacts under qemu-x86_64 with this CPU model (e.g. Haswell: AVX2, no VNNI)")
    parser.add_argument("--work", help="folder for quantized models and artifacts (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgeseq-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    print("model                      recipe fmt   verification (rel. errors)                        metric: PyTorch vs artifact")
    rows = run(args.models, args.recipes, args.formats, args.max_bytes, work, args.steps, args.emulate_cpu)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")
    ok = [r for r in rows if r["status"] == "ok"]
    emulated = [r for r in ok if "emulated_cpu" in r]
    if emulated:
        print(f"{sum(r['emulated_same_to_3_decimals'] for r in emulated)}/{len(emulated)} ONNX artifacts give the PyTorch "
              f"metric to 3 decimals on {args.emulate_cpu} kernels (QEMU)")
    print(f"{sum(r['same_to_3_decimals'] for r in ok)}/{len(ok)} artifacts give the PyTorch metric to 3 decimals; "
          f"{len(rows) - len(ok)} exports refused")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
