"""The memory roofline of one decode step.

A recurrent decode step at batch 1 does O(parameters) multiply-adds on O(parameters) bytes: its
arithmetic intensity is ~2 flops/byte (fp32: 0.5), far below any device's ridge point, so its
floor is the time to move the bytes (Williams, Waterman & Patterson, "Roofline: an insightful
visual performance model for multicore architectures", CACM 52(4), 2009):

    bytes_per_token = weight bytes read + state bytes read + state bytes written
    roofline_ms     = bytes_per_token / memory bandwidth
    roofline_ratio  = measured latency / roofline_ms          (1.0 = at the memory roof)

Weights count once per token (every layer's matrices are read); an embedding row lookup is
included in the weight bytes (conservative for untied embeddings, exact for tied heads which read
the whole matrix anyway).
"""

from __future__ import annotations

from typing import Any


def bytes_per_token(model_bytes: int, state_bytes: int, batch: int = 1) -> int:
    """Weights read once, plus the state read and written (per example)."""
    return int(model_bytes + 2 * state_bytes * batch)


def roofline_ms(nbytes: int, bandwidth_gbs: float | None) -> float | None:
    if not bandwidth_gbs:
        return None
    return nbytes / (bandwidth_gbs * 1e9) * 1e3


def roofline_ratio(measured_ms: float | None, floor_ms: float | None) -> float | None:
    if measured_ms is None or not floor_ms:
        return None
    return measured_ms / floor_ms


def roofline(model_bytes: int, state_bytes: int, bandwidth_gbs: float | None, measured_ms: float | None) -> dict[str, Any]:
    nbytes = bytes_per_token(model_bytes, state_bytes)
    floor = roofline_ms(nbytes, bandwidth_gbs)
    return {"bytes_per_token": nbytes, "roofline_ms": floor, "roofline_ratio": roofline_ratio(measured_ms, floor)}


__all__ = ["bytes_per_token", "roofline", "roofline_ms", "roofline_ratio"]
