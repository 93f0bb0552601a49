"""Quantized spiking models are counted as what they compute: integer synaptic layers.

Oracle: an independent recount. The zoo's spiking models are quantized (fp32, w8a8, w4a16) and
stepped *without* the simulator while forward pre-hooks record every synaptic layer's input; numpy
then recounts, from those recorded inputs and the layers' own buffers, what the simulator must
report: the values each layer multiplies (its own ``quantize_input`` applied), classified per input
vector (a linear layer's row, a convolution's sample at one step) as spikes (all 0/1: accumulates)
or real values (MACs), × fan-out; and the weight bytes an integer layer stores (``weight_int``
elements × bits / 8, plus its float32 scales and bias).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeseq.checkpoints import load_model
from edgeseq.spiking.energy import estimate_energy
from edgeseq.spiking.engine import simulate
from edgeseq.spiking.report import simulation_data

quantize_apply = pytest.importorskip("quantize.apply")
from quantize.calibrate import calibration_batches  # noqa: E402
from quantize.modules import QuantConv1d, QuantLinear  # noqa: E402

MODELS = {"spiking-lmuformer-digits": dict(samples=3, length=None), "spikegpt-shakespeare": dict(samples=2, length=8)}
RECIPES = ("fp32", "w8a8", "w4a16")
SYNAPTIC = (nn.Linear, nn.Conv1d, QuantLinear, QuantConv1d)

_cache: dict = {}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small step-by-step workloads: one thread avoids oversubscribing a shared 2-core host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quantized(name: str, recipe: str):
    key = (name, recipe)
    if key not in _cache:
        loaded = load_model(name)
        batches, _ = calibration_batches(loaded.model, None, tokenizer=loaded.tokenizer, samples=4, seq_len=32)
        qmodel, _ = quantize_apply.quantize_model(loaded.model, recipe, batches, progress=False)
        data = simulation_data(loaded.model, None, tokenizer=loaded.tokenizer, **MODELS[name])
        inputs = data.inputs.float() if data.inputs.is_floating_point() else data.inputs
        _cache[key] = (qmodel.eval(), inputs)
    return _cache[key]


def _record_inputs(model: nn.Module, inputs: torch.Tensor) -> dict[str, list[np.ndarray]]:
    """Step the model (no simulator) and record the values each synaptic layer multiplies."""
    recorded: dict[str, list[np.ndarray]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, SYNAPTIC):
            def pre_hook(mod, args, name=name):
                x = args[0]
                if hasattr(mod, "quantize_input"):
                    x = mod.quantize_input(x)  # what the integer layer multiplies
                recorded.setdefault(name, []).append(x.detach().double().numpy().copy())
            hooks.append(module.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            state = model.init_state(inputs.shape[0])
            for t in range(inputs.shape[1]):
                _, state = model.step(inputs[:, t], state)
    finally:
        for hook in hooks:
            hook.remove()
    return recorded


def _storage_bytes(module: nn.Module) -> float:
    """Bytes one fetch of the layer's weights moves: integer storage plus scales, or the float weight; + bias."""
    bias = 0 if module.bias is None else module.bias.numel() * 4
    if isinstance(module, (QuantLinear, QuantConv1d)):
        return module.weight_int.numel() * module.weight_bits / 8 + module.weight_scale.numel() * 4 + bias
    return module.weight.numel() * module.weight.element_size() + bias


def _np_patches(x: np.ndarray, module: nn.Module) -> np.ndarray:
    """Receptive fields of a 1-D conv in numpy: ``[B, C, L] -> [B, L_out, C*K]`` (groups == 1)."""
    assert module.groups == 1
    pad = module.padding[0] if not isinstance(module.padding, str) else 0
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad)))
    k, dil, stride = module.kernel_size[0], module.dilation[0], module.stride[0]
    windows = np.lib.stride_tricks.sliding_window_view(x, dil * (k - 1) + 1, axis=2)[:, :, ::stride, ::dil]
    return windows.transpose(0, 2, 1, 3).reshape(x.shape[0], windows.shape[2], -1)


def _recount(module: nn.Module, calls: list[np.ndarray], event: bool) -> dict[str, float]:
    """ACs, MACs and weight bytes (dense and event-driven) of one layer, recounted in numpy."""
    out = {"eff_acs": 0, "eff_macs": 0, "dense_weight_bytes": 0.0, "weight_bytes": 0.0}
    storage = _storage_bytes(module)
    bits = getattr(module, "weight_bits", 0)
    element = bits / 8 if bits else module.weight.element_size()
    bias = 0 if module.bias is None else module.bias.numel() * 4
    scale_bytes = module.weight_scale.numel() * 4 if bits else 0
    group = getattr(module, "group_size", 0)
    is_linear = isinstance(module, (nn.Linear, QuantLinear))
    fan_out = module.out_features if is_linear else module.out_channels
    for x in calls:
        if is_linear:
            vectors = x.reshape(-1, x.shape[-1])
            fired = [np.count_nonzero(v) for v in vectors]
            units = [(v, n, n) for v, n in zip(vectors, fired)]
        else:
            patches = _np_patches(x, module)
            units = [(x[b], np.count_nonzero(x[b]), np.count_nonzero(patches[b])) for b in range(x.shape[0])]
        for values, nonzero_inputs, nonzero_patches in units:
            spikes = bool(np.isin(values, (0.0, 1.0)).all())
            out["eff_acs" if spikes else "eff_macs"] += nonzero_patches * fan_out
            out["dense_weight_bytes"] += storage
            if not (event and spikes):
                out["weight_bytes"] += storage
                continue
            out["weight_bytes"] += nonzero_patches * fan_out * element + bias
            if scale_bytes and nonzero_inputs:
                if group:
                    touched = np.count_nonzero(values.reshape(-1, group).any(-1))
                    out["weight_bytes"] += scale_bytes * touched * group / values.shape[-1]
                else:
                    out["weight_bytes"] += scale_bytes
    return out


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_quantized_counts_equal_an_independent_recount(name, recipe):
    model, inputs = _quantized(name, recipe)
    modules = dict(model.named_modules())
    recorded = _record_inputs(model, inputs)
    quantized = [n for n in recorded if isinstance(modules[n], (QuantLinear, QuantConv1d))]
    assert bool(quantized) == (recipe != "fp32")
    for mode in ("event", "dense"):
        result = simulate(model, inputs, mode=mode)
        assert result.warnings == []
        layers = result.counts.layers
        synaptic = {n for n, layer in layers.items() if layer.kind in ("linear", "conv1d")}
        assert synaptic == set(recorded), "every synaptic layer is counted as one, and nothing else is"
        for layer_name, calls in recorded.items():
            expected = _recount(modules[layer_name], calls, event=mode == "event")
            layer = layers[layer_name]
            for key, value in expected.items():
                assert getattr(layer, key) == pytest.approx(value, rel=1e-12, abs=1e-9), (mode, layer_name, key)
            bits = getattr(modules[layer_name], "weight_bits", 0)
            assert layer.weight_bits == bits
            assert layer.act_bits == (modules[layer_name].act_bits if getattr(modules[layer_name], "input_scale", None) is not None else 0)
    # the outputs are the model's own (the simulator runs the quantized layers' arithmetic)
    with torch.no_grad():
        reference, _ = model.step_sequence(inputs)
    torch.testing.assert_close(simulate(model, inputs, mode="dense").outputs, reference, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_integer_storage_and_energy(name):
    """w8a8 moves about a quarter of fp32's weight bytes and costs less energy on the 45 nm tables."""
    per_step = {}
    for recipe in ("fp32", "w8a8", "w4a16"):
        model, inputs = _quantized(name, recipe)
        result = simulate(model, inputs)
        counts = result.counts
        stored = sum(_storage_bytes(m) for m in model.modules() if isinstance(m, SYNAPTIC))
        # a dense execution fetches every synaptic weight once per sample and step
        synaptic_dense = sum(layer.dense_weight_bytes for layer in counts.layers.values()
                             if layer.kind in ("linear", "conv1d"))
        calls_per_step = {n: layer.calls for n, layer in counts.layers.items() if layer.kind in ("linear", "conv1d")}
        assert len(set(calls_per_step.values())) == 1  # every synaptic layer runs once per step
        assert synaptic_dense / counts.steps == pytest.approx(stored)
        per_step[recipe] = {t: estimate_energy(counts, t)["per_step_pj"] for t in ("45nm", "45nm-fp16", "45nm-int8")}
        per_step[recipe]["dense_bytes"] = synaptic_dense / counts.steps
    assert per_step["w8a8"]["dense_bytes"] < 0.3 * per_step["fp32"]["dense_bytes"]
    assert per_step["w4a16"]["dense_bytes"] < per_step["w8a8"]["dense_bytes"]
    for table in ("45nm", "45nm-fp16"):
        assert per_step["w8a8"][table] < per_step["fp32"][table], table
    assert all(math.isfinite(v) for row in per_step.values() for v in row.values())


def test_grouped_int4_spike_layers_equal_an_independent_recount():
    """Per-group int4 weights behind spikes: gathered columns at half a byte, and the scales of the
    groups the events fall in (the zoo's spike layers are too narrow for groups of 128)."""
    from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig
    from quantize.recipes import QuantRecipe

    model = SpikingMLP(SpikingMLPConfig(in_features=16, hidden=(32, 32), n_classes=4))
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(4.0)
    recipe = QuantRecipe("w4-g8", weight_bits=4, weight_granularity="group", group_size=8)
    qmodel, _ = quantize_apply.quantize_model(model, recipe, None, progress=False)
    assert qmodel.head.group_size == 8
    inputs = torch.rand(2, 6, 16)
    modules = dict(qmodel.named_modules())
    recorded = _record_inputs(qmodel, inputs)
    for mode in ("event", "dense"):
        layers = simulate(qmodel, inputs, mode=mode).counts.layers
        assert layers["head"].eff_acs > 0 and layers["layers.0"].eff_macs > 0
        for layer_name, calls in recorded.items():
            for key, value in _recount(modules[layer_name], calls, event=mode == "event").items():
                assert getattr(layers[layer_name], key) == pytest.approx(value, rel=1e-12), (mode, layer_name, key)


def test_unknown_weighted_module_is_reported():
    """A module with weights that the simulator cannot execute as a synaptic layer is named in warnings."""
    import torch.nn.functional as F

    from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig

    class OwnLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 32))

        def forward(self, x):
            return F.linear(x, self.weight)

    model = SpikingMLP(SpikingMLPConfig(in_features=16, hidden=(32,), n_classes=4))
    model.head = OwnLinear()
    result = simulate(model, torch.rand(1, 3, 16))
    assert any(w.startswith("head (OwnLinear)") for w in result.warnings), result.warnings
