"""Is calibrating a mamba-130m-shaped model practical on a small CPU?

    python benchmarks/quant_calib_130m.py [--samples 32] [--seq-len 256] [--batch-size 4]
        [--threads 2] [--recipes w8a8,w4a16] [--layers 24]

Builds a Mamba with the mamba-130m shape (24 layers × d_model 768, d_state 16, expand 2, vocab
50280) and random weights, then times, side by side in one run: one float forward over the
calibration set, and ``quantize_model`` for each recipe (calibration + building the quantized
layers). Prints a table with seconds, tokens/s and peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--recipes", default="w8a8,w4a16")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from edgeseq.models.mamba import Mamba, MambaConfig
    from quantize.apply import quantize_model
    from quantize.io import model_bytes

    config = MambaConfig(vocab_size=50280, d_model=768, n_layer=args.layers, d_state=16, expand=2)
    model = Mamba(config).eval()
    params = model.num_parameters()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.samples, args.seq_len), generator=gen)
    batches = list(tokens.split(args.batch_size))
    n_tokens = tokens.numel()
    print(f"mamba-130m shape: {args.layers} × {config.d_model}, {params / 1e6:.1f} M parameters; "
          f"calibration {args.samples} × {args.seq_len} tokens in batches of {args.batch_size}; "
          f"{torch.get_num_threads()} threads", file=sys.stderr, flush=True)

    rows = []
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    seconds = time.perf_counter() - start
    rows.append(("float forward (reference)", seconds, model_bytes(model)["stored"]))
    print(f"float forward: {seconds:.1f} s", file=sys.stderr, flush=True)
    for recipe in [r for r in args.recipes.split(",") if r]:
        start = time.perf_counter()
        qmodel, report = quantize_model(model, recipe, batches, progress=True)
        seconds = time.perf_counter() - start
        rows.append((f"quantize_model {recipe} (calib {report['calibration']['seconds']:.1f} s)", seconds,
                     model_bytes(qmodel)["packed"]))
        print(f"{recipe}: {seconds:.1f} s", file=sys.stderr, flush=True)
        del qmodel

    print(f"\n| step | seconds | tokens/s | model bytes (deployed) |")
    print("|---|---|---|---|")
    for name, seconds, size in rows:
        print(f"| {name} | {seconds:.1f} | {n_tokens / seconds:,.0f} | {size / 2**20:.1f} MiB |")
    print(f"\npeak resident memory: {peak_rss_mib():,.0f} MiB; {torch.get_num_threads()} threads; "
          f"{args.samples} × {args.seq_len} calibration tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
