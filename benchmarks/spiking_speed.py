"""SpikeGPT (and the Spiking LMUFormer) speed: prefill and step tokens/s, beside Mamba of the same width.

Models: the zoo's ``spikegpt-shakespeare`` (4 × 128), a Mamba-1 of the same width and depth (4 × 128,
random weights: timing only), the zoo's ``mamba-shakespeare`` (4 × 256) and ``spiking-lmuformer-digits``.
For each, in one process and one thread:

* ``prefill``: ``model.prefill`` (the parallel form) over one sequence of ``--tokens`` tokens;
* ``step``: ``model.step`` token by token, batch 1, ``--steps`` steps (generation / streaming);

median of ``--repeats`` runs after a warm-up, in tokens (frames) per second. ``--json FILE`` keeps
the figures; ``--label`` names the run (e.g. before/after a change; run the script with
``PYTHONPATH`` at an older checkout for "before"). ``--lif`` adds a table of LIF sequence loops
(``[1024, batch, width]`` currents): the autograd-Function loop (training path), the in-place
inference loop edgeseq runs without gradients, and the same loop under TorchScript (measured only:
``torch.jit.script`` is deprecated in torch 2.13, so edgeseq does not use it); spikes and membranes of
all three are compared bit for bit. ``--chunks`` times SpikeGPT's prefill at other WKV chunk lengths
and reports how far its logits move from the configured chunk (8 for the zoo model: a different
chunk changes the rounding, so it is not a bit-exact option). Run::

    python benchmarks/spiking_speed.py [--tokens 1024] [--steps 256] [--repeats 5] [--threads 1] [--lif] [--chunks]
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
    io = model.io_spec()
    if io.input_kind == "tokens":
        return torch.randint(0, min(256, io.input_size), (1, length), generator=torch.Generator().manual_seed(0))
    return torch.rand(1, length, io.input_size, generator=torch.Generator().manual_seed(0))


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


def lif_table(repeats: int) -> list[dict]:
    from typing import Tuple

    from edgeseq.models.lif import LIFConfig, _lif_sequence_inference, _LIFSequence

    cfg = LIFConfig()
    scripted = None
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")

            @torch.jit.script
            def scripted(current: torch.Tensor, v: torch.Tensor, tau: float, thr: float) -> Tuple[torch.Tensor, torch.Tensor]:
                fired = torch.empty(current.shape, dtype=torch.bool)
                keep = torch.empty(current.shape[1:], dtype=torch.bool)
                delta = torch.empty_like(v)
                for t in range(current.shape[0]):
                    torch.sub(current[t], v, out=delta)
                    delta.div_(tau)
                    v.add_(delta)
                    torch.ge(v, thr, out=fired[t])
                    torch.lt(v, thr, out=keep)
                    v.mul_(keep)
                return fired, v
    except Exception:  # noqa: BLE001 - TorchScript unavailable
        scripted = None
    rows = []
    for shape in ((1024, 1, 128), (1024, 1, 512), (1024, 8, 512)):
        current = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 2
        v0 = torch.zeros(shape[1:])
        variants = {"autograd loop": lambda: _LIFSequence.apply(current, v0, cfg),
                    "in-place loop": lambda: _lif_sequence_inference(current, v0, cfg)}
        if scripted is not None:
            variants["TorchScript loop"] = lambda: scripted(current.contiguous(), v0.clone(), cfg.tau, cfg.threshold)
        with torch.no_grad():
            ref_s, ref_v = variants["autograd loop"]()
            row = {"shape": list(shape)}
            for name, fn in variants.items():
                s_, v_ = fn()
                row[name + " ms"] = 1e3 * _median_seconds(fn, repeats)
                row[name + " exact"] = bool(torch.equal(s_.to(ref_s.dtype), ref_s) and torch.equal(v_.view(torch.int32), ref_v.view(torch.int32)))
        rows.append(row)
    return rows


@torch.no_grad()
def chunk_table(tokens: int, repeats: int) -> list[dict]:
    from edgeseq.corpus import load_split

    model = load_model("spikegpt-shakespeare").model.eval()
    text = load_split("shakespeare", "validation").text.encode()[:tokens]
    ids = torch.tensor(list(text)).reshape(1, -1)
    configured = model.config.wkv_chunk
    ref_logits, _, ref_spikes = model.forward_with_spikes(ids)
    rows = []
    for chunk in sorted({configured, 16, 32, 64}):
        for block in model.blocks:
            block.att.chunk = chunk
        seconds = _median_seconds(lambda: model.prefill(ids), repeats)
        logits, _, spikes = model.forward_with_spikes(ids)
        rows.append({"chunk": chunk, "prefill_tok_s": ids.shape[1] / seconds,
                     "max_abs_logit_diff": float((logits - ref_logits).abs().max()),
                     "spikes_identical": all(torch.equal(a, b) for a, b in zip(spikes, ref_spikes))})
    for block in model.blocks:
        block.att.chunk = configured
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", default=None)
    parser.add_argument("--lif", action="store_true", help="also time the LIF sequence loops")
    parser.add_argument("--chunks", action="store_true", help="also time SpikeGPT prefill at other WKV chunk lengths")
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
    out = {"label": args.label, "load": [load, load_end], "rows": rows}
    if args.lif:
        out["lif"] = lif_table(args.repeats)
        print("\n| LIF currents [T, B, C] | " + " | ".join(k for k in out["lif"][0] if k.endswith(" ms")) + " |")
        print("|---|" + "---|" * sum(k.endswith(" ms") for k in out["lif"][0]))
        for r in out["lif"]:
            cells = [f"{r[k]:.1f}" + ("" if r[k[:-3] + ' exact'] else " (NOT exact)") for k in r if k.endswith(" ms")]
            print(f"| {r['shape']} | " + " | ".join(cells) + " |")
    if args.chunks:
        out["chunks"] = chunk_table(args.tokens, args.repeats)
        print("\n| WKV chunk | prefill tok/s | max |Δ logit| vs configured | spikes identical |")
        print("|---|---|---|---|")
        for r in out["chunks"]:
            print(f"| {r['chunk']} | {r['prefill_tok_s']:.0f} | {r['max_abs_logit_diff']:.2e} | {'yes' if r['spikes_identical'] else 'no'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
