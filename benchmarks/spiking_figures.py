"""Every operation-count and energy figure of ``docs/spiking.md``, regenerated from the zoo models.

For each zoo spiking model and recipe (fp32, w8a8, w4a16: quantized with ``quantize_model`` on 16
calibration samples of the model's own task) the model is simulated event-driven and densely on its
own validation data (``simulation_data``: the first N validation sequences / evenly spaced text
windows) and the script prints, per step (frame or token):

* our counts: dense MACs, effective MACs, effective ACs, other ops, neuron updates, spike rate,
  weight bytes; the dense-ANN ratio without and with neuron updates; whether event-driven and
  dense execution emitted identical spikes;
* NeuroBench's definitions of the same run (per sample: a whole sequence);
* energy per step on every shipped table (45 nm tables price quantized layers' integer arithmetic
  from ``45nm-int8``).

Run (one thread; ~1 minute on a shared 2-core host)::

    python benchmarks/spiking_figures.py [--lmu-samples 64] [--gpt-samples 4] [--gpt-length 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from edgeseq.checkpoints import load_model
from edgeseq.spiking.counts import dense_comparison
from edgeseq.spiking.energy import estimate_energy
from edgeseq.spiking.engine import simulate
from edgeseq.spiking.report import simulation_data

TABLES = ("45nm", "45nm-fp16", "45nm-int8", "loihi", "spinnaker2")
RECIPES = ("fp32", "w8a8", "w4a16")


def figures(name: str, samples: int, length: int | None, recipes=RECIPES) -> list[dict]:
    from quantize.apply import quantize_model
    from quantize.calibrate import calibration_batches

    loaded = load_model(name)
    data = simulation_data(loaded.model, None, samples, length, loaded.tokenizer)
    inputs = data.inputs.float() if data.inputs.is_floating_point() else data.inputs
    batches, _ = calibration_batches(loaded.model, None, tokenizer=loaded.tokenizer, samples=16, seq_len=64)
    rows = []
    for recipe in recipes:
        model, _ = quantize_model(loaded.model, recipe, batches, progress=False)
        start = time.perf_counter()
        event = simulate(model, inputs, "event", record_spikes=True)
        seconds = time.perf_counter() - start
        dense = simulate(model, inputs, "dense", record_spikes=True)
        identical = all(torch.equal(event.spike_trace[k], dense.spike_trace[k]) for k in event.spike_trace)
        counts = event.counts
        per_step = counts.per_step()
        cmp = dense_comparison(counts)
        energy = {}
        for table in TABLES:
            e = estimate_energy(counts, table)
            steps = max(counts.steps, 1)
            energy[table] = {
                "compute_nj": e["total"]["compute_pj"] / steps / 1e3,
                "memory_nj": e["total"]["memory_pj"] / steps / 1e3,
                "total_nj": e["per_step_pj"] / 1e3,
                "dense_ann_nj": None if e["dense_ann"]["total_pj"] is None else e["dense_ann"]["total_pj"] / steps / 1e3,
                "unsupported_per_step": {k: v / steps for k, v in e["unsupported"].items()},
            }
        rates = [layer.spike_rate for layer in counts.layers.values() if layer.spike_rate is not None]
        rows.append({
            "model": name, "recipe": recipe, "data": data.source, "samples": int(inputs.shape[0]),
            "steps": int(inputs.shape[1]), "simulate_s": seconds,
            "per_step": {k: per_step[k] for k in ("dense_macs", "eff_macs", "eff_acs", "other_ops", "neuron_updates",
                                                  "weight_bytes", "dense_weight_bytes", "state_bytes")},
            "spike_rate": per_step["spike_rate"], "spike_rate_range": [min(rates), max(rates)] if rates else None,
            "ops_ratio": cmp["ops_ratio"], "ops_ratio_with_neurons": cmp["ops_ratio_with_neurons"],
            "synaptic_ratio": cmp["synaptic_ratio"], "spikes_identical": identical,
            "max_abs_output_diff": float((event.outputs.double() - dense.outputs.double()).abs().max()),
            "neurobench_per_sample": counts.neurobench(), "energy": energy, "warnings": event.warnings,
        })
    return rows


@torch.no_grad()
def nir_figures(path: str = "/tmp/edgeseq-slmu.nir") -> dict:
    """The zoo spiking LMUFormer exported to NIR, read back and run by ``run_nir`` on the test split
    (float64), against the model's own simulation: spikes, scores, accuracy; and the spikes that
    NIR consumers' strict ``>`` would flip on the same inputs."""
    import copy

    from edgeseq.spiking.nir_export import consumer_notes, export_nir, read_nir, run_nir
    from edgeseq.tasks import load_classification

    model = copy.deepcopy(load_model("spiking-lmuformer-digits").model).double().eval()
    frames, labels = load_classification(model.config.dataset, "test", **(model.config.dataset_options or {}))
    frames = frames.double()
    export_nir(model, path, warn=False)
    graph = read_nir(path)
    theirs, spikes = run_nir(graph, frames, record=True)
    ours = simulate(model, frames, record_spikes=True, count_ops=False)
    identical = all(torch.equal(spikes[k], ours.spike_trace[k].reshape(spikes[k].shape)) for k in spikes)
    acc = lambda scores: float((scores.mean(1).argmax(-1) == labels).double().mean())  # noqa: E731
    flips = consumer_notes(graph, frames)["snntorch"].get("strict_threshold_flips")
    return {"sequences": int(frames.shape[0]), "nodes": len(graph.nodes), "edges": len(graph.edges),
            "node_types": sorted({type(n).__name__ for n in graph.nodes.values()}), "spikes_identical": identical,
            "max_abs_score_diff": float((theirs - ours.outputs).abs().max()), "accuracy_nir": acc(theirs),
            "accuracy_ours": acc(ours.outputs),
            "predictions_agree": int((theirs.mean(1).argmax(-1) == ours.outputs.mean(1).argmax(-1)).sum()),
            "strict_threshold_flips": flips}


def _k(x: float) -> str:
    return f"{x / 1e6:.2f} M" if abs(x) >= 1e6 else f"{x / 1e3:.2f} k" if abs(x) >= 1e3 else f"{x:.0f}"


def print_tables(rows: list[dict]) -> None:
    print("\n| model | recipe | dense MACs | eff. MACs | eff. ACs | other ops | neuron upd. | spike rate | "
          "weight B | dense ÷ spiking ops (with neuron upd.) | spikes event ≡ dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["per_step"]
        print(f"| {r['model']} | {r['recipe']} | {_k(p['dense_macs'])} | {_k(p['eff_macs'])} | {_k(p['eff_acs'])} | "
              f"{_k(p['other_ops'])} | {_k(p['neuron_updates'])} | {100 * (r['spike_rate'] or 0):.1f} % | "
              f"{_k(p['weight_bytes'])} | {r['ops_ratio']:.2f}× ({r['ops_ratio_with_neurons']:.2f}×) | "
              f"{'yes' if r['spikes_identical'] else 'NO'} |")
    print("\nNeuroBench definitions (per sample = one sequence):\n")
    print("| model | recipe | Effective_MACs | Effective_ACs | Dense | MembraneUpdates | ActivationSparsity |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        nb = r["neurobench_per_sample"]
        print(f"| {r['model']} | {r['recipe']} | {_k(nb['Effective_MACs'])} | {_k(nb['Effective_ACs'])} | "
              f"{_k(nb['Dense'])} | {_k(nb['MembraneUpdates'])} | {nb['ActivationSparsity']:.3f} |")
    print("\nEnergy per step (nJ): total (compute + memory), dense ANN:\n")
    print("| model | recipe | " + " | ".join(TABLES) + " |")
    print("|---|---|" + "---|" * len(TABLES))
    for r in rows:
        cells = []
        for table in TABLES:
            e = r["energy"][table]
            dense = "–" if e["dense_ann_nj"] is None else f"{e['dense_ann_nj']:.1f}"
            cell = f"{e['total_nj']:.1f} ({e['compute_nj']:.1f} + {e['memory_nj']:.1f}); dense {dense}"
            if e["unsupported_per_step"]:
                cell += "; not priced: " + ", ".join(f"{_k(v)} {k}" for k, v in e["unsupported_per_step"].items())
            cells.append(cell)
        print(f"| {r['model']} | {r['recipe']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmu-samples", type=int, default=64)
    parser.add_argument("--gpt-samples", type=int, default=4)
    parser.add_argument("--gpt-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open("/proc/loadavg") as f:
        print(f"load average at start: {f.read().split()[:3]}")
    rows = figures("spiking-lmuformer-digits", args.lmu_samples, None)
    rows += figures("spikegpt-shakespeare", args.gpt_samples, args.gpt_length)
    print_tables(rows)
    nir = nir_figures()
    print(f"\nNIR (zoo spiking LMUFormer, {nir['sequences']} test sequences, float64): {nir['nodes']} nodes, "
          f"{nir['edges']} edges ({', '.join(nir['node_types'])}); spikes identical: {nir['spikes_identical']}; "
          f"max |Δ score| {nir['max_abs_score_diff']:.3g}; accuracy {100 * nir['accuracy_nir']:.2f} % (NIR) vs "
          f"{100 * nir['accuracy_ours']:.2f} % (ours), predictions agree {nir['predictions_agree']}/{nir['sequences']}; "
          f"strict '>' flips {nir['strict_threshold_flips']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "nir": nir}, f, indent=2)


if __name__ == "__main__":
    main()
