"""Measured memory bandwidth of the host (what the CPU roofline divides by).

A short STREAM-style benchmark (McCalpin, "Memory Bandwidth and Machine Balance in Current High
Performance Computers", IEEE TCCA Newsletter 1995): a reduction over a buffer much larger than the
last-level cache gives the *read* bandwidth (what a decode step mostly does: read every weight
once), and a copy gives read+write bandwidth. Best of a few repeats; the result is cached per CPU
model, core count and thread count in ``$EDGESEQ_CACHE_DIR`` (default ``~/.cache/edgeseq``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

DEFAULT_BYTES = 256 * 2**20
CACHE_FILE = "host_bandwidth.json"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGESEQ_CACHE_DIR", Path.home() / ".cache" / "edgeseq")).expanduser()


def measure_bandwidth(nbytes: int = DEFAULT_BYTES, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """Read (reduction) and copy bandwidth in GB/s (1e9 B/s), best of ``repeats``."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        n = max(1, nbytes // 4)
        src = torch.ones(n, dtype=torch.float32)
        dst = torch.empty_like(src)
        best_read, best_copy = float("inf"), float("inf")
        src.sum()  # fault the pages in
        dst.copy_(src)
        for _ in range(repeats):
            start = time.perf_counter()
            src.sum()
            best_read = min(best_read, time.perf_counter() - start)
            start = time.perf_counter()
            dst.copy_(src)
            best_copy = min(best_copy, time.perf_counter() - start)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    size = n * 4
    return {
        "read_gbs": size / best_read / 1e9,
        "copy_gbs": 2 * size / best_copy / 1e9,  # bytes read + bytes written
        "bytes": size,
        "repeats": repeats,
        "threads": used_threads,
    }


def _cache_key(threads: int) -> str:
    from targets.hostinfo import read_cpuinfo

    info = read_cpuinfo()
    return f"{info['model']}|{info['cores']}|{threads}"


def host_bandwidth(threads: int | None = None, refresh: bool = False, nbytes: int = DEFAULT_BYTES) -> dict[str, Any]:
    """The host's measured bandwidth, from the cache when present (``refresh`` re-measures)."""
    import torch

    threads = threads or torch.get_num_threads()
    key = _cache_key(threads)
    path = cache_dir() / CACHE_FILE
    cache: dict[str, Any] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    if not refresh and isinstance(cache.get(key), dict) and "read_gbs" in cache[key]:
        return {**cache[key], "cached": True}
    result = measure_bandwidth(nbytes=nbytes, threads=threads)
    cache[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measure again next time
    return {**result, "cached": False}


__all__ = ["cache_dir", "host_bandwidth", "measure_bandwidth"]
