"""Device time of the fused decode step's kernel kinds apart (in_proj, SSM/out_proj, head), for the
bf16 / weight-only runtimes and the recipe-quantized ones, under a few launch shapes; and the
recipe runtimes' error against their fake-quant models. A diagnostic companion of decode_gpu.py:

    python benchmarks/decode_gpu_parts.py [--out parts.json] [--recipes w4a16-norotate,w8a8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="w4a16-norotate,w4a16,w8a8-norotate,w8a8")
    p.add_argument("--variants", default="")
    p.add_argument("--out", default="decode_gpu_parts.json")
    p.add_argument("--step-only", action="store_true", help="time only the whole step")
    p.add_argument("--skip", default="", help="comma-separated runtimes to leave out (bf16, int4)")
    args = p.parse_args(argv)
    import torch

    from decode_gpu import CONFIG, device_ms, fused_error, quantized_model
    from edgeseq.models.mamba import Mamba, MambaConfig
    from targets.gpu.mamba import Blocks, FusedMambaStep
    from targets.gpu.qmamba import QuantFusedMambaStep

    torch.manual_seed(0)
    base = Mamba(MambaConfig(**CONFIG)).eval()
    runtimes = {name: FusedMambaStep(base, weights=w) for name, w in (("bf16", "bf16"), ("int4 (weight-only)", "int4"))
                if w not in args.skip.split(",")}
    out = {"device": torch.cuda.get_device_name(0), "rows": [], "checks": {}}
    for recipe in [r for r in args.recipes.split(",") if r]:
        rt = QuantFusedMambaStep(quantized_model(torch, base, recipe))
        out["checks"][recipe] = fused_error(torch, rt, base)
        runtimes[f"recipe {recipe}"] = rt
    variants = [{}] + [json.loads(v) for v in args.variants.split(";") if v]
    for name, rt in runtimes.items():
        for v in variants:
            try:
                rt.set_blocks(Blocks(**v))
                row = {"runtime": name, "blocks": v}
                kinds = (("step", ("in", "ssm", "head")), ("in", ("in",)), ("ssm", ("ssm",)), ("head", ("head",)))
                for part, parts in kinds[:1] if args.step_only else kinds:
                    row[part] = device_ms(torch, rt.graph(False, parts).replay, inner=20, repeats=10) * 1e3
                rt.reset()
            except Exception as exc:
                row = {"runtime": name, "blocks": v, "error": f"{type(exc).__name__}: {exc}"[:300]}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    print("checks", json.dumps(out["checks"]))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
