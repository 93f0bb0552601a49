"""Operation counts of a spiking simulation, per layer and in total.

The definitions follow NeuroBench (Yik et al., "NeuroBench: A Framework for Benchmarking
Neuromorphic Computing Algorithms and Systems", arXiv:2304.04640, 2023; Nature Communications
2025), so that numbers are comparable with the literature:

* ``dense_macs`` — the multiply-accumulates a dense (ANN) execution of the synaptic layers does:
  ``inputs × fan-out`` whether the inputs are zero or not;
* ``eff_macs`` — *effective* MACs: non-zero **real-valued** inputs × fan-out;
* ``eff_acs`` — *effective* accumulates: **spike** inputs (binary, value 1) × fan-out; in the
  event-driven simulator this is the number of weight columns really gathered × their length;
* ``neuron_updates`` — membrane state updates of LIF neurons (one per neuron per step);
* ``spikes`` / ``neurons`` — spikes emitted and neuron-steps simulated; ``spike_rate`` is their
  ratio (the activation density of a LIF population);
* ``other_ops`` — arithmetic that stays dense and is not a synaptic operation: normalisation,
  the WKV recurrence, gates, bias additions (NeuroBench leaves biases out of synaptic ops; we count
  them here instead of dropping them), each elementwise operation counted once per element;
* ``weight_bytes`` / ``state_bytes`` — memory traffic, kept apart from the compute counts:
  weight bytes read (all of them for a dense layer, the gathered columns for an event-driven one)
  and recurrent-state bytes read plus written per step; ``dense_weight_bytes`` is what a dense
  execution of the same layers reads. Weights are counted as fetched per sample (the streaming,
  batch-1 case: no reuse across the sequences of a simulated batch), so figures do not depend on
  the batch size used to simulate.

Whether an input counts as spikes is decided **per input vector** (each row of a linear layer's
input, each sample's receptive fields of a convolution, at every step), never over the whole
simulated batch, so a sample's counts do not depend on what else is in the batch.

Quantized synaptic layers (integer weights) carry ``weight_bits`` (and ``act_bits`` when they
quantize their input): their weight bytes are the integer storage (bits × elements / 8 plus the
scales; int4 weights count half bytes, so byte counts may be fractional) and energy tables price
their arithmetic as integer arithmetic (see :mod:`edgeseq.spiking.energy`).

**NeuroBench's own definitions** are counted beside ours (``nb_*`` fields; per sample in
:meth:`Counts.neurobench`): effective operations skip zero *weights* as well as zero inputs
(``nb_eff_macs``/``nb_eff_acs``: Σ over non-zero inputs of the non-zero weights of their column),
an input whose values are all in {−1, 0, 1} counts as spikes, ``nb_dense`` counts every weight
(zero or not) for every input, biases are not synaptic operations, only the synaptic layers
(linear/conv modules) are counted (matmuls written in model code are not), and a membrane update
counts only when the membrane changed (``nb_membrane_updates``; every neuron at a population's
first step), all normalised per sample (sequence) instead of per step.

Counts are plain integers accumulated over a whole simulation; ``per_step`` divides by the number
of simulated steps (tokens or frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

COUNT_FIELDS = (
    "dense_macs",
    "eff_macs",
    "eff_acs",
    "neuron_updates",
    "spikes",
    "neurons",
    "other_ops",
    "weight_bytes",
    "dense_weight_bytes",
    "state_bytes",
    "nb_dense",
    "nb_eff_macs",
    "nb_eff_acs",
    "nb_membrane_updates",
)


@dataclass
class LayerCounts:
    """Counts of one layer (a module path, or a bucket such as ``(recurrent state)``)."""

    name: str
    kind: str  # linear | conv1d | lif | norm | ops | state | embedding
    calls: int = 0
    input: str = ""  # observed input of a synaptic layer: spike | real | mixed
    dense_macs: int = 0
    eff_macs: int = 0
    eff_acs: int = 0
    neuron_updates: int = 0
    spikes: int = 0
    neurons: int = 0
    other_ops: int = 0
    weight_bytes: int = 0
    dense_weight_bytes: int = 0  # what a dense execution reads (every weight, every call)
    state_bytes: int = 0
    gathered_columns: int = 0  # event-driven layers: weight columns actually gathered
    weight_bits: int = 0  # integer weight storage (quantized layers); 0 = float, as simulated
    act_bits: int = 0  # the layer quantizes its input to this many bits (0 = it multiplies float inputs)
    # NeuroBench's definitions (see the module docstring)
    nb_dense: int = 0
    nb_eff_macs: int = 0
    nb_eff_acs: int = 0
    nb_membrane_updates: int = 0
    op_breakdown: dict[str, int] = field(default_factory=dict)  # other_ops by operator name

    @property
    def spike_rate(self) -> float | None:
        return self.spikes / self.neurons if self.neurons else None

    def note_input(self, kind: str) -> None:
        """Record the observed input kind (an all-zero input says nothing and is not noted)."""
        if not self.input:
            self.input = kind
        elif self.input != kind:
            self.input = "mixed"

    def add_op(self, op: str, n: int) -> None:
        self.other_ops += n
        self.op_breakdown[op] = self.op_breakdown.get(op, 0) + n

    @property
    def integer_macs(self) -> bool:
        """Its MACs multiply integer weights by integer (quantized) inputs."""
        return bool(self.weight_bits and self.act_bits)

    @property
    def integer_acs(self) -> bool:
        """Its ACs add integer weights (spike inputs select integer weight columns)."""
        return bool(self.weight_bits)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spike_rate"] = self.spike_rate
        if not d["op_breakdown"]:
            d.pop("op_breakdown")
        return d


@dataclass
class Counts:
    """All layers' counts of one simulation plus how much was simulated."""

    layers: dict[str, LayerCounts] = field(default_factory=dict)
    steps: int = 0  # simulated time steps summed over the batch (tokens or frames)
    samples: int = 0  # sequences simulated
    value_bytes: int = 4  # bytes per weight/state value in the simulated model (its dtype)

    def layer(self, name: str, kind: str) -> LayerCounts:
        entry = self.layers.get(name)
        if entry is None:
            entry = self.layers[name] = LayerCounts(name, kind)
        return entry

    def totals(self) -> dict[str, Any]:
        total = {k: sum(getattr(layer, k) for layer in self.layers.values()) for k in COUNT_FIELDS}
        total["spike_rate"] = total["spikes"] / total["neurons"] if total["neurons"] else None
        total["synaptic_ops"] = total["eff_macs"] + total["eff_acs"]
        total["total_ops"] = total["eff_macs"] + total["eff_acs"] + total["other_ops"]
        total["dense_ops"] = total["dense_macs"] + total["other_ops"]
        return total

    def per_step(self) -> dict[str, Any]:
        total = self.totals()
        if not self.steps:
            return total
        return {k: (v / self.steps if isinstance(v, (int, float)) and k != "spike_rate" else v)
                for k, v in total.items()}

    def neurobench(self) -> dict[str, Any]:
        """The run under NeuroBench's metric definitions, per sample (a whole sequence), as
        NeuroBench's ``SynapticOperations``, ``MembraneUpdates`` and ``ActivationSparsity`` report them."""
        t = self.totals()
        samples = max(self.samples, 1)
        return {
            "Effective_MACs": t["nb_eff_macs"] / samples,
            "Effective_ACs": t["nb_eff_acs"] / samples,
            "Dense": t["nb_dense"] / samples,
            "MembraneUpdates": t["nb_membrane_updates"] / samples,
            "ActivationSparsity": None if t["spike_rate"] is None else 1.0 - t["spike_rate"],
            "per": "sample",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "samples": self.samples,
            "value_bytes": self.value_bytes,
            "layers": [layer.to_dict() for layer in self.layers.values()],
            "total": self.totals(),
            "per_step": self.per_step(),
            "neurobench": self.neurobench(),
        }


def dense_comparison(counts: Counts) -> dict[str, Any]:
    """The same run counted as a dense ANN would execute it, beside the spiking count.

    ``dense_ops = dense MACs + other ops`` (every synaptic layer as a dense matmul);
    ``spiking_ops = effective MACs + effective ACs + other ops``. The ratio is the
    "N× fewer operations" figure, computed from this run's counts, not assumed. ``ops_ratio``
    **excludes neuron updates**; ``ops_ratio_with_neurons`` adds them to both sides (the dense ANN
    computes one activation per neuron where the spiking network updates one membrane).
    """
    t = counts.totals()
    spiking_ops = t["total_ops"]
    dense_ops = t["dense_ops"]
    neurons = t["neuron_updates"]
    return {
        "dense_ops": dense_ops,
        "spiking_ops": spiking_ops,
        "dense_macs": t["dense_macs"],
        "spiking_synaptic_ops": t["synaptic_ops"],
        "neuron_updates": neurons,
        "ops_ratio": dense_ops / spiking_ops if spiking_ops else None,
        "ops_ratio_with_neurons": (dense_ops + neurons) / (spiking_ops + neurons) if spiking_ops + neurons else None,
        "synaptic_ratio": t["dense_macs"] / t["synaptic_ops"] if t["synaptic_ops"] else None,
    }


__all__ = ["COUNT_FIELDS", "Counts", "LayerCounts", "dense_comparison"]
