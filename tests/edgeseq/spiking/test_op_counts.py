"""Operation counts on a hand-built two-layer spiking network equal hand-computed numbers.

Network: frames [1, 2, 3] -> Linear(3→4, no bias) -> LIF(tau 2, threshold 1, hard reset)
-> Linear(4→2, no bias). With the weights below, step 0 drives the LIF currents to
[2, 0, 1, 3], so membranes [1, 0, 0.5, 1.5] fire [1, 0, 0, 1]; step 1 has zero input and nothing
fires. Every number below is worked out by hand in the comments.
"""

import pytest
import torch

from edgeseq.spiking.counts import dense_comparison
from edgeseq.spiking.engine import simulate
from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig


def _two_layer() -> SpikingMLP:
    model = SpikingMLP(SpikingMLPConfig(in_features=3, hidden=(4,), n_classes=2, bias=False))
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]))
        model.head.weight.copy_(torch.tensor([[1.0, 2, 3, 4], [-1, -2, -3, -4]]))
    return model


FRAMES = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])  # [B=1, T=2, F=3]


@pytest.mark.parametrize("mode", ["event", "dense"])
def test_counts_match_hand_computed(mode):
    result = simulate(_two_layer(), FRAMES, mode=mode, record_spikes=True)
    layers = {layer.name: layer for layer in result.counts.layers.values()}
    assert result.spike_trace["lifs.0"][:, 0].tolist() == [[1, 0, 0, 1], [0, 0, 0, 0]]

    fc1, lif, head = layers["layers.0"], layers["lifs.0"], layers["head"]
    assert fc1.input == "real" and head.input == "spike"
    assert fc1.dense_macs == 2 * 3 * 4  # 2 steps × 3 inputs × fan-out 4
    assert fc1.eff_macs == 2 * 4  # step 0: 2 non-zero inputs × 4; step 1: none
    assert fc1.eff_acs == 0
    assert lif.neuron_updates == 2 * 4 and lif.spikes == 2 and lif.spike_rate == 0.25
    assert head.dense_macs == 2 * 4 * 2  # 2 steps × 4 inputs × fan-out 2
    assert head.eff_acs == 2 * 2  # step 0: 2 spikes × fan-out 2; step 1: none
    assert head.eff_macs == 0

    total = result.counts.totals()
    assert total["other_ops"] == 0  # no bias, no extra arithmetic (LIF arithmetic = neuron updates)
    assert total["state_bytes"] == 2 * 2 * 4 * 4  # 2 steps × (read + write) × 4 neurons × 4 bytes
    if mode == "event":
        assert head.gathered_columns == 2
        # fc1 dense at step 0 (step 1's all-zero frame is 0 events: nothing read); 2 gathered columns of 2
        assert total["weight_bytes"] == 12 * 4 + 2 * 2 * 4
    else:
        assert total["weight_bytes"] == 2 * 12 * 4 + 2 * 8 * 4

    cmp = dense_comparison(result.counts)
    assert cmp["dense_macs"] == 24 + 16
    assert cmp["spiking_synaptic_ops"] == 8 + 4
    assert cmp["synaptic_ratio"] == pytest.approx(40 / 12)
    assert result.counts.steps == 2 and result.counts.samples == 1


def test_bias_and_model_code_ops_are_counted():
    model = SpikingMLP(SpikingMLPConfig(in_features=3, hidden=(4,), n_classes=2, bias=True))
    result = simulate(model, FRAMES)
    layers = result.counts.layers
    # bias additions: fan-out per step, per layer (2 steps × (4 + 2))
    assert layers["layers.0"].op_breakdown == {"bias_add": 8}
    assert layers["head"].op_breakdown == {"bias_add": 4}
    assert result.counts.totals()["other_ops"] == 12


def test_to_dict_is_json_ready():
    import json

    d = simulate(_two_layer(), FRAMES).counts.to_dict()
    json.dumps(d)
    assert d["per_step"]["eff_acs"] == 2.0 and d["total"]["spike_rate"] == 0.25


def test_counts_do_not_depend_on_batch_size():
    """Per-step counts (memory traffic included) are per sample: batching sequences changes nothing."""
    from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig

    model = SpikingMLP(SpikingMLPConfig(in_features=6, hidden=(8,), n_classes=3)).double()
    with torch.no_grad():
        model.layers[0].weight.mul_(4.0)
    frames = torch.randn(3, 5, 6, dtype=torch.float64)
    together = simulate(model, frames).counts.totals()
    alone = [simulate(model, frames[i:i + 1]).counts.totals() for i in range(3)]
    for key in ("dense_macs", "eff_macs", "eff_acs", "neuron_updates", "spikes", "other_ops", "weight_bytes",
                "dense_weight_bytes", "state_bytes"):
        assert together[key] == sum(t[key] for t in alone), key
