"""Energy tables: loading, validation, and the energy of hand-computed counts."""

import json

import pytest
import torch

from edgeseq.errors import InputError
from edgeseq.spiking.counts import Counts, LayerCounts
from edgeseq.spiking.energy import COST_KEYS, estimate_energy, load_table, parse_table, table_names


def test_shipped_tables_load_with_sources():
    names = table_names()
    assert {"45nm", "45nm-int8", "45nm-fp16", "loihi", "spinnaker2", "measured-cpu"} <= set(names)
    for name in names:
        table = load_table(name)
        assert set(table.costs) == set(COST_KEYS)
        assert table.confidence == "placeholder" or table.sources, name


def test_published_figures():
    t45 = load_table("45nm").costs
    assert (t45["mac"], t45["ac"]) == (4.6, 0.9)  # Horowitz ISSCC 2014, fp32
    t8 = load_table("45nm-int8").costs
    assert (t8["mac"], t8["ac"]) == (0.23, 0.03)  # int8 mult 0.2 + add 0.03
    loihi = load_table("loihi").costs
    assert (loihi["ac"], loihi["neuron_update"], loihi["spike"], loihi["mac"]) == (23.6, 81.0, 3.5, None)


def _counts() -> Counts:
    counts = Counts(steps=2, samples=1)
    counts.layers["fc"] = LayerCounts("fc", "linear", eff_macs=8, dense_macs=24, weight_bytes=48, dense_weight_bytes=96)
    counts.layers["lif"] = LayerCounts("lif", "lif", neuron_updates=8, spikes=2, neurons=8)
    counts.layers["head"] = LayerCounts("head", "linear", eff_acs=4, dense_macs=16, weight_bytes=16, dense_weight_bytes=64)
    counts.layers["state"] = LayerCounts("state", "state", state_bytes=64)
    return counts


def test_energy_of_hand_counts_45nm():
    e = estimate_energy(_counts(), "45nm")
    compute = 8 * 4.6 + 4 * 0.9 + 8 * 6.4  # MACs, ACs, neuron updates
    memory = (48 + 16 + 64) * 1.25
    assert e["total"]["compute_pj"] == pytest.approx(compute)
    assert e["total"]["memory_pj"] == pytest.approx(memory)
    assert e["per_step_pj"] == pytest.approx((compute + memory) / 2)
    dense = (24 + 16) * 4.6 + (96 + 64 + 64) * 1.25
    assert e["dense_ann"]["total_pj"] == pytest.approx(dense)
    assert e["dense_ann"]["ratio"] == pytest.approx(dense / (compute + memory))
    assert e["unsupported"] == {}


def test_memory_is_priced_at_the_tables_precision():
    """int8 storage moves a quarter of the bytes counted on a float32 model."""
    e = estimate_energy(_counts(), "45nm-int8")
    assert e["total"]["memory_pj"] == pytest.approx((48 + 16 + 64) * 1.25 / 4)
    assert e["total"]["compute_pj"] == pytest.approx(8 * 0.23 + 4 * 0.03 + 8 * 0.29)
    half = _counts()
    half.value_bytes = 2  # a float16 model priced on an int8 table: half its bytes
    assert estimate_energy(half, "45nm-int8")["total"]["memory_pj"] == pytest.approx((48 + 16 + 64) * 1.25 / 2)


def _quantized_counts() -> Counts:
    counts = Counts(steps=2, samples=1)
    # W8A8 layer: integer weights × quantized inputs; 10 bytes of integer storage read (exact)
    counts.layers["q8"] = LayerCounts("q8", "linear", eff_macs=8, dense_macs=24, weight_bytes=10, dense_weight_bytes=20,
                                      weight_bits=8, act_bits=8)
    # W4A16 layer behind spikes: integer ACs; half-byte weights
    counts.layers["q4"] = LayerCounts("q4", "linear", input="spike", eff_acs=4, dense_macs=16, weight_bytes=2.5,
                                      dense_weight_bytes=8, weight_bits=4)
    # W4A16 layer with real inputs: float MACs on integer weights
    counts.layers["q4r"] = LayerCounts("q4r", "linear", eff_macs=6, dense_macs=6, weight_bytes=3, dense_weight_bytes=3,
                                       weight_bits=4)
    counts.layers["state"] = LayerCounts("state", "state", state_bytes=64)
    return counts


def test_integer_layers_priced_as_integer_arithmetic():
    """The 45 nm float tables price integer MACs/ACs from 45nm-int8 and read integer bytes as stored."""
    e = estimate_energy(_quantized_counts(), "45nm")
    assert e["integer_table"] == "45nm-int8"
    compute = 8 * 0.23 + 4 * 0.03 + 6 * 4.6
    memory = (10 + 2.5 + 3 + 64) * 1.25  # integer weight bytes are not rescaled; state is float32 (bits 32)
    assert e["total"]["compute_pj"] == pytest.approx(compute)
    assert e["total"]["memory_pj"] == pytest.approx(memory)
    dense = 24 * 0.23 + 16 * 0.23 + 6 * 4.6 + (20 + 8 + 3 + 64) * 1.25  # spike-input integer layer: int MACs
    assert e["dense_ann"]["total_pj"] == pytest.approx(dense)
    e8 = estimate_energy(_quantized_counts(), "45nm-int8")
    assert e8["total"]["memory_pj"] == pytest.approx((10 + 2.5 + 3 + 64 / 4) * 1.25)  # only float bytes rescaled
    loihi = estimate_energy(_quantized_counts(), "loihi")  # no integer_table: its own costs
    assert loihi["unsupported"] == {"mac": 14} and loihi["integer_table"] is None


def test_loihi_reports_macs_unsupported():
    e = estimate_energy(_counts(), "loihi")
    assert e["unsupported"] == {"mac": 8}
    assert e["total"]["compute_pj"] == pytest.approx(4 * 23.6 + 8 * 81.0 + 2 * 3.5)
    assert e["dense_ann"]["total_pj"] is None


def test_user_tables_json_and_toml(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "unit": "nJ", "costs": {"mac": 0.002, "ac": 0.001}}))
    table = load_table(str(path))
    assert table.costs["mac"] == pytest.approx(2.0) and table.costs["neuron_update"] == 0.0
    toml = tmp_path / "chip.toml"
    toml.write_text('name = "chip"\nunit = "pJ"\n[costs]\nmac = 3.0\nac = 0.5\nspike = 1.0\n')
    assert load_table(str(toml)).costs["spike"] == 1.0


@pytest.mark.parametrize(
    "data, message",
    [
        ({"costs": {"mac": -1, "ac": 1}}, "non-negative"),
        ({"costs": {"mac": 1, "ac": 1, "flop": 2}}, "unknown cost"),
        ({"costs": {"ac": 1}}, "costs.mac is required"),
        ({"costs": {"mac": 1, "ac": 1}, "unit": "J"}, "unit"),
        ({"costs": {"mac": "4.6", "ac": 1}}, "non-negative number"),
        ({"cost": {}}, "unknown field"),
        ({"costs": {"mac": 1, "ac": 1}, "bits": 0}, "bits"),
        ({"costs": {"mac": 1, "ac": 1}, "integer_table": "int2-magic"}, "integer_table"),
    ],
)
def test_bad_tables(data, message):
    with pytest.raises(InputError, match=message):
        parse_table(data, "t.json")


def test_unknown_table_name():
    with pytest.raises(InputError, match="unknown energy table"):
        load_table("tpu-v9")


def test_energy_of_a_simulation():
    from edgeseq.spiking.engine import simulate
    from edgeseq.spiking.mlp import SpikingMLP

    result = simulate(SpikingMLP(), torch.randn(1, 4, 16))
    e = estimate_energy(result.counts, "45nm-int8")
    assert e["total"]["total_pj"] > 0 and len(e["layers"]) == len(result.counts.layers)
