"""Event-driven execution equals dense execution, and its accumulate count is instrumented.

Oracle: the same layers run densely (``F.linear`` / ``F.conv1d``, i.e. ``mode="dense"``).
Float64 is used where spikes must be identical: the gather sums the same weights as the matmul in
a different order, so results differ by rounding only (≤ 1e-12 here); in float32 logits agree to
1e-5 relative to their scale.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeseq.spiking.engine as engine
from edgeseq.spiking.engine import Simulator, gather_conv1d, gather_linear, simulate
from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig


def _binary(*shape, rate=0.3, dtype=torch.float64):
    return (torch.rand(*shape) < rate).to(dtype)


def test_gather_linear_equals_matmul():
    weight, bias = torch.randn(7, 11, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    spikes = _binary(3, 5, 11)
    y, gathered = gather_linear(spikes, weight, bias)
    torch.testing.assert_close(y, F.linear(spikes, weight, bias), rtol=0, atol=1e-12)
    assert gathered == int(spikes.sum())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=4, stride=2, dilation=2),
        dict(kernel_size=3, groups=4, padding="same"),
        dict(kernel_size=1, bias=False),
        dict(kernel_size=5, padding="valid", groups=2),
    ],
)
def test_gather_conv1d_equals_conv(kwargs):
    conv = nn.Conv1d(8, 12, **kwargs).double()
    spikes = _binary(2, 8, 13)
    y, gathered = gather_conv1d(spikes, conv)
    torch.testing.assert_close(y, conv(spikes), rtol=0, atol=1e-12)
    patches = engine.conv1d_patches(spikes, conv)
    assert gathered == int(patches.sum())  # every fired input of every receptive field, once


def _active_mlp(dtype=torch.float64):
    model = SpikingMLP(SpikingMLPConfig(in_features=12, hidden=(24, 16), n_classes=5)).to(dtype)
    with torch.no_grad():  # larger weights so that every population fires now and then
        for layer in model.layers:
            layer.weight.mul_(3.0)
    return model


def test_event_equals_dense_spikes_and_logits():
    model = _active_mlp()
    frames = torch.randn(3, 10, 12, dtype=torch.float64)
    event = simulate(model, frames, "event", record_spikes=True)
    dense = simulate(model, frames, "dense", record_spikes=True)
    assert set(event.spike_trace) == {"lifs.0", "lifs.1"}
    for name, spikes in event.spike_trace.items():
        assert torch.equal(spikes, dense.spike_trace[name]), name
        assert 0 < spikes.mean() < 1, name  # the comparison is not vacuous
    torch.testing.assert_close(event.outputs, dense.outputs, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(event.outputs, model(frames), rtol=0, atol=1e-12)  # step ≡ forward
    for key in ("dense_macs", "eff_macs", "eff_acs", "neuron_updates", "spikes", "other_ops"):
        assert event.counts.totals()[key] == dense.counts.totals()[key], key


def test_event_equals_dense_float32():
    model = _active_mlp(torch.float32)
    frames = torch.randn(2, 6, 12)
    event = simulate(model, frames, "event")
    dense = simulate(model, frames, "dense")
    scale = dense.outputs.abs().max()
    torch.testing.assert_close(event.outputs, dense.outputs, rtol=0, atol=1e-5 * float(scale))


def test_accumulates_equal_columns_really_gathered(monkeypatch):
    """Spy on the gather kernel itself: count the weight rows it is asked to fetch and their length."""
    seen = {"columns": 0, "accumulates": 0}
    real_gather_sum = engine.gather_sum

    def spying_gather_sum(table, event_idx, bag_idx, n_bags):
        seen["columns"] += int(event_idx.numel())
        seen["accumulates"] += int(event_idx.numel()) * table.shape[1]
        return real_gather_sum(table, event_idx, bag_idx, n_bags)

    monkeypatch.setattr(engine, "gather_sum", spying_gather_sum)
    model = _active_mlp()
    result = simulate(model, torch.randn(2, 8, 12, dtype=torch.float64), "event", record_spikes=True)
    layers = result.counts.layers
    spike_layers = [layers["layers.1"], layers["head"]]
    assert sum(layer.gathered_columns for layer in spike_layers) == seen["columns"] > 0
    assert sum(layer.eff_acs for layer in spike_layers) == seen["accumulates"]
    for layer, fan_out in zip(spike_layers, (16, 5)):
        assert layer.eff_acs == layer.gathered_columns * fan_out
    # and with the spikes recorded at the LIF populations feeding them
    assert layers["layers.1"].gathered_columns == int(result.spike_trace["lifs.0"].sum())
    assert layers["head"].gathered_columns == int(result.spike_trace["lifs.1"].sum())


def test_patches_are_removed_after_simulation():
    model = _active_mlp()
    frames = torch.randn(1, 3, 12, dtype=torch.float64)
    simulate(model, frames)
    assert "forward" not in model.layers[0].__dict__
    assert model.lifs[0].counter is None and "step" not in model.lifs[0].__dict__
    with torch.no_grad():
        model(frames)  # plain module again


def test_declared_spike_layer_with_real_input_warns():
    model = _active_mlp()
    with Simulator(model, declared_spike_layers=["layers.0"]) as sim, torch.no_grad():
        model.step(torch.randn(2, 12, dtype=torch.float64), model.init_state(2, dtype=torch.float64))
    assert sim.warnings and "layers.0" in sim.warnings[0]


def test_bad_inputs():
    from edgeseq.errors import InputError

    with pytest.raises(InputError):
        simulate(_active_mlp(), torch.randn(12, dtype=torch.float64))
    with pytest.raises(InputError):
        Simulator(_active_mlp(), mode="sparse")


# ---------------------------------------------------------------------------------------------
# the edgeseq spiking models (random weights, scaled so that every LIF population fires)
# ---------------------------------------------------------------------------------------------


def _assert_event_equals_dense(model, inputs, atol):
    event = simulate(model, inputs, "event", record_spikes=True)
    dense = simulate(model, inputs, "dense", record_spikes=True)
    assert set(event.spike_trace) == set(dense.spike_trace) and event.spike_trace
    fired = 0
    for name, spikes in event.spike_trace.items():
        assert torch.equal(spikes, dense.spike_trace[name]), name
        fired += int(spikes.sum())
    assert fired > 0
    torch.testing.assert_close(event.outputs, dense.outputs, rtol=0, atol=atol)
    with torch.no_grad():
        reference, _ = model.step_sequence(inputs)  # the model's own step, no simulator
    torch.testing.assert_close(event.outputs, reference, rtol=0, atol=atol)
    return event


def test_spikegpt_event_equals_dense():
    spikegpt = pytest.importorskip("edgeseq.models.spikegpt")
    model = spikegpt.SpikeGPT(spikegpt.SpikeGPTConfig(d_model=16, n_layer=2, vocab_size=64)).double().eval()
    with torch.no_grad():
        for block in model.blocks:  # drive the LIF neurons after each mixer
            block.att.output.weight.mul_(30.0)
            block.ffn.value.weight.mul_(30.0)
    tokens = torch.randint(0, 64, (2, 8))
    event = _assert_event_equals_dense(model, tokens, atol=1e-10)
    layers = event.counts.layers
    assert layers["blocks.0.att"].op_breakdown.get("exp", 0) > 0  # the WKV arithmetic is counted, not dropped
    assert layers["blocks.0.ln1"].other_ops > 0


def test_spiking_lmuformer_event_equals_dense():
    lmuformer = pytest.importorskip("edgeseq.models.lmuformer")
    cfg = lmuformer.SpikingLMUFormerConfig(input_dim=4, dim=16, depth=1, n_classes=3, embed_layers=2, theta=4.0)
    model = lmuformer.SpikingLMUFormer(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.weight.uniform_(1.5, 3.0)
                module.bias.uniform_(0.0, 0.8)
    model = model.double().eval()
    event = _assert_event_equals_dense(model, torch.rand(2, 10, 4, dtype=torch.float64) * 3, atol=1e-10)
    layers = event.counts.layers
    fan_outs = {"patch_embed.proj_conv1": 16, "block.0.mlp.fc1_conv": 64, "block.0.attn.lmu.W_h": 16, "head": 3}
    for name, fan_out in fan_outs.items():
        assert layers[name].input == "spike", name
        assert layers[name].gathered_columns > 0, name
        assert layers[name].eff_acs == layers[name].gathered_columns * fan_out, name
    assert layers["patch_embed.proj_conv"].input == "real" and layers["patch_embed.proj_conv"].eff_macs > 0
