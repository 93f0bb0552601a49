"""NIR export round trips: write, ``nir.read`` back, run, and compare with our own simulation.

Oracle: our model's ``step`` (through the simulator, which records spikes). The NIR side runs in
edgeseq's discrete-time NIR interpreter (forward Euler with the graph's dt) and, where its importer
supports the node types, in snnTorch. Float64 throughout except snnTorch (float32 parameters): the
NIR graph computes the same arithmetic up to re-association (BatchNorm folded into weights, the LMU
memory as m + (Ā − I)m), so outputs agree to ~1e-12 and spikes are identical.
"""

import numpy as np
import pytest
import torch

from edgeseq.errors import EdgeseqError
from edgeseq.models.lif import LIF
from edgeseq.spiking.nir_export import (DEFAULT_DT, export_nir, lif_node, read_nir, run_nir, run_with_snntorch,
                                         snntorch_unsupported)
from edgeseq.spiking.engine import simulate
from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig

nir = pytest.importorskip("nir")


def _mlp(dtype=torch.float64) -> SpikingMLP:
    model = SpikingMLP(SpikingMLPConfig(in_features=12, hidden=(24, 16), n_classes=5)).to(dtype)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(3.0)
    return model


def test_lif_parameter_mapping():
    node = lif_node(LIF(tau=2.0, threshold=1.0), 3, dt=1e-3)
    np.testing.assert_array_equal(node.tau, [2e-3] * 3)  # tau_nir = tau · dt
    np.testing.assert_array_equal(node.r, [1.0] * 3)
    np.testing.assert_array_equal(node.v_leak, [0.0] * 3)
    np.testing.assert_array_equal(node.v_threshold, [1.0] * 3)
    np.testing.assert_array_equal(node.v_reset, [0.0] * 3)
    assert node.metadata["fire_on"] == "ge"
    with pytest.raises(EdgeseqError, match="soft-reset"):
        lif_node(LIF(reset="soft"), 3)


def test_mlp_round_trip(tmp_path):
    model = _mlp()
    frames = torch.randn(3, 10, 12, dtype=torch.float64)
    path = tmp_path / "mlp.nir"
    export_nir(model, path)
    graph = read_nir(path)
    assert {type(n).__name__ for n in graph.nodes.values()} == {"Input", "Affine", "LIF", "Output"}
    assert graph.nodes["lifs.0"].metadata["fire_on"] == "ge"
    ours = simulate(model, frames, record_spikes=True)
    outputs, spikes = run_nir(graph, frames, record=True)
    assert set(spikes) == {"lifs.0", "lifs.1"}
    for name in spikes:
        assert torch.equal(spikes[name], ours.spike_trace[name]), name
        assert 0 < spikes[name].mean() < 1
    torch.testing.assert_close(outputs, ours.outputs, rtol=0, atol=1e-12)


def test_firing_comparison_gap():
    """The one semantic gap of the LIF mapping: ours fires on v >= threshold, NIR on v > threshold.

    A constant input current of exactly 2 lands a membrane from 0 exactly on 1 (v = 0 + (2 - 0)/2):
    we fire, a reader that follows NIR's strict comparison does not (run_nir honours our metadata).
    """
    model = SpikingMLP(SpikingMLPConfig(in_features=1, hidden=(1,), n_classes=1, bias=False)).double()
    with torch.no_grad():
        model.layers[0].weight.fill_(1.0)
        model.head.weight.fill_(1.0)
    frames = torch.full((1, 1, 1), 2.0, dtype=torch.float64)
    graph = export_nir(model)
    ours = simulate(model, frames, record_spikes=True)
    assert ours.spike_trace["lifs.0"].item() == 1.0
    assert run_nir(graph, frames, record=True)[1]["lifs.0"].item() == 1.0
    graph.nodes["lifs.0"].metadata.pop("fire_on")  # a reader that ignores our metadata
    assert run_nir(graph, frames, record=True)[1]["lifs.0"].item() == 0.0


def test_mlp_in_snntorch():
    pytest.importorskip("nirtorch")
    model = _mlp(torch.float32)
    frames = torch.randn(2, 8, 12)
    graph = export_nir(model)
    assert snntorch_unsupported(graph) == []
    ours = simulate(model, frames).outputs
    theirs = run_with_snntorch(graph, frames)
    # snnTorch scales membrane and threshold by tau (exact powers of two here): same float32 arithmetic
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)


def _spiking_lmuformer():
    lmuformer = pytest.importorskip("edgeseq.models.lmuformer")
    cfg = lmuformer.SpikingLMUFormerConfig(input_dim=4, dim=16, depth=1, n_classes=3, embed_layers=2, theta=4.0)
    model = lmuformer.SpikingLMUFormer(cfg)
    with torch.no_grad():  # trained-like BatchNorm statistics, and enough drive that every LIF fires
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(1.5, 3.0)
                module.bias.uniform_(0.0, 0.8)
    return model.double().eval()


def test_spiking_lmuformer_round_trip(tmp_path):
    model = _spiking_lmuformer()
    frames = torch.rand(2, 12, 4, dtype=torch.float64) * 3
    path = tmp_path / "slmu.nir"
    export_nir(model, path)
    graph = read_nir(path)
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert {"LIF", "I", "Delay", "Affine", "Linear", "Scale"} <= kinds  # memory = integrator, convs = delays + taps
    ours = simulate(model, frames, record_spikes=True)
    outputs, spikes = run_nir(graph, frames, record=True)
    assert set(spikes) == set(ours.spike_trace)
    for name in spikes:
        assert torch.equal(spikes[name], ours.spike_trace[name].reshape(spikes[name].shape)), name
        assert spikes[name].sum() > 0, name
    torch.testing.assert_close(outputs, ours.outputs, rtol=0, atol=1e-9)


def test_spiking_lmuformer_snntorch_gap():
    """snnTorch's importer has no module for NIR's integrator, delay or scale nodes: the exact gap."""
    graph = export_nir(_spiking_lmuformer())
    assert snntorch_unsupported(graph) == ["Delay", "I", "Scale"]
    pytest.importorskip("nirtorch")
    with pytest.raises(EdgeseqError, match="Delay, I, Scale"):
        run_with_snntorch(graph, torch.zeros(1, 2, 4))


def test_spikegpt_is_refused_with_the_gaps():
    spikegpt = pytest.importorskip("edgeseq.models.spikegpt")
    model = spikegpt.SpikeGPT(spikegpt.SpikeGPTConfig(d_model=8, n_layer=1))
    with pytest.raises(EdgeseqError) as info:
        export_nir(model)
    message = str(info.value)
    for needle in ("LayerNorm", "exp", "multiply two activations", "NIR LIF"):
        assert needle in message


def test_default_dt_is_snntorch_step():
    assert DEFAULT_DT == 1e-4
    graph = export_nir(_mlp())
    assert graph.metadata["dt"] == DEFAULT_DT


def test_zoo_spiking_lmuformer_round_trip(tmp_path):
    """The trained zoo model: its NIR graph, read back from disk, spikes exactly like our simulation."""
    from edgeseq.checkpoints import zoo_names

    if "spiking-lmuformer-digits" not in zoo_names():
        pytest.skip("zoo model spiking-lmuformer-digits not present")
    from edgeseq.checkpoints import load_model

    model = load_model("spiking-lmuformer-digits").model.double().eval()
    frames = torch.rand(4, 8, model.config.input_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    export_nir(model, tmp_path / "zoo.nir")
    outputs, spikes = run_nir(read_nir(tmp_path / "zoo.nir"), frames, record=True)
    ours = simulate(model, frames, record_spikes=True, count_ops=False)
    for name in spikes:
        assert torch.equal(spikes[name], ours.spike_trace[name].reshape(spikes[name].shape)), name
    assert sum(int(s.sum()) for s in spikes.values()) > 0
    torch.testing.assert_close(outputs, ours.outputs, rtol=0, atol=1e-9)
