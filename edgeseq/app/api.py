"""The Python front door: load, quantize, export and profile with one ``import edgeseq``.

    import edgeseq

    model = edgeseq.load("mamba-shakespeare").model
    qmodel = edgeseq.quantize(model, "w8a8")            # calibrated on the model's own corpus
    edgeseq.export(qmodel, "out/q8-onnx", target="host")  # verified against PyTorch, then written
    report = edgeseq.profile("out/q8-onnx", target="host")

Each function is the Python face of the CLI subcommand of the same name, with the same defaults;
the packages underneath (``quantize``, ``export``, ``targets``) stay available for finer control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from edgeseq.checkpoints import LoadedModel, load_model
from edgeseq.errors import InputError
from export.artifact import ExportOptions, Provenance, export_artifact, export_options
from quantize.apply import needs_calibration_data, quantize_model
from quantize.calibrate import calibration_batches
from quantize.recipes import QuantRecipe, get_recipe


def _model_of(model: Any) -> tuple[Any, LoadedModel | None]:
    """A model object from a StreamingModel, a LoadedModel, or a source ``load`` accepts."""
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        if model.format in ("quantized", "artifact"):
            raise InputError(f"{model.source} is already a {model.format} model; start from the float checkpoint it came from")
        return model.model, model
    if not hasattr(model, "step") or not hasattr(model, "state_spec"):
        raise InputError(f"expected an edgeseq model, a loaded checkpoint or a model name/path, got {type(model).__name__}")
    return model, None


def quantize(
    model: Any,
    recipe: str | QuantRecipe = "w8a8",
    calib: str | Iterable[Any] | None = None,
    *,
    samples: int = 64,
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
):
    """A quantized copy of ``model`` (a model, a loaded checkpoint, or a name/path) under ``recipe``.

    ``calib``: ``None`` (the model's own task: its corpus or dataset, as ``edgeseq quantize``),
    a data name or text file (``"shakespeare"``, ``"notes.txt"``), or an iterable of input batches.
    The result carries ``.quantization`` (:class:`edgeseq.streaming.QuantizationRecord`) with
    the recipe and, in ``.quantization.report``, the per-layer report.
    """
    import torch

    float_model, loaded = _model_of(model)
    recipe = get_recipe(recipe)
    batches = calib
    if calib is None or isinstance(calib, (str, Path)):
        batches = None
        if needs_calibration_data(float_model, recipe):
            torch.manual_seed(seed)
            batches, _ = calibration_batches(
                float_model, None if calib is None else str(calib), tokenizer=loaded.tokenizer if loaded else None,
                meta=loaded.meta if loaded else None, samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed)
    qmodel, report = quantize_model(float_model, recipe, batches, progress=progress)
    qmodel.quantization.report = report
    return qmodel


def export(model: Any, out: str | Path, options: ExportOptions | None = None, **fields: Any) -> dict[str, Any]:
    """Export ``model`` (float or quantized) to a verified artifact folder ``out``; its manifest.

    ``options`` is an :class:`export.artifact.ExportOptions` (format, target, dtype, verification
    steps, ...); its fields may also be given as keywords (``format="tvm", target="aarch64"``), as may
    those of :class:`export.artifact.Provenance` (``tokenizer=...``). Targets are the names of
    ``edgeseq targets``, the same ``profile`` takes.
    """
    float_model, loaded = (model.model, model) if isinstance(model, LoadedModel) else _model_of(model)
    options, provenance = export_options(options, None, **fields)
    if loaded is not None:
        provenance = Provenance(source=provenance.source or loaded.source, recipe=provenance.recipe,
                                tokenizer=provenance.tokenizer or loaded.tokenizer, embedding_bits=provenance.embedding_bits,
                                source_meta=provenance.source_meta)
    return export_artifact(float_model, out, options, provenance)


def profile(
    source: Any,
    target: str = "host",
    *,
    tokens: int = 64,
    prompt_len: int = 64,
    warmup: int = 8,
    threads: int | None = None,
    runtime: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-token latency (p50/p99), time to first token, tokens/s, memory and roofline fraction of
    ``source`` — an artifact folder, a model name/path, or a model object (run by PyTorch) —
    measured here against ``target``'s spec (``edgeseq profile``'s report as a dict)."""
    from targets.profile import profile as profile_source
    from targets.profile import profile_runtime
    from targets.registry import get_target
    from targets.runtimes import TorchRuntime

    if isinstance(source, (str, Path)):
        return profile_source(str(source), target, prompt_len, tokens, warmup, threads, runtime, progress=progress)
    model, loaded = (source.model, source) if isinstance(source, LoadedModel) else (source, None)
    runtime_ = TorchRuntime(model, source=loaded.source if loaded else type(model).__name__)
    return profile_runtime(runtime_, get_target(target), prompt_len, tokens, warmup, threads, progress=progress)


__all__ = ["ExportOptions", "export", "profile", "quantize"]
