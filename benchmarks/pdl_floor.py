"""The launch floor of the fused decode step's kernel chain on a CUDA GPU: the same 49 launches
(24 x [in_proj grid, SSM grid] + the head grid, the fused step's default shapes at the mamba-130m
size) of kernels that do almost nothing, as one CUDA graph, with and without programmatic dependent
launch. Each kernel reads one float that its predecessor wrote, adds one, and one program writes it
on (a real dependency chain, checked at the end). What the fused step costs above this floor is its
own work: loads, reductions, atomics.

    python benchmarks/pdl_floor.py [--out pdl_floor.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def _link(src_ptr, dst_ptr, PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    v = tl.load(src_ptr)
    if tl.program_id(0) == 0:
        tl.store(dst_ptr, v + 1.0)


def chain_ms(grids, warps, pdl: bool, inner: int = 50, repeats: int = 20) -> tuple[float, float]:
    buf = torch.zeros(len(grids) + 1, device="cuda")

    def launch():
        for i, (g, w) in enumerate(zip(grids, warps)):
            _link[(g,)](buf[i:], buf[i + 1:], PDL=pdl, num_warps=w, launch_pdl=pdl)

    launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    buf.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert float(buf[-1]) == len(grids), buf  # the chain ran in order
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times), float(buf[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="pdl_floor.json")
    args = p.parse_args(argv)
    layers, e, d, vocab = 24, 1536, 768, 50280
    shapes = {
        "bf16 defaults (in 384 x 8 warps, ssm 24x6 x 2 warps, head 3143 x 4 warps)":
            ([e // 4, (e // 64) * (d // 128)] * layers + [-(-vocab // 16)], [8, 2] * layers + [4]),
        "recipe defaults (in 192 x 4 warps, ssm 48x6 x 2 warps, head 3143 x 4 warps)":
            ([e // 8, (e // 32) * (d // 128)] * layers + [-(-vocab // 16)], [4, 2] * layers + [4]),
        "49 one-program kernels": ([1] * (2 * layers + 1), [4] * (2 * layers + 1)),
    }
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
           "kernels": 2 * layers + 1, "rows": []}
    for name, (grids, warps) in shapes.items():
        for pdl in (False, True):
            ms, _ = chain_ms(grids, warps, pdl)
            row = {"chain": name, "pdl": pdl, "device_us_per_step": ms * 1e3,
                   "us_per_kernel": ms * 1e3 / len(grids)}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
