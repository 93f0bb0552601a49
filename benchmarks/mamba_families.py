"""Mamba-1 next to Mamba-2 (zoo models): held-out bits/byte on long streams, decode-state bytes per
sequence, and the CPU decode latency of their verified ONNX artifacts, every recipe, one run.

    python benchmarks/mamba_families.py [--models mamba-shakespeare,mamba2-shakespeare]
        [--recipes fp32,w8a8,w8a8-s8-element,w4a8,w4a16] [--streams 4] [--tokens 20000]
        [--calib-samples 64] [--profile-tokens 128] [--rounds 3] [--threads 1] [--work-dir DIR] [--json FILE]
        [--skip-profile] [--profile-from JSON[,JSON]]

Accuracy: each model is quantized with each recipe (calibration: ``--calib-samples`` random windows
of 256 tokens of its train split, seed 0), then the first ``streams × tokens`` bytes of the held-out
validation split are decoded as ``--streams`` contiguous streams from an empty state (as in
``benchmarks/state_bits.py``: recipes that change the stored state run through ``step``, so the
state is rounded after every token; float-state recipes through chunked ``prefill``, the same
function). State bytes: ``edgeseq info``'s figure (``state_spec()``, per sequence).

Latency: each quantized model is exported to ONNX (``export_artifact``, verified against PyTorch
before it is written), then every artifact is profiled with ONNX Runtime on this CPU (batch 1,
``--threads``), interleaved round by round so that load from other processes falls on every row
alike; the figure is the median over rounds of each round's p50. The CPU model, ISA flags and the
load average before and after are recorded. ``--skip-profile`` stops after the artifacts (several
such runs can share the machine's cores), ``--profile-from`` then profiles all their artifacts
together in one interleaved run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def cpu_record() -> dict:
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return {"cpu": model, "isa": isa, "cores": os.cpu_count()}


def main(argv=None) -> int:
    from edgeseq.checkpoints import LoadedModel, load_model, model_info
    from edgeseq.corpus import encode_text, load_split
    from export.artifact import export_artifact
    from quantize.apply import quantize_model
    from quantize.calibrate import calibration_batches
    from quantize.recipes import get_recipe
    from state_bits import stream_bits_per_byte
    from targets.profile import profile_runtime
    from targets.registry import get_target
    from targets.runtimes import open_runtime

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mamba-shakespeare,mamba2-shakespeare")
    p.add_argument("--recipes", default="fp32,w8a8,w8a8-s8-element,w4a8,w4a16")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--profile-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--verify-steps", type=int, default=128)
    p.add_argument("--work-dir", default="/tmp/edgeseq-families")
    p.add_argument("--json", default=None)
    p.add_argument("--skip-profile", action="store_true", help="accuracy and export only (rows to --json)")
    p.add_argument("--profile-from", default=None, metavar="JSON[,JSON]",
                   help="no accuracy runs: profile the artifacts of the rows in these files (from --skip-profile runs, "
                        "or lines of this script's output) together, interleaved")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows, artifacts = [], []
    if args.profile_from:
        for path in args.profile_from.split(","):
            text = Path(path).read_text()
            try:
                found = json.loads(text)
                found = found["rows"] if isinstance(found, dict) else found
            except json.JSONDecodeError:  # JSON lines (this script's printed rows)
                found = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            rows += found
        artifacts = [(row, work / f"{row['model']}-{row['recipe']}") for row in rows]
        args.models = ",".join(dict.fromkeys(row["model"] for row in rows))
    for name in ([] if args.profile_from else args.models.split(",")):
        loaded = load_model(name)
        data = (loaded.meta or {}).get("dataset") or "shakespeare"
        ids = encode_text(loaded.tokenizer, load_split(data, "validation").text)
        need = args.streams * args.tokens
        if ids.numel() < need:
            raise SystemExit(f"{name}: the validation split has {ids.numel()} tokens, fewer than {need}")
        streams = ids[:need].view(args.streams, args.tokens)
        torch.manual_seed(0)
        batches, _ = calibration_batches(loaded.model, data, tokenizer=loaded.tokenizer, meta=loaded.meta,
                                         samples=args.calib_samples)
        for recipe in args.recipes.split(","):
            spec = get_recipe(recipe)
            qmodel, _ = quantize_model(loaded.model, spec, batches, progress=False)
            start = time.perf_counter()
            bpb, segments = stream_bits_per_byte(qmodel, streams, spec.changes_state)
            info = model_info(LoadedModel(qmodel, loaded.tokenizer, name, "quantized", loaded.meta))
            folder = work / f"{name}-{spec.name}"
            manifest = export_artifact(qmodel, folder, steps=args.verify_steps, prefill_length=64, force=True,
                                       recipe=spec.name)
            row = {"model": name, "recipe": spec.name, "bits_per_byte": round(bpb, 4),
                   "segments": {k: round(v, 4) for k, v in segments.items()}, "state_bytes": info["state_bytes"],
                   "through": "step" if spec.changes_state else "prefill", "eval_s": round(time.perf_counter() - start, 1),
                   "verified": bool(manifest["verification"]["passed"]),
                   "state_dtypes": sorted({i["dtype"] for i in manifest["graphs"]["step"]["inputs"] if i["name"] != "token"})}
            rows.append(row)
            artifacts.append((row, folder))
            print(json.dumps(row), flush=True)
    if args.skip_profile:
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
        return 0
    target = get_target("host", measure_host=False)
    load_before = os.getloadavg()
    p50s: dict[int, list[float]] = {i: [] for i in range(len(artifacts))}
    for _ in range(args.rounds):
        for i, (row, folder) in enumerate(artifacts):
            runtime = open_runtime(str(folder), threads=args.threads)
            try:
                report = profile_runtime(runtime, target, prompt_len=64, tokens=args.profile_tokens, warmup=8,
                                         threads=args.threads)
            finally:
                runtime.close()
            p50s[i].append(report["p50_ms"])
            row["model_bytes"] = report["model_bytes"]
            row["artifact_state_bytes"] = report["state_bytes"]
            row.setdefault("ttft_ms", []).append(report["ttft_ms"])
    load_after = os.getloadavg()
    for i, (row, _) in enumerate(artifacts):
        row["p50_ms"] = round(statistics.median(p50s[i]), 3)
        row["p50_rounds_ms"] = [round(v, 3) for v in p50s[i]]
        row["ttft_ms"] = round(statistics.median(row["ttft_ms"]), 2)
    record = {"machine": {**cpu_record(), "load_before": load_before, "load_after": load_after},
              "args": vars(args), "rows": rows}
    models = args.models.split(",")
    print("\n| recipe | " + " | ".join(f"{m} bits/byte | state bytes | p50 ms" for m in models) + " |")
    print("|---|" + "---|---|---|" * len(models))
    for recipe in dict.fromkeys(row["recipe"] for row in rows):
        cells = []
        for m in models:
            row = next(r for r in rows if r["model"] == m and r["recipe"] == recipe)
            cells.append(f"{row['bits_per_byte']:.4f} | {row['state_bytes']:,} | {row['p50_ms']:.3f}")
        print(f"| {recipe} | " + " | ".join(cells) + " |")
    print(f"\nmachine: {record['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
