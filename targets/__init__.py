"""Target devices (one registry of specs as data), the runtime layer, and latency profiling.

Main entry points (imported lazily, so ``import targets`` stays light)::

    from targets import get_target, open_runtime, open_artifact, profile

* :func:`targets.registry.get_target` / :func:`targets.registry.targets` — the one registry that
  ``export --target`` and ``profile --target`` share;
* :func:`targets.runtimes.open_runtime` — a :class:`targets.runtime_base.Runtime` for a model or an
  artifact folder (torch, ONNX Runtime, TVM); :func:`targets.runtimes.open_artifact` — an artifact
  as a streaming model on torch tensors; :func:`targets.manifest.read_artifact` — the one reader;
* :func:`targets.profile.profile` — p50/p99, time to first token, memory, roofline fraction;
  :mod:`targets.rpc` — the same on a remote device through TVM RPC.

See ``docs/targets.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "get_target": "targets.registry",
    "targets": "targets.registry",
    "TargetSpec": "targets.registry",
    "Runtime": "targets.runtime_base",
    "open_runtime": "targets.runtimes",
    "open_artifact": "targets.runtimes",
    "read_artifact": "targets.manifest",
    "profile": "targets.profile",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'targets' has no attribute {name!r}")


__all__ = sorted(_LAZY)
