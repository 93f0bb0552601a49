"""SpikeGPT: step ≡ forward at every depth, the stable WKV against the plain formula, training
through the surrogate, and loading checkpoints in the official key layout."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from edgeseq.checkpoints import detect_format, load_model, save_model
from edgeseq.errors import InputError
from edgeseq.models import build_model
from edgeseq.models.spikegpt import (
    SpikeGPT,
    SpikeGPTConfig,
    wkv_parallel,
    wkv_step,
)
from edgeseq.convert.spikegpt import OFFICIAL_FORMAT
from edgeseq.streaming import FlatStep

VOCAB = 40


def random_spikegpt(n_layer: int, d_model: int = 16, seed: int = 0, chunk: int = 5) -> SpikeGPT:
    """A small SpikeGPT with random (not freshly initialised) parameters, scaled so that 5–15% of
    the LIF neurons fire: every code path (spikes, resets, the WKV history) is exercised."""
    gen = torch.Generator().manual_seed(seed)
    model = SpikeGPT(SpikeGPTConfig(vocab_size=VOCAB, d_model=d_model, n_layer=n_layer, wkv_chunk=chunk))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "time_mix" in name:
                p.copy_(torch.rand(p.shape, generator=gen))
            elif "time_decay" in name or "time_first" in name or name == "emb.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith(("att.output.weight", "ffn.value.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) * 4 / math.sqrt(p.shape[1]))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            elif name.endswith("weight"):  # LayerNorm gains
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def run_steps(model: SpikeGPT, ids: torch.Tensor, state=None):
    """Logits and per-LIF spikes ``[B, T, C]`` from ``step`` (spikes seen through the counter hook)."""
    seen: list[torch.Tensor] = []
    lifs = [lif for block in model.blocks for lif in (block.lif1, block.lif2)]
    for lif in lifs:
        lif.counter = lambda module, spikes: seen.append(spikes)
    try:
        state = model.init_state(ids.shape[0]) if state is None else state
        logits = []
        with torch.no_grad():
            for t in range(ids.shape[1]):
                y, state = model.step(ids[:, t], state)
                logits.append(y)
    finally:
        for lif in lifs:
            lif.counter = None
    spikes = [torch.stack(seen[j::len(lifs)], dim=1) for j in range(len(lifs))]
    return torch.stack(logits, dim=1), spikes, state


@pytest.mark.parametrize("n_layer", [1, 7, 13])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_equals_forward(n_layer, dtype):
    """Oracle: the parallel ``forward`` (chunked WKV, sequence LIF) vs ``step`` token by token.

    float64: 1e-10 (measured ~1e-15). float32: 1e-4 on logits of magnitude ~4 (measured ~1e-6, the
    two forms sum the WKV terms in different orders). Spikes must be identical in both: the
    official recurrent script diverges past 6 layers, ours may not at any depth. In float32 this
    holds because no membrane of these inputs comes within 1e-5 of the threshold (checked below
    in float64; the smallest margin is 6.7e-5, the float32 differences ~1e-6), so rounding
    cannot flip a spike.
    """
    model = random_spikegpt(n_layer, seed=n_layer).to(dtype)
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    if dtype == torch.float32:
        charged = _charged_membranes(random_spikegpt(n_layer, seed=n_layer).double(), ids)
        margin = min(float((h - model.config.lif_threshold).abs().min()) for h in charged)
        assert margin > 1e-5, f"these inputs put a membrane {margin:.1e} from the threshold: pick another seed"
    with torch.no_grad():
        logits, final_state, spikes = model.forward_with_spikes(ids)
    step_logits, step_spikes, step_state = run_steps(model, ids)
    rates = torch.stack([s.mean() for s in spikes])
    assert 0.02 < float(rates.mean()) < 0.4, "the test model should spike"
    for j, (a, b) in enumerate(zip(spikes, step_spikes)):
        assert torch.equal(a, b), f"LIF layer {j}: spikes differ between forward and step"
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(step_logits, logits, rtol=0, atol=tol)
    for name in model.state_names():
        # the (a, b, p) representation may differ only by rounding; compare a·e^p, b·e^p
        if name.startswith(("wkv_a", "wkv_b")):
            i = name.rsplit("_", 1)[1]
            p, q = final_state[f"wkv_p_{i}"], step_state[f"wkv_p_{i}"]
            torch.testing.assert_close(final_state[name] * torch.exp(p - q), step_state[name], rtol=tol * 10, atol=tol)
        elif not name.startswith("wkv_p"):
            torch.testing.assert_close(final_state[name], step_state[name], rtol=0, atol=tol)


def test_prefill_then_step_continues_the_sequence():
    """Oracle: forward over the whole sequence; prefill of a prefix then steps must match it."""
    model = random_spikegpt(3, seed=3).double()
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        head, state = model.prefill(ids[:, :6])
        second, state = model.prefill(ids[:, 6:8], state)
    tail, _, _ = run_steps(model, ids[:, 8:], state)
    torch.testing.assert_close(torch.cat([head, second, tail], dim=1), full, rtol=0, atol=1e-10)


def naive_wkv(decay, bonus, k, v):
    """The WKV formula evaluated literally in float64 (no max subtraction)."""
    k, v, w, u = k.double(), v.double(), decay.double(), bonus.double()
    out = torch.empty_like(k)
    for t in range(k.shape[1]):
        lags = (t - 1 - torch.arange(t, dtype=torch.float64))[:, None]  # [t, 1]
        weights = torch.exp(-lags * w + k[:, :t])  # [B, t, C]
        current = torch.exp(u + k[:, t])
        out[:, t] = ((weights * v[:, :t]).sum(1) + current * v[:, t]) / (weights.sum(1) + current)
    return out


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_wkv_stable_forms_equal_the_formula(scale):
    """Oracle: ``naive_wkv`` in float64. scale 40 puts keys at ±~120, where e^k overflows float32:
    the stable forms, in float32, must still agree (relative 1e-5: float32 rounding of ~13 terms)."""
    gen = torch.Generator().manual_seed(0)
    batch, length, channels = 2, 13, 6
    k = torch.randn(batch, length, channels, generator=gen) * scale
    v = torch.randn(batch, length, channels, generator=gen)
    decay = torch.exp(torch.randn(channels, generator=gen))  # w > 0
    bonus = torch.randn(channels, generator=gen)
    expected = naive_wkv(decay, bonus, k, v)
    for chunk in (1, 4, 16):
        got, _ = wkv_parallel(decay, bonus, k, v, chunk=chunk)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    a, b = torch.zeros(batch, channels), torch.zeros(batch, channels)
    p = torch.full((batch, channels), -1e30)
    outs = []
    for t in range(length):
        y, a, b, p = wkv_step(decay, bonus, k[:, t], v[:, t], a, b, p)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1).double(), expected, rtol=1e-5, atol=1e-5)
    # float64 stable forms: tight
    got64, _ = wkv_parallel(decay.double(), bonus.double(), k.double(), v.double(), chunk=4)
    torch.testing.assert_close(got64, expected, rtol=1e-12, atol=1e-12)


def test_wkv_parallel_gradients_match_the_step_recurrence():
    """Oracle: autograd through ``wkv_step`` run over time (float64)."""
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    td = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    u = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64)
    y, _ = wkv_parallel(torch.exp(td), u, k, v, chunk=4)
    grads = torch.autograd.grad((y * weight).sum(), [k, v, td, u])
    a = b = torch.zeros(2, 4, dtype=torch.float64)
    p = torch.full((2, 4), -1e30, dtype=torch.float64)
    outs = []
    for t in range(9):
        out, a, b, p = wkv_step(torch.exp(td), u, k[:, t], v[:, t], a, b, p)
        outs.append(out)
    ref = torch.autograd.grad((torch.stack(outs, 1) * weight).sum(), [k, v, td, u])
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def test_training_through_the_surrogate_lowers_the_loss():
    """A few Adam steps on a tiny repetitive corpus: gradients reach every parameter through the
    binary embedding's and the LIF neurons' ATan surrogates, and the loss falls."""
    torch.manual_seed(0)
    model = SpikeGPT(SpikeGPTConfig(vocab_size=VOCAB, d_model=16, n_layer=2, wkv_chunk=8)).train()
    text = torch.tensor([i % 7 + 3 for i in range(33)] * 2).view(2, 33)
    inputs, targets = text[:, :-1], text[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(inputs).reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if not losses:
            no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not no_grad, f"no gradient reached {no_grad}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_contract_state_spec_quant_points_and_config():
    model = random_spikegpt(2)
    spec = {s.name: s.shape for s in model.state_spec()}
    state = model.init_state(3)
    assert set(state) == set(spec) and all(state[n].shape == (3, *spec[n]) for n in spec)
    assert float(state["wkv_p_0"].max()) < -1e29  # "no history", not zero
    _, new_state = model.step(torch.zeros(3, dtype=torch.long), state)
    assert set(new_state) == set(spec)
    for point in model.quant_points():
        assert isinstance(model.get_submodule(point.path), torch.nn.Linear)
    cfg = SpikeGPTConfig.from_json(model.config.to_json())
    assert cfg == model.config
    assert type(build_model("spikegpt", cfg.to_dict())) is SpikeGPT
    with pytest.raises(InputError):
        SpikeGPTConfig(lif_fire_on=">")
    # the flat step export uses
    flat = FlatStep(model)
    outs = flat(torch.zeros(3, dtype=torch.long), *[state[n] for n in model.state_names()])
    assert len(outs) == 1 + len(spec)


def _official_state_dict(model: SpikeGPT) -> dict[str, torch.Tensor]:
    """What the official training script saves: same key names, half precision."""
    return {k: v.detach().clone().half() for k, v in model.state_dict().items()}


def test_official_checkpoint_loads_through_load_model(tmp_path):
    """Oracle: the model the checkpoint was written from (rounded to float16, as saved)."""
    model = random_spikegpt(3, seed=5)
    path = tmp_path / "spikegpt-tiny.pth"
    torch.save(_official_state_dict(model), path)
    assert detect_format(path) == "spikegpt-official"
    assert OFFICIAL_FORMAT.detect(tmp_path)
    loaded = load_model(path)
    assert loaded.format == "spikegpt-official"
    cfg = loaded.model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.hidden) == (VOCAB, 16, 3, 64)
    reference = random_spikegpt(3, seed=5)
    reference.load_state_dict({k: v.float() for k, v in _official_state_dict(model).items()})
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), reference(ids), rtol=0, atol=0)
    # squeezed time parameters (some exports) and safetensors load too
    from safetensors.torch import save_file

    squeezed = {k: (v.reshape(-1) if ".time_" in k else v).contiguous() for k, v in _official_state_dict(model).items()}
    save_file(squeezed, str(tmp_path / "weights.safetensors"))
    again = load_model(tmp_path / "weights.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids), reference(ids), rtol=0, atol=0)
    # keys saved from a DeepSpeed/DDP wrapper
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    torch.save({f"module.{k}": v for k, v in _official_state_dict(model).items()}, wrapped / "rwkv-final.pth")
    third = load_model(wrapped)
    with torch.no_grad():
        torch.testing.assert_close(third.model(ids), reference(ids), rtol=0, atol=0)


def test_official_loader_refuses_code_and_wrong_layouts(tmp_path):
    model = random_spikegpt(1)
    evil = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "args": argparse.Namespace(x=1)}, evil)
    with pytest.raises(InputError, match="refused"):
        OFFICIAL_FORMAT.load(evil)
    ffn_pre = _official_state_dict(model)
    ffn_pre["blocks.0.ffnPre.key.weight"] = torch.zeros(64, 16)
    torch.save(ffn_pre, tmp_path / "pre.pth")
    with pytest.raises(InputError, match="ffnPre"):
        OFFICIAL_FORMAT.load(tmp_path / "pre.pth")
    big = SpikeGPT(SpikeGPTConfig(vocab_size=300, d_model=8, n_layer=1))
    torch.save(_official_state_dict(big), tmp_path / "big.pth")
    with pytest.raises(InputError, match="tokenizer"):
        OFFICIAL_FORMAT.load(tmp_path / "big.pth")


def test_native_save_load_round_trip(tmp_path):
    model = random_spikegpt(2)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    ids = torch.randint(0, VOCAB, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), model(ids), rtol=0, atol=0)


def test_spike_rates_match_the_spikes_of_forward():
    from edgeseq.models.spikegpt import spike_rates

    model = random_spikegpt(2, seed=7)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    rates = spike_rates(model, ids, chunk_len=5)  # chunked with the state carried == one pass
    with torch.no_grad():
        _, _, spikes = model.forward_with_spikes(ids)
    assert list(rates) == ["emb", "blocks.0.lif1", "blocks.0.lif2", "blocks.1.lif1", "blocks.1.lif2"]
    for rate, s in zip(list(rates.values())[1:], spikes):
        assert rate == pytest.approx(float(s.double().mean()), abs=1e-12)
    assert 0 < rates["emb"] < 1


def _charged_membranes(model: SpikeGPT, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every LIF layer's membrane before reset, ``[B, T, C]``, from a token-by-token run."""
    lifs = [lif for block in model.blocks for lif in (block.lif1, block.lif2)]
    charged: list[list[torch.Tensor]] = [[] for _ in lifs]
    for j, lif in enumerate(lifs):
        def spy(current, membrane, lif=lif, out=charged[j]):
            out.append(membrane + (current - membrane) / lif.cfg.tau)
            return type(lif).step(lif, current, membrane)
        lif.step = spy
    try:
        run_steps(model, ids)
    finally:
        for lif in lifs:
            del lif.step
    return [torch.stack(h, dim=1) for h in charged]


def test_zoo_model_step_equals_forward_on_text():
    """The trained zoo model (when present), on real text; oracle: ``forward``.

    float64: identical spikes, logits within 1e-9. float32: spikes are identical except where a
    membrane lands within float32 rounding of the threshold, where the two forms (which sum in
    different orders) may disagree and the flip then propagates. So the first differing spike,
    if any, must sit at a membrane within 1e-5 of the threshold in the float64 run.
    """
    from edgeseq.checkpoints import zoo_names

    if "spikegpt-shakespeare" not in zoo_names():
        pytest.skip("zoo model spikegpt-shakespeare not present")
    loaded = load_model("spikegpt-shakespeare")
    ids = torch.tensor([loaded.tokenizer.encode("ROMEO:\nBut soft, what light through yonder window breaks?")])
    model64 = loaded.model.double()
    with torch.no_grad():
        logits, _, spikes = model64.forward_with_spikes(ids)
    step_logits, step_spikes, _ = run_steps(model64, ids)
    assert all(torch.equal(a, b) for a, b in zip(spikes, step_spikes))
    torch.testing.assert_close(step_logits, logits, rtol=0, atol=1e-9)
    charged = _charged_membranes(model64, ids)
    threshold = model64.config.lif_threshold

    model32 = loaded.model.float()
    with torch.no_grad():
        _, _, spikes32 = model32.forward_with_spikes(ids)
    _, step_spikes32, _ = run_steps(model32, ids)
    flips = [(t, j) for j, (a, b) in enumerate(zip(spikes32, step_spikes32))
             for t in range(ids.shape[1]) if not torch.equal(a[:, t], b[:, t])]
    if flips:
        t, j = min(flips)  # the earliest token, then the lowest layer: the cause of the others
        where = (spikes32[j][:, t] != step_spikes32[j][:, t])
        margin = (charged[j][:, t][where] - threshold).abs().min().item()
        assert margin < 1e-5, f"layer {j} token {t}: spikes differ {margin:.2e} away from the threshold"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_from_the_empty_state(dtype):
    """-1e30 ("no history") does not fit float16: the empty exponent adapts, nothing overflows."""
    model = random_spikegpt(2).to(dtype)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(ids)
    step_logits, _, _ = run_steps(model, ids)
    assert torch.isfinite(logits).all() and torch.isfinite(step_logits).all()
