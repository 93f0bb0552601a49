"""The LIF neuron: parity with snntorch.Leaky under the documented mapping, the ATan surrogate,
and the fast sequence path against the step recurrence.

Mapping (edgeseq -> snntorch.Leaky, hard reset)::

    beta = 1 - 1/tau,   snntorch input = I / tau,   reset_mechanism = "zero"
    fire_on="gt":  threshold = threshold                 (snntorch fires on mem - thr > 0)
    fire_on="ge":  threshold = nextafter(threshold, -inf) (v >= thr  <=>  v > the float below thr),
                   passed as a tensor of the input's dtype
    snntorch's ``mem`` at step t is our membrane *before* reset; ours after reset is mem·(1 - spk).

snntorch's zero reset acts at the next step (``mem = (1 - reset_{t-1})·mem``) before the decay,
which is the same as resetting right after the spike, so the spikes agree exactly. Inputs are
dyadic (multiples of 1/16), tau ∈ {2, 4} and sequences short enough that every operation is exact
in float64, so both sides give bit-identical membranes.
"""

from __future__ import annotations

import math

import pytest
import torch

snntorch = pytest.importorskip("snntorch")

from edgeseq.models.lif import LIF, atan_spike, lif_sequence  # noqa: E402


def dyadic_current(shape, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(-24, 49, shape, generator=gen) / 16).to(dtype)  # -1.5 .. 3 in steps of 1/16


def run_snntorch(current, tau, threshold, fire_on):
    thr = threshold if fire_on == "gt" else math.nextafter(threshold, -math.inf)
    # tensors in the input's dtype: snntorch would store a Python float as float32, where the
    # float just below 1.0 in float64 rounds back to 1.0
    as_tensor = lambda x: torch.tensor(x, dtype=current.dtype)  # noqa: E731
    leaky = snntorch.Leaky(beta=as_tensor(1 - 1 / tau), threshold=as_tensor(thr), reset_mechanism="zero")
    mem = torch.zeros_like(current[:, 0])
    spikes, membranes = [], []
    for t in range(current.shape[1]):
        spk, mem = leaky(current[:, t] / tau, mem)
        spikes.append(spk.to(current.dtype))
        membranes.append(mem * (1 - spk.to(mem.dtype)))  # after reset, as ours
    return torch.stack(spikes, 1), torch.stack(membranes, 1)


@pytest.mark.parametrize("fire_on", ["ge", "gt"])
@pytest.mark.parametrize("tau", [2.0, 4.0])
def test_lif_matches_snntorch_leaky(fire_on, tau):
    """Oracle: snntorch.Leaky under the mapping above; spikes and membranes bit-identical."""
    # each step adds log2(tau) bits to the membrane (until a reset): stay within float64's 53
    current = dyadic_current((3, 40 if tau == 2 else 20, 8))
    lif = LIF(tau=tau, threshold=1.0, reset="hard", fire_on=fire_on)
    v = torch.zeros_like(current[:, 0])
    spikes, membranes = [], []
    for t in range(current.shape[1]):
        s, v = lif.step(current[:, t], v)
        spikes.append(s)
        membranes.append(v)
    spikes, membranes = torch.stack(spikes, 1), torch.stack(membranes, 1)
    ref_spikes, ref_membranes = run_snntorch(current, tau, 1.0, fire_on)
    assert 0.05 < float(spikes.mean()) < 0.6
    assert torch.equal(spikes, ref_spikes)
    assert torch.equal(membranes, ref_membranes)


def test_ge_and_gt_differ_exactly_at_threshold():
    """v = threshold fires with ">=" (the original SpikeGPT/spikingjelly rule), not with ">"."""
    current = torch.tensor([[2.0]])  # v = 0 + (2 - 0)/2 = 1 = threshold
    assert LIF(fire_on="ge").step(current, torch.zeros(1, 1))[0].item() == 1.0
    assert LIF(fire_on="gt").step(current, torch.zeros(1, 1))[0].item() == 0.0
    leaky = snntorch.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero")
    assert leaky(current / 2, torch.zeros(1, 1))[0].item() == 0.0  # snntorch: ">"


def test_atan_surrogate_gradient_matches_snntorch():
    """Oracle: snntorch.surrogate.atan; same formula alpha/2 / (1 + (pi/2·alpha·x)²)."""
    x = torch.linspace(-3, 3, 101, dtype=torch.float32)
    for alpha in (2.0, 4.0):
        ours = x.clone().requires_grad_()
        atan_spike(ours, alpha).sum().backward()
        theirs = x.clone().requires_grad_()
        snntorch.surrogate.atan(alpha=alpha)(theirs).sum().backward()
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=0)
        assert ours.grad[50].item() == pytest.approx(alpha / 2)  # peak at the threshold


def test_soft_reset_follows_spikingjelly_semantics():
    """Soft reset subtracts the threshold right after the spike, before the next decay (as
    spikingjelly); snntorch's "subtract" removes it after the decay, so it is not the same neuron."""
    lif = LIF(tau=2.0, threshold=1.0, reset="soft")
    current = dyadic_current((2, 20, 5), seed=3)
    v = torch.zeros(2, 5, dtype=torch.float64)
    for t in range(20):
        h = v + (current[:, t] - v) / 2
        s_ref = (h >= 1).double()
        s, v_new = lif.step(current[:, t], v)
        assert torch.equal(s, s_ref)
        assert torch.equal(v_new, h - s_ref)
        v = v_new


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_sequence_path_equals_the_step_loop(reset):
    """Oracle: autograd through ``LIF.step`` over time; ``lif_sequence`` (hand-written backward)
    must give the same spikes bit for bit and the same gradients (float64, 1e-12)."""
    gen = torch.Generator().manual_seed(1)
    current = (torch.randn(2, 30, 6, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    v0 = torch.randn(2, 6, generator=gen, dtype=torch.float64).requires_grad_()
    w_s, w_v = torch.randn(2, 30, 6, generator=gen, dtype=torch.float64), torch.randn(2, 6, generator=gen, dtype=torch.float64)
    lif = LIF(reset=reset)
    spikes, v = lif.run(current, v0)
    grads = torch.autograd.grad((spikes * w_s).sum() + (v * w_v).sum(), [current, v0])
    seen = []
    lif.counter = lambda module, s: seen.append(s)  # with a counter, run() calls step()
    ref_spikes, ref_v = lif.run(current, v0)
    ref = torch.autograd.grad((ref_spikes * w_s).sum() + (ref_v * w_v).sum(), [current, v0])
    assert len(seen) == 30
    assert torch.equal(spikes, ref_spikes) and torch.equal(v, ref_v)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    # time_dim and the functional form
    s2, _ = lif_sequence(current.detach().transpose(0, 1), v0.detach(), lif.cfg)
    assert torch.equal(s2.transpose(0, 1), spikes)
