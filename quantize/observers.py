"""Observers: statistics of an activation over calibration batches, turned into a clipping value.

Every observer sees tensors through :meth:`Observer.update` and returns a symmetric clipping
value ``c`` (the scale is ``c / 127`` for int8) from :meth:`Observer.clip`:

* ``minmax`` — ``max |x|`` over everything seen;
* ``percentile`` — the exact ``p``-th percentile of ``|x|`` over everything seen (kept as a running
  top-k of the largest values, so memory is ``(1 - p/100) · count`` values, not the whole data);
* ``mse`` — the clip in ``[0.3, 1] · max|x|`` that minimises the quantization MSE on a uniform
  random sample (reservoir) of the values seen.

Every observer also keeps that reservoir sample, to report the calibration error (relative error
of quantizing the sample with the chosen scale).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from edgeseq.errors import EdgeseqError
from quantize.qdq import fake_quant, relative_error, scale_from_clip

SAMPLE_SIZE = 1 << 16  # values kept per observer for the MSE search and the error report


class Observer:
    """Base: tracks max|x|, the count, and a reservoir sample of values."""

    kind = "base"

    def __init__(self, name: str = "", bits: int = 8, sample_size: int = SAMPLE_SIZE, seed: int = 0):
        self.name = name
        self.bits = bits
        self.count = 0
        self.amax = 0.0
        self.sample_size = sample_size
        self._sample = torch.empty(0)
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, x: Tensor) -> None:
        values = x.detach().reshape(-1).float().cpu()
        if values.numel() == 0:
            return
        if not torch.isfinite(values).all():
            raise EdgeseqError(
                f"non-finite activation (NaN/Inf) at {self.name or 'a quantization point'} during calibration; "
                f"the model overflows on this data: check the checkpoint and the calibration data"
            )
        self.amax = max(self.amax, float(values.abs().max()))
        self._update_sample(values)
        self.count += values.numel()
        self._update_stats(values)

    def _update_sample(self, values: Tensor) -> None:
        # reservoir-style: keep each value with probability sample_size / (count so far)
        total = self.count + values.numel()
        keep = min(values.numel(), max(1, math.ceil(self.sample_size * values.numel() / total)))
        idx = torch.randint(values.numel(), (keep,), generator=self._generator)
        merged = torch.cat([self._sample, values[idx]])
        if merged.numel() > self.sample_size:
            drop = torch.randperm(merged.numel(), generator=self._generator)[: self.sample_size]
            merged = merged[drop]
        self._sample = merged

    def _update_stats(self, values: Tensor) -> None:
        pass

    @property
    def sample(self) -> Tensor:
        return self._sample

    def clip(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able summary: observer kind, max|x|, chosen clip, and the calibration error."""
        clip = self.clip()
        scale = scale_from_clip(clip, self.bits)
        return {
            "observer": self.kind,
            "amax": self.amax,
            "clip": clip,
            "clip_ratio": clip / self.amax if self.amax > 0 else 1.0,
            "scale": float(scale),
            "calib_error": relative_error(self._sample, fake_quant(self._sample, scale, self.bits)) if self._sample.numel() else 0.0,
            "values_seen": self.count,
        }


class MinMaxObserver(Observer):
    kind = "minmax"

    def clip(self) -> float:
        return self.amax


class PercentileObserver(Observer):
    """Exact ``p``-th percentile of |x| via a running top-k of the largest values."""

    kind = "percentile"

    def __init__(self, name: str = "", bits: int = 8, percentile: float = 99.999, **kwargs):
        super().__init__(name, bits, **kwargs)
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = percentile
        self._top = torch.empty(0)

    def _needed(self, count: int) -> int:
        return max(1, math.ceil((1.0 - self.percentile / 100.0) * count) + 1)

    def _update_stats(self, values: Tensor) -> None:
        k = self._needed(self.count)
        merged = torch.cat([self._top, values.abs()])
        self._top = torch.topk(merged, min(k, merged.numel())).values if merged.numel() > k else merged

    def clip(self) -> float:
        if self.count == 0:
            return 0.0
        # rank (from the top, 0-based) of the p-th percentile: linear interpolation as torch.quantile
        top = torch.sort(self._top, descending=True).values
        position = (1.0 - self.percentile / 100.0) * (self.count - 1)
        lo = int(math.floor(position))
        hi = min(lo + 1, top.numel() - 1)
        frac = position - lo
        return float(top[lo] * (1 - frac) + top[hi] * frac)

    def describe(self) -> dict:
        return {**super().describe(), "percentile": self.percentile}


class MSEObserver(Observer):
    """Clip minimising the MSE of fake quantization on the sample (grid over ``[0.3, 1]·max``)."""

    kind = "mse"

    def __init__(self, name: str = "", bits: int = 8, grid: int = 50, **kwargs):
        super().__init__(name, bits, **kwargs)
        self.grid = grid

    def clip(self) -> float:
        if self.count == 0 or self.amax == 0.0:
            return self.amax
        sample = self._sample.double()
        sample = torch.cat([sample, torch.tensor([self.amax], dtype=torch.float64)])  # keep the max honest
        best, best_err = self.amax, float("inf")
        for ratio in torch.linspace(0.3, 1.0, self.grid).tolist():
            clip = self.amax * ratio
            err = float((fake_quant(sample, scale_from_clip(clip, self.bits).double(), self.bits) - sample).pow(2).mean())
            if err < best_err:
                best, best_err = clip, err
        return best


class ChannelObserver(Observer):
    """Per-channel (last dimension) statistics, for points whose scales follow a channel grouping.

    Keeps each channel's max|x| and, for ``percentile`` < 100, each channel's largest |x| values (a
    running top-k per channel, sized so that the percentile of any set of channels pooled together
    is exact: k = ``(1 - p/100) · values per channel · channels`` + 2, with the values per channel
    over the whole calibration, ``expected_rows``, known up front as in calibration).
    :meth:`channel_clips` gives each channel's own clip (used to sort and cluster);
    :meth:`pooled_clip` the clip of a set of channels pooled (the percentile of all their values,
    as the per-tensor :class:`PercentileObserver` computes it for the whole tensor, or their max).
    :meth:`clip` is the pooled clip of all channels (the per-tensor value, for the report)."""

    kind = "channel"

    def __init__(self, name: str = "", bits: int = 8, percentile: float = 100.0, expected_rows: int = 0, **kwargs):
        super().__init__(name, bits, **kwargs)
        self.percentile = percentile
        self.expected_rows = expected_rows
        self.kind = "channel-max" if percentile >= 100.0 else "channel-percentile"
        self._channel_amax: Tensor | None = None
        self._channel_top: Tensor | None = None
        self._channel_count = 0

    def update(self, x: Tensor) -> None:
        super().update(x)
        rows = x.detach().float().cpu().reshape(-1, x.shape[-1]).abs()  # [n, C]
        if rows.numel() == 0:
            return
        peak = rows.amax(0)
        self._channel_amax = peak if self._channel_amax is None else torch.maximum(self._channel_amax, peak)
        self._channel_count += rows.shape[0]
        if self.percentile < 100.0:
            count = max(self._channel_count, self.expected_rows) * rows.shape[1]
            k = max(1, math.ceil((1.0 - self.percentile / 100.0) * count) + 2)
            merged = rows.T if self._channel_top is None else torch.cat([self._channel_top, rows.T], 1)
            self._channel_top = torch.topk(merged, min(k, merged.shape[1]), dim=1).values if merged.shape[1] > k else merged

    def _percentile_of(self, top: Tensor, count: int) -> Tensor:
        """The percentile of ``count`` values whose largest ones are ``top`` ([..., k], any order)."""
        top = torch.sort(top, dim=-1, descending=True).values
        position = (1.0 - self.percentile / 100.0) * (count - 1)
        lo = min(int(math.floor(position)), top.shape[-1] - 1)
        hi = min(lo + 1, top.shape[-1] - 1)
        frac = position - math.floor(position)
        return top[..., lo] * (1 - frac) + top[..., hi] * frac

    def channel_clips(self) -> Tensor:
        if self._channel_amax is None:
            return torch.zeros(0)
        if self.percentile >= 100.0 or self._channel_top is None:
            return self._channel_amax.clone()
        return self._percentile_of(self._channel_top, self._channel_count)

    def pooled_clip(self, channels: list[int]) -> float:
        if self._channel_amax is None or not channels:
            return 0.0
        if self.percentile >= 100.0 or self._channel_top is None:
            return float(self._channel_amax[channels].max())
        pooled = self._channel_top[channels].reshape(-1)
        return float(self._percentile_of(pooled, self._channel_count * len(channels)))

    def clip(self) -> float:
        return self.pooled_clip(list(range(self._channel_amax.numel()))) if self._channel_amax is not None else 0.0


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(kind: str, name: str = "", bits: int = 8, percentile: float = 99.999) -> Observer:
    if kind not in OBSERVERS:
        from edgeseq.errors import InputError

        raise InputError(f"unknown observer {kind!r}; known: {', '.join(OBSERVERS)}")
    if kind == "percentile":
        return PercentileObserver(name, bits, percentile=percentile)
    return OBSERVERS[kind](name, bits)


def mse_weight_clip(weight: Tensor, clip: Tensor, bits: int, group_size: int = 0, grid: int = 20, levels: int = 0) -> Tensor:
    """Per-row (channel or group) MSE-optimal clip for a weight, searched over ``[0.5, 1] · clip``."""
    from quantize.qdq import dequantize_weight, quantize_weight

    w = weight.detach().float()
    best_clip = clip.clone()
    best_err = torch.full_like(clip, float("inf"))
    for ratio in torch.linspace(0.5, 1.0, grid).tolist():
        trial = clip * ratio
        scale = scale_from_clip(trial, bits, levels=levels)
        deq = dequantize_weight(quantize_weight(w, scale, bits, group_size, levels), scale, group_size)
        err = (deq - w).pow(2)
        if clip.dim() == 0:
            err = err.sum()
        elif group_size:
            err = err.reshape(w.shape[0], -1, group_size).sum(-1)
        else:
            err = err.reshape(w.shape[0], -1).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_clip = torch.where(better, trial, best_clip)
    return best_clip


__all__ = ["ChannelObserver", "MSEObserver", "MinMaxObserver", "OBSERVERS", "Observer", "PercentileObserver", "make_observer", "mse_weight_clip"]
