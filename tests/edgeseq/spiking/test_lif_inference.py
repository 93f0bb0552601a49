"""The in-place inference loop of a LIF sequence computes LIF.step's arithmetic bit for bit.

Oracle: ``LIF.step`` called T times (eager, one tensor per step). Compared by bit pattern, so a
sign of zero or a NaN payload would show.
"""

import pytest
import torch

from edgeseq.models.lif import LIF, LIFConfig, _lif_sequence_inference, lif_sequence


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int64 if x.dtype == torch.float64 else torch.int32)


def _reference(cfg: LIFConfig, current: torch.Tensor, membrane: torch.Tensor):
    lif = LIF(cfg.tau, cfg.threshold, cfg.reset, cfg.fire_on)
    spikes, v = [], membrane
    for t in range(current.shape[0]):
        s, v = lif.step(current[t], v)
        spikes.append(s)
    return torch.stack(spikes), v


@pytest.mark.parametrize("scripted", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [1.0, 0.3, 0.5])
@pytest.mark.parametrize("fire_on", ["ge", "gt"])
def test_inference_loop_is_bit_exact(dtype, threshold, fire_on, scripted):
    cfg = LIFConfig(tau=2.0, threshold=threshold, fire_on=fire_on)
    current = (torch.randn(3, 64, 17) * 1.5).to(dtype).movedim(1, 0)  # [T, B, C], time not outermost in memory
    assert not current.is_contiguous()
    current[5, 0, :4] = 2 * threshold  # lands exactly on the threshold from rest: the >= / > case
    current[9, 1, 0] = float("inf")
    current[11, 2, 1] = float("nan")
    membrane = (torch.rand(3, 17) * threshold).to(dtype)
    with torch.no_grad():
        spikes, v = _lif_sequence_inference(current, membrane, cfg, scripted=scripted)
        ref_spikes, ref_v = _reference(cfg, current, membrane)
    assert torch.equal(_bits(spikes), _bits(ref_spikes))
    assert torch.equal(_bits(v), _bits(ref_v))
    assert 0 < spikes.mean() < 1


def test_dispatch_keeps_the_autograd_path_for_training():
    cfg = LIFConfig()
    current = torch.randn(8, 2, 5, requires_grad=True)
    spikes, _ = lif_sequence(current, torch.zeros(2, 5), cfg)
    assert spikes.grad_fn is not None  # surrogate gradients still flow
    with torch.no_grad():
        fast, _ = lif_sequence(current, torch.zeros(2, 5), cfg)
    assert fast.grad_fn is None and torch.equal(fast, spikes.detach())


def test_soft_reset_uses_the_general_loop():
    cfg = LIFConfig(reset="soft")
    current = torch.randn(16, 4)
    with torch.no_grad():
        spikes, v = lif_sequence(current, torch.zeros(4), cfg)
        ref_spikes, ref_v = _reference(cfg, current, torch.zeros(4))
    assert torch.equal(spikes, ref_spikes) and torch.equal(v, ref_v)
