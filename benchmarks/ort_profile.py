"""Where an ONNX artifact's decode step (or prefill chunk) spends its time: ONNX Runtime's profiler, per op type.

    python benchmarks/ort_profile.py ARTIFACT [ARTIFACT ...] [--graph step|prefill] [--threads 2] [--steps 20] [--json F]

Runs the artifact's ``step.onnx`` (``--graph prefill``: ``prefill.onnx``, one call = one chunk of
the graph's fixed length, random token ids, logits for the last position only as a generator
asks for them — ``--all-logits`` for every position, as evaluation does) in ONNX Runtime (full graph optimizations, the session
settings of ``targets.runtimes.ort_session``) with ``enable_profiling``, feeding each call's new
state back, and aggregates the profiler's ``Node`` events per op type: kernels per call, ms per
call (the kernel's median duration × its count: robust to preemption by other processes), share
of the call. The first ``--warmup`` calls are dropped. One table per artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def profile_step(folder: Path, threads: int, steps: int, warmup: int, graph: str = "step", all_logits: bool = False) -> dict:
    import numpy as np
    import onnxruntime as ort

    manifest = json.loads((folder / "manifest.json").read_text())
    if graph not in manifest["graphs"]:
        raise SystemExit(f"{folder}: the artifact has no {graph} graph")
    spec = manifest["graphs"][graph]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    options.add_session_config_entry("mlas.disable_kleidiai", "1")  # as targets.runtimes.ORT_SESSION_CONFIG (Arm)
    options.enable_profiling = True
    scratch = tempfile.mkdtemp(prefix="ort-profile-")
    options.profile_file_prefix = os.path.join(scratch, graph)
    from targets.ort_capi import custom_ops_library
    from targets.runtimes import disabled_optimizers  # as every edgeseq runtime opens the graph

    library = custom_ops_library(folder / spec["file"])  # the artifact's fused kernels, when its graph uses them
    if library is not None:
        options.register_custom_ops_library(str(library))

    session = ort.InferenceSession(str(folder / spec["file"]), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=disabled_optimizers(folder / spec["file"]))
    feeds = {}
    rng = np.random.default_rng(0)
    vocab = manifest["model"].get("io", {}).get("input_size") or 2
    for entry in spec["inputs"]:
        shape = [1 if d == "batch" else d for d in entry["shape"]]
        feeds[entry["name"]] = np.zeros(shape, dtype=np.int64 if entry["dtype"] == "int64" else np.float32)
    first = spec["inputs"][0]
    if first["dtype"] == "int64":  # token ids: random, not all zeros (a prefill of one repeated token)
        feeds[first["name"]] = rng.integers(0, vocab, size=feeds[first["name"]].shape, dtype=np.int64)
    optional = {e["name"] for e in spec.get("optional_inputs", [])}
    if graph == "prefill" and "logits_from" in optional and not all_logits:  # what OnnxRuntime.prefill feeds
        feeds["logits_from"] = np.array(spec["length"] - 1, dtype=np.int64)
    state_names = [e["name"] for e in spec["inputs"][1:]]
    wall = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        outputs = session.run(None, feeds)
        wall.append((time.perf_counter() - start) * 1e3)
        for name, value in zip(state_names, outputs[1:]):
            feeds[name] = value
    trace = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    cutoff = runs[warmup]["ts"] if len(runs) > warmup else 0
    per_op: dict[str, list[float]] = {}
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < cutoff:
            continue
        op = event.get("args", {}).get("op_name", "?")
        per_op.setdefault(op, []).append(event["dur"] / 1e3)
    # robust to preemption by other processes: a kernel's median duration × its count per step
    import statistics

    cost = {op: statistics.median(v) * len(v) / steps for op, v in per_op.items()}
    total = sum(cost.values())
    rows = sorted(({"op": op, "kernels_per_step": len(v) / steps, "ms_per_step": cost[op],
                    "mean_ms_per_step": sum(v) / steps, "share": cost[op] / total if total else 0.0}
                   for op, v in per_op.items()), key=lambda r: -r["ms_per_step"])
    wall_steps = sorted(wall[warmup:])
    return {"artifact": str(folder), "recipe": manifest.get("recipe"), "graph": graph, "positions": spec.get("length", 1),
            "logits": "all" if graph == "step" or all_logits or "logits_from" not in feeds else "last",
            "threads": threads, "steps": steps,
            "kernels_per_step": sum(r["kernels_per_step"] for r in rows), "kernel_ms_per_step": total,
            "wall_p50_ms": wall_steps[len(wall_steps) // 2], "load_average": os.getloadavg(), "ops": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+")
    p.add_argument("--graph", choices=("step", "prefill"), default="step")
    p.add_argument("--all-logits", action="store_true", help="prefill: logits for every position (default: the last)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed calls of the graph")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = []
    for folder in args.artifacts:
        r = profile_step(Path(folder), args.threads, args.steps, args.warmup, args.graph, args.all_logits)
        results.append(r)
        call = "step" if args.graph == "step" else f"call ({r['positions']} positions, logits: {r['logits']})"
        print(f"\n{r['recipe']} {args.graph} ({folder}): {r['kernels_per_step']:.0f} kernels/{call}, kernel time "
              f"{r['kernel_ms_per_step']:.2f} ms/{call}, wall p50 {r['wall_p50_ms']:.2f} ms, {args.threads} thread(s), "
              f"load {r['load_average'][0]:.2f}")
        print("| op | kernels/call | ms/call | share |\n|---|---|---|---|")
        for row in r["ops"][: args.top]:
            print(f"| {row['op']} | {row['kernels_per_step']:.0f} | {row['ms_per_step']:.3f} | {100 * row['share']:.1f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
