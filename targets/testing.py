"""Small artifacts for tests and benchmarks of the runtimes and the profiler.

These write the same folder layout ``edgeseq export`` writes (``manifest.json`` with the graphs'
inputs, ``step``/``prefill`` graph files) with the minimum of machinery: ``torch.onnx.export`` of
:class:`edgeseq.streaming.FlatStep`/:class:`FlatPrefill`, and for TVM the Relax ONNX frontend →
``tvm.compile`` → ``export_library``. Their verification is a short check of their own (a few
steps of the step graph against PyTorch, or the TVM build against the ONNX graph it came from),
recorded in the manifest with every file's sha256 as the artifact readers require: use
``edgeseq export`` for real artifacts; this is what the targets tests run on so they do not depend
on the export pipeline.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from edgeseq.errors import require
from edgeseq.streaming import FlatPrefill, FlatStep, StreamingModel
from targets.runtimes import step_io_from_manifest, step_io_from_model


def tiny_mamba(seed: int = 0, **overrides: Any) -> StreamingModel:
    """A Mamba small enough to export and compile in a second or two."""
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(seed)
    config = {"vocab_size": 32, "d_model": 16, "n_layer": 1, "d_state": 4, **overrides}
    return Mamba(MambaConfig(**config)).eval()


def _graph_inputs(model: StreamingModel, time: int | None) -> list[dict[str, Any]]:
    io_spec = step_io_from_model(model)
    x = dict(vars(io_spec.x))
    if time is not None:
        x = {**x, "name": "x", "shape": [x["shape"][0], time, *x["shape"][1:]]}
    return [x, *[dict(vars(s)) for s in io_spec.state]]


def _quiet_export(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str], opset: int) -> None:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )


class _PrefillFrom(torch.nn.Module):
    """``prefill(x, state) -> (y, *final_state)`` with the state as flat inputs."""

    def __init__(self, model: StreamingModel):
        super().__init__()
        self.model, self.names = model, model.state_names()

    def forward(self, x, *state):
        y, final = self.model.prefill(x, dict(zip(self.names, state)))
        return (y, *[final[n] for n in self.names])


def write_onnx_artifact(model: StreamingModel, folder: str | Path, prefill_length: int | None = 8, opset: int = 18) -> Path:
    """Step (and fixed-length prefill) ONNX graphs of ``model`` + a manifest, in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    io_spec = step_io_from_model(model)
    names = io_spec.state_names
    state = [torch.zeros(s.concrete(1)) for s in io_spec.state]
    x_t = torch.from_numpy(io_spec.example_input(1))
    outputs = ["y", *[f"new_{n}" for n in names]]
    _quiet_export(FlatStep(model), (x_t, *state), folder / "step.onnx", ["x_t", *names], outputs, opset)
    graphs: dict[str, Any] = {"step": {"file": "step.onnx", "inputs": _graph_inputs(model, None)}}
    graphs["step"]["inputs"][0]["name"] = "x_t"
    files = ["step.onnx"]
    if prefill_length:
        x = torch.from_numpy(io_spec.example_input(1, time=prefill_length))
        _quiet_export(_PrefillFrom(model), (x, *state), folder / "prefill.onnx", ["x", *names], outputs, opset)
        graphs["prefill"] = {"file": "prefill.onnx", "inputs": _graph_inputs(model, prefill_length), "length": prefill_length}
        files.append("prefill.onnx")
    _write_manifest(folder, model, "onnx", "cpu", files, graphs)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["verification"] = _check_steps(_ort_step(folder / "step.onnx"), _torch_step(model), io_spec, "onnxruntime", "PyTorch")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


_STEPS = 8


def _ort_step(path: Path):
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda arrays: session.run(None, dict(zip(names, arrays)))


def _torch_step(model: StreamingModel):
    flat = FlatStep(model)

    def call(arrays):
        with torch.no_grad():
            return [o.numpy() for o in flat(*[torch.from_numpy(a) for a in arrays])]

    return call


def _check_steps(run, reference, io_spec, runtime: str, against: str, tolerance: float = 1e-4) -> dict[str, Any]:
    """``_STEPS`` free-running steps of ``run`` against ``reference``: the verification record."""
    import numpy as np

    inputs = io_spec.example_input(1, time=_STEPS)
    state_run = state_ref = io_spec.zero_state(1)
    worst = 0.0
    for t in range(_STEPS):
        x_t = np.ascontiguousarray(inputs[:, t])
        got, want = run([x_t, *state_run]), reference([x_t, *state_ref])
        for g, w in zip(got, want):
            worst = max(worst, float(np.abs(np.asarray(g) - w).max()) / max(float(np.abs(w).max()), 1e-12))
        state_run, state_ref = [np.asarray(a) for a in got[1:]], [np.asarray(a) for a in want[1:]]
    return {"runtime": runtime, "steps": _STEPS, "batch": 1, "tolerance": tolerance, "max_rel_error": worst,
            "passed": bool(worst <= tolerance), "note": f"targets.testing: step graph against {against}"}


def _file_list(folder: Path, files: list[str]) -> list[dict[str, Any]]:
    from targets.manifest import sha256_file

    return [{"path": f, "bytes": (folder / f).stat().st_size, "sha256": sha256_file(folder / f)} for f in files]


def fold_constants(onnx_path: Path, out_path: Path) -> Path:
    """ONNX Runtime's basic graph optimisations (constant folding) written back to ONNX, which
    gives the TVM frontend static shapes for ops (Einsum, Split) it cannot infer otherwise."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return out_path


def compile_onnx_to_tvm(onnx_path: Path, out_path: Path, target: Any = "llvm") -> Path:
    """ONNX graph → Relax → ``tvm.compile(target)`` (TVM's default pipeline) → ``export_library``."""
    onnx = require("onnx")
    tvm = require("tvm", "pip install apache-tvm")
    from tvm.relax.frontend.onnx import from_onnx

    folded = fold_constants(onnx_path, out_path.with_suffix(".folded.onnx"))
    try:
        mod = from_onnx(onnx.load(str(folded)))
    finally:
        folded.unlink(missing_ok=True)
    executable = tvm.compile(mod, target=tvm.target.Target(target))
    executable.export_library(str(out_path))
    return out_path


def write_tvm_artifact(onnx_folder: str | Path, folder: str | Path, target: Any = "llvm") -> Path:
    """Compile an ONNX artifact folder's graphs with TVM into a TVM artifact folder."""
    onnx_folder, folder = Path(onnx_folder), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((onnx_folder / "manifest.json").read_text())
    files = []
    for role in ("step", "prefill"):
        if (onnx_folder / f"{role}.onnx").is_file():
            compile_onnx_to_tvm(onnx_folder / f"{role}.onnx", folder / f"{role}.so", target)
            files.append(f"{role}.so")
    from targets.manifest import onnx_weight_bytes

    for role in ("step", "prefill"):
        graph = (manifest.get("graphs") or {}).get(role)
        if isinstance(graph, dict) and f"{role}.so" in files:
            graph["file"] = f"{role}.so"
    manifest.update(format="tvm", target=target, files=_file_list(folder, files),
                    weight_bytes=onnx_weight_bytes(onnx_folder / "step.onnx"))
    manifest["verification"] = _check_steps(_tvm_step(folder / "step.so"), _ort_step(onnx_folder / "step.onnx"),
                                            step_io_from_manifest(manifest), "tvm", "its ONNX graph (onnxruntime)")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def _tvm_step(path: Path):
    import numpy as np

    tvm = require("tvm", "pip install apache-tvm")
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu(0))

    def call(arrays):
        result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu(0)) for a in arrays])
        return [r.numpy() for r in (list(result) if not hasattr(result, "numpy") else [result])]

    return call


def _write_manifest(folder: Path, model: StreamingModel, fmt: str, target: Any, files: list[str], graphs: dict[str, Any]) -> None:
    manifest = {
        "model": {"class": type(model).__name__, "family": model.family, "task": model.task, "config": model.config.to_dict()},
        "format": fmt, "target": target, "files": _file_list(folder, files), "graphs": graphs,
        "verification": None, "note": "written by targets.testing (a short check of its own; not `edgeseq export`)",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


__all__ = ["compile_onnx_to_tvm", "fold_constants", "host_llvm_target", "tiny_mamba", "write_onnx_artifact", "write_tvm_artifact"]


def host_llvm_target(cores: int | None = None) -> dict[str, Any]:
    """The TVM target of this CPU: ``llvm`` with LLVM's name for it (so AVX2/AVX-512 are used)."""
    require("tvm", "pip install apache-tvm")
    from tvm.target import codegen

    target: dict[str, Any] = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}
    if cores:
        target["num-cores"] = cores
    return target
