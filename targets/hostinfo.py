"""This machine's CPU, read once from ``/proc/cpuinfo``: model, cores, clock, ISA features.

The one parser the registry (the ``host`` target), the bandwidth cache key, export's host record
and the on-device self-check all use.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# ISA features that matter for inference: float throughput and which integer kernels a runtime
# picks (x86 /proc/cpuinfo names, then Arm's)
ISA_FEATURES = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2",
)


def host_arch() -> str:
    """ELF machine name of this host: ``x86_64`` or ``aarch64`` (``amd64``/``arm64`` normalised)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def read_cpuinfo(text: str | None = None) -> dict[str, Any]:
    """Model name, logical cores, clock (MHz) and ISA features of this machine's CPU."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            text = ""
    model, mhz, flags = "", None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key == "cpu mhz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {
        "model": model or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        "mhz": mhz,
        "features": [f for f in ISA_FEATURES if f in flags],
        "machine": platform.machine(),
    }


def int8_accumulation(features: list[str], machine: str | None = None) -> str:
    """How x86 u8×s8 kernels accumulate here: without VNNI, ``VPMADDUBSW`` saturates 16-bit pair sums."""
    x86 = (machine or platform.machine()).lower() in ("x86_64", "amd64")
    pairwise16 = x86 and not ({"avx512_vnni", "avx_vnni"} & set(features))
    return "pairwise 16-bit (u8s8 VPMADDUBSW)" if pairwise16 else "32-bit"


__all__ = ["ISA_FEATURES", "host_arch", "int8_accumulation", "read_cpuinfo"]
