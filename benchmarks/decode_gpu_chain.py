"""Where the fused decode step's time goes inside its CUDA graph: each kernel's start and end as the
GPU records them (CUPTI, through ``torch.profiler``) over many replays of the whole step, for the bf16
runtime and the 4-bit ones. A diagnostic companion of decode_gpu.py (issue 16):

    python benchmarks/decode_gpu_chain.py [--out chain.json] [--replays 40] [--recipes w4a16-norotate]
        [--variants '{"head_rows": 32}';...]

With programmatic dependent launch a kernel starts while the one before it runs, so a kernel's
duration says little; what the step pays for kernel k is ``end[k] - end[k-1]``: its increment on the
critical path. Per kernel kind (the 24 in_proj kernels, the 24 SSM/out_proj kernels, the head) the
table gives the sum of the median increments, the median duration and the median start lead (how
long before its predecessor's end the kernel started: > 0 means its weight loads overlapped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def kernel_timeline(torch, replay, replays: int) -> list:
    """[(name, start_us, end_us)] of every GPU kernel in `replays` calls of replay(), in start order."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(10):
        replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            replay()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    events = [e for e in trace.get("traceEvents", []) if e.get("cat") == "kernel" and "dur" in e]
    return sorted(((e["name"], float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events), key=lambda t: t[1])


def kind_of(name: str) -> str:
    if "head" in name:
        return "head"
    return "in" if name.startswith(("mamba_in", "q_in")) else "ssm"


def summarize(timeline: list, per_step: int) -> dict:
    steps = [timeline[i:i + per_step] for i in range(0, len(timeline) - per_step + 1, per_step)]
    steps = [s for s in steps if len(s) == per_step]
    if len(steps) < 3:
        return {"error": f"{len(timeline)} kernel events for {per_step} kernels a step"}
    steps = steps[1:]  # the first replay after the profiler starts
    names = [k[0] for k in steps[0]]
    rows = []
    for k in range(per_step):
        inc = [s[k][2] - (s[k - 1][2] if k else s[0][1]) for s in steps]
        lead = [(s[k - 1][2] - s[k][1]) if k else 0.0 for s in steps]
        dur = [s[k][2] - s[k][1] for s in steps]
        rows.append({"k": k, "name": names[k], "kind": kind_of(names[k]), "increment_us": statistics.median(inc),
                     "lead_us": statistics.median(lead), "duration_us": statistics.median(dur)})
    gaps = [steps[i + 1][0][1] - steps[i][-1][2] for i in range(len(steps) - 1)]
    span = [s[-1][2] - s[0][1] for s in steps]
    kinds = {}
    for kind in ("in", "ssm", "head"):
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            kinds[kind] = {"kernels": len(rs), "sum_increment_us": sum(r["increment_us"] for r in rs),
                           "median_increment_us": statistics.median(r["increment_us"] for r in rs),
                           "median_duration_us": statistics.median(r["duration_us"] for r in rs),
                           "median_lead_us": statistics.median(r["lead_us"] for r in rs)}
    return {"steps": len(steps), "span_us_median": statistics.median(span),
            "gap_between_replays_us_median": statistics.median(gaps) if gaps else None, "kinds": kinds, "kernels": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replays", type=int, default=40)
    p.add_argument("--recipes", default="w4a16-norotate")
    p.add_argument("--weights", default="bf16,int4", help="FusedMambaStep weight kinds")
    p.add_argument("--variants", default="", help="';'-separated JSON Blocks overrides, each run on every runtime")
    p.add_argument("--out", default="decode_gpu_chain.json")
    args = p.parse_args(argv)
    import torch

    from decode_gpu import CONFIG, device_ms, quantized_model
    from edgeseq.models.mamba import Mamba, MambaConfig
    from targets.gpu.mamba import Blocks, FusedMambaStep
    from targets.gpu.qmamba import QuantFusedMambaStep

    torch.manual_seed(0)
    base = Mamba(MambaConfig(**CONFIG)).eval()
    runtimes = {w: FusedMambaStep(base, weights=w) for w in args.weights.split(",") if w}
    for recipe in [r for r in args.recipes.split(",") if r]:
        runtimes[f"recipe {recipe}"] = QuantFusedMambaStep(quantized_model(torch, base, recipe))
    variants = [None] + [json.loads(v) for v in args.variants.split(";") if v]
    defaults = {name: rt.blocks for name, rt in runtimes.items()}
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": CONFIG,
           "replays": args.replays, "rows": []}
    for v in variants:
        for name, rt in runtimes.items():
            try:
                rt.set_blocks(Blocks(**{**defaults[name].__dict__, **(v or {})}))
                graph = rt.graph(False)
                dev = device_ms(torch, graph.replay, inner=20, repeats=10) * 1e3
                per_step = 2 * len(rt.layers) + 1 if not getattr(rt, "rotate", False) else 3 * len(rt.layers) + 1
                row = {"runtime": name, "variant": v or "default", "device_us": dev,
                       **summarize(kernel_timeline(torch, graph.replay, args.replays), per_step)}
                rt.reset()
            except Exception as exc:  # the other rows still run
                row = {"runtime": name, "variant": v or "default", "error": f"{type(exc).__name__}: {exc}"[:300]}
            out["rows"].append(row)
            kinds = row.get("kinds", {})
            print(f"{name:26s} {json.dumps(v or 'default'):40s} dev {row.get('device_us', float('nan')):7.1f} us  span "
                  f"{row.get('span_us_median', float('nan')):7.1f}  " + "  ".join(
                      f"{k}: +{d['sum_increment_us']:.1f} (med +{d['median_increment_us']:.2f}, dur {d['median_duration_us']:.2f}, "
                      f"lead {d['median_lead_us']:.2f})" for k, d in kinds.items()) + (f" {row['error']}" if "error" in row else ""),
                  flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
