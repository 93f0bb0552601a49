"""SpikeGPT (and the Spiking LMUFormer) speed: prefill and step tokens/s, beside Mamba of the same width.

Models: the zoo's ``spikegpt-shakespeare`` (4 × 128), a Mamba-1 of the same width and depth (4 × 128,
random weights: timing only), the zoo's ``mamba-shakespeare`` (4 × 256) and ``spiking-lmuformer-digits``.
For each, in one process and one thread:

* ``prefill``: ``model.prefill`` (the parallel form) over one sequence of ``--tokens`` tokens;
* ``step``: ``model.step`` token by token, batch 1, ``--steps`` steps (generation / streaming);

median of ``--repeats`` runs after a warm-up, in tokens (frames) per second. ``--json FILE`` keeps
the figures; ``--label`` names the run (e.g. before/after a change). Run::

    python benchmarks/spiking_speed.py [--tokens 1024] [--steps 256] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from edgeseq.checkpoints import load_model


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(model, length: int):
    if getattr(model, "task", "lm") == "lm":
        return torch.randint(0, min(256, model.config.vocab_size), (1, length), generator=torch.Generator().manual_seed(0))
    return torch.rand(1, length, model.config.input_dim, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def bench(name: str, model, tokens: int, steps: int, repeats: int) -> dict:
    model.eval()
    seq = _inputs(model, tokens)
    prefill = _median_seconds(lambda: model.prefill(seq), repeats)
    stream = _inputs(model, steps)

    def step_all():
        state = model.init_state(1)
        for t in range(steps):
            _, state = model.step(stream[:, t], state)

    step = _median_seconds(step_all, repeats)
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "params": params, "prefill_tokens": tokens, "prefill_tok_s": tokens / prefill,
            "step_tok_s": steps / step, "step_ms": 1e3 * step / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from edgeseq.models import build_model

    models = [
        ("spikegpt-shakespeare (4 × 128)", load_model("spikegpt-shakespeare").model),
        ("mamba, 4 × 128 (random weights)", build_model("mamba", {"d_model": 128, "n_layer": 4, "vocab_size": 256})),
        ("mamba-shakespeare (4 × 256)", load_model("mamba-shakespeare").model),
        ("spiking-lmuformer-digits", load_model("spiking-lmuformer-digits").model),
    ]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    rows = [bench(name, model, args.tokens, args.steps, args.repeats) for name, model in models]
    with open("/proc/loadavg") as f:
        load_end = f.read().split()[:3]
    print(f"{args.label} torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}; "
          f"load average {' '.join(load)} -> {' '.join(load_end)}")
    print("| model | params | prefill tok/s | step tok/s | step ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['prefill_tok_s']:.0f} | {r['step_tok_s']:.0f} | {r['step_ms']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"label": args.label, "load": [load, load_end], "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
