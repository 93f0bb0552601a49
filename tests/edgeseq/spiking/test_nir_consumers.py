"""What other NIR consumers (snnTorch, Norse) make of edgeseq's graphs, and the warnings about it.

Oracle: edgeseq's own NIR interpreter ``run_nir`` (forward Euler at the graph's dt), run with our
``>=`` firing or, to model the consumers, with NIR's strict ``>`` (``fire_on="gt"``). Norse tests need
``norse`` (``pip install --no-deps norse``; not in edgeseq's extras: its torchvision requirement pulls
a newer torch) and skip without it.
"""

import warnings

import pytest
import torch

from edgeseq.errors import EdgeseqError
from edgeseq.spiking.nir_export import (consumer_notes, consumer_unsupported, consumer_warnings, export_nir, run_nir,
                                         run_with_norse, run_with_snntorch)
from edgeseq.spiking.engine import simulate
from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig

nir = pytest.importorskip("nir")


def _mlp(dtype=torch.float32) -> SpikingMLP:
    model = SpikingMLP(SpikingMLPConfig(in_features=12, hidden=(24, 16), n_classes=5)).to(dtype)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(3.0)
    return model


def _dyadic_mlp() -> SpikingMLP:
    """Weights and inputs on a 1/4 grid: membranes land exactly on the threshold now and then (the
    case of quantized weights), so ``>`` and ``>=`` give different spikes."""
    model = SpikingMLP(SpikingMLPConfig(in_features=6, hidden=(8,), n_classes=3, bias=False))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        model.layers[0].weight.copy_(torch.randint(-4, 9, (8, 6), generator=g) / 4)
        model.head.weight.copy_(torch.randint(-4, 5, (3, 8), generator=g) / 4)
    return model


def test_export_warns_per_consumer():
    with pytest.warns(UserWarning, match="norse: .*ignores the graph's dt"):
        graph = export_nir(_mlp())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_nir(_mlp(), warn=False)
    lines = consumer_warnings(graph)
    assert [line.split(":")[0] for line in lines] == ["NIR consumer snntorch", "NIR consumer norse"]
    assert all("v > threshold" in line for line in lines)


def test_strict_threshold_difference_is_measured():
    model = _dyadic_mlp()
    frames = (torch.randint(0, 5, (4, 12, 6), generator=torch.Generator().manual_seed(2)) / 2).float()
    graph = export_nir(model, warn=False)
    notes = consumer_notes(graph, frames)
    flips = notes["snntorch"]["strict_threshold_flips"]
    assert flips["changed"] > 0 and flips["neuron_steps"] == 4 * 12 * 8
    _, ge = run_nir(graph, frames, record=True)
    _, gt = run_nir(graph, frames, record=True, fire_on="gt")
    assert int((ge["lifs.0"] != gt["lifs.0"]).sum()) == flips["changed"]
    ours = simulate(model.double(), frames.double(), record_spikes=True).spike_trace["lifs.0"]
    assert torch.equal(ours, ge["lifs.0"])  # the interpreter with our metadata is our simulation
    with pytest.raises(Exception, match="fire_on"):
        run_nir(graph, frames, fire_on="maybe")


def test_snntorch_is_edgeseq_under_strict_threshold():
    """snnTorch imports the feed-forward graph; it computes run_nir with '>' (not our '>=')."""
    pytest.importorskip("nirtorch")
    pytest.importorskip("snntorch")
    model = _dyadic_mlp()
    frames = (torch.randint(0, 5, (4, 12, 6), generator=torch.Generator().manual_seed(2)) / 2).float()
    graph = export_nir(model, warn=False)
    theirs = run_with_snntorch(graph, frames)
    strict, _ = run_nir(graph, frames, fire_on="gt")
    ours, _ = run_nir(graph, frames)
    torch.testing.assert_close(theirs.double(), strict, rtol=0, atol=1e-6)
    assert not torch.allclose(theirs.double(), ours)  # the dyadic inputs hit the threshold exactly


def test_lmuformer_graph_is_not_importable_by_either():
    lmuformer = pytest.importorskip("edgeseq.models.lmuformer")
    cfg = lmuformer.SpikingLMUFormerConfig(input_dim=4, dim=16, depth=1, n_classes=3, embed_layers=2, theta=4.0)
    graph = export_nir(lmuformer.SpikingLMUFormer(cfg).eval(), warn=False)
    for consumer in ("snntorch", "norse"):
        assert consumer_unsupported(graph, consumer) == ["Delay", "I", "Scale"]
    with pytest.raises(EdgeseqError, match="Delay, I, Scale"):
        run_with_norse(graph, torch.rand(1, 3, 4))
    with pytest.raises(Exception, match="unknown NIR consumer"):
        consumer_unsupported(graph, "lava")


def test_mlp_in_norse_needs_the_graphs_dt():
    pytest.importorskip("norse.torch")
    model = _mlp()
    frames = torch.randn(4, 20, 12, generator=torch.Generator().manual_seed(0))
    graph = export_nir(model, warn=False)
    reference, _ = run_nir(graph, frames, fire_on="gt")
    theirs = run_with_norse(graph, frames)  # at the graph's dt
    torch.testing.assert_close(theirs.double(), reference, rtol=0, atol=1e-5)
    at_default = run_with_norse(graph, frames, dt=1e-3)  # Norse's own default, what from_nir(graph) does
    agreement = float((at_default.argmax(-1) == reference.argmax(-1)).float().mean())
    assert agreement < 0.9
