"""What an int8 decode state (recipe field ``state_bits``) costs on long streams.

    python benchmarks/state_bits.py MODEL [MODEL ...] [--recipes fp32,w8a8,w8a8-s8] [--streams 4]
        [--tokens 25000] [--calib-samples 64] [--json FILE]

Each model is quantized with each recipe (calibrated on its own task's train/calibration split),
then the held-out validation text is cut into ``--streams`` contiguous streams of ``--tokens``
tokens that are run from an empty state, as a device decodes: recipes with an integer state
**through ``step``** (the state is rounded after every token, and the error it makes is carried by
the recurrence); recipes with a float state through ``prefill`` over chunks carrying the state
(the same function, faster). Printed per
recipe: bits per byte over the whole streams and per segment of the stream (so growth of the
error with the stream position shows), and the decode-state bytes per sequence.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEGMENTS = (0, 1000, 5000, 10000, 20000)


def stream_bits_per_byte(model, ids: torch.Tensor, use_step: bool, chunk: int = 2048) -> tuple[float, dict[str, float]]:
    """ids [S, T]: mean bits per byte overall and per segment of the stream position.

    ``use_step``: through ``step`` token by token (what an integer state needs: it is rounded after
    every token). Otherwise through ``prefill`` over chunks of ``chunk`` tokens carrying the
    state: for a float state that is the same function as ``step`` (step ≡ forward), much faster."""
    state = model.init_state(ids.shape[0])
    nats = torch.zeros(ids.shape[1] - 1, dtype=torch.float64)
    with torch.no_grad():
        if use_step:
            for t in range(ids.shape[1] - 1):
                logits, state = model.step(ids[:, t], state)
                nats[t] = torch.nn.functional.cross_entropy(logits.double(), ids[:, t + 1], reduction="mean")
        else:
            for start in range(0, ids.shape[1] - 1, chunk):
                stop = min(start + chunk, ids.shape[1] - 1)
                logits, state = model.prefill(ids[:, start:stop], state)
                nll = torch.nn.functional.cross_entropy(logits.double().transpose(1, 2), ids[:, start + 1:stop + 1],
                                                        reduction="none")
                nats[start:stop] = nll.mean(0)
    bits = nats / math.log(2)
    edges = [e for e in SEGMENTS if e < bits.numel()] + [bits.numel()]
    segments = {f"{a}-{b}": float(bits[a:b].mean()) for a, b in zip(edges, edges[1:])}
    return float(bits.mean()), segments


def main(argv=None) -> int:
    from edgeseq.checkpoints import load_model, model_info
    from edgeseq.corpus import encode_text, load_split
    from quantize.apply import quantize_model
    from quantize.calibrate import calibration_batches
    from quantize.recipes import get_recipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--recipes", default="fp32,w8a8,w8a8-s8")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=25000)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=256, help="calibration window length (the state is observed "
                        "over whole windows: longer windows show it the ranges it reaches later in a stream)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        loaded = load_model(name)
        data = (loaded.meta or {}).get("dataset") or "shakespeare"
        text = load_split(data, "validation")
        ids = encode_text(loaded.tokenizer, text.text)
        need = args.streams * args.tokens
        if ids.numel() < need:
            raise SystemExit(f"{name}: validation text has {ids.numel()} tokens, fewer than {need}")
        streams = ids[:need].view(args.streams, args.tokens)
        torch.manual_seed(0)
        batches, _ = calibration_batches(loaded.model, data, tokenizer=loaded.tokenizer, meta=loaded.meta,
                                         samples=args.calib_samples, seq_len=args.seq_len)
        for recipe in args.recipes.split(","):
            qmodel, _ = quantize_model(loaded.model, recipe, batches, progress=False)
            start = time.perf_counter()
            use_step = get_recipe(recipe).changes_state
            bpb, segments = stream_bits_per_byte(qmodel, streams, use_step)
            info = model_info(type(loaded)(qmodel, loaded.tokenizer, name, "quantized", loaded.meta))
            row = {"calib": f"{args.calib_samples}x{args.seq_len}", "model": name, "recipe": recipe, "through": "step" if use_step else "prefill", "bits_per_byte": round(bpb, 4),
                   "segments": {k: round(v, 4) for k, v in segments.items()},
                   "state_bytes": info["state_bytes"], "streams": args.streams, "tokens": args.tokens,
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
