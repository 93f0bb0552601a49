"""Every recipe's verified ONNX step against the fp32 artifact on this CPU (issue: "every quantized
recipe's artifact is faster than the fp32 artifact").

    python benchmarks/recipes_cpu.py [--layers 6] [--threads 1,2] [--rounds 3] [--out F]

The model is the random-weight mamba-130m-*width* ``save_pretrained`` folder of
``benchmarks/decode_cpu.py`` (768 wide, d_state 16, vocabulary 50280) with ``--layers`` layers (6
by default: 16 recipes build in minutes; the tied head is then a larger share of a step than at
24 layers). Each recipe is quantized (static-activation recipes calibrate on 4 × 128 random token
ids) and exported by ``benchmarks/cpu_artifacts.py``: verified, or kept beside as ``-refused`` and
timed with its row marked "not verified". Decode is timed through edgeseq's runtime layer in a
fresh process per row (``decode_cpu.time_edgeseq``), rows interleaved round by round (the order
rotates), load recorded; the ratio to fp32 is taken within each round. CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    from quantize.recipes import RECIPES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default=",".join(["fp32"] + [r for r in RECIPES if r not in ("fp32", "fp16")]))
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--work-dir", default="/tmp/edgeseq-recipes-cpu")
    p.add_argument("--out", default=str(HERE / "recipes_cpu.json"))
    args = p.parse_args(argv)
    args.prefill = 64  # one prefill chunk (the decode starts from its state)

    import cpu_artifacts
    import decode_cpu

    recipes = [r for r in args.recipes.split(",") if r]
    if "fp32" not in recipes:
        recipes.insert(0, "fp32")
    threads = [int(t) for t in args.threads.split(",") if t]
    from edgeseq.errors import EdgeseqError

    artifacts, not_exported = {}, {}
    for r in recipes:  # one at a time: a recipe export refuses outright (e.g. w8a8-fullrange's AVX2 check) is reported
        try:
            artifacts.update(cpu_artifacts.build(Path(args.work_dir), [r], args.layers, prefill_length=64))
        except EdgeseqError as exc:
            not_exported[r] = str(exc)[:300]
            cpu_artifacts.log(f"{r}: not exported ({not_exported[r][:120]})")
    rows = [(r, artifacts[r], cpu_artifacts.verified(artifacts[r])) for r in recipes if r in artifacts]
    rounds = []
    for k in range(args.rounds):
        order = rows[k % len(rows):] + rows[: k % len(rows)]
        results = []
        for t in threads:
            for recipe, path, ok in order:
                load = os.getloadavg()
                m = decode_cpu.time_edgeseq(path, t, args)
                row = decode_cpu.summarize(recipe, "edgeseq", t, m, decode_cpu.artifact_bytes(path), load)
                row.update(recipe=recipe, verified=ok)
                results.append(row)
                cpu_artifacts.log(f"round {k + 1} {recipe} t{t}: p50 {row['p50_ms']:.2f} ms, load {load[0]:.2f}")
        for t in threads:
            base = next(x for x in results if x["recipe"] == "fp32" and x["threads"] == t)
            for x in results:
                if x["threads"] == t:
                    x["ratio_to_fp32"] = x["p50_ms"] / base["p50_ms"]
        rounds.append({"round": k + 1, "mean_load_1min": statistics.mean(x["load_before"][0] for x in results),
                       "rows": results})
    summary = []
    for recipe, _, ok in rows:
        for t in threads:
            mine = [x for rd in rounds for x in rd["rows"] if x["recipe"] == recipe and x["threads"] == t]
            summary.append({"recipe": recipe, "verified": ok, "threads": t,
                            "p50_ms": statistics.median(x["p50_ms"] for x in mine),
                            "ratio_to_fp32": statistics.median(x["ratio_to_fp32"] for x in mine),
                            "artifact_bytes": mine[0]["artifact_bytes"]})
    report = {
        "benchmark": "recipes_cpu", "model": {**decode_cpu.CONFIG, "n_layer": args.layers}, **decode_cpu.machine_record(),
        "threads": threads, "tokens_per_row": args.tokens, "rounds_run": args.rounds,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary, "not_exported": not_exported, "rounds": rounds,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nrecipes on {report['cpu']} ({args.layers} layers, 768 wide), decode p50 ms per step, median of "
          f"{args.rounds} interleaved rounds × {args.tokens} steps; × fp32 = median of each round's ratio")
    print("| recipe | verified | " + " | ".join(f"{t} thr ms | × fp32" for t in threads) + " |")
    print("|---|---|" + "---|---|" * len(threads))
    for recipe, _, ok in rows:
        cells = []
        for t in threads:
            s = next(x for x in summary if x["recipe"] == recipe and x["threads"] == t)
            cells.append(f"{s['p50_ms']:.2f} | {s['ratio_to_fp32']:.2f}")
        print(f"| {recipe} | {'yes' if ok else 'no'} | " + " | ".join(cells) + " |")
    for recipe, why in not_exported.items():
        print(f"{recipe}: not exported: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
