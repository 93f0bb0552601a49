"""Event-driven vs dense execution time of spiking layers at spike rates 1 %, 10 %, 30 %.

For each layer shape and batch size, binary inputs are drawn at the given spike rate (seeded) and
the same layer is run

* ``dense``       — ``F.linear`` / ``F.conv1d`` (a dense matmul over every input),
* ``event``       — :func:`edgeseq.spiking.engine.gather_linear` / ``gather_conv1d``: gather the
                    weight columns of the inputs that fired and sum them (weights fan-out major,
                    built once, as the simulator keeps them),
* ``sim dense`` / ``sim event`` — the layer called inside :class:`Simulator` (instrumented: input
                    check, counting), i.e. what ``edgeseq simulate`` pays per layer call.

Printed: median µs per call, the event/dense speed ratio, and the operations each performs
(dense MACs vs counted ACs). A second table times a whole spiking network (``simulate``) fed spike
frames at each rate, with and without operation counting. Run::

    python benchmarks/event_driven.py [--threads 1] [--repeats 200] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from edgeseq.spiking.engine import Simulator, conv_weight_by_input, gather_conv1d, gather_linear

RATES = (0.01, 0.10, 0.30)


def _time(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after 10 warm-up calls)."""
    for _ in range(10):
        fn()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


class _OneLayer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def bench_case(kind: str, size: int, batch: int, rate: float, repeats: int, device: str, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    if kind == "linear":
        layer = nn.Linear(size, size).to(device)
        spikes = (torch.rand(batch, size, generator=generator) < rate).float().to(device)
        dense = lambda: F.linear(spikes, layer.weight, layer.bias)  # noqa: E731
        by_input = layer.weight.detach().t().contiguous()  # fan-out major, built once (as the simulator does)
        event = lambda: gather_linear(spikes, layer.weight, layer.bias, by_input)  # noqa: E731
        macs = batch * size * size
    else:  # a causal conv step: kernel 3 over a 3-frame window -> one output frame
        layer = nn.Conv1d(size, size, 3).to(device)
        spikes = (torch.rand(batch, size, 3, generator=generator) < rate).float().to(device)
        dense = lambda: F.conv1d(spikes, layer.weight, layer.bias)  # noqa: E731
        by_input = conv_weight_by_input(layer).detach()
        event = lambda: gather_conv1d(spikes, layer, by_input)  # noqa: E731
        macs = batch * size * size * 3
    torch.testing.assert_close(event()[0], dense(), rtol=0, atol=1e-4)
    layer.requires_grad_(False)
    module = _OneLayer(layer)
    times = {"dense": _time(dense, repeats, device), "event": _time(event, repeats, device)}
    with torch.no_grad():
        for mode in ("dense", "event"):
            with Simulator(module, mode=mode, count_ops=False) as sim:
                times[f"sim {mode}"] = _time(lambda: module(spikes), repeats, device)
            if mode == "event":
                acs = sim.counts.layers["layer"].eff_acs // (repeats + 10)
    return {"kind": kind, "size": size, "batch": batch, "rate": rate, **times, "macs": macs, "acs": acs,
            "actual_rate": float(spikes.mean())}


def bench_model(rate: float, width: int, steps: int, repeats: int, seed: int = 0) -> dict:
    """A whole spiking network fed spike frames at ``rate``: ``simulate`` event vs dense.

    SpikingMLP(width → width → width → 10) whose input frames are themselves spikes (as from an
    event sensor), so its first layer runs event-driven at exactly ``rate``; deeper layers at the
    rate the network produces (measured, printed).
    """
    from edgeseq.spiking.engine import simulate
    from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig

    torch.manual_seed(seed)
    model = SpikingMLP(SpikingMLPConfig(in_features=width, hidden=(width, width), n_classes=10))
    with torch.no_grad():
        for layer in model.layers:  # strong synapses, so that the hidden populations fire too
            layer.weight.mul_(30.0)
    generator = torch.Generator().manual_seed(seed)
    frames = (torch.rand(1, steps, width, generator=generator) < rate).float()
    times = {}
    for mode in ("dense", "event"):
        for count_ops in (False, True):
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                result = simulate(model, frames, mode=mode, count_ops=count_ops)
                samples.append(time.perf_counter() - start)
            times[(mode, count_ops)] = statistics.median(samples) / steps
    counts = result.counts.layers
    synaptic = [counts[n] for n in ("layers.0", "layers.1", "head")]
    inputs = [width, width, width]
    rates = [layer.gathered_columns / (i * steps) for layer, i in zip(synaptic, inputs)]
    return {"rate": rate, "times": times, "layer_rates": rates}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="512,2048", help="layer widths (fan-in = fan-out)")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--model-width", type=int, default=1024, help="width of the whole-network benchmark")
    parser.add_argument("--model-steps", type=int, default=32)
    parser.add_argument("--skip-layers", action="store_true", help="only the whole-network table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    rows = []
    for kind in (() if args.skip_layers else ("linear", "conv1d-k3")):
        for size in map(int, args.sizes.split(",")):
            for batch in map(int, args.batches.split(",")):
                for rate in RATES:
                    rows.append(bench_case("linear" if kind == "linear" else "conv", size, batch, rate,
                                           args.repeats, args.device))
                    rows[-1]["kind"] = kind
    device = args.device if args.device == "cpu" else torch.cuda.get_device_name()
    table = Table(title=f"event-driven vs dense, median µs per call ({device}, {args.threads} thread(s), "
                        f"torch {torch.__version__})")
    for col in ("layer", "size", "batch", "rate", "dense", "event", "event speed-up", "sim dense", "sim event",
                "sim speed-up", "dense MACs", "ACs"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        us = {k: 1e6 * r[k] for k in ("dense", "event", "sim dense", "sim event")}
        table.add_row(r["kind"], str(r["size"]), str(r["batch"]), f"{100 * r['rate']:.0f}%",
                      f"{us['dense']:.1f}", f"{us['event']:.1f}", f"{r['dense'] / r['event']:.2f}×",
                      f"{us['sim dense']:.1f}", f"{us['sim event']:.1f}", f"{r['sim dense'] / r['sim event']:.2f}×",
                      f"{r['macs']:,}", f"{r['acs']:,}")
    if rows:
        Console(width=200).print(table)

    model_table = Table(title=f"whole network, simulate() per step (µs): SpikingMLP {args.model_width}×3 fed "
                              f"spike frames, batch 1, {args.model_steps} steps")
    for col in ("input rate", "layer input rates (measured)", "dense", "event", "speed-up", "dense + counts",
                "event + counts", "speed-up "):
        model_table.add_column(col, justify="right")
    for rate in RATES:
        r = bench_model(rate, args.model_width, args.model_steps, max(3, args.repeats // 40))
        t = {k: 1e6 * v for k, v in r["times"].items()}
        model_table.add_row(f"{100 * rate:.0f}%", " / ".join(f"{100 * x:.1f}%" for x in r["layer_rates"]),
                            f"{t[('dense', False)]:.0f}", f"{t[('event', False)]:.0f}",
                            f"{t[('dense', False)] / t[('event', False)]:.2f}×",
                            f"{t[('dense', True)]:.0f}", f"{t[('event', True)]:.0f}",
                            f"{t[('dense', True)] / t[('event', True)]:.2f}×")
    Console(width=200).print(model_table)


if __name__ == "__main__":
    main()
