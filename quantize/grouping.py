"""Per-group and clustered static activation scales (Quamba2's pieces for Mamba-2's SSM inputs).

Quamba2 (Chiang et al., 2025, "Quamba2: A Robust and Scalable Post-training Quantization Framework
for Selective State Space Models") quantizes B and C with one static scale per SSD group
("per-state-group") and x by "sort-and-cluster": heads with similar calibrated ranges are
clustered, and inside each head cluster the channels are clustered again, each cluster getting one
scale. Here a point's scale is a per-channel vector (one value per index of its last dimension)
that holds its cluster's scale: the clustering needs no reordering of channels at run time (an
exported graph quantizes with a per-axis ``QuantizeLinear``), and kernels that want contiguous
clusters can permute the projections offline.

The clusters of sorted values are chosen optimally (dynamic programming over the sorted clips):
every channel takes its cluster's largest clip, which costs it ``log2(cluster clip / own clip)``
bits of resolution; the partition minimises that sum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cluster_sorted(values: Tensor, clusters: int) -> list[list[int]]:
    """Indices of ``values`` partitioned into at most ``clusters`` clusters of consecutive sorted
    values, minimising the total bits lost ``Σ log2(max of cluster / value)``."""
    n = values.numel()
    if n == 0:
        return []
    order = torch.argsort(values).tolist()
    logs = [math.log2(max(float(values[i]), 1e-30)) for i in order]
    k = max(1, min(clusters, n))
    prefix = [0.0]
    for v in logs:
        prefix.append(prefix[-1] + v)

    def cost(i: int, j: int) -> float:  # cluster of sorted positions i..j (inclusive): max is logs[j]
        return (j - i + 1) * logs[j] - (prefix[j + 1] - prefix[i])

    inf = float("inf")
    best = [[inf] * n for _ in range(k)]
    cut = [[0] * n for _ in range(k)]
    for j in range(n):
        best[0][j] = cost(0, j)
    for c in range(1, k):
        for j in range(c, n):
            for i in range(c, j + 1):  # the last cluster is i..j
                value = best[c - 1][i - 1] + cost(i, j)
                if value < best[c][j]:
                    best[c][j], cut[c][j] = value, i
    c = min(range(k), key=lambda c: best[c][n - 1])
    bounds, j = [], n - 1
    while c > 0:
        i = cut[c][j]
        bounds.append((i, j))
        j, c = i - 1, c - 1
    bounds.append((0, j))
    return [[order[t] for t in range(i, j + 1)] for i, j in reversed(bounds)]


def grouped_clips(clips: Tensor, groups: int = 1, heads: int = 0, group_scales: bool = False,
                  head_clusters: int = 0, channel_clusters: int = 0, pooled=None) -> Tensor:
    """Per-channel clips [C] -> per-channel clips [C] holding each channel's group/cluster clip.

    Channels are sorted and clustered by their own clips; a cluster's clip is ``pooled(channels)``
    (e.g. the percentile of all the cluster's values, :meth:`ChannelObserver.pooled_clip`), or the
    maximum of its channels' clips when ``pooled`` is None.

    * no grouping asked: every channel gets the overall maximum (one scale per tensor);
    * ``group_scales``: one value per block of ``C / groups`` channels (the SSD groups);
    * ``head_clusters`` (points with ``heads``): inside each group, the heads (``C / heads``
      channels each) are clustered by their maximum; ``channel_clusters``: inside each head cluster
      the head-channel positions (the maximum over the cluster's heads) are clustered again.
    """
    clips = clips.float()
    size = clips.numel()

    def value(channels: list[int]) -> float:
        return float(pooled(channels)) if pooled is not None else float(clips[channels].max())

    groups = max(1, groups)
    out = torch.empty_like(clips)
    if not group_scales and not (head_clusters and heads):
        return torch.full_like(clips, value(list(range(size))) if size else 0.0)
    if size % groups:
        raise ValueError(f"{groups} groups do not divide {size} channels")
    per_group = size // groups
    for g in range(groups):
        block = clips[g * per_group:(g + 1) * per_group]
        base = g * per_group
        if not (head_clusters and heads):
            out[base:base + per_group] = value(list(range(base, base + per_group)))
            continue
        group_heads = heads // groups
        if heads % groups or per_group % group_heads:
            raise ValueError(f"{heads} heads do not split into {groups} groups of {per_group} channels")
        per_head = per_group // group_heads
        table = block.reshape(group_heads, per_head)  # [heads of the group, head channels]
        result = torch.empty_like(table)
        for head_set in cluster_sorted(table.amax(1), head_clusters):
            rows = table[head_set]  # [k, per_head]
            if channel_clusters:
                positions = rows.amax(0)
                for channel_set in cluster_sorted(positions, channel_clusters):
                    clip = value([base + h * per_head + c for h in head_set for c in channel_set])
                    for h in head_set:
                        result[h, channel_set] = clip
            else:
                result[head_set] = value([base + h * per_head + c for h in head_set for c in range(per_head)])
        out[g * per_group:(g + 1) * per_group] = result.reshape(-1)
    return out


def uses_channel_scales(point, recipe) -> bool:
    """Whether ``recipe`` gives the act point ``point`` per-channel (grouped/clustered) scales."""
    if point.kind != "act" or not recipe.quantizes_activations:
        return False
    grouped = recipe.act_group_scales and getattr(point, "groups", 1) > 1
    clustered = recipe.act_head_clusters > 0 and getattr(point, "heads", 0) > 0
    return grouped or clustered


__all__ = ["cluster_sorted", "grouped_clips", "uses_channel_scales"]
