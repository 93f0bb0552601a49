"""Observers: the percentile observer is exact (oracle: torch.quantile over all values seen)."""

import pytest
import torch

from edgeseq.errors import EdgeseqError
from quantize.observers import MinMaxObserver, MSEObserver, PercentileObserver, mse_weight_clip
from quantize.qdq import fake_quant, scale_from_clip, weight_clip


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
def test_percentile_matches_torch_quantile_over_batches(percentile):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(7, 300, generator=gen) * (1 + i) for i in range(4)]
    observer = PercentileObserver(percentile=percentile)
    for batch in batches:
        observer.update(batch)
    everything = torch.cat([b.reshape(-1) for b in batches]).abs().double()
    expected = torch.quantile(everything, percentile / 100.0).item()
    assert observer.clip() == pytest.approx(expected, rel=1e-6)
    assert observer.clip() <= observer.amax


def test_minmax_and_mse():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(1))
    x[0] = 40.0  # one outlier
    minmax, mse = MinMaxObserver(), MSEObserver()
    minmax.update(x)
    mse.update(x)
    assert minmax.clip() == pytest.approx(40.0)
    assert mse.clip() < minmax.clip()

    def err(clip):
        return float((fake_quant(x, scale_from_clip(clip, 8)) - x).pow(2).mean())

    assert err(mse.clip()) <= err(minmax.clip())


def test_observer_rejects_non_finite_activations():
    with pytest.raises(EdgeseqError, match="non-finite activation"):
        MinMaxObserver("layer").update(torch.tensor([1.0, float("inf")]))


def test_mse_weight_clip_never_worse_than_max():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    clip = weight_clip(w, "channel")
    better = mse_weight_clip(w, clip, 4)
    assert (better <= clip).all() and (better >= 0.5 * clip - 1e-6).all()
