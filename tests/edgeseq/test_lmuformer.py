"""LMUFormer / Spiking LMUFormer: Legendre memory, streaming parity, training, checkpoints.

Oracles: ``scipy.signal.cont2discrete`` and a float64 matrix exponential for the discretisation;
the recurrence ``m_t = Ā m_{t-1} + B̄ u_t`` (a Python loop) for the parallel memory; ``step``
run frame by frame for ``forward`` (the streaming contract).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeseq.models import build_model
from edgeseq.models.lmuformer import (
    LMUFormer,
    LMUFormerConfig,
    SpikingLMUFormer,
    SpikingLMUFormerConfig,
    discretize_zoh,
    fold_batchnorm,
    legendre_continuous,
    legendre_memory_matrices,
    memory_parallel,
    memory_step,
)
from edgeseq.convert.lmuformer import load_official_state


def _randomize_batchnorm(model: nn.Module, seed: int = 1) -> None:
    """Realistic BatchNorm: running statistics measured on random frames (so every LIF sees unit-
    scale input and the network spikes), then a random affine on top."""
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.momentum = None  # cumulative average
            mod.weight.data.copy_(1.0 + torch.rand(mod.num_features, generator=gen))
            mod.bias.data.copy_((torch.rand(mod.num_features, generator=gen) - 0.5) * 0.6)
    dtype = next(model.parameters()).dtype
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(_frames(8, 12, model.config.input_dim, dtype, seed=100 + i))


def _tiny(spiking: bool, dtype=torch.float64, **kw):
    cls, cfg_cls = (SpikingLMUFormer, SpikingLMUFormerConfig) if spiking else (LMUFormer, LMUFormerConfig)
    cfg = cfg_cls(**{"input_dim": 5, "dim": 12, "depth": 2, "n_classes": 4, "theta": 6.0, **kw})
    model = cls(cfg).to(dtype)
    _randomize_batchnorm(model)
    return model.eval()


def _frames(batch=3, length=17, dim=5, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(batch, length, dim, generator=gen)).to(dtype)


# ------------------------------------------------------------------------------------------
# the Legendre memory
# ------------------------------------------------------------------------------------------


def test_legendre_continuous_small_case():
    """Order 2, θ = 1 written out by hand from the LMU definition (Voelker et al., 2019)."""
    A, B = legendre_continuous(2, 1.0)
    np.testing.assert_array_equal(A, [[-1.0, -1.0], [3.0, -3.0]])
    np.testing.assert_array_equal(B, [[1.0], [-3.0]])
    A4, _ = legendre_continuous(4, 2.0)
    np.testing.assert_allclose(A4, legendre_continuous(4, 1.0)[0] / 2.0)


@pytest.mark.parametrize("order,theta", [(1, 1.0), (6, 8.0), (32, 128.0)])
def test_zoh_matches_scipy_and_expm(order, theta):
    """Oracles: scipy.signal.cont2discrete(zoh) and the closed form Ā = e^A, B̄ = A⁻¹(Ā − I)B."""
    from scipy.linalg import expm
    from scipy.signal import cont2discrete

    A, B = legendre_continuous(order, theta)
    A_bar, B_bar = discretize_zoh(A, B)
    A_ref, B_ref, *_ = cont2discrete((A, B, np.ones((1, order)), np.zeros((1, 1))), dt=1.0, method="zoh")
    np.testing.assert_allclose(A_bar, A_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(B_bar, B_ref, rtol=1e-12, atol=1e-12)
    A_exp = expm(A)
    np.testing.assert_allclose(A_bar, A_exp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(B_bar, np.linalg.solve(A, (A_exp - np.eye(order)) @ B), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method", ["fft", "direct", "auto"])
def test_parallel_memory_equals_recurrence(method):
    """Oracle: the recurrence m_t = Ā m_{t-1} + B̄ u_t in float64, from a non-zero m_{-1}."""
    A_bar, B_bar = legendre_memory_matrices(10, 20.0)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 150, generator=gen, dtype=torch.float64)
    m0 = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    m, expected = m0, []
    for t in range(u.shape[1]):
        m = memory_step(m, u[:, t], A_bar, B_bar)
        expected.append(m)
    expected = torch.stack(expected, 1)
    got = memory_parallel(u, A_bar, B_bar, m0, method=method)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    m, expected_zero = torch.zeros_like(m0), []
    for t in range(u.shape[1]):
        m = memory_step(m, u[:, t], A_bar, B_bar)
        expected_zero.append(m)
    got_zero = memory_parallel(u, A_bar, B_bar, None, method=method)
    torch.testing.assert_close(got_zero, torch.stack(expected_zero, 1), rtol=1e-10, atol=1e-10)
    assert torch.allclose(memory_parallel(u[:, :1], A_bar, B_bar, m0), expected[:, :1])


# ------------------------------------------------------------------------------------------
# streaming parity
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spiking", [False, True])
def test_step_equals_forward_float64(spiking):
    model = _tiny(spiking)
    x = _frames()
    with torch.no_grad():
        y = model(x)
        y_step, state = model.step_sequence(x)
        y_pre, state_pre = model.prefill(x)
    torch.testing.assert_close(y_step, y, rtol=1e-10, atol=1e-10)
    for name in model.state_names():
        torch.testing.assert_close(state[name], state_pre[name], rtol=1e-10, atol=1e-10)
        assert state[name].shape[1:] == next(s.shape for s in model.state_spec() if s.name == name)


@pytest.mark.parametrize("spiking", [False, True])
def test_one_wide_embedding_kernel_keeps_no_window_and_steps_as_it_runs(spiking):
    """embed_kernel = 1: the embedding's convs keep no window (none in state_spec); step and prefill
    used to ask the state for one (KeyError 'embed_conv_0')."""
    torch.manual_seed(0)
    family = "spiking-lmuformer" if spiking else "lmuformer"
    model = build_model(family, input_dim=5, dim=16, depth=1, n_classes=3, memory_size=8, embed_kernel=1).double().eval()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    assert not any(s.name.startswith(("embed_conv", "embed_rpe")) for s in model.state_spec())
    with torch.no_grad():
        y = model(x)
        y_step, state = model.step_sequence(x)
        _, state_pre = model.prefill(x)
    torch.testing.assert_close(y_step, y, rtol=1e-10, atol=1e-10)
    assert set(state) == set(model.state_names()) == set(state_pre)


def _head_input_spikes(model, run):
    seen = []
    handle = model.head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return torch.cat(seen, dim=1)


def test_spiking_step_and_forward_fire_identical_spikes():
    """In float64 the spikes reaching the head are bit-identical between forward and step, and the
    network is actually spiking (neither silent nor saturated)."""
    model = _tiny(True)
    x = _frames(length=25)
    with torch.no_grad():
        spikes_fwd = _head_input_spikes(model, lambda: model(x))
        spikes_step = _head_input_spikes(model, lambda: model.step_sequence(x))
    assert torch.equal(spikes_fwd, spikes_step)
    assert set(spikes_fwd.unique().tolist()) <= {0.0, 1.0}
    assert 0.02 < spikes_fwd.mean().item() < 0.98
    for name in ("block0_memory", "block1_m_lif"):
        assert name in model.state_names()


def test_step_equals_forward_float32():
    """float32: the FFT/Toeplitz memory and the recurrence round differently (~1e-6 relative of
    activations of order 1, through two blocks), hence 1e-4."""
    model = _tiny(False, torch.float32, memory_method="fft")
    x = _frames(length=40, dtype=torch.float32)
    with torch.no_grad():
        y = model(x)
        y_step, _ = model.step_sequence(x)
    torch.testing.assert_close(y_step, y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spiking", [False, True])
def test_chunked_prefill_and_fold(spiking):
    model = _tiny(spiking)
    x = _frames(length=20)
    with torch.no_grad():
        y = model(x)
        y1, s1 = model.prefill(x[:, :7])
        y2, _ = model.prefill(x[:, 7:], s1)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-10)
        folded = fold_batchnorm(model)
        torch.testing.assert_close(folded(x), y, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(folded.step_sequence(x)[0], y, rtol=1e-10, atol=1e-10)


def test_embedding_is_causal_and_state_is_fixed_size():
    model = _tiny(False)
    x = _frames(length=12)
    x2 = x.clone()
    x2[:, 6:] += 5.0  # change the future only
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :6], model(x2)[:, :6])
        state = model.init_state(3)
        shapes = {k: v.shape for k, v in state.items()}
        for t in range(30):
            _, state = model.step(x[:, t % 12], state)
        assert {k: v.shape for k, v in state.items()} == shapes


# ------------------------------------------------------------------------------------------
# contract details
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["lmuformer", "spiking-lmuformer"])
def test_registry_config_roundtrip_and_quant_points(family):
    model = build_model(family, input_dim=3, dim=8, depth=1, n_classes=5)
    cfg = type(model.config).from_json(model.config.to_json())
    assert cfg == model.config and cfg.dataset == "digits" and cfg.dataset_options == {"mode": "rows"}
    assert model.task == "classify"
    points = model.quant_points()
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    assert len(points) == len(layers)  # every Linear/Conv is declared
    for point in points:
        assert isinstance(model.get_submodule(point.path), (nn.Linear, nn.Conv1d))
    spikes = [p.path for p in points if p.input == "spike"]
    if family == "spiking-lmuformer":
        assert spikes and len(spikes) == len(points) - 1  # all but the first embedding conv
    else:
        assert not spikes


def test_bad_input_is_a_one_line_error():
    from edgeseq.errors import InputError

    model = _tiny(False)
    with pytest.raises(InputError, match="frames"):
        model(torch.zeros(2, 5, 7, dtype=torch.float64))
    with pytest.raises(InputError):
        LMUFormer(LMUFormerConfig(embed_kernel=2))


@pytest.mark.parametrize("spiking,lr,factor", [(False, 1e-2, 0.5), (True, 3e-2, 0.95)])
def test_training_lowers_the_loss(spiking, lr, factor):
    """Ten Adam steps on 32 digits (rows); measured: ANN 2.31 -> 0.37, spiking 2.31 -> 1.99."""
    from edgeseq.datasets.digits import load_split

    torch.manual_seed(0)
    x, y = load_split("train", limit=32)
    cls, cfg_cls = (SpikingLMUFormer, SpikingLMUFormerConfig) if spiking else (LMUFormer, LMUFormerConfig)
    model = cls(cfg_cls(input_dim=8, dim=16, depth=1, n_classes=10, theta=8.0))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x).mean(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < factor * losses[0], losses


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------


def _official_state_dict(model) -> dict:
    """A state dict as the published training script saves it: DataParallel ``module.`` prefix,
    plus the impulse-response buffers ``H`` [d, seq_len] and ``fft_H`` the published cell keeps."""
    out = {}
    for key, value in model.state_dict().items():
        out["module." + key] = value.float()
        if key.endswith(".lmu.A"):
            order = value.shape[0]
            prefix = "module." + key[: -len("A")]
            seq_len = int(model.config.theta)
            out[prefix + "H"] = torch.zeros(order, seq_len)
            out[prefix + "fft_H"] = torch.zeros(order, seq_len + 1, dtype=torch.complex64)
    return out


@pytest.mark.parametrize("spiking", [False, True])
def test_official_checkpoint_loads(tmp_path, spiking):
    from edgeseq.checkpoints import load_model

    model = _tiny(spiking, torch.float32, theta=16.0, memory_size=6)
    path = tmp_path / "best_model.pth"
    torch.save(_official_state_dict(model), path)
    loaded = load_model(path)
    assert loaded.format == "lmuformer-official"
    assert type(loaded.model) is type(model)
    assert loaded.model.config.theta == 16.0 and loaded.model.config.memory_size == 6
    x = _frames(length=9, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    assert load_model(tmp_path).format == "lmuformer-official"  # the folder holding best_model.pth


def test_official_checkpoint_errors(tmp_path):
    from edgeseq.errors import InputError

    model = _tiny(False, torch.float32)
    state = {k: v.float() for k, v in model.state_dict().items()}
    state["block.0.attn.lmu.A"] = torch.randn_like(state["block.0.attn.lmu.A"])
    with pytest.raises(InputError, match="Legendre"):
        load_official_state(state)
    state = {k: v for k, v in model.state_dict().items() if "head" not in k}
    with pytest.raises(InputError, match="head"):
        load_official_state(state)


def test_native_save_load_roundtrip(tmp_path):
    from edgeseq.checkpoints import load_model, save_model

    model = _tiny(True, torch.float32)
    save_model(model, tmp_path / "m", meta={"test": True})
    loaded = load_model(tmp_path / "m").model
    x = _frames(length=6, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_causal_embedding_is_the_published_embedding_delayed():
    """Oracle: the published (centred, zero-padded, look-ahead) embedding written with
    ``F.conv1d(padding=1)`` on the same weights. The causal embedding equals it delayed by
    D = (layers + 1)·(k − 1)/2 = 5 frames once the warm-up (2D − 1 frames) has passed."""
    model = _tiny(False, depth=1)
    embed = model.patch_embed
    x = _frames(length=30)

    def published(frames):
        h = frames.transpose(1, 2)
        for layer in embed.conv_layers:
            h = layer[3](nn.functional.relu(nn.functional.conv1d(h, layer[0].weight, padding=1)))
        return h + nn.functional.conv1d(h, embed.rpe_conv.weight, padding=1)

    with torch.no_grad():
        ours, _ = embed.run(x.transpose(1, 2), None)
        ref = published(x)
    D = 5
    torch.testing.assert_close(ours[:, :, 2 * D - 1 :], ref[:, :, D - 1 : -D], rtol=1e-12, atol=1e-12)
