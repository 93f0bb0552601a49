"""Whole-model simulation reports (what ``edgeseq simulate`` prints): inputs for a model's own
task, the event-driven run with its operation counts, energy per device table, the dense
comparison and the NIR round trip, as one JSON-able dict.

The simulation itself is :mod:`edgeseq.spiking.engine`; counts are :mod:`edgeseq.spiking.counts`,
energies :mod:`edgeseq.spiking.energy`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from edgeseq.errors import InputError
from edgeseq.spiking.engine import Mode, simulate
from edgeseq.streaming import IOSpec

SAMPLE_TEXT = (
    "Streaming sequence models carry a fixed-size state from one token to the next, so the cost of "
    "each step stays the same however long the stream runs. A spiking model goes further: most of "
    "its neurons are silent at any step, and a silent input costs nothing on event-driven hardware."
)


@dataclass
class SimulationData:
    inputs: Tensor  # [N, T] int64 token ids or [N, T, F] frames
    source: str
    kind: str  # tokens | frames


def _io_spec(model: nn.Module) -> IOSpec | None:
    """The model's declared step input/output (None for a duck-typed module that declares none)."""
    return model.io_spec() if callable(getattr(model, "io_spec", None)) else None


def _text_tokens(tokenizer: Any, text: str) -> Tensor:
    if tokenizer is None or getattr(tokenizer, "kind", "bytes") == "bytes":
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)


def _windows(ids: Tensor, samples: int, length: int, source: str) -> Tensor:
    """``samples`` evenly spaced windows of ``length`` tokens: ``[samples, length]``."""
    if ids.numel() < length:
        raise InputError(f"{source} holds {ids.numel()} tokens, fewer than --length {length}; use a shorter --length or more text")
    last = ids.numel() - length
    starts = [round(i * last / max(samples - 1, 1)) for i in range(samples)] if samples > 1 else [0]
    return torch.stack([ids[s:s + length] for s in starts])


def simulation_data(model: nn.Module, data: str | None = None, samples: int = 4, length: int | None = None,
                    tokenizer: Any = None, seed: int = 0) -> SimulationData:
    """Inputs for a simulation: the model's own task by default (LM: text, classifier: frames).

    ``data``: a text file, a task name (``shakespeare``, ``digits``, …), a ``.npz`` file of frames,
    or ``random`` (seeded random frames / bytes).
    """
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    if length is not None and length < 1:
        raise InputError(f"--length must be >= 1, got {length}")
    io = _io_spec(model)
    tokens = io.input_kind == "tokens" if io is not None else getattr(model, "task", "lm") == "lm"
    generator = torch.Generator().manual_seed(seed)
    if tokens:
        length = length or 64
        vocab = io.input_size if io is not None else 256  # undeclared: bytes
        if data == "random":
            ids = torch.randint(0, min(vocab, 256), (samples, length), generator=generator)
            return SimulationData(ids, f"random tokens (seed {seed})", "tokens")
        if data is None:
            try:
                from edgeseq.corpus import load_split

                split = load_split("shakespeare", "validation")
                text, source = split.text, "shakespeare (validation)"
            except Exception:  # the corpus module or its file is not available
                text, source = SAMPLE_TEXT, "built-in sample text"
        else:
            from pathlib import Path

            path = Path(data).expanduser()
            if path.is_file():  # a user's text file: all of it
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    raise InputError(f"--data {data}: cannot read it ({exc.strerror or exc})") from None
                source = str(path)
            else:  # a named corpus: its validation split
                try:
                    from edgeseq.corpus import load_split
                except ImportError:
                    raise InputError(f"--data {data!r}: not a text file") from None
                split = load_split(data, "validation")
                text, source = split.text, f"{split.source} ({split.split})"
        ids = _text_tokens(tokenizer, text)
        ids = ids.clamp_max(vocab - 1) if ids.numel() else ids
        return SimulationData(_windows(ids, samples, length, source), source, "tokens")
    # classifiers
    frame_dim = io.input_size if io is not None else None
    spec = data if data is not None else getattr(getattr(model, "config", None), "dataset", None)
    if spec is not None and spec != "random":
        try:
            from edgeseq.tasks import load_classification
        except ImportError:
            raise InputError("classification data needs edgeseq.tasks, which is not available; use --data random") from None
        options = dict(getattr(model.config, "dataset_options", {}) or {}) if data is None else {}
        frames, _ = load_classification(spec, "validation", **options)
        frames = frames[:samples]
        if length is not None:
            frames = frames[:, :length]
        if frame_dim is not None and frames.shape[-1] != frame_dim:
            raise InputError(f"data {spec!r} has frames of {frames.shape[-1]} features; the model takes {frame_dim}")
        return SimulationData(frames, f"{spec} (validation, first {frames.shape[0]})", "frames")
    if frame_dim is None:
        raise InputError("cannot tell this model's frame size: pass --data FILE.npz or a task name")
    frames = torch.rand(samples, length or 32, frame_dim, generator=generator)
    return SimulationData(frames, f"random frames in [0, 1) (seed {seed})", "frames")


def _cast_inputs(model: nn.Module, inputs: Tensor) -> Tensor:
    if inputs.dtype.is_floating_point:
        ref = next((p for p in model.parameters()), None)
        if ref is not None:
            return inputs.to(ref.dtype)
    return inputs


def simulation_report(
    model: nn.Module,
    data: SimulationData,
    table: str = "45nm",
    mode: Mode = "event",
    compare_dense: bool = False,
    progress: Callable[[int], None] | None = None,
    source: str = "",
    nir_path: str | None = None,
) -> dict[str, Any]:
    """Simulate ``model`` on ``data`` and return counts, spike rates and energy as one JSON-able dict.

    With ``compare_dense`` the model also runs in dense mode: the report then carries the dense-ANN
    operation count beside the spiking one (``ops_ratio`` = "N× fewer operations", computed) and
    checks that both executions emit identical spikes. With ``nir_path`` the model is also exported
    to NIR there and the graph, read back, is run on the same inputs (see :func:`nir_check`).
    """
    if nir_path is not None:
        from edgeseq.spiking.nir_export import check_exportable

        check_exportable(model)  # refuse before spending time simulating
    import time

    from edgeseq.spiking.counts import dense_comparison
    from edgeseq.spiking.energy import estimate_energy, load_table

    energy_table = load_table(table)
    inputs = _cast_inputs(model, data.inputs)
    start = time.perf_counter()
    result = simulate(model, inputs, mode=mode, record_spikes=compare_dense, progress=progress)
    seconds = time.perf_counter() - start
    counts = result.counts.to_dict()
    energy = estimate_energy(result.counts, energy_table)
    energy_by_layer = {layer["name"]: layer for layer in energy["layers"]}
    for layer in counts["layers"]:
        layer["energy_pj"] = energy_by_layer[layer["name"]]["total_pj"]
    warnings = list(result.warnings)
    if not any(layer.kind == "lif" for layer in result.counts.layers.values()):
        warnings.append("the model has no LIF populations: it is not a spiking model, so every op is a MAC")
    if energy["unsupported"]:
        warnings.append(f"table {energy_table.name!r} cannot price {', '.join(energy['unsupported'])}: "
                        "those operations are left out of its energy (see 'unsupported')")
    if energy_table.confidence in ("approximate", "placeholder"):
        warnings.append(f"table {energy_table.name!r} is {energy_table.confidence}: see its notes before quoting energies")
    report: dict[str, Any] = {
        "model": source,
        "family": getattr(getattr(model, "config", None), "family", type(model).__name__),
        "task": getattr(model, "task", None),
        "mode": mode,
        "data": {"source": data.source, "kind": data.kind, "samples": int(inputs.shape[0]), "steps": int(inputs.shape[1])},
        "layers": counts["layers"],
        "total": counts["total"],
        "per_step": counts["per_step"],
        "neurobench": counts["neurobench"],
        "energy": {
            "table": energy_table.name,
            "confidence": energy_table.confidence,
            "total_pj": energy["total"]["total_pj"],
            "compute_pj": energy["total"]["compute_pj"],
            "memory_pj": energy["total"]["memory_pj"],
            "per_step_pj": energy["per_step_pj"],
            "by_op_pj": energy["total"]["by_op_pj"],
            "unsupported": energy["unsupported"],
            "dense_ann_pj": energy["dense_ann"]["total_pj"],
            "integer_table": energy["integer_table"],
        },
        "seconds": seconds,
        "warnings": warnings,
    }
    if nir_path is not None:
        from edgeseq.spiking.nir_export import consumer_warnings

        report["nir"] = nir_check(model, inputs, nir_path)
        report["warnings"] += consumer_warnings(None, notes=report["nir"]["consumers"])
    if compare_dense:
        other_mode: Mode = "dense" if mode == "event" else "event"
        other = simulate(model, inputs, mode=other_mode, record_spikes=True)
        identical = set(other.spike_trace) == set(result.spike_trace) and all(
            torch.equal(result.spike_trace[k], other.spike_trace[k]) for k in result.spike_trace)
        comparison = dense_comparison(result.counts)
        comparison.update({
            "dense_ann_energy_pj": energy["dense_ann"]["total_pj"],
            "energy_ratio": energy["dense_ann"].get("ratio"),
            "spikes_identical": identical,
            "max_abs_output_diff": float((result.outputs.double() - other.outputs.double()).abs().max()),
        })
        report["comparison"] = comparison
    return report


def nir_check(model: nn.Module, inputs: Tensor, path: str) -> dict[str, Any]:
    """Export ``model`` to NIR at ``path``, read it back and run it on ``inputs``; compare with ``step``.

    Both sides run in float64 (a float64 copy of the model), so spikes must be identical.
    """
    import copy

    from edgeseq.spiking.nir_export import consumer_notes, export_nir, read_nir, run_nir

    export_nir(model, path, warn=False)
    graph = read_nir(path)
    model64 = copy.deepcopy(model).double()
    ours = simulate(model64, _cast_inputs(model64, inputs), record_spikes=True, count_ops=False)
    theirs, spikes = run_nir(graph, _cast_inputs(model64, inputs), record=True)
    identical = set(spikes) == set(ours.spike_trace) and all(
        torch.equal(spikes[k], ours.spike_trace[k].reshape(spikes[k].shape)) for k in spikes)
    return {
        "path": str(path),
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "node_types": sorted({type(n).__name__ for n in graph.nodes.values()}),
        "spikes_identical": identical,
        "max_abs_output_diff": float((theirs - ours.outputs).abs().max()),
        "consumers": consumer_notes(graph, _cast_inputs(model64, inputs)),
    }


__all__ = ["SAMPLE_TEXT", "SimulationData", "nir_check", "simulation_data", "simulation_report"]
