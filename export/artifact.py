"""Verified, atomically written artifacts: ``export_artifact`` and the ``artifact`` checkpoint format.

``export_artifact(model, out, format="onnx"|"tvm", target="cpu")`` builds the step graph (and the
prefill graph for models with a parallel prefill) into a temporary folder next to ``out``, runs
them against PyTorch (:mod:`export.verify`), writes ``manifest.json`` and only then renames the
folder to ``out``. Any failure removes the temporary folder: no partial artifact is ever left.

Cross-compiled TVM builds (Jetson, generic aarch64, CUDA) cannot run here: the same graph is
compiled for this CPU in a scratch folder and verified there (the Relax module and its lowering
are shared, only code generation differs), and the written library gets the checks possible
here: its ELF architecture and the SM of its embedded CUDA code.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import torch

from edgeseq.checkpoints import CheckpointFormat, LoadedModel, register_format
from edgeseq.errors import InputError
from edgeseq.streaming import StreamingModel, quantization_of
from export import fused_ops
from export import manifest as mf
from export.graphs import check_state_spec, has_parallel_prefill
from export.int8_safety import check_pairwise_safe
from export.onnx_export import DEFAULT_OPSET, DTYPES, INT4_MIN_OPSET, check_opset, export_graph
from export.qdq import is_quantized, needs_int4, quantize_embeddings
from export.tvm_build import build_library, get_target, host_target
from export.verify import allowed_inexact, require_passed, verify_runner
from targets.manifest import MANIFEST, load_manifest_json, read_manifest
from targets.runtimes import ORT_SESSION_CONFIG, open_artifact
from targets.selfcheck import REFERENCE_STEPS, check_on_device, write_reference

FORMATS = ("onnx", "tvm")


@dataclass(frozen=True)
class ExportOptions:
    """How to build and verify an artifact (``edgeseq export``'s options)."""

    format: str = "onnx"  # onnx | tvm
    target: str = "host"  # a name from the target registry (`edgeseq targets`)
    dtype: str = "float32"  # float32 | float16 (ONNX only)
    opset: int | None = None  # ONNX opset (default 18; 21 for 4-bit weights)
    prefill: bool = True  # also export the parallel prefill graph (models that have one)
    prefill_length: int = 64  # positions per prefill-graph call
    steps: int = 256  # streaming steps verified against PyTorch
    batch: int = 2  # batch of the verification stream
    threads: int | None = None  # ONNX Runtime threads during verification
    fused_ops: bool | None = None  # Mamba's update and scan as edgeseq's fused CPU kernels: None where they apply
    force: bool = False  # replace an earlier artifact at the output
    keep_failed: str | Path | None = None  # keep a refused artifact there for inspection


@dataclass(frozen=True)
class Provenance:
    """Where the exported model came from (recorded in the manifest)."""

    source: str = ""
    recipe: str | None = None
    tokenizer: Any = None
    embedding_bits: int | None = None  # None: what the model's QuantizationRecord says
    source_meta: dict[str, Any] | None = None


_OPTION_FIELDS = {f.name for f in fields(ExportOptions)}
_PROVENANCE_FIELDS = {f.name for f in fields(Provenance)}


def export_options(options: ExportOptions | None = None, provenance: Provenance | None = None,
                   **values: Any) -> tuple[ExportOptions, Provenance]:
    """``(options, provenance)`` with ``values`` (keyword form of their fields) applied on top."""
    unknown = sorted(set(values) - _OPTION_FIELDS - _PROVENANCE_FIELDS)
    if unknown:
        raise InputError(f"unknown export option(s) {', '.join(unknown)}; known: {', '.join(sorted(_OPTION_FIELDS | _PROVENANCE_FIELDS))}")
    options = replace(options or ExportOptions(), **{k: v for k, v in values.items() if k in _OPTION_FIELDS})
    provenance = replace(provenance or Provenance(), **{k: v for k, v in values.items() if k in _PROVENANCE_FIELDS})
    return options, provenance


def export_artifact(
    model: StreamingModel,
    out: str | Path,
    options: ExportOptions | None = None,
    provenance: Provenance | None = None,
    log: Callable[[str], None] | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Export, verify and write an artifact folder; returns its manifest (see the module docs).

    ``options`` (:class:`ExportOptions`) and ``provenance`` (:class:`Provenance`) may also be given
    field by field as keywords: ``export_artifact(model, out, format="tvm", target="aarch64")``.
    """
    options, provenance = export_options(options, provenance, **values)
    format, target, opset, dtype = options.format, options.target, options.opset, options.dtype
    steps, batch, prefill, prefill_length = options.steps, options.batch, options.prefill, options.prefill_length
    force, threads, keep_failed = options.force, options.threads, options.keep_failed
    recipe, source, tokenizer = provenance.recipe, provenance.source, provenance.tokenizer
    embedding_bits, source_meta = provenance.embedding_bits, provenance.source_meta
    if recipe is None and quantization_of(model) is not None:
        recipe = quantization_of(model).recipe
    say = log or (lambda message: None)
    out = Path(out)
    if format not in FORMATS:
        raise InputError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    export_target = get_target(target)
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if format == "tvm" and dtype != "float32":
        raise InputError("TVM artifacts are float32 here (float16 exports are ONNX only: --format onnx)")
    quantized = is_quantized(model)
    if quantized and dtype != "float32":
        raise InputError("quantized models export with float32 activations (--dtype float32)")
    int4 = quantized and needs_int4(model)
    if opset is None:
        opset = INT4_MIN_OPSET if int4 else DEFAULT_OPSET
    if format == "onnx":
        check_opset(opset, int4)
    if steps < 1 or batch < 1 or prefill_length < 1:
        raise InputError("steps, batch and prefill length must be positive")
    cc, no_kernels = fused_ops.choose(model, options.fused_ops, format, dtype, export_target.runs_here, export_target.name)
    check_replaceable(out, force)
    model = model.eval()
    check_state_spec(model)
    if embedding_bits is None:  # what the quantization recipe did (0 for float models and old folders)
        record = quantization_of(model)
        embedding_bits = record.embedding_bits if record else 0
    int_embeddings: dict[str, Any] = {}
    if quantized and embedding_bits:
        model = _copy_to(model, torch.float32)
        int_embeddings = quantize_embeddings(model, embedding_bits)
    torch_dtype = DTYPES[dtype]
    reference = model if torch_dtype == torch.float32 else _copy_to(model, torch_dtype)
    with_prefill = prefill and has_parallel_prefill(model)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=str(out.parent)))
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-"))
    try:
        graphs: dict[str, dict[str, Any]] = {}
        build: dict[str, Any] = {}
        int8_rule: dict[str, Any] | None = None
        kinds = ["step", "prefill"] if with_prefill else ["step"]
        kernels = None
        if cc is not None:
            say("building the fused kernels (edgeseq.ops) with the C compiler")
            kernels = fused_ops.build(staging, cc)
        elif format == "onnx" and fused_ops.supports(model):
            say(f"fused kernels left out: {no_kernels}")
        for kind in kinds:
            if format == "onnx":
                say(f"exporting the {kind} graph to ONNX (opset {opset}, {dtype}{', int weights' if quantized else ''})")
                file = f"{kind}.onnx"
                fused = kernels is not None and (kind == "step" or "prefill" in kernels["graphs"])
                io_spec = export_graph(model, staging / file, kind, opset, prefill_length, torch_dtype, int_embeddings,
                                       fused=fused)
                if kernels is not None and kind == "step":
                    fused_ops.choose_graphs(kernels, (staging / file).read_bytes(), with_prefill)
            else:
                say(f"compiling the {kind} graph with TVM for {export_target.name}")
                file = f"{kind}.so"
                build = build_library(model, staging / file, export_target, kind, prefill_length)
                io_spec = _io(model, kind, prefill_length, torch_dtype)
                if not export_target.runs_here:
                    say(f"compiling the {kind} graph for this CPU to verify the same Relax module")
                    build_library(model, scratch / file, host_target(), kind, prefill_length)
            graphs[kind] = {"file": file, **io_spec.to_dict()}
            if format == "onnx" and quantized:
                import onnx

                int8_rule = check_pairwise_safe(onnx.load(str(staging / file)), what=f"the {kind} graph")
            if format == "tvm" and build.get("cubin"):
                graphs[kind].update(cubin=build.pop("cubin"), cuda_source_sha256=build.pop("cuda_source_sha256"))
            if kind == "prefill":
                graphs[kind]["length"] = prefill_length
        weights = None
        if format == "onnx":  # both graphs read one copy of the weights (external data)
            from export.onnx_export import share_weights

            weights = share_weights(staging, [graphs[kind]["file"] for kind in kinds])
        manifest: dict[str, Any] = {
            "edgeseq_artifact": mf.FORMAT_VERSION,
            "model": mf.model_entry(model, source),
            "recipe": recipe or ("fp16" if dtype == "float16" else "fp32" if not quantized else "quantized"),
            "quantization": mf.quantization_summary(model),
            "embedding_bits": (embedding_bits if quantized and embedding_bits else None),
            "format": format,
            "dtype": dtype,
            "target": {**export_target.build_record(), **({k: v for k, v in build.items() if v} if format == "tvm" else {})},
            "opset": opset if format == "onnx" else None,
            "graphs": graphs,
            **({"weights": weights} if weights else {}),
            **({"fused_ops": kernels} if kernels else {"fused_ops": {"used": False, "why": no_kernels}}
               if format == "onnx" and fused_ops.supports(model) else {}),
            "tokenizer": _write_tokenizer(tokenizer, staging),
            "init_state": _write_init_state(model, staging, scratch if format == "tvm" and not export_target.runs_here else None),
            "versions": mf.tool_versions(),
            "export_host": mf.host_record(),
            "arithmetic": _arithmetic(format, quantized, int8_rule),
            "source_meta": source_meta or {},  # the checkpoint's meta (dataset, ...): `edgeseq eval` defaults
        }
        # verification: the written files themselves (ONNX, host TVM) or a host build of the same module
        run_folder = staging if format == "onnx" or export_target.runs_here else scratch
        manifest["files"] = mf.file_entries(staging)
        _write_manifest(run_folder, manifest if run_folder == staging else _host_manifest(manifest, scratch))
        say(f"verifying {steps} streaming steps against PyTorch")
        runner = open_artifact(run_folder, threads=threads, verify_files=False, require_verified=False)
        result = verify_runner(reference, runner, steps=steps, batch=batch, float_dtype=torch_dtype, quantized=quantized)
        if run_folder is scratch:
            result.note = f"verified on a build of the same graph for this CPU; {export_target.name} code cannot run here"
            result.checks.append(f"library is an ELF {build.get('elf_machine')} shared object")
            if export_target.cuda_arch:
                result.checks.append(f"CUDA kernels compiled ahead of time for {build.get('cuda_arch')} "
                                     f"(cubin ELF header; target {export_target.cuda_arch})")
        if not result.passed and keep_failed is not None:
            _keep(staging, Path(keep_failed), {**manifest, "verification": result.to_dict()})
            say(f"kept the refused artifact in {keep_failed}")
        require_passed(result, hint=_failure_hint(format, quantized, manifest))
        manifest["verification"] = result.to_dict()
        say("writing the reference stream the device checks on first load")
        manifest["reference"] = _write_reference(reference, staging, result, quantized, float_dtype=torch_dtype)
        check_on_device(staging, manifest, runner.runtime, runner.engine.step, use_cache=False)
        if format == "onnx":
            from export.qdq import runtime_kernels

            manifest["export_host"]["onnxruntime"] = {
                "session_options": {**ORT_SESSION_CONFIG, "graph_optimization_level": "ORT_ENABLE_ALL"},
                "kernels": {kind: runtime_kernels(str(staging / spec["file"]), str(scratch)) for kind, spec in graphs.items()},
            }
        manifest["created"] = mf.now_utc()
        manifest["files"] = mf.file_entries(staging)
        _write_manifest(staging, manifest)
        _replace(staging, out)
        say(f"wrote {out}")
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def export_loaded(loaded: LoadedModel, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`export_artifact` for a loaded checkpoint (keeps its tokenizer, source and recipe)."""
    if loaded.format == "artifact":
        raise InputError(f"{loaded.source} is already an exported artifact; export from the model or quantized folder it came from "
                         f"({loaded.meta.get('model', {}).get('source') or 'see its manifest.json'})")
    meta = loaded.meta or {}
    recipe = meta.get("recipe")
    if isinstance(recipe, dict):
        recipe = recipe.get("name")
    kwargs.setdefault("recipe", recipe if isinstance(recipe, str) else None)
    source_meta = {k: v for k, v in meta.items() if _json_safe(v)}
    return export_artifact(loaded.model, out, source=loaded.source, tokenizer=loaded.tokenizer,
                           source_meta=source_meta, **kwargs)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _io(model, kind, length, dtype):
    from export.graphs import prefill_io, step_io

    return step_io(model, dtype) if kind == "step" else prefill_io(model, length, dtype)


@torch.no_grad()
def _write_reference(model: StreamingModel, folder: Path, result, quantized: bool, float_dtype: torch.dtype,
                     steps: int = REFERENCE_STEPS, batch: int = 1, seed: int = 7) -> dict[str, Any]:
    """``REFERENCE_STEPS`` teacher-forced PyTorch steps and the rule verification derived for them."""
    from export.graphs import sample_inputs

    inputs = sample_inputs(model, batch, steps, seed=seed)
    if model.task != "lm":
        inputs = inputs.to(float_dtype)
    state = model.init_state(batch, dtype=float_dtype)
    xs, ys, states = [], [], {n: [v.numpy().copy()] for n, v in state.items()}
    for t in range(steps):
        y, state = model.step(inputs[:, t], state)
        xs.append(inputs[:, t].numpy())
        ys.append(y.numpy())
        for n, v in state.items():
            states[n].append(v.numpy().copy())
    import numpy as np

    rule = {"exact_tolerance": result.exact_tolerance,
            "allowed_inexact_fraction": allowed_inexact(result.reference_inexact_fraction, steps * batch, quantized),
            "sanity_bound": result.tolerance}
    return write_reference(folder, np.stack(xs), np.stack(ys), {n: np.stack(v) for n, v in states.items()}, rule)


def _arithmetic(format: str, quantized: bool, int8_rule: dict[str, Any] | None) -> dict[str, Any]:
    """What the artifact computes, said plainly (read by ``info``, ``profile`` and the report)."""
    if not quantized:
        return {"kind": "float", "integer_kernels": False}
    if format == "tvm":
        return {"kind": "fake-quant in float", "integer_kernels": False,
                "note": "TVM artifacts store the quantized weights as their float values and compute the recipe's "
                        "rounding in float32 (the same function, no integer kernels)"}
    return {"kind": "integer weights (QDQ)", "integer_kernels": True, "int8_overflow": int8_rule}


def _failure_hint(format: str, quantized: bool, manifest: dict[str, Any]) -> str:
    host = manifest.get("export_host", {})
    where = f"{host.get('cpu') or 'this CPU'}, int8 accumulation {host.get('int8_accumulation', '?')}"
    if format == "onnx" and quantized:
        from targets.selfcheck import arm_without_dot_product

        arm = arm_without_dot_product(host)
        if arm:
            return f"likely cause: {arm}; re-run with --keep-failed DIR to inspect it"
        return (f"likely cause: an ONNX Runtime integer kernel on this CPU ({where}) rounds or saturates differently "
                "from the recipe; re-run with --keep-failed DIR to inspect it, or report it with the artifact")
    return f"likely cause: an operator this runtime lowers differently ({where}); re-run with --keep-failed DIR to inspect it"


def _keep(staging: Path, folder: Path, manifest: dict[str, Any]) -> None:
    """Copy a refused artifact for inspection (its manifest says it failed; readers refuse it)."""
    try:
        check_replaceable(folder, force=True)  # the --force rule: only an earlier artifact or an empty folder
    except InputError as exc:
        raise InputError(f"--keep-failed: {exc}") from None
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(staging, folder)
    _write_manifest(folder, manifest)


def _copy_to(model: StreamingModel, dtype: torch.dtype) -> StreamingModel:
    import copy

    return copy.deepcopy(model).to(dtype).eval()


def _host_manifest(manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    host = dict(manifest)
    host["target"] = host_target().build_record()
    # the host build embeds no CUDA kernels: its graphs name no cubin (the reader checks every named file)
    host["graphs"] = {kind: {k: v for k, v in spec.items() if k not in ("cubin", "cuda_source_sha256")}
                      for kind, spec in manifest["graphs"].items()}
    host["files"] = mf.file_entries(folder)
    return host


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_tokenizer(tokenizer: Any, folder: Path) -> dict[str, Any]:
    if tokenizer is not None and getattr(tokenizer, "kind", "bytes") == "hf":
        shutil.copyfile(tokenizer.path, folder / "tokenizer.json")
        return {"kind": "hf", "file": "tokenizer.json"}
    return {"kind": "bytes"}


def _write_init_state(model: StreamingModel, folder: Path, also: Path | None) -> str | None:
    """Models whose initial state is not all zeros (SpikeGPT's WKV ``p``) ship it: ``init_state.npz``
    holds one example's state per name (the runner repeats it over the batch)."""
    import numpy as np

    state = model.init_state(1, dtype=torch.float32)
    if all(not bool(v.any()) for v in state.values()):
        return None
    arrays = {name: value[0].detach().cpu().numpy() for name, value in state.items()}
    for target in [folder] + ([also] if also else []):
        np.savez(target / "init_state.npz", **arrays)
    return "init_state.npz"


PARTIAL = ".partial-"  # staging folders: .NAME.partial-PID-XXXX next to the output
SCRATCH = ".edgeseq-verify-"  # scratch folders in the temp dir: .edgeseq-verify-PID-XXXX


def is_edgeseq_artifact(folder: Path) -> bool:
    """A folder ``edgeseq export`` wrote: a manifest with ``edgeseq_artifact`` and nothing in the
    folder but the files that manifest lists."""
    try:
        _, manifest = load_manifest_json(folder)
    except (OSError, InputError):
        return False
    if "edgeseq_artifact" not in manifest or not isinstance(manifest.get("files"), list):
        return False
    listed = {str(e.get("path")) for e in manifest["files"] if isinstance(e, dict)} | {MANIFEST}
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    return present <= listed


def check_replaceable(out: Path, force: bool) -> None:
    """``--force`` replaces only an earlier edgeseq artifact or an empty folder, never a user's files."""
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise InputError(f"{out} exists and is not a folder (a file or a symlink); choose another --output")
    if not force:
        raise InputError(f"{out} already exists; pass --force to replace it")
    if any(out.iterdir()) and not is_edgeseq_artifact(out):
        raise InputError(f"{out} holds files that are not an edgeseq artifact; --force replaces only an earlier "
                         "`edgeseq export` folder or an empty folder: choose another --output")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str, marker: str) -> int | None:
    rest = name.split(marker, 1)[1] if marker in name else ""
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def remove_stale_partials(out: Path) -> list[Path]:
    """Staging/scratch folders left by an export that was killed (SIGKILL, power loss): those of
    processes that no longer run are removed before a new export starts."""
    removed = []
    candidates = [(p, PARTIAL) for p in out.parent.glob(f".{glob_escape(out.name)}{PARTIAL}*")]
    candidates += [(p, SCRATCH) for p in Path(tempfile.gettempdir()).glob(f"{SCRATCH}*")]
    for path, marker in candidates:
        pid = _owner_pid(path.name, marker)
        if pid is None or _pid_alive(pid):
            continue  # a running export's folder (or one of an older naming): left alone
        try:
            # the shared temp dir may hold another PID namespace's (container's) exports: an hour's grace
            if marker == SCRATCH and time.time() - path.stat().st_mtime < 3600:
                continue
            if path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        except OSError:
            continue
    return removed


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _replace(staging: Path, out: Path) -> None:
    """Move the finished folder into place; an existing ``out`` (``--force``) goes only afterwards."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700: an artifact is an ordinary folder
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# loading an artifact through edgeseq.checkpoints.load_model
# --------------------------------------------------------------------------------------------


def _detect(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def _load(path: Path) -> LoadedModel:
    from edgeseq.tokenizer import ByteTokenizer, HFTokenizer

    manifest = read_manifest(path)
    runner = open_artifact(path)
    tok = manifest.get("tokenizer", {"kind": "bytes"})
    tokenizer = HFTokenizer(path / tok["file"]) if tok.get("kind") == "hf" else ByteTokenizer()
    meta = {**manifest.get("source_meta", {}), **manifest}  # the manifest, plus e.g. the source's dataset
    return LoadedModel(model=runner, tokenizer=tokenizer, source=str(path), format="artifact", meta=meta)


ARTIFACT_FORMAT = register_format(CheckpointFormat(name="artifact", detect=_detect, load=_load))


def progress_printer(stream=sys.stderr) -> Callable[[str], None]:
    def say(message: str) -> None:
        stream.write(f"[export] {message}\n")
        stream.flush()

    return say


__all__ = ["ARTIFACT_FORMAT", "ExportOptions", "FORMATS", "Provenance", "export_artifact", "export_loaded", "export_options",
           "progress_printer"]
