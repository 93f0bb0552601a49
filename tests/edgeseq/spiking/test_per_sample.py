"""Counts are decided per input vector, never over the simulated batch; NeuroBench's definitions beside ours.

A sample's counts must be the same alone and inside a batch with other samples: whether an input
is spikes (accumulates) or real values (MACs) is decided for each input vector on its own.
"""

import pytest
import torch

from edgeseq.spiking.counts import COUNT_FIELDS, dense_comparison
from edgeseq.spiking.engine import CODE_BUCKET, Simulator, simulate
from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig


def _mlp() -> SpikingMLP:
    model = SpikingMLP(SpikingMLPConfig(in_features=6, hidden=(8, 8), n_classes=3)).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(4.0)
    return model


@pytest.mark.parametrize("mode", ["event", "dense"])
def test_sample_counts_alone_equal_counts_in_a_mixed_batch(mode):
    model = _mlp()
    binarised = (torch.rand(1, 5, 6) < 0.5).double()  # a spike-coded sample: the first layer accumulates
    real = torch.randn(1, 5, 6, dtype=torch.float64)  # a real-valued sample: the first layer multiplies
    batch = torch.cat([binarised, real, binarised])
    together = simulate(model, batch, mode=mode).counts.layers
    alone = [simulate(model, x, mode=mode).counts.layers for x in (binarised, real, binarised)]
    first = alone[0]["layers.0"]
    assert first.eff_acs > 0 and first.eff_macs == 0 and first.input == "spike"
    assert alone[1]["layers.0"].eff_macs > 0 and alone[1]["layers.0"].eff_acs == 0
    assert together["layers.0"].input == "mixed"
    for name, layer in together.items():
        for key in COUNT_FIELDS:
            assert getattr(layer, key) == sum(getattr(a[name], key) for a in alone), (name, key)


def test_model_code_matmuls_are_classified_per_row():
    model = _mlp()
    weight = torch.randn(6, 5, dtype=torch.float64)
    rows = torch.tensor([[1.0, 0, 1, 0, 0, 1], [0.5, 0, 2, 0, 0, 0]], dtype=torch.float64)
    with Simulator(model) as sim:
        torch.mm(rows, weight)
    code = sim.counts.layers[CODE_BUCKET]
    assert (code.eff_acs, code.eff_macs, code.dense_macs) == (3 * 5, 2 * 5, 12 * 5)


def test_neurobench_definitions_beside_ours():
    """Hand-built network of test_op_counts: NeuroBench skips zero weights, counts a membrane update
    only where the membrane changed, and normalises per sample."""
    model = SpikingMLP(SpikingMLPConfig(in_features=3, hidden=(4,), n_classes=2, bias=False))
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]))
        model.head.weight.copy_(torch.tensor([[1.0, 2, 3, 4], [-1, -2, -3, -4]]))
    frames = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    counts = simulate(model, frames).counts
    layers = counts.layers
    # ours: 2 non-zero inputs × fan-out 4; NeuroBench: inputs 0 and 2 each reach 2 non-zero weights
    assert (layers["layers.0"].eff_macs, layers["layers.0"].nb_eff_macs) == (8, 4)
    assert (layers["head"].eff_acs, layers["head"].nb_eff_acs) == (4, 4)  # no zero weights in the head
    # step 0: every neuron (first step); step 1 (no input): only the neuron left at 0.5 decays to 0.25
    assert (layers["lifs.0"].neuron_updates, layers["lifs.0"].nb_membrane_updates) == (8, 5)
    nb = counts.neurobench()
    assert nb == {"Effective_MACs": 4.0, "Effective_ACs": 4.0, "Dense": 40.0, "MembraneUpdates": 5.0,
                  "ActivationSparsity": 0.75, "per": "sample"}
    assert counts.to_dict()["neurobench"] == nb


def test_ternary_inputs_are_spikes_for_neurobench_only():
    model = SpikingMLP(SpikingMLPConfig(in_features=3, hidden=(4,), n_classes=2, bias=False))
    counts = simulate(model, torch.tensor([[[-1.0, 0.0, 1.0]]])).counts.layers["layers.0"]
    assert (counts.eff_macs, counts.eff_acs) == (8, 0)  # ours: a −1 is not a spike
    assert counts.nb_eff_acs > 0 and counts.nb_eff_macs == 0  # NeuroBench: {−1, 0, 1} inputs are spikes


def test_ops_ratio_with_and_without_neuron_updates():
    result = simulate(_mlp(), torch.rand(2, 4, 6, dtype=torch.float64))
    cmp = dense_comparison(result.counts)
    n = cmp["neuron_updates"]
    assert n == 2 * 4 * 16
    assert cmp["ops_ratio"] == pytest.approx(cmp["dense_ops"] / cmp["spiking_ops"])
    assert cmp["ops_ratio_with_neurons"] == pytest.approx((cmp["dense_ops"] + n) / (cmp["spiking_ops"] + n))
