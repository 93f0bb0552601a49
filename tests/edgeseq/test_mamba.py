"""Mamba-1: the parallel form, the step form and the selective scan agree.

Oracles: ``step`` run token by token (``step_sequence``) for ``forward``/``prefill``, and
``selective_scan_loop`` (the recurrence written as a plain loop over time) for the chunked scan.
"""

from __future__ import annotations

import pytest
import torch

from edgeseq.models import build_model
from edgeseq.models.mamba import (
    Mamba,
    MambaConfig,
    _selective_scan_prefix,
    _selective_scan_unrolled,
    selective_scan,
    selective_scan_loop,
)

VOCAB = 50

# several shapes: d_model not a power of two, no conv bias, projection bias, untied head,
# explicit dt_rank, conv kernel 1 and 3, a scan chunk that does not divide the length
SHAPES = {
    "tied-24": dict(d_model=24, n_layer=2, d_state=4),
    "odd-40-untied": dict(d_model=40, n_layer=2, d_state=8, d_conv=3, expand=1, dt_rank=3, bias=True,
                          conv_bias=False, tie_embeddings=False),
    "odd-17-kernel1": dict(d_model=17, n_layer=1, d_state=16, d_conv=1, scan_chunk=5),
}


def random_mamba(dtype=torch.float64, seed=0, **overrides) -> Mamba:
    """A small Mamba with non-trivial A, dt, D and norms (the default init makes many of them 1)."""
    torch.manual_seed(seed)
    model = Mamba(MambaConfig(vocab_size=VOCAB, **overrides)).to(dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("A_log"):
                param.copy_(torch.log(torch.rand_like(param) * 4 + 0.05))
            elif name.endswith("dt_proj.bias"):
                param.copy_(torch.randn_like(param))
            elif name.endswith(".D") or "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
    return model


def ids(batch=2, length=23, seed=1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_step_equals_forward_float64(shape):
    model = random_mamba(torch.float64, **shape)
    tokens = ids()
    with torch.no_grad():
        parallel = model(tokens)
        stepped, _ = model.step_sequence(tokens)
    assert parallel.shape == (2, 23, VOCAB)
    assert (parallel - stepped).abs().max().item() <= 1e-10


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_float32_forward_and_step_match_float64(shape):
    """Tolerance: float32 eps is 1.2e-7; each output is a chain of T=23 recurrence steps and dot
    products over at most 2·d_model terms per layer, so a worst-case bound is ~(T + 2·d)·eps ≈ 1.5e-5
    relative to the logit scale. We allow 5e-5 of the largest |logit| (observed: about 1e-6)."""
    reference = random_mamba(torch.float64, **shape)
    model32 = random_mamba(torch.float32, **shape)
    model32.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    tokens = ids()
    with torch.no_grad():
        exact = reference(tokens)
        parallel = model32(tokens).double()
        stepped = model32.step_sequence(tokens)[0].double()
    scale = exact.abs().max().item()
    assert (parallel - exact).abs().max().item() <= 5e-5 * max(1.0, scale)
    assert (stepped - exact).abs().max().item() <= 5e-5 * max(1.0, scale)


def test_prefill_in_two_halves_equals_one_prefill():
    model = random_mamba(torch.float64, **SHAPES["odd-40-untied"])
    tokens = ids(length=21)
    with torch.no_grad():
        whole, whole_state = model.prefill(tokens)
        first, state = model.prefill(tokens[:, :9])
        second, state = model.prefill(tokens[:, 9:], state)
        # prefill then step continues the same sequence
        _, half_state = model.prefill(tokens[:, :20])
        last, step_state = model.step(tokens[:, 20], half_state)
    assert (torch.cat([first, second], 1) - whole).abs().max().item() <= 1e-10
    assert (last - whole[:, -1]).abs().max().item() <= 1e-10
    assert set(state) == set(whole_state) == set(model.state_names())
    for name in whole_state:
        assert (state[name] - whole_state[name]).abs().max().item() <= 1e-10
        assert (step_state[name] - whole_state[name]).abs().max().item() <= 1e-10


def test_prefill_shorter_than_conv_kernel():
    """A prompt of one token must leave a conv window of the declared shape (zeros before it)."""
    model = random_mamba(torch.float64, **SHAPES["tied-24"])
    tokens = ids(length=5)
    with torch.no_grad():
        _, state = model.prefill(tokens[:, :1])
        for t in range(1, 5):
            _, state = model.prefill(tokens[:, t:t + 1], state)
        _, reference = model.step_sequence(tokens)
    for spec in model.state_spec():
        assert state[spec.name].shape == (2, *spec.shape)
        assert (state[spec.name] - reference[spec.name]).abs().max().item() <= 1e-10


def test_state_spec_matches_init_state_and_step():
    model = random_mamba(torch.float32, **SHAPES["tied-24"])
    state = model.init_state(3)
    cfg = model.config
    assert [s.name for s in model.state_spec()] == [f"{kind}_{i}" for i in range(cfg.n_layer) for kind in ("conv", "ssm")]
    for spec in model.state_spec():
        assert state[spec.name].shape == (3, *spec.shape)
    logits, new_state = model.step(torch.zeros(3, dtype=torch.long), state)
    assert logits.shape == (3, VOCAB)
    assert {k: v.shape for k, v in new_state.items()} == {k: v.shape for k, v in state.items()}


def test_quant_points_name_real_modules():
    model = random_mamba(torch.float32, **SHAPES["odd-40-untied"])
    points = model.quant_points()
    assert len(points) == 5 * model.config.n_layer
    for point in points:
        model.get_submodule(point.path)  # raises if the path is wrong
        if point.input_quantized_at:
            model.get_submodule(point.input_quantized_at)
    assert any(p.rotatable and p.path.endswith("out_proj") for p in points)


def test_module_and_parameter_names_are_the_reference_ones():
    model = random_mamba(torch.float32, **SHAPES["odd-40-untied"])
    names = set(model.state_dict())
    for suffix in ("in_proj.weight", "in_proj.bias", "conv1d.weight", "x_proj.weight", "dt_proj.weight",
                   "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias"):
        assert f"layers.1.mixer.{suffix}" in names
    assert {"embedding.weight", "layers.0.norm.weight", "norm_f.weight", "lm_head.weight"} <= names


def test_config_json_round_trip_and_registry():
    cfg = MambaConfig(vocab_size=VOCAB, d_model=40, n_layer=1, dt_rank=3, tie_embeddings=False)
    again = MambaConfig.from_json(cfg.to_json())
    assert again == cfg
    model = build_model("mamba", cfg.to_dict())
    assert isinstance(model, Mamba) and model.config == cfg
    assert cfg.rank == 3 and MambaConfig(d_model=40).rank == 3 and cfg.d_inner == 80


def test_steep_decay_stays_finite_and_exact():
    """dt·|A| of several hundred per step: the chunk shrinks, nothing overflows, step still agrees."""
    model = random_mamba(torch.float32, **SHAPES["tied-24"])
    with torch.no_grad():
        for block in model.layers:
            block.mixer.dt_proj.bias.fill_(8.0)  # softplus -> dt ≈ 8
            block.mixer.A_log.fill_(4.0)  # |A| ≈ 55
    tokens = ids()
    with torch.no_grad():
        parallel = model(tokens)
        stepped, _ = model.step_sequence(tokens)
    assert torch.isfinite(parallel).all()
    assert (parallel - stepped).abs().max().item() <= 1e-4 * max(1.0, stepped.abs().max().item())


# --------------------------------------------------------------------------------------------
# the scan on its own
# --------------------------------------------------------------------------------------------


def scan_inputs(batch=2, length=37, d_inner=6, d_state=5, dtype=torch.float64, steep=False, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, d_inner, generator=g, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(batch, length, d_inner, generator=g, dtype=dtype) + (6 if steep else 0))
    A = -(torch.rand(d_inner, d_state, generator=g, dtype=dtype) * (40 if steep else 3) + 0.05)
    B = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, d_state, generator=g, dtype=dtype)
    D = torch.randn(d_inner, generator=g, dtype=dtype)
    h0 = torch.randn(batch, d_inner, d_state, generator=g, dtype=dtype)
    return x, dt, A, B, C, D, h0


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize("steep", [False, True])
def test_scan_equals_loop(chunk, steep):
    x, dt, A, B, C, D, h0 = scan_inputs(steep=steep)
    y_ref, h_ref = selective_scan_loop(x, dt, A, B, C, D, h0)
    y, h = selective_scan(x, dt, A, B, C, D, h0, chunk=chunk)
    assert torch.isfinite(y).all()
    assert (y - y_ref).abs().max().item() <= 1e-10
    assert (h - h_ref).abs().max().item() <= 1e-10
    y_p, h_p = _selective_scan_prefix(x, dt, A, B, C, D, h0, chunk=chunk)  # the eager fallback for steep decays
    assert (y_p - y_ref).abs().max().item() <= 1e-10
    assert (h_p - h_ref).abs().max().item() <= 1e-10
    y_u, h_u = _selective_scan_unrolled(x, dt, A, B, C, D, h0, block=chunk)  # the traced (exported) path
    assert (y_u - y_ref).abs().max().item() <= 1e-10
    assert (h_u - h_ref).abs().max().item() <= 1e-10


def test_traced_scan_is_the_unrolled_recurrence():
    """Under tracing ``selective_scan`` takes the unrolled form; the traced function (what the
    exported prefill graph computes) still equals the loop, on a length the block does not divide."""
    x, dt, A, B, C, D, h0 = scan_inputs(length=21, steep=True)
    y_ref, h_ref = selective_scan_loop(x, dt, A, B, C, D, h0)
    traced = torch.jit.trace(lambda *a: selective_scan(*a, chunk=4), (x, dt, A, B, C, D, h0))
    ops = [n.kind() for n in traced.graph.nodes()]
    assert "aten::cumsum" not in ops and "aten::div" not in ops  # not the closed form
    assert ops.count("aten::add") >= 21  # one state update per step
    y, h = traced(x, dt, A, B, C, D, h0)
    assert (y - y_ref).abs().max().item() <= 1e-10
    assert (h - h_ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize("chunk,steep", [(1, False), (8, False), (32, False), (16, True)])
def test_scan_gradients_equal_loop_gradients(chunk, steep):
    """The hand-written backward (and the prefix fallback for steep decays) vs autograd of the loop."""
    inputs = [t.clone().requires_grad_(True) for t in scan_inputs(length=19, steep=steep)]
    weights = torch.randn(2, 19, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = []
    for scan in (lambda *a: selective_scan(*a, chunk=chunk), selective_scan_loop):
        y, h = scan(*inputs)
        loss = (y * weights).sum() + h.pow(2).sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for g_scan, g_loop in zip(*grads):
        assert (g_scan - g_loop).abs().max().item() <= 1e-9 * max(1.0, g_loop.abs().max().item())


def test_scan_gradient_without_final_state_gradient():
    inputs = [t.clone().requires_grad_(True) for t in scan_inputs(length=11)]
    grads = [torch.autograd.grad(scan(*inputs)[0].sum(), inputs)
             for scan in (lambda *a: selective_scan(*a, chunk=4), selective_scan_loop)]
    for g_scan, g_loop in zip(*grads):
        assert (g_scan - g_loop).abs().max().item() <= 1e-9


def test_model_gradients_equal_loop_model_gradients(monkeypatch):
    """A training step through the whole model: parameter gradients with the chunked scan equal
    those with the loop scan (float64)."""
    import edgeseq.models.mamba as mamba_module

    model = random_mamba(torch.float64, **SHAPES["odd-40-untied"])
    tokens = ids(length=21)

    def grads():
        model.zero_grad()
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    chunked = grads()
    monkeypatch.setattr(mamba_module, "selective_scan", lambda *a, chunk=16: selective_scan_loop(*a))
    looped = grads()
    for name in chunked:
        assert (chunked[name] - looped[name]).abs().max().item() <= 1e-10, name


def test_scan_float32_steep_decay_has_no_overflow():
    x, dt, A, B, C, D, h0 = scan_inputs(dtype=torch.float32, steep=True, length=64)
    y_ref, _ = selective_scan_loop(x, dt, A, B, C, D, h0)
    y, _ = selective_scan(x, dt, A, B, C, D, h0, chunk=64)
    assert torch.isfinite(y).all()
    assert (y - y_ref).abs().max().item() <= 1e-4 * max(1.0, y_ref.abs().max().item())


def test_safe_chunk_halves_until_the_log_decay_bound_holds():
    from edgeseq.models.mamba import _MAX_CHUNK_LOG_DECAY, _safe_chunk

    rate = torch.full((3,), 10.0)
    dt = torch.full((1, 64, 3), 0.1)  # |S| per step = 1
    assert _MAX_CHUNK_LOG_DECAY < 64 and _safe_chunk(dt, rate, 64) == 32
    assert _safe_chunk(dt, rate, 16) == 16
    dt[0, 40, 1] = 2.0  # one steep step: 20 plus the other steps of its chunk
    assert _safe_chunk(dt, rate, 64) == 32
    assert _safe_chunk(dt * 100, rate, 16) == 0  # 100 per step: prefix scan
    assert _safe_chunk(torch.full((1, 2, 3), float("nan")), rate, 16) == 0


@pytest.mark.parametrize("field,value", [("d_model", 0), ("n_layer", -1), ("d_state", 2.5), ("dt_rank", -2),
                                         ("expand", True), ("norm_eps", 0.0)])
def test_bad_config_is_a_one_line_input_error(field, value):
    from edgeseq.errors import InputError

    with pytest.raises(InputError, match=field):
        MambaConfig(**{field: value})
