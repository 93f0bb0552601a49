"""Time of one LMUFormer ``step`` at frame 10, 1,000 and 10,000: it must not grow.

    python benchmarks/lmu_step.py [--dim 64] [--frames 10 1000 10000] [--repeats 200] [--threads 1]

For each model (ANN and spiking), the state at frame N is reached with ``prefill`` (the parallel
form), then ``step`` is timed on the following frames (median and p90 of ``--repeats`` calls). For
contrast, the last column times what a non-streaming model must do to emit the score of frame N:
run ``forward`` over the whole prefix (the published recurrent path also re-processes the prefix).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from edgeseq.models.lmuformer import LMUFormer, LMUFormerConfig, SpikingLMUFormer, SpikingLMUFormerConfig


def time_calls(fn, repeats: int, sync=lambda: None) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - start) * 1e3)
    return out


@torch.no_grad()
def bench(model, frames: list[int], repeats: int, feature_dim: int, forward_repeats: int, device: str = "cpu") -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    longest = max(frames) + repeats + 20
    x = torch.rand(1, longest, feature_dim, generator=gen).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for n in frames:
        _, state = model.prefill(x[:, :n])
        t = [n]

        def one_step():
            _, new = model.step(x[:, t[0]], state)
            state.update(new)
            t[0] += 1

        time_calls(one_step, 10, sync)  # warm-up
        step_ms = time_calls(one_step, repeats, sync)
        fwd_ms = time_calls(lambda: model(x[:, : n + 1]), forward_repeats, sync)
        rows.append({
            "frame": n,
            "step_min_ms": min(step_ms),
            "step_p50_ms": statistics.median(step_ms),
            "step_p90_ms": sorted(step_ms)[int(0.9 * len(step_ms))],
            "forward_prefix_ms": statistics.median(fwd_ms),
        })
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--input-dim", type=int, default=8)
    p.add_argument("--theta", type=float, default=128.0)
    p.add_argument("--frames", type=int, nargs="+", default=[10, 1000, 10000])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--forward-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    common = dict(input_dim=args.input_dim, dim=args.dim, depth=args.depth, n_classes=10, theta=args.theta)
    models = {"lmuformer": LMUFormer(LMUFormerConfig(**common)).eval().to(args.device),
              "spiking-lmuformer": SpikingLMUFormer(SpikingLMUFormerConfig(**common)).eval().to(args.device)}
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LMUFormer step time vs frames seen (dim {args.dim}, depth {args.depth}, "
                        f"{args.device}, {args.threads} thread(s), batch 1, torch {torch.__version__})")
    for col in ("model", "frame", "step min (ms)", "step p50 (ms)", "step p90 (ms)", "forward over prefix (ms)"):
        table.add_column(col, justify="right")
    for name, model in models.items():
        for row in bench(model, args.frames, args.repeats, args.input_dim, args.forward_repeats, args.device):
            table.add_row(name, f"{row['frame']:,}", f"{row['step_min_ms']:.3f}", f"{row['step_p50_ms']:.3f}", f"{row['step_p90_ms']:.3f}",
                          f"{row['forward_prefix_ms']:.2f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
