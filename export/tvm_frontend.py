"""Corrections to TVM 0.27's ``torch.export`` importer, passed as its ``custom_convert_map``.

``tvm.relax.frontend.torch.from_exported_program`` mistranslates three core ATen ops that the
LMUFormer graphs use, and lacks one SpikeGPT uses (found by verification, reduced to one op each):

* ``aten.select.int`` with a **negative index** (``x[:, -1]``) becomes
  ``R.take(x, R.const(-1), axis, mode="fast")``: "fast" mode does no bounds handling, so the
  index is not wrapped and the kernel reads memory before the tensor — garbage values (LMUFormer:
  its LMU memory state, errors ~1e18..1e28) or a segmentation fault (Spiking LMUFormer, whose
  memory is twice as wide). Minimal repro: ``torch.export`` of ``lambda x: x[:, -1]`` on a
  ``[2, 3, 4]`` float32 input, imported and compiled for ``llvm``, returns wrong values.
  Fixed here by wrapping the index with the (static) size of that dimension, or by a
  ``strided_slice`` + ``squeeze`` when the size is symbolic.
* ``aten.mm``/``aten.bmm``/``aten.matmul`` are emitted with ``out_dtype="float32"`` whatever the
  inputs: a float64 product (the LMU impulse response ``Ā^k B̄`` of the prefill graph is computed
  in float64) comes out float32 and the import stops at the next op that mixes them
  ("Concat expects all input tensors to have the same dtype"). Fixed here by taking the output
  dtype PyTorch recorded for the node (float32 graphs are unchanged).
* ``aten.clamp``/``clamp_min``/``clamp_max`` with one bound missing become ``R.clip`` with an
  infinite other bound, which cannot be legalized for an **integer** tensor ("Cannot convert
  infinity to BigInt"; the LMUFormer prefill clamps its int64 Toeplitz lags with ``min=0``).
  Fixed here by ``maximum``/``minimum`` with the given bounds for integer tensors.

* ``aten.amax`` has **no converter** ("Unsupported function types ['amax.default']"); SpikeGPT's
  prefill graph uses it for the numerically stable WKV scan. Converted here to ``R.max``.

These are TVM frontend gaps; the model code and the ONNX path are untouched.
"""

from __future__ import annotations

from typing import Any, Callable


def _torch_value(node: Any) -> Any:
    return node.meta.get("val") if hasattr(node, "meta") else None


def _select(node: Any, importer: Any) -> Any:
    from tvm import relax

    x = importer.env[node.args[0]]
    dim, index = int(node.args[1]), node.args[2]
    if isinstance(index, int) and index < 0:
        value = _torch_value(node.args[0])
        size = value.shape[dim] if value is not None else None
        if isinstance(size, int):
            index += size
        else:  # symbolic size: a slice handles the negative start itself
            end = index + 1 if index < -1 else (1 << 63) - 1
            part = importer.block_builder.emit(relax.op.strided_slice(x, [dim], [index], [end]))
            return importer.block_builder.emit(relax.op.squeeze(part, [dim]))
    # mode "clip": the index is in bounds here; "fast" would print a warning for every select
    return importer.block_builder.emit(relax.op.take(x, relax.const(index, "int64"), dim, mode="clip"))


def _matmul(node: Any, importer: Any) -> Any:
    from tvm import relax

    lhs, rhs = importer.env[node.args[0]], importer.env[node.args[1]]
    value = _torch_value(node)
    out_dtype = str(value.dtype).replace("torch.", "") if value is not None else "float32"
    return importer.block_builder.emit(relax.op.linear_algebra.matmul(lhs, rhs, out_dtype=out_dtype))


def _int_clamp(kind: str) -> Callable[[Any, Any], Any]:
    def convert(node: Any, importer: Any) -> Any:
        from tvm import relax

        value = _torch_value(node)
        args = list(node.args[1:]) + [None] * 2
        if kind == "clamp":
            low, high = node.kwargs.get("min", args[0]), node.kwargs.get("max", args[1])
        else:
            low, high = (args[0], None) if kind == "clamp_min" else (None, args[0])
        if value is None or value.dtype.is_floating_point or not all(b is None or isinstance(b, int) for b in (low, high)):
            return getattr(importer, f"_{kind}")(node)  # the importer's own conversion
        dtype = str(value.dtype).replace("torch.", "")
        x = importer.env[node.args[0]]
        if low is not None:
            x = importer.block_builder.emit(relax.op.maximum(x, relax.const(low, dtype)))
        if high is not None:
            x = importer.block_builder.emit(relax.op.minimum(x, relax.const(high, dtype)))
        return x

    return convert


def _amax(node: Any, importer: Any) -> Any:
    """``aten.amax(x, dim=(), keepdim=False)`` (no converter in TVM 0.27's importer) as ``R.max``."""
    from tvm import relax

    args = list(node.args) + [None] * 3
    dims = node.kwargs.get("dim", args[1])
    keepdim = bool(node.kwargs.get("keepdim", args[2] or False))
    axis = None if dims in (None, [], ()) else ([int(dims)] if isinstance(dims, int) else [int(d) for d in dims])
    return importer.block_builder.emit(relax.op.max(importer.env[node.args[0]], axis=axis, keepdims=keepdim))


def convert_map() -> dict[str, Callable[[Any, Any], Any]]:
    """The corrected converters, keyed as the importer's own ``convert_map``."""
    return {
        "select.int": _select,
        "mm.default": _matmul,
        "bmm.default": _matmul,
        "matmul.default": _matmul,
        "clamp.default": _int_clamp("clamp"),
        "clamp_min.default": _int_clamp("clamp_min"),
        "clamp_max.default": _int_clamp("clamp_max"),
        "amax.default": _amax,
    }


__all__ = ["convert_map"]
