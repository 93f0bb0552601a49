"""``edgeseq simulate MODEL``: event-driven spiking simulation with operation counts and energy."""

from __future__ import annotations

import sys

HELP = "event-driven spiking simulation: per-layer MACs/ACs, spike rates, energy"
DESCRIPTION = (
    "Run MODEL step by step with every layer that receives spikes computed address-event style "
    "(gathering the weight columns of the inputs that fired), count the operations really "
    "performed (NeuroBench definitions: dense MACs, effective MACs, effective ACs, neuron updates, "
    "spike rates, memory traffic) and price them with a per-device energy table. MODEL is a zoo "
    "name, a checkpoint folder, or random:FAMILY (an untrained model with the default config)."
)


def add_arguments(p) -> None:
    from edgeseq.spiking.energy import table_names

    p.add_argument("model", metavar="MODEL", help="zoo name, checkpoint folder, or random:FAMILY")
    p.add_argument("--data", default=None,
                   help="text file or LM task (shakespeare, stdlib), .npz frames or classification task, "
                        "or 'random'; default: the model's own task")
    p.add_argument("--samples", type=int, default=4, help="sequences to simulate (default 4)")
    p.add_argument("--length", type=int, default=None, help="steps per sequence (default: 64 tokens / the full frames)")
    p.add_argument("--device-table", default="45nm", metavar="TABLE",
                   help=f"energy table: {', '.join(table_names())}, or a .json/.toml file (default 45nm)")
    p.add_argument("--compare-dense", action="store_true",
                   help="also run densely: dense-ANN op count beside the spiking one, and a spike-identity check")
    p.add_argument("--mode", choices=("event", "dense"), default="event", help="execution mode (default event)")
    p.add_argument("--seed", type=int, default=0, help="seed of random data / random models (default 0)")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="also write the JSON report to FILE")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for a random:FAMILY model, e.g. --set d_model=256 (repeatable; JSON values)")
    p.add_argument("--nir", default=None, metavar="FILE",
                   help="also export the model to a NIR graph at FILE, read it back and check it on the same "
                        "inputs (Spiking LMUFormer; SpikeGPT is refused with the operations NIR cannot express)")


def _load(args):
    import torch

    from edgeseq.errors import InputError

    if args.model.startswith("random:"):
        from edgeseq.models import build_model

        family = args.model.split(":", 1)[1]
        torch.manual_seed(args.seed)
        model = build_model(family, _overrides(args.set))
        model.eval()
        return model, None
    if args.set:
        raise InputError("--set only applies to random:FAMILY models; a checkpoint's config is fixed")
    from edgeseq.checkpoints import load_model

    loaded = load_model(args.model)
    model = loaded.model
    if not hasattr(model, "step") or not isinstance(model, torch.nn.Module):
        raise InputError(f"{args.model}: simulate needs a PyTorch streaming model, not {type(model).__name__}")
    return model, loaded.tokenizer


def _overrides(items: list[str]) -> dict:
    import json

    from edgeseq.errors import InputError

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare string
    return overrides


def run(args):
    import json
    from pathlib import Path

    from edgeseq.spiking.report import simulation_data, simulation_report

    from edgeseq.errors import InputError
    from edgeseq.spiking.energy import load_table

    load_table(args.device_table)  # cheap checks first: a typo should not wait for a model to load
    if args.samples < 1:
        raise InputError(f"--samples must be >= 1, got {args.samples}")
    model, tokenizer = _load(args)
    data = simulation_data(model, args.data, args.samples, args.length, tokenizer, args.seed)
    progress, bar = None, None
    try:
        from tqdm import tqdm

        bar = tqdm(total=int(data.inputs.shape[1]), desc="simulating", unit="step", file=sys.stderr,
                   disable=None, leave=False)
        progress = lambda done: bar.update(done - bar.n)  # noqa: E731
    except ImportError:  # pragma: no cover
        pass
    try:
        report = simulation_report(model, data, args.device_table, args.mode, args.compare_dense, progress,
                                   source=args.model, nir_path=args.nir)
    finally:
        if bar is not None:
            bar.close()
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if not args.json:
        print_report(report)
    return report


def _si(x) -> str:
    if x is None:
        return "–"
    x = float(x)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}" if x != int(x) else f"{int(x)}"


def _energy(pj) -> str:
    if pj is None:
        return "–"
    for unit, scale in (("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if pj >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=150)  # files/pipes: do not squeeze the table
    data = report["data"]
    energy = report["energy"]
    title = (f"{report['model']} ({report['family']}) · {report['mode']}-driven · {data['samples']} × "
             f"{data['steps']} steps of {data['source']}")
    table = Table(title=title, title_justify="left")
    table.add_column("layer", overflow="fold", min_width=16, max_width=34)
    for col in ("in", "dense MAC", "MAC", "AC", "neuron upd", "spikes", "other", "mem B", "energy"):
        table.add_column(col, justify="left" if col == "in" else "right", no_wrap=True)

    def row(name, layer, energy_pj, style=None):
        rate = layer.get("spike_rate")
        kind = (layer.get("input") or "")[:5]
        if layer.get("weight_bits"):  # integer weights (and inputs): w8a8, w4 …
            kind += f" w{layer['weight_bits']}" + (f"a{layer['act_bits']}" if layer.get("act_bits") else "")
        table.add_row(name, kind, _si(layer["dense_macs"]), _si(layer["eff_macs"]),
                      _si(layer["eff_acs"]), _si(layer["neuron_updates"]),
                      "" if rate is None else f"{100 * rate:.2f}%", _si(layer["other_ops"]),
                      _si(layer["weight_bytes"] + layer["state_bytes"]), _energy(energy_pj), style=style)

    for layer in report["layers"]:
        row(layer["name"], layer, layer.get("energy_pj"))
    row("total", report["total"], energy["total_pj"], style="bold")
    console.print(table)
    ps = report["per_step"]
    console.print(f"energy column: table {energy['table']}; mem B = weight + state bytes moved; spikes = spike rate")
    console.print(f"per step: {_si(ps['total_ops'])} ops ({_si(ps['eff_macs'])} MACs, {_si(ps['eff_acs'])} ACs, "
                  f"{_si(ps['other_ops'])} other), {_si(ps['neuron_updates'])} neuron updates; energy "
                  f"{_energy(energy['per_step_pj'])} on {energy['table']} ({energy['confidence']}; compute "
                  f"{_energy(energy['compute_pj'])}, memory {_energy(energy['memory_pj'])} in total)")
    if energy.get("integer_table"):
        console.print(f"integer layers (quantized weights): MACs/ACs priced from {energy['integer_table']}, "
                      "weight bytes as stored")
    nb = report.get("neurobench")
    if nb:
        sparsity = nb["ActivationSparsity"]
        console.print(f"NeuroBench definitions, per sample: {_si(nb['Effective_MACs'])} effective MACs, "
                      f"{_si(nb['Effective_ACs'])} effective ACs, {_si(nb['Dense'])} dense (zero weights skipped, "
                      f"±1 inputs as spikes), {_si(nb['MembraneUpdates'])} membrane updates"
                      + ("" if sparsity is None else f", activation sparsity {sparsity:.3f}"))
    cmp = report.get("comparison")
    if cmp:
        ratio = cmp["ops_ratio"]
        console.print(f"dense ANN: {_si(cmp['dense_ops'])} ops vs spiking {_si(cmp['spiking_ops'])} ops: "
                      + (f"[bold]{ratio:.2f}× fewer operations[/bold] (neuron updates excluded; "
                         f"{cmp['ops_ratio_with_neurons']:.2f}× with them)" if ratio else "no spiking ops")
                      + (f"; synaptic ops {cmp['synaptic_ratio']:.2f}× fewer" if cmp["synaptic_ratio"] else "")
                      + (f"; energy {cmp['energy_ratio']:.2f}× lower" if cmp.get("energy_ratio") else ""))
        console.print(f"event-driven vs dense execution: spikes identical: {'yes' if cmp['spikes_identical'] else 'NO'}, "
                      f"max |Δ output| = {cmp['max_abs_output_diff']:.3g}")
    nir = report.get("nir")
    if nir:
        console.print(f"NIR graph {nir['path']}: {nir['nodes']} nodes ({', '.join(nir['node_types'])}); read back and run: "
                      f"spikes identical: {'yes' if nir['spikes_identical'] else 'NO'}, "
                      f"max |Δ output| = {nir['max_abs_output_diff']:.3g} (float64)")
    for warning in report["warnings"]:
        console.print(f"[yellow]note:[/yellow] {warning}")
