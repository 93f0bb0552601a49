"""Selective scan: edgeseq's parallel (chunked) scan vs the plain loop over time.

Prints one table per run; every row is measured side by side in the same process, and ratios are
loop time / variant time (higher = faster than the loop). Forward and forward+backward, at
training-like shapes (batch × length × d_inner × d_state).

    python benchmarks/scan.py                       # default shapes, 1 thread
    python benchmarks/scan.py --threads 2 --repeats 5
    python benchmarks/scan.py --shapes 8x256x256x16 --chunks 8,16,32,64
    python benchmarks/scan.py --device cuda          # on a GPU machine
    python benchmarks/scan.py --model                # also a whole-model training step

Variants: ``loop`` (``selective_scan_loop``, backward by autograd), ``autograd-16`` (the first
edgeseq scan: closed form in chunks of 16, backward by autograd), ``chunk=K`` (``selective_scan``:
closed form inside chunks of K steps, time-last layout, hand-written backward), ``prefix`` (the
Kogge–Stone scan used under tracing/export and for very steep decays).
"""

from __future__ import annotations

import argparse
import time

import torch

from edgeseq.models.mamba import _selective_scan_prefix, selective_scan, selective_scan_loop


def make_inputs(batch, length, d_inner, d_state, device, dtype, requires_grad, seed=0):
    """Inputs with the statistics of a trained Mamba layer: dt ~ softplus(N(-3, 1)), A = -(1..N)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    x = rand(batch, length, d_inner)
    dt = torch.nn.functional.softplus(rand(batch, length, d_inner) - 3.0)
    A = -torch.arange(1, d_state + 1, dtype=dtype).repeat(d_inner, 1)
    B, C = rand(batch, length, d_state), rand(batch, length, d_state)
    D = rand(d_inner)
    tensors = [t.to(device) for t in (x, dt, A, B, C, D)]
    if requires_grad:
        for t in tensors:
            t.requires_grad_(True)
    return tensors


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, repeats, device) -> float:
    """Best of ``repeats`` calls after one warm-up call, in seconds. On a shared machine other
    processes only ever add time, so the minimum is the most faithful figure."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def autograd_closed_form(x, dt, A, B, C, D, chunk=16):
    """The first edgeseq scan, kept for comparison: the same closed form, [B, L, Di, N] layout,
    ``cumsum`` over time and a backward left to autograd (which stores every per-step tensor)."""
    ssm_state = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for start in range(0, x.shape[1], chunk):
        sl = slice(start, start + chunk)
        log_decay = (dt[:, sl].unsqueeze(-1) * A).cumsum(1)
        drive = (dt[:, sl] * x[:, sl]).unsqueeze(-1) * B[:, sl].unsqueeze(2)
        states = torch.exp(log_decay) * (ssm_state.unsqueeze(1) + (drive * torch.exp(-log_decay)).cumsum(1))
        ys.append(torch.einsum("bldn,bln->bld", states, C[:, sl]))
        ssm_state = states[:, -1]
    return torch.cat(ys, dim=1) + x * D, ssm_state


def variants(chunks):
    out = {"loop": lambda *a: selective_scan_loop(*a), "autograd-16": autograd_closed_form}
    for chunk in chunks:
        out[f"chunk={chunk}"] = lambda *a, c=chunk: selective_scan(*a, chunk=c)
    out["prefix"] = lambda x, dt, A, B, C, D: _selective_scan_prefix(
        x, dt, A, B, C, D, x.new_zeros(x.shape[0], x.shape[2], A.shape[1]), chunk=64
    )
    return out


def bench_shape(shape, chunks, repeats, device, dtype):
    batch, length, d_inner, d_state = shape
    rows = []
    fwd_inputs = make_inputs(batch, length, d_inner, d_state, device, dtype, False)
    bwd_inputs = make_inputs(batch, length, d_inner, d_state, device, dtype, True)
    reference = selective_scan_loop(*fwd_inputs)[0]
    for name, scan in variants(chunks).items():
        with torch.no_grad():
            fwd = time_fn(lambda: scan(*fwd_inputs), repeats, device)
            err = (scan(*fwd_inputs)[0] - reference).abs().max().item()

        def fwd_bwd():
            y, h = scan(*bwd_inputs)
            (y.square().mean() + h.square().mean()).backward()

        both = time_fn(fwd_bwd, repeats, device)
        rows.append({"shape": "x".join(map(str, shape)), "variant": name, "fwd_ms": fwd * 1e3,
                     "fwd_bwd_ms": both * 1e3, "max_abs_err": err})
    loop = rows[0]
    for row in rows:
        row["fwd_speedup"] = loop["fwd_ms"] / row["fwd_ms"]
        row["fwd_bwd_speedup"] = loop["fwd_bwd_ms"] / row["fwd_bwd_ms"]
    return rows


def bench_model(batch, length, device, repeats, width=128, layers=4):
    """A training step (forward + backward of the LM loss) of a small Mamba, with the chunked scan
    and with the loop scan swapped in: what the scan buys end to end."""
    import edgeseq.models.mamba as mamba_module
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=256, d_model=width, n_layer=layers)).to(device)
    tokens = torch.randint(0, 256, (batch, length + 1), device=device)

    def train_step():
        model.zero_grad(set_to_none=True)
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()

    original = mamba_module.selective_scan
    rows = []
    try:
        for name, scan in (("loop", lambda *a, chunk=16: selective_scan_loop(*a)), ("chunk=16", original)):
            mamba_module.selective_scan = scan
            with torch.no_grad():
                fwd = time_fn(lambda: model(tokens[:, :-1]), repeats, device)
            rows.append({"shape": f"mamba {layers}x{width}, {batch}x{length}", "variant": name, "fwd_ms": fwd * 1e3,
                         "fwd_bwd_ms": time_fn(train_step, repeats, device) * 1e3, "max_abs_err": 0.0})
    finally:
        mamba_module.selective_scan = original
    for row in rows:
        row["fwd_speedup"] = rows[0]["fwd_ms"] / row["fwd_ms"]
        row["fwd_bwd_speedup"] = rows[0]["fwd_bwd_ms"] / row["fwd_bwd_ms"]
    return rows


def print_table(rows, title):
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        print(title)
        for r in rows:
            print(r)
        return
    table = Table(title=title)
    for column in ("shape B×T×Di×N", "variant", "fwd ms", "×loop", "fwd+bwd ms", "×loop", "max |err|"):
        table.add_column(column, justify="left" if column in ("shape B×T×Di×N", "variant") else "right")
    for r in rows:
        table.add_row(r["shape"], r["variant"], f"{r['fwd_ms']:.1f}", f"{r['fwd_speedup']:.2f}",
                      f"{r['fwd_bwd_ms']:.1f}", f"{r['fwd_bwd_speedup']:.2f}", f"{r['max_abs_err']:.1e}")
    Console().print(table)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8x256x256x16,1x1024x256x16,1x512x1536x16",
                        help="comma-separated BxTxDixN (default: small-model training, long context, mamba-130m width)")
    parser.add_argument("--chunks", default="16,32", help="chunk sizes of the parallel scan to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", action="store_true",
                        help="also time a training step of a small Mamba (4 layers × 128, batch 8 × 256 tokens)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    chunks = [int(c) for c in args.chunks.split(",") if c]
    shapes = []
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.lower().split("x"))
        if len(shape) != 4:
            parser.error(f"shape {text!r}: expected BxTxDixN, e.g. 8x256x256x16")
        shapes.append(shape)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {args.threads} thread(s)"
    rows = []
    for shape in shapes:  # one table per shape, printed as soon as it is measured
        shape_rows = bench_shape(shape, chunks, args.repeats, args.device, dtype)
        print_table(shape_rows, f"selective scan, {args.dtype}, {device}, torch {torch.__version__}, best of {args.repeats}")
        rows += shape_rows
    if args.model:
        model_rows = bench_model(8, 256, args.device, args.repeats)
        print_table(model_rows, f"whole-model training step, {device}, best of {args.repeats}")
        rows += model_rows
    return rows


if __name__ == "__main__":
    main()
