"""Energy estimates from operation counts and per-device tables of per-operation costs.

A table gives the energy of one operation of each kind counted by the simulator
(:mod:`edgeseq.spiking.counts`)::

    mac            one multiply-accumulate (real-valued input × weight)
    ac             one accumulate (a spike input adds a weight: a synaptic op)
    other_op       one dense elementwise/normalisation operation (LayerNorm, WKV, gates, bias)
    neuron_update  one LIF membrane update (per neuron per step)
    spike          one emitted spike (routing cost on neuromorphic chips)
    weight_byte    one byte of weights read
    state_byte     one byte of recurrent state read or written

``bits`` (optional) is the precision the device stores weights and state in: byte counts measured
on the simulated model (e.g. float32) are rescaled to it before ``weight_byte``/``state_byte`` are
charged (an int8 table moves a quarter of a float32 model's bytes).

``integer_table`` (optional) names the table whose ``mac``/``ac`` costs price **integer**
arithmetic: the MACs of quantized layers that multiply integer weights by quantized inputs (W8A8)
and the ACs of layers with integer weights (spikes select integer weight columns). The 45 nm
float tables point to ``45nm-int8`` (Horowitz gives no int4 figures: int4 arithmetic is priced as
int8, an upper bound). Without it, integer arithmetic is priced at the table's own costs. Weight
bytes of integer layers are their exact storage (``bits`` does not rescale them).

A cost may be ``null``: the device cannot do that operation (Loihi has no real-valued MACs);
such counts are reported as *unsupported* and left out of the total, never silently charged zero.

Tables ship with edgeseq (``edgeseq/spiking/energy_tables/*.json``; names: :func:`table_names`)
and users may pass their own JSON or TOML file with the same fields. Sources are cited in each
table and in ``docs/spiking.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseq.errors import InputError
from edgeseq.spiking.counts import Counts, LayerCounts

TABLE_DIR = Path(__file__).parent / "energy_tables"
COST_KEYS = ("mac", "ac", "other_op", "neuron_update", "spike", "weight_byte", "state_byte")
# count field of LayerCounts charged at each cost
COUNT_OF_COST = {
    "mac": "eff_macs",
    "ac": "eff_acs",
    "other_op": "other_ops",
    "neuron_update": "neuron_updates",
    "spike": "spikes",
    "weight_byte": "weight_bytes",
    "state_byte": "state_bytes",
}
COMPUTE_COSTS = ("mac", "ac", "other_op", "neuron_update", "spike")
MEMORY_COSTS = ("weight_byte", "state_byte")
UNITS_IN_PJ = {"fJ": 1e-3, "pJ": 1.0, "nJ": 1e3, "uJ": 1e6}
CONFIDENCE = ("published", "approximate", "placeholder", "user")


@dataclass(frozen=True)
class EnergyTable:
    """Per-operation energies of one device, in picojoules (``None`` = not supported)."""

    name: str
    costs: dict[str, float | None]
    description: str = ""
    confidence: str = "user"
    sources: tuple[str, ...] = ()
    notes: str = ""
    origin: str = ""
    bits: int | None = None  # storage precision of weights/state on the device (None: as simulated)
    integer_table: str | None = None  # table pricing integer MACs/ACs (quantized layers)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "unit": "pJ", "confidence": self.confidence,
                "bits": self.bits, "integer_table": self.integer_table, "costs": dict(self.costs),
                "sources": list(self.sources), "notes": self.notes}

    def byte_scale(self, value_bytes: int) -> float:
        """Factor from bytes counted at ``value_bytes`` per value to bytes at this table's precision."""
        return 1.0 if self.bits is None else self.bits / 8 / value_bytes


def table_names() -> list[str]:
    """Names of the tables shipped with edgeseq."""
    return sorted(p.stem for p in TABLE_DIR.glob("*.json"))


def parse_table(data: Any, origin: str) -> EnergyTable:
    """Validate a table's fields (from JSON/TOML) and convert costs to pJ; one-line InputError if wrong."""
    if not isinstance(data, dict):
        raise InputError(f"{origin}: an energy table must be an object with 'name' and 'costs'")
    unknown = sorted(set(data) - {"name", "description", "unit", "confidence", "bits", "integer_table", "costs",
                                  "sources", "notes"})
    if unknown:
        raise InputError(f"{origin}: unknown field(s) {', '.join(unknown)}; allowed: name, description, unit, "
                         "confidence, bits, integer_table, costs, sources, notes")
    integer_table = data.get("integer_table")
    if integer_table is not None and (not isinstance(integer_table, str) or not (TABLE_DIR / f"{integer_table}.json").is_file()):
        raise InputError(f"{origin}: integer_table must name a shipped table ({', '.join(table_names())}), "
                         f"not {integer_table!r}")
    bits = data.get("bits")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 64):
        raise InputError(f"{origin}: bits must be an integer from 1 to 64 (storage precision), not {bits!r}")
    name = data.get("name") or Path(origin).stem
    unit = data.get("unit", "pJ")
    if unit not in UNITS_IN_PJ:
        raise InputError(f"{origin}: unit must be one of {', '.join(UNITS_IN_PJ)}, not {unit!r}")
    costs_in = data.get("costs")
    if not isinstance(costs_in, dict):
        raise InputError(f"{origin}: 'costs' must map operation names ({', '.join(COST_KEYS)}) to energies")
    bad_keys = sorted(set(costs_in) - set(COST_KEYS))
    if bad_keys:
        raise InputError(f"{origin}: unknown cost(s) {', '.join(bad_keys)}; known: {', '.join(COST_KEYS)}")
    for required in ("mac", "ac"):
        if required not in costs_in:
            raise InputError(f"{origin}: costs.{required} is required (a number, or null if the device cannot do it)")
    costs: dict[str, float | None] = {}
    for key in COST_KEYS:
        value = costs_in.get(key, 0.0)
        if value is None:
            costs[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"{origin}: costs.{key} must be a non-negative number or null, not {value!r}")
        costs[key] = float(value) * UNITS_IN_PJ[unit]
    confidence = data.get("confidence", "user")
    if confidence not in CONFIDENCE:
        raise InputError(f"{origin}: confidence must be one of {', '.join(CONFIDENCE)}, not {confidence!r}")
    sources = data.get("sources", [])
    if isinstance(sources, str):
        sources = [sources]
    return EnergyTable(str(name), costs, str(data.get("description", "")), confidence, tuple(map(str, sources)),
                       str(data.get("notes", "")), origin, bits, integer_table)


def _read_table_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read energy table {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: not valid TOML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None


def load_table(name_or_path: str | Path) -> EnergyTable:
    """A shipped table by name (``45nm``, ``loihi``, …) or a user's ``.json``/``.toml`` file."""
    if isinstance(name_or_path, EnergyTable):
        return name_or_path
    text = str(name_or_path)
    builtin = TABLE_DIR / f"{text}.json"
    if "/" not in text and builtin.is_file():
        return parse_table(_read_table_file(builtin), builtin.name)
    path = Path(text).expanduser()
    if path.is_file():
        return parse_table(_read_table_file(path), str(path))
    raise InputError(f"unknown energy table {text!r}: use one of {', '.join(table_names())} or a path to a "
                     ".json/.toml table file")


# --------------------------------------------------------------------------------------------
# energy of a simulation
# --------------------------------------------------------------------------------------------


@dataclass
class LayerEnergy:
    name: str
    compute_pj: float = 0.0
    memory_pj: float = 0.0
    by_op_pj: dict[str, float] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)  # cost key -> count left out

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "compute_pj": self.compute_pj, "memory_pj": self.memory_pj,
             "total_pj": self.total_pj, "by_op_pj": self.by_op_pj}
        if self.unsupported:
            d["unsupported"] = self.unsupported
        return d


def _integer_costs(table: EnergyTable) -> dict[str, float | None]:
    if table.integer_table is None or table.integer_table == table.name:
        return table.costs
    return load_table(table.integer_table).costs


def _cost(layer: LayerCounts, key: str, table: EnergyTable, integer: dict[str, float | None], dense: bool = False) -> float | None:
    """The cost of one ``key`` operation of ``layer``: integer MACs/ACs of quantized layers from the
    integer table, everything else from ``table``."""
    if key == "mac" and (layer.integer_macs or (dense and layer.weight_bits and layer.input == "spike")):
        return integer.get("mac")
    if key == "ac" and layer.integer_acs:
        return integer.get("ac")
    return table.costs.get(key)


def _byte_scale(layer: LayerCounts, key: str, table: EnergyTable, value_bytes: int) -> float:
    """Weight bytes of integer layers are exact storage; float bytes are rescaled to the table's precision."""
    if key == "weight_byte" and layer.weight_bits:
        return 1.0
    return table.byte_scale(value_bytes)


def layer_energy(layer: LayerCounts, table: EnergyTable, value_bytes: int = 4,
                 integer: dict[str, float | None] | None = None) -> LayerEnergy:
    integer = _integer_costs(table) if integer is None else integer
    out = LayerEnergy(layer.name)
    for key in COST_KEYS:
        count = getattr(layer, COUNT_OF_COST[key])
        if not count:
            continue
        if key in MEMORY_COSTS:
            count = count * _byte_scale(layer, key, table, value_bytes)
        cost = _cost(layer, key, table, integer)
        if cost is None:
            out.unsupported[key] = out.unsupported.get(key, 0) + int(count)
            continue
        pj = count * cost
        out.by_op_pj[key] = pj
        if key in MEMORY_COSTS:
            out.memory_pj += pj
        else:
            out.compute_pj += pj
    return out


def estimate_energy(counts: Counts, table: EnergyTable | str) -> dict[str, Any]:
    """Energy per layer and in total (pJ), compute and memory apart, plus the dense-ANN estimate.

    ``dense_ann`` charges every synaptic layer's dense MACs at the table's MAC cost (integer layers
    at the integer table's), the same other ops, and reads every weight every step
    (``dense_weight_bytes``): what the same network costs run as a non-spiking ANN on the same device.
    """
    table = load_table(table) if not isinstance(table, EnergyTable) else table
    integer = _integer_costs(table)
    layers = [layer_energy(layer, table, counts.value_bytes, integer) for layer in counts.layers.values()]
    unsupported: dict[str, int] = {}
    by_op: dict[str, float] = {}
    for le in layers:
        for key, n in le.unsupported.items():
            unsupported[key] = unsupported.get(key, 0) + int(n)
        for key, pj in le.by_op_pj.items():
            by_op[key] = by_op.get(key, 0.0) + pj
    compute = sum(le.compute_pj for le in layers)
    memory = sum(le.memory_pj for le in layers)
    steps = max(counts.steps, 1)
    integer_layers = [layer.name for layer in counts.layers.values() if layer.integer_acs or layer.integer_macs]
    result: dict[str, Any] = {
        "table": table.name,
        "confidence": table.confidence,
        "unit": "pJ",
        "integer_table": table.integer_table if integer_layers else None,
        "layers": [le.to_dict() for le in layers],
        "total": {"compute_pj": compute, "memory_pj": memory, "total_pj": compute + memory, "by_op_pj": by_op},
        "per_step_pj": (compute + memory) / steps,
        "unsupported": unsupported,
    }
    result["dense_ann"] = dense_ann_energy(counts, table)
    spiking = compute + memory
    dense = result["dense_ann"]["total_pj"]
    result["dense_ann"]["ratio"] = dense / spiking if spiking and dense is not None else None
    return result


def dense_ann_energy(counts: Counts, table: EnergyTable) -> dict[str, Any]:
    """Energy of the same counts executed as a dense ANN (no events, every weight read every step)."""
    integer = _integer_costs(table)
    compute = memory = 0.0
    missing: set[str] = set()
    for layer in counts.layers.values():
        parts = {"mac": layer.dense_macs, "other_op": layer.other_ops,
                 "weight_byte": layer.dense_weight_bytes * _byte_scale(layer, "weight_byte", table, counts.value_bytes),
                 "state_byte": layer.state_bytes * table.byte_scale(counts.value_bytes)}
        for key, n in parts.items():
            if not n:
                continue
            cost = _cost(layer, key, table, integer, dense=True)
            if cost is None:
                missing.add(key)
            elif key in MEMORY_COSTS:
                memory += n * cost
            else:
                compute += n * cost
    if missing:
        return {"total_pj": None, "unsupported": sorted(missing)}
    return {"compute_pj": compute, "memory_pj": memory, "total_pj": compute + memory}


__all__ = [
    "COST_KEYS",
    "EnergyTable",
    "LayerEnergy",
    "dense_ann_energy",
    "estimate_energy",
    "layer_energy",
    "load_table",
    "parse_table",
    "table_names",
]
