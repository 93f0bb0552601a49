"""W4A16 (recipe w4a16 without rotation) against bf16 on the fused step, for the looping 4-bit
kernels (``Blocks.in_chunks`` / ``head_chunks`` / ``head_prefetch``): device time of the whole step
and of the head alone per launch shape, stage by stage (head shapes, then in_proj shapes, then the
best of each together), then the bf16 step, the old defaults and the best shape interleaved over
rounds (the spread between rounds is the noise). Each shape is checked against the fake-quant model.

    python benchmarks/decode_gpu_w4_loop.py [--d-model 2048 --layers 48] [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

HEADS = [
    {"head_prefetch": True},
    {"head_chunks": 2, "head_rows": 64, "head_loop": 4, "head_prefetch": True},
    {"head_chunks": 2, "head_rows": 32, "head_loop": 6, "head_prefetch": True},
    {"head_chunks": 1, "head_rows": 64, "head_loop": 4, "head_prefetch": True, "warps_head": 8},
    {"head_chunks": 2, "head_rows": 128, "head_loop": 2, "head_prefetch": True, "warps_head": 8},
    {"head_chunks": 2, "head_rows": 64, "head_loop": 4, "head_prefetch": False},
    {"head_chunks": 4, "head_rows": 64, "head_loop": 2, "head_prefetch": True, "warps_head": 8},
]
INS = [
    {"in_chunks": 2},
    {"in_chunks": 1},
    {"in_chunks": 2, "in_prefetch": False},
    {"in_chunks": 2, "in_channels": 16, "warps_in": 8},
    {"in_chunks": 4, "in_channels": 4},
    {"in_chunks": 2, "in_stages": 2},
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="decode_gpu_w4_loop.json")
    p.add_argument("--heads", default="", help="indices into HEADS to try (default all)")
    p.add_argument("--ins", default="", help="indices into INS to try (default all)")
    p.add_argument("--parts", default="", help="';'-separated JSON launch shapes (over QUANT4_BLOCKS): time the step and "
                   "each kernel kind apart for them (a 'bf16:' prefix: the bf16 runtime under Blocks(...)), instead "
                   "of the search")
    p.add_argument("--parts-rounds", type=int, default=1)
    p.add_argument("--kinds", default="step,in,ssm,head,in+ssm")
    args = p.parse_args(argv)
    import torch

    import decode_gpu
    from decode_gpu import CONFIG, device_ms, fused_error, quantized_model
    from edgeseq.models.mamba import Mamba, MambaConfig
    from targets.gpu.mamba import QUANT4_BLOCKS, Blocks, FusedMambaStep
    from targets.gpu.qmamba import QuantFusedMambaStep

    CONFIG["d_model"] = args.d_model
    t0 = time.time()
    torch.manual_seed(0)
    base = Mamba(MambaConfig(**{**CONFIG, "n_layer": args.layers})).eval()
    bf16 = FusedMambaStep(base, weights="bf16")
    q = QuantFusedMambaStep(quantized_model(torch, base, "w4a16-norotate"))
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": {**CONFIG, "n_layer": args.layers},
           "stages": [], "checks": {}, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out["checks"]["bf16"] = fused_error(torch, bf16, base)
    print(f"built in {time.time() - t0:.0f} s", flush=True)
    inner, reps = (20, 10) if args.d_model <= 1024 else (5, 8)

    def blocks(v):
        return Blocks(**{**QUANT4_BLOCKS.__dict__, **v})

    def step_us(rt):
        return device_ms(torch, rt.graph(False).replay, inner=inner, repeats=reps) * 1e3

    def trial(v, head=True):
        try:
            q.set_blocks(blocks(v))
            err = fused_error(torch, q, base)
            row = {"blocks": v, "err": err, "step_us": step_us(q), "bf16_us": step_us(bf16)}
            if head:
                row["head_us"] = device_ms(torch, q.graph(False, ("head",)).replay, inner=inner, repeats=reps) * 1e3
            q.reset()
        except Exception as exc:
            row = {"blocks": v, "error": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps(row), flush=True)
        out["stages"].append(row)
        return row

    def ok(r):
        return "step_us" in r and r["err"] < 1e-4

    if args.parts:
        # each kernel kind timed apart ("in" alone, ...) leaves partial sums that only the next kind
        # zeroes: the buffers are cleared after each row, before the next shape's check
        kinds = (("step", ("in", "ssm", "head")), ("in", ("in",)), ("ssm", ("ssm",)), ("head", ("head",)),
                 ("in+ssm", ("in", "ssm")))
        kinds = [k for k in kinds if k[0] in args.kinds.split(",")]
        out["parts"] = []
        specs = [x for x in args.parts.split(";") if x]
        for rnd in range(args.parts_rounds):
            for spec in specs:
                is_bf16 = spec.startswith("bf16:")
                v = json.loads(spec.removeprefix("bf16:"))
                rt = bf16 if is_bf16 else q
                rt.set_blocks(Blocks(**v) if is_bf16 else blocks(v))
                err = fused_error(torch, rt, base) if rnd == 0 else None
                row = {"round": rnd, "runtime": "bf16" if is_bf16 else "w4a16-norotate", "blocks": v, "err": err}
                for name, parts in kinds:
                    row[name] = device_ms(torch, rt.graph(False, parts).replay, inner=inner, repeats=reps) * 1e3
                rt.reset()
                rt.xsum.zero_()
                if hasattr(rt, "ssm_side"):
                    rt.ssm_side.zero_()
                out["parts"].append(row)
                print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        return 0
    heads_v = [HEADS[int(i)] for i in args.heads.split(",")] if args.heads else HEADS
    ins_v = [INS[int(i)] for i in args.ins.split(",")] if args.ins else INS
    base_row = trial({})
    heads = [r for r in (trial(v) for v in heads_v) if ok(r)]
    best_head = min(heads + [base_row], key=lambda r: r["step_us"] - r["bf16_us"])["blocks"]
    ins = [r for r in (trial({**best_head, **v}, head=False) for v in ins_v) if ok(r)]
    head_rows = [r for r in heads + [base_row] if r["blocks"] == best_head]
    best = min(ins + head_rows, key=lambda r: r["step_us"] - r["bf16_us"])["blocks"]
    out["best"] = best
    # interleaved rounds: bf16, the old defaults, the best shape
    rounds = {"bf16": [], "w4a16 QUANT4_BLOCKS": [], "w4a16 best": []}
    heads_r = {"w4a16 QUANT4_BLOCKS": [], "w4a16 best": []}
    for _ in range(args.rounds):
        rounds["bf16"].append(step_us(bf16))
        for name, v in (("w4a16 QUANT4_BLOCKS", {}), ("w4a16 best", best)):
            q.set_blocks(blocks(v))
            rounds[name].append(step_us(q))
            heads_r[name].append(device_ms(torch, q.graph(False, ("head",)).replay, inner=inner, repeats=reps) * 1e3)
    q.set_blocks(blocks(best))
    out["checks"]["w4a16 best"] = fused_error(torch, q, base)
    out["rounds"] = rounds
    out["head_rounds"] = heads_r
    for name, vals in rounds.items():
        print(f"{name:24s} step device us: median {statistics.median(vals):7.1f}  min {min(vals):7.1f}  max {max(vals):7.1f}  "
              f"head {statistics.median(heads_r[name]) if name in heads_r else float('nan'):6.1f}", flush=True)
    print("best", json.dumps(best), "checks", json.dumps(out["checks"]), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
