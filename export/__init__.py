"""Verified export of the streaming step/prefill graphs: ONNX (QDQ) and TVM (CPU, Jetson, GPU).

Main entry points (imported lazily, so ``import export`` stays light)::

    from export import export_artifact, ExportOptions

* :func:`export.artifact.export_artifact` — build, verify on the runtime layer
  (:mod:`targets.runtimes`) and only then write an artifact folder; options as
  :class:`export.artifact.ExportOptions`, origin as :class:`export.artifact.Provenance`;
* :func:`export.artifact.export_loaded` — the same for a loaded checkpoint (keeps its tokenizer);
* :mod:`export.verify` — the exactness rule; :mod:`export.int8_safety` — the int8 overflow check.

Running an artifact is the runtime layer's job: :func:`targets.runtimes.open_artifact`.
See ``docs/export.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_artifact": "export.artifact",
    "export_loaded": "export.artifact",
    "ExportOptions": "export.artifact",
    "Provenance": "export.artifact",
    "FORMATS": "export.artifact",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")


__all__ = sorted(_LAZY)
