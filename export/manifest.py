"""``manifest.json``: what an artifact holds, how it was built and how well it matched PyTorch.

Keys (format version 1; other tools such as ``targets/`` read them):

* ``edgeseq_artifact`` — manifest format version (1);
* ``model`` — ``family``, ``task``, ``config`` (the model config, JSON), ``io`` (its ``io_spec()``), ``source``, ``parameters``;
* ``recipe`` — quantization recipe name (``fp32``/``fp16`` for float exports), ``quantization`` —
  per-layer weight/activation bits summary or null;
* ``format`` — ``onnx`` or ``tvm``; ``dtype`` — float dtype of inputs/outputs/state;
* ``target`` — ``name``, ``arch`` (ELF machine of host code), ``cuda_arch``, ``tvm_target``;
* ``opset`` — ONNX opset (ONNX artifacts);
* ``graphs`` — ``step`` (and ``prefill`` when exported): ``file``, ``inputs``/``outputs`` as
  lists of ``{name, shape, dtype}`` (``"batch"`` is symbolic), prefill ``length``;
* ``files`` — every file with ``path``, ``bytes``, ``sha256``;
* ``tokenizer`` — ``{"kind": "bytes"}`` or ``{"kind": "hf", "file": "tokenizer.json"}``;
* ``versions`` — edgeseq, python, torch, onnx, onnxruntime, tvm;
* ``export_host`` — the CPU that built and verified the artifact: model, machine, the ISA features
  that select integer kernels, and (ONNX) the session options and the kernels ONNX Runtime chose;
* ``arithmetic`` — what the artifact computes: integer kernels or float, and the int8 overflow
  rule it was checked against (:mod:`export.int8_safety`);
* ``reference`` — the reference stream the device checks on first load (:mod:`targets.selfcheck`);
* ``verification`` — see :class:`export.verify.Verification` (plus ``checks`` for cross builds);
* ``created`` — UTC time.
"""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

from targets.manifest import sha256_file

FORMAT_VERSION = 1


def tool_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("edgeseq", "torch", "onnx", "onnxruntime", "apache-tvm"):
        try:
            versions[dist.replace("apache-", "")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist.replace("apache-", "")] = None
    return versions


def host_record() -> dict[str, Any]:
    import os

    from targets.selfcheck import cpu_features

    return {**cpu_features(), "cores": os.cpu_count(), "system": platform.system()}


def file_entries(folder: Path) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            entries.append({"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def model_entry(model, source: str) -> dict[str, Any]:
    return {
        "family": model.config.family,
        "task": model.task,
        "config": model.config.to_dict(),
        "io": model.io_spec().to_dict(),
        "source": source,
        "parameters": int(sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for n, b in model.named_buffers() if n.endswith("weight_int"))),
    }


def quantization_summary(model) -> dict[str, Any] | None:
    """Bits per quantized layer (``w8a8``-style tags) or None for float models."""
    try:
        from quantize.modules import QuantAct, is_quantized_module
    except ImportError:
        return None
    layers = {}
    for name, module in model.named_modules():
        if not is_quantized_module(module):
            continue
        if isinstance(module, QuantAct):
            layers[name] = {"act_bits": module.bits}
        else:
            layers[name] = {
                "weight_bits": module.weight_bits,
                "granularity": module.granularity,
                "group_size": module.group_size,
                "act_bits": module.act_bits if module.input_scale is not None else None,
                "rotate": module.rotate,
            }
    return {"layers": layers} if layers else None


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


__all__ = ["FORMAT_VERSION", "host_record", "file_entries", "model_entry", "now_utc", "quantization_summary", "tool_versions"]
