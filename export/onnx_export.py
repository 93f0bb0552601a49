"""ONNX export of the step and prefill graphs (float32/float16, and quantized models as QDQ).

edgeseq traces with ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter, still in
torch 2.13): it keeps parameter names as initializer names (which the QDQ rewrite relies on), maps
``torch.fake_quantize_per_tensor_affine`` to QuantizeLinear/DequantizeLinear, takes a symbolic
batch through ``dynamic_axes`` and exports a small model in about a second. The dynamo exporter
also works on the float step graph but is several times slower and cannot take the flat
``*state`` signature with dynamic shapes without a wrapper per model.

Quantized models (``quantize.modules``) are swapped for export twins during tracing (see
:mod:`export.qdq`), then the graph is rewritten so weights are stored as integers.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from edgeseq.errors import EdgeseqError, InputError, require
from edgeseq.streaming import StreamingModel
from export.graphs import OUTPUTS_FROM, GraphIO, PrefillGraph, StepGraph, example_args, prefill_io, step_io, takes_outputs_from

MIN_OPSET = 17
INT4_MIN_OPSET = 21  # int4 DequantizeLinear with blocked (per-group) scales
TORCHSCRIPT_MAX_OPSET = 20  # the exporter's limit; 21 is reached by a version conversion afterwards
DEFAULT_OPSET = 18
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def check_opset(opset: int, needs_int4: bool) -> None:
    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old: edgeseq exports opset {MIN_OPSET} or newer (--opset {DEFAULT_OPSET})")
    if needs_int4 and opset < INT4_MIN_OPSET:
        raise InputError(
            f"opset {opset} cannot hold 4-bit weights: int4 DequantizeLinear needs opset {INT4_MIN_OPSET} "
            f"(pass --opset {INT4_MIN_OPSET}, or leave --opset out to get it automatically)"
        )
    if opset > INT4_MIN_OPSET:
        raise InputError(f"opset {opset} is newer than edgeseq exports (17..{INT4_MIN_OPSET})")


def export_graph(
    model: StreamingModel,
    path: str | Path,
    kind: str = "step",
    opset: int = DEFAULT_OPSET,
    prefill_length: int = 64,
    dtype: torch.dtype = torch.float32,
    int_embeddings: dict[str, Any] | None = None,
    fused: bool = False,
) -> GraphIO:
    """Trace ``model``'s step (``kind="step"``) or prefill graph to an ONNX file at ``path``.

    Quantized models are traced through their export twins and rewritten to integer weights
    (:func:`export.qdq.quantized_for_export`, :func:`export.qdq.rewrite_integer_weights`).
    ``int_embeddings`` (table path → integer values and row scales, :func:`quantize.qdq.quantize_embeddings`)
    stores those embedding tables as integers too. ``fused``: Mamba's updates as ``edgeseq.ops`` nodes
    (:mod:`export.fused_ops`). Returns the graph's I/O description. The file is checked with ``onnx.checker`` and strict
    shape inference.
    """
    onnx = require("onnx", "pip install 'edgeseq[onnx]'")
    from export.qdq import dedupe_transposed, quantized_for_export, rewrite_integer_weights

    path = Path(path)
    length = None if kind == "step" else prefill_length
    graph_io = step_io(model, dtype) if kind == "step" else prefill_io(model, prefill_length, dtype)
    trace_opset = min(opset, TORCHSCRIPT_MAX_OPSET)
    dynamic_axes = {name: {0: "batch"} for name in graph_io.input_names + graph_io.output_names}
    outputs_from = kind == "prefill" and takes_outputs_from(model)
    input_names = graph_io.input_names + ([OUTPUTS_FROM] if outputs_from else [])
    if outputs_from:  # logits_from < L selects fewer positions
        dynamic_axes[graph_io.output_names[0]] = {0: "batch", 1: "positions"}
    from edgeseq.models import fused_ops

    emitting = fused_ops.emitting() if fused else contextlib.nullcontext()
    with quantized_for_export(model, int_embeddings=int_embeddings) as (traced_model, weights), emitting:
        wrapper = (StepGraph(traced_model) if kind == "step" else PrefillGraph(traced_model, outputs_from)).eval()
        wrapper = wrapper.to(dtype) if dtype != torch.float32 else wrapper
        args = example_args(traced_model, 2, length, dtype)
        if outputs_from:
            args = (*args, torch.tensor(0, dtype=torch.int64))
        buffer = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper,
                    args,
                    str(path),
                    input_names=input_names,
                    output_names=graph_io.output_names,
                    opset_version=trace_opset,
                    dynamic_axes=dynamic_axes,
                    dynamo=False,
                    do_constant_folding=True,
                )
        except Exception as exc:
            raise EdgeseqError(f"ONNX export of the {kind} graph failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    proto = onnx.load(str(path))
    if opset > trace_opset:
        proto = upgrade_opset(proto, opset)
    if weights:
        proto = rewrite_integer_weights(proto, weights, opset)
    else:
        proto = dedupe_transposed(proto)
    if outputs_from:
        _default_outputs_from(proto)
        graph_io.optional_inputs.append({"name": OUTPUTS_FROM, "shape": [], "dtype": "int64", "default": 0})
    _check_and_save(proto, path)
    return graph_io


def _default_outputs_from(proto) -> None:
    """Give the prefill graph's ``logits_from`` input the default 0 (every position): an
    initializer of the input's name, which ONNX Runtime lets a caller override."""
    import numpy as np
    from onnx import numpy_helper

    names = [i.name for i in proto.graph.input]
    if OUTPUTS_FROM not in names:
        raise EdgeseqError(f"the traced prefill graph lost its {OUTPUTS_FROM!r} input (inputs: {names})")
    proto.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), OUTPUTS_FROM))


def upgrade_opset(proto, opset: int):
    """Declare opset 21 on a graph traced at 20.

    Between opsets 20 and 21 the ops edgeseq graphs use only admit new types (int4, float8) or
    gain optional attributes (``block_size``); their semantics are unchanged, so the graph is
    re-declared rather than converted (``onnx.version_converter`` rewrites QuantizeLinear with an
    ``output_dtype`` that contradicts its zero point). GroupNormalization, whose semantics did
    change, is refused.
    """
    from edgeseq.errors import EdgeseqError

    if opset != 21:
        raise InputError(f"opset {opset}: edgeseq reaches opsets above {TORCHSCRIPT_MAX_OPSET} only for 21")
    changed = {"GroupNormalization"} & {node.op_type for node in proto.graph.node}
    if changed:
        raise EdgeseqError(f"cannot declare opset 21 on a graph with {sorted(changed)}; export with --opset 20")
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    return proto


def _check_and_save(proto, path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise EdgeseqError(f"the exported ONNX graph {path.name} does not pass onnx.checker: {_first_line(exc)}") from exc
    onnx.save(proto, str(path))


WEIGHTS_FILE = "weights.bin"
_ALIGN = 4096  # page-aligned tensors: ONNX Runtime can map them instead of copying
_INLINE_BYTES = 1024  # smaller tensors (shapes, axes, norms of tiny models) stay inside the graph


def share_weights(folder: Path, files: list[str], name: str = WEIGHTS_FILE) -> dict[str, Any]:
    """Move the initializers of the graphs in ``folder`` into one external-data file, each distinct
    tensor once.

    The step and prefill graphs read the same weights; saved inline, every artifact held them
    twice on disk and each session parsed its own protobuf copy before building its tensors. Here
    tensors with identical bytes (found by sha256, whatever their names) share one page-aligned
    region of ``name``, and each graph keeps only ONNX external-data references (location, offset,
    length) — the standard form ONNX Runtime, ``onnx.load`` and TVM's frontend read. Returns
    ``{"file", "bytes", "tensors", "shared"}`` for the manifest.
    """
    import hashlib

    import onnx
    from onnx.external_data_helper import set_external_data

    protos = [onnx.load(str(folder / file)) for file in files]
    regions: dict[str, tuple[int, int]] = {}
    shared = 0
    with open(folder / name, "wb") as out:
        for proto in protos:
            for tensor in _initializers(proto.graph):
                if not tensor.HasField("raw_data") or len(tensor.raw_data) < _INLINE_BYTES:
                    continue
                data = tensor.raw_data
                key = hashlib.sha256(data).hexdigest()
                if key in regions:
                    shared += 1
                else:
                    offset = -(-out.tell() // _ALIGN) * _ALIGN
                    out.seek(offset)
                    out.write(data)
                    regions[key] = (offset, len(data))
                offset, length = regions[key]
                set_external_data(tensor, location=name, offset=offset, length=length)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
        size = out.tell()
    for proto, file in zip(protos, files):
        onnx.save(proto, str(folder / file))
    return {"file": name, "bytes": size, "tensors": len(regions), "shared": shared}


def _initializers(graph):
    """Initializers of a graph and of its subgraphs (If/Loop/Scan bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.ByteSize():
                yield from _initializers(attr.g)
            for sub in attr.graphs:
                yield from _initializers(sub)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


__all__ = ["DEFAULT_OPSET", "DTYPES", "INT4_MIN_OPSET", "MIN_OPSET", "WEIGHTS_FILE", "check_opset", "export_graph", "share_weights",
           "upgrade_opset"]
