"""Runtimes behind one interface: PyTorch eager (CPU/CUDA, optionally CUDA graphs), ONNX Runtime,
the TVM Relax VM (llvm/cuda), and the TVM VM on a remote device through RPC (``targets.rpc``).

Every runtime runs the streaming graphs of the export contract:

* step: ``(x_t, *state) -> (y_t, *new_state)``, state in the model's ``state_spec()`` order;
* prefill (optional): ``(x, *state) -> (y, *final_state)`` over a chunk of a prompt; a runtime
  without a prefill graph streams the prompt through ``step``.

Inputs and outputs are numpy arrays at the interface (torch tensors for the torch runtime, which
keeps them on its device). ``open_runtime(source)`` picks the runtime for a model name/checkpoint
(PyTorch) or an exported artifact folder (ONNX Runtime or TVM, from its ``manifest.json``).
TVM and ONNX Runtime are imported only when such a runtime is opened.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeseq.errors import EdgeseqError, InputError, require

MANIFEST = "manifest.json"
_NP_DTYPES = {"int64": np.int64, "int32": np.int32, "int8": np.int8, "float32": np.float32, "float16": np.float16, "float64": np.float64}


# --------------------------------------------------------------------------------------------
# I/O description shared by the runtimes
# --------------------------------------------------------------------------------------------


@dataclass
class TensorSpec:
    """A graph input: name, shape with the batch dim first (``"batch"``/``"time"`` symbolic)."""

    name: str
    shape: list[Any]
    dtype: str = "float32"

    def concrete(self, batch: int = 1, time: int = 1) -> tuple[int, ...]:
        dims = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif d == "time" or (i == 1 and not isinstance(d, int) and d != "batch"):
                dims.append(time)
            else:
                dims.append(batch)
        return tuple(dims)

    @property
    def nbytes_per_example(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d if isinstance(d, int) and d > 0 else 1
        return n * np.dtype(_NP_DTYPES.get(self.dtype, np.float32)).itemsize


@dataclass
class StepIO:
    """What a runtime needs to feed its graphs: the input, the state tensors, the task."""

    x: TensorSpec
    state: list[TensorSpec]
    task: str = "lm"  # lm: x holds token ids; classify: frames
    vocab_size: int | None = None
    prefill_length: int | None = None  # fixed chunk length of the prefill graph, None = any

    @property
    def state_names(self) -> list[str]:
        return [s.name for s in self.state]

    @property
    def state_bytes(self) -> int:
        return sum(s.nbytes_per_example for s in self.state)

    def example_input(self, batch: int = 1, time: int | None = None, seed: int = 0) -> np.ndarray:
        """A deterministic input: token ids (LM) or standard-normal frames, one step or ``time``."""
        rng = np.random.default_rng(seed)
        shape = self.x.concrete(batch)
        if time is not None:
            shape = (shape[0], time, *shape[1:])
        if self.x.dtype.startswith("int"):
            high = self.vocab_size or 2
            return rng.integers(0, high, size=shape).astype(_NP_DTYPES[self.x.dtype])
        return rng.standard_normal(shape).astype(_NP_DTYPES.get(self.x.dtype, np.float32))

    def zero_state(self, batch: int = 1) -> list[np.ndarray]:
        return [np.zeros(s.concrete(batch), dtype=_NP_DTYPES.get(s.dtype, np.float32)) for s in self.state]

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": vars(self.x), "state": [vars(s) for s in self.state], "task": self.task,
            "vocab_size": self.vocab_size, "prefill_length": self.prefill_length,
        }


def step_io_from_model(model: Any) -> StepIO:
    """The StepIO of a StreamingModel (its ``state_spec`` and task)."""
    cfg = model.config
    if model.task == "lm":
        x = TensorSpec("token", ["batch"], "int64")
    else:
        features = next(
            (getattr(cfg, n) for n in ("input_dim", "n_features", "in_features", "n_mels") if isinstance(getattr(cfg, n, None), int)),
            None,
        )
        if features is None:
            raise InputError(f"{type(model).__name__}: cannot tell the frame size of this classifier (no config.input_dim)")
        x = TensorSpec("frame", ["batch", features], "float32")
    state = [
        TensorSpec(s.name, ["batch", *s.shape], str(s.dtype).replace("torch.", "")) for s in model.state_spec()
    ]
    return StepIO(x, state, model.task, getattr(cfg, "vocab_size", None))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


# --------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------


class Runtime:
    """One way to run the step/prefill graphs. Subclasses implement ``_step``/``_prefill``."""

    name = "runtime"
    device = "cpu"
    has_prefill = False

    def __init__(self, io: StepIO, model_bytes: int, source: str = ""):
        self.io = io
        self.model_bytes = int(model_bytes)
        self.source = source
        self.threads: int | None = None

    # -- the interface ---------------------------------------------------------------------
    def set_threads(self, threads: int | None) -> None:
        self.threads = threads

    def init_state(self, batch: int = 1) -> list[Any]:
        return self.io.zero_state(batch)

    def example_input(self, batch: int = 1, time: int | None = None) -> Any:
        return self.io.example_input(batch, time)

    def step(self, x_t: Any, state: Sequence[Any]) -> tuple[Any, list[Any]]:
        """One token/frame: ``(y_t, new_state)``."""
        outputs = self._step(x_t, list(state))
        return outputs[0], list(outputs[1:])

    def prefill(self, x: Any, state: Sequence[Any] | None = None) -> tuple[Any, list[Any]]:
        """A whole prompt ``[B, P, ...]``: last output and final state (prefill graph or steps)."""
        state = list(self.init_state(x.shape[0]) if state is None else state)
        length = x.shape[1]
        chunk = self.io.prefill_length
        position, y = 0, None
        if self.has_prefill:
            while position + (chunk or length) <= length and (chunk or length) > 0:
                size = chunk or length
                outputs = self._prefill(x[:, position:position + size], state)
                y, state = outputs[0][:, -1], list(outputs[1:])
                position += size
        while position < length:  # the remainder (or everything) through step
            y, state = self.step(x[:, position], state)
            position += 1
        return y, state

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA); a no-op on CPU."""

    def peak_memory_bytes(self) -> int:
        return peak_rss_bytes()

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "device": self.device, "source": self.source, "threads": self.threads}

    # -- to implement ----------------------------------------------------------------------
    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:  # pragma: no cover
        raise NotImplementedError

    def _prefill(self, x: Any, state: list[Any]) -> Sequence[Any]:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# PyTorch eager (and CUDA graphs)
# --------------------------------------------------------------------------------------------


def module_bytes(model: Any) -> int:
    """Bytes of parameters and buffers, counting shared (tied) tensors once."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


class TorchRuntime(Runtime):
    """A StreamingModel run eagerly by PyTorch on CPU or CUDA (optionally as one CUDA graph)."""

    name = "torch"
    has_prefill = True

    def __init__(self, model: Any, device: str = "cpu", dtype: str | None = None, cuda_graph: bool = False, source: str = ""):
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EdgeseqError("the torch runtime was asked for CUDA but no CUDA device is visible (use --target host)")
        self.torch = torch
        model = model.eval().to(device)
        if dtype:
            model = model.to(getattr(torch, dtype))
        self.model = model
        self.device = device
        self.names = model.state_names()
        super().__init__(step_io_from_model(model), module_bytes(model), source)
        self.cuda_graph = cuda_graph
        self._graph = None
        if cuda_graph:
            if not device.startswith("cuda"):
                raise InputError("CUDA graphs need a CUDA device: drop --cuda-graph or pick a GPU target")
            self.name = "torch-cudagraph"

    def set_threads(self, threads: int | None) -> None:
        super().set_threads(threads)
        if threads:
            self.torch.set_num_threads(threads)

    def _tensor(self, array: Any) -> Any:
        if isinstance(array, self.torch.Tensor):
            return array.to(self.device)
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def init_state(self, batch: int = 1) -> list[Any]:
        state = self.model.init_state(batch, device=self.device)
        return [state[n] for n in self.names]

    def example_input(self, batch: int = 1, time: int | None = None) -> Any:
        return self._tensor(self.io.example_input(batch, time))

    def _eager_step(self, x_t: Any, state: list[Any]) -> list[Any]:
        y_t, new_state = self.model.step(x_t, dict(zip(self.names, state)))
        return [y_t, *[new_state[n] for n in self.names]]

    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:
        with self.torch.inference_mode():
            x_t = self._tensor(x_t)
            state = [self._tensor(s) for s in state]
            if not self.cuda_graph:
                return self._eager_step(x_t, state)
            return self._graph_step(x_t, state)

    def _graph_step(self, x_t: Any, state: list[Any]) -> list[Any]:
        """Capture the whole step once into a CUDA graph; later calls copy inputs and replay."""
        torch = self.torch
        if self._graph is None or self._static_in[0].shape != x_t.shape:
            self._static_in = [x_t.clone(), *[s.clone() for s in state]]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm up the allocator and kernels outside the graph
                    self._eager_step(self._static_in[0], self._static_in[1:])
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._static_out = self._eager_step(self._static_in[0], self._static_in[1:])
        for static, value in zip(self._static_in, [x_t, *state]):
            if static.data_ptr() != value.data_ptr():
                static.copy_(value)
        self._graph.replay()
        # outputs alias the graph's buffers: clone the state so feeding it back is safe
        return [self._static_out[0], *[s.clone() for s in self._static_out[1:]]]

    def _prefill(self, x: Any, state: list[Any]) -> Sequence[Any]:
        with self.torch.inference_mode():
            y, new_state = self.model.prefill(self._tensor(x), dict(zip(self.names, [self._tensor(s) for s in state])))
            return [y, *[new_state[n] for n in self.names]]

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def peak_memory_bytes(self) -> int:
        if self.device.startswith("cuda"):
            return int(self.torch.cuda.max_memory_allocated())
        return peak_rss_bytes()


# --------------------------------------------------------------------------------------------
# exported artifacts: manifest, ONNX Runtime, TVM
# --------------------------------------------------------------------------------------------


@dataclass
class Artifact:
    """An exported artifact folder as the runtimes see it."""

    folder: Path
    format: str  # onnx | tvm
    step_file: Path
    prefill_file: Path | None
    io: StepIO | None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def model_bytes(self) -> int:
        """Weight bytes a step reads: the manifest's ``weight_bytes`` when it records them, else
        the ONNX initializers, else the step file's size (a TVM library also holds code)."""
        recorded = self.manifest.get("weight_bytes")
        if isinstance(recorded, int) and recorded > 0:
            return recorded
        if self.format == "onnx":
            return onnx_weight_bytes(self.step_file)
        model = self.manifest.get("model") if isinstance(self.manifest.get("model"), dict) else {}
        recipe = str(self.manifest.get("recipe") or "")
        if isinstance(model.get("parameters"), int) and recipe in ("fp32", "fp16", "float32", "float16"):
            return model["parameters"] * (2 if "16" in recipe else 4)
        return self.step_file.stat().st_size


def onnx_weight_bytes(path: str | Path) -> int:
    """Bytes of an ONNX graph's initializers (external data included): the weights it reads."""
    onnx = require("onnx", "pip install onnx")
    from onnx import numpy_helper

    proto = onnx.load(str(path), load_external_data=True)
    total = 0
    for tensor in proto.graph.initializer:
        if tensor.raw_data:
            total += len(tensor.raw_data)
        else:
            try:
                total += numpy_helper.to_array(tensor).nbytes
            except Exception:  # an element type numpy lacks (int4): count packed nibbles
                count = 1
                for d in tensor.dims:
                    count *= d
                total += (count + 1) // 2
    return int(total)


def _specs(entries: Any) -> list[TensorSpec]:
    return [TensorSpec(e["name"], list(e["shape"]), str(e.get("dtype", "float32"))) for e in entries]


def _io_from_manifest(manifest: dict[str, Any]) -> StepIO | None:
    """StepIO from the manifest's graph description (``graphs.step.inputs``) when present."""
    graphs = manifest.get("graphs") or {}
    step = graphs.get("step") if isinstance(graphs, dict) else None
    inputs = (step or {}).get("inputs") or manifest.get("inputs")
    if not inputs:
        return None
    specs = _specs(inputs)
    prefill = graphs.get("prefill") if isinstance(graphs, dict) else None
    prefill_length = (prefill or {}).get("length") or (prefill or {}).get("prefill_length") or manifest.get("prefill_length")
    if prefill_length is None and prefill and prefill.get("inputs"):
        time_dim = prefill["inputs"][0]["shape"][1] if len(prefill["inputs"][0]["shape"]) > 1 else None
        prefill_length = time_dim if isinstance(time_dim, int) else None
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    config = manifest.get("config") or model.get("config") or {}
    task = manifest.get("task") or model.get("task") or ("lm" if specs[0].dtype.startswith("int") else "classify")
    return StepIO(specs[0], specs[1:], task, manifest.get("vocab_size") or config.get("vocab_size"), prefill_length)


def _find_graph(folder: Path, manifest: dict[str, Any], role: str, suffix: str) -> Path | None:
    graph = (manifest.get("graphs") or {}).get(role) if isinstance(manifest.get("graphs"), dict) else None
    if isinstance(graph, dict) and isinstance(graph.get("file"), str):
        return folder / graph["file"]  # the export manifest names each graph's file
    files = manifest.get("files") or []
    names = list(files) if isinstance(files, dict) else [f.get("path") or f.get("name") for f in files if isinstance(f, dict)]
    candidates = [n for n in names if n and n.endswith(suffix) and role in Path(n).stem]
    if not candidates:
        candidates = sorted(p.name for p in folder.glob(f"*{suffix}") if role in p.stem)
    return folder / candidates[0] if candidates else None


def read_artifact(folder: str | Path) -> Artifact:
    """Read ``manifest.json`` and locate the step (and prefill) graph of an exported artifact."""
    from export.runtime import check_manifest, confined_path, load_manifest_json

    path, manifest = load_manifest_json(folder)
    folder = path.parent
    fmt = str(manifest.get("format", "")).lower()
    if fmt not in ("onnx", "tvm"):
        raise InputError(f"{path}: 'format' must be 'onnx' or 'tvm' (got {fmt!r})")
    suffix = ".onnx" if fmt == "onnx" else ".so"
    step = _find_graph(folder, manifest, "step", suffix)
    if step is None or not step.is_file():
        raise InputError(f"{folder}: the manifest names no step graph ({suffix}) that exists in the folder; re-export it")
    prefill = _find_graph(folder, manifest, "prefill", suffix)
    # the same checks as `edgeseq run`: a passed verification record, paths inside the folder, and
    # the sha256 of every listed file (profiling an unverified or altered file measures nothing)
    check_manifest(folder, manifest)
    listed = {confined_path(folder, e["path"], "files") for e in manifest["files"]}
    for graph in (step, prefill):
        if graph is not None and graph.is_file() and confined_path(folder, str(graph.relative_to(folder)) if graph.is_relative_to(folder) else str(graph), "graph") not in listed:
            raise InputError(f"{folder}: {graph.name} is not listed with its sha256 in the manifest's 'files'; re-export it")
    return Artifact(folder, fmt, step, prefill if prefill and prefill.is_file() else None, _io_from_manifest(manifest), manifest)


def _io_from_onnx_session(session: Any, manifest: dict[str, Any]) -> StepIO:
    names = {"tensor(int64)": "int64", "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32"}
    specs = [TensorSpec(i.name, [d if isinstance(d, int) else "batch" for d in i.shape], names.get(i.type, "float32")) for i in session.get_inputs()]
    config = manifest.get("config") or {}
    return StepIO(specs[0], specs[1:], manifest.get("task", "lm" if specs[0].dtype.startswith("int") else "classify"),
                  manifest.get("vocab_size") or config.get("vocab_size"))


class OnnxRuntime(Runtime):
    """ONNX Runtime InferenceSession(s) for the step (and prefill) graph; CUDA when available."""

    name = "onnxruntime"

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None):
        self.ort = require("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu for CUDA)")
        self.artifact = artifact
        self.device = device
        self.threads = threads
        self._make_sessions()
        io = artifact.io or _io_from_onnx_session(self.step_session, artifact.manifest)
        super().__init__(io, artifact.model_bytes, str(artifact.folder))
        self.threads = threads
        self.has_prefill = self.prefill_session is not None

    def _providers(self) -> list[str]:
        available = self.ort.get_available_providers()
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise EdgeseqError("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu) — profile on --target host instead")
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _session(self, path: Path) -> Any:
        from export.runtime import ort_session  # the settings verification used

        try:
            return ort_session(path, self.threads, self._providers())
        except EdgeseqError:
            raise
        except Exception as exc:
            raise EdgeseqError(f"{path}: ONNX Runtime could not load it ({str(exc).splitlines()[0][:200]})") from None

    def _make_sessions(self) -> None:
        self.step_session = self._session(self.artifact.step_file)
        self.prefill_session = self._session(self.artifact.prefill_file) if self.artifact.prefill_file else None
        self.step_inputs = [i.name for i in self.step_session.get_inputs()]
        self.prefill_inputs = [i.name for i in self.prefill_session.get_inputs()] if self.prefill_session else []

    def set_threads(self, threads: int | None) -> None:
        if threads != self.threads:
            self.threads = threads
            self._make_sessions()

    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:
        return self.step_session.run(None, dict(zip(self.step_inputs, [x_t, *state])))

    def _prefill(self, x: Any, state: list[Any]) -> Sequence[Any]:
        feed = [x, *state][: len(self.prefill_inputs)]  # a prefill graph from the zero state takes x only
        outputs = self.prefill_session.run(None, dict(zip(self.prefill_inputs, feed)))
        return outputs


class TvmRuntime(Runtime):
    """The TVM Relax VM over a compiled library (``export_library`` .so) on llvm or CUDA."""

    name = "tvm"

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None):
        self.tvm = require("tvm", "pip install apache-tvm")
        if artifact.io is None:
            raise InputError(f"{artifact.folder}: the manifest lacks the graph inputs (graphs.step.inputs); re-export it")
        self.artifact = artifact
        self.device = device
        super().__init__(artifact.io, artifact.model_bytes, str(artifact.folder))
        self.set_threads(threads)
        self.dev = self._device()
        self.step_vm = self._vm(artifact.step_file)
        self.prefill_vm = self._vm(artifact.prefill_file) if artifact.prefill_file else None
        self.has_prefill = self.prefill_vm is not None

    def _device(self) -> Any:
        if self.device.startswith("cuda"):
            dev = self.tvm.cuda(0)
            if not dev.exist:
                raise EdgeseqError("TVM sees no CUDA device here: profile a CPU artifact on --target host")
            return dev
        return self.tvm.cpu(0)

    def _vm(self, path: Path) -> Any:
        from tvm import relax

        try:
            return relax.VirtualMachine(self.tvm.runtime.load_module(str(path)), self.dev)
        except Exception as exc:
            raise EdgeseqError(f"{path}: the TVM runtime could not load it ({str(exc).splitlines()[0][:200]}); was it compiled for this machine?") from None

    def set_threads(self, threads: int | None) -> None:
        super().set_threads(threads)
        if threads:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # read when the thread pool starts
            try:
                self.tvm.get_global_func("runtime.config_threadpool")(0, threads)
            except Exception:  # older/newer runtimes without it: the env var still applies
                pass

    def _run(self, vm: Any, args: list[Any]) -> list[Any]:
        tensors = [self.tvm.runtime.tensor(np.ascontiguousarray(a), self.dev) for a in args]
        result = vm["main"](*tensors)
        items = list(result) if not hasattr(result, "numpy") else [result]
        return [r.numpy() for r in items]

    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:
        return self._run(self.step_vm, [x_t, *state])

    def _prefill(self, x: Any, state: list[Any]) -> Sequence[Any]:
        return self._run(self.prefill_vm, [x, *state])


# --------------------------------------------------------------------------------------------
# choosing a runtime
# --------------------------------------------------------------------------------------------


def is_artifact(source: str | Path) -> bool:
    return (Path(source).expanduser() / MANIFEST).is_file()


def open_runtime(
    source: str | Path, device: str = "cpu", threads: int | None = None, runtime: str | None = None,
    cuda_graph: bool = False,
) -> Runtime:
    """A runtime for ``source``: an artifact folder (ONNX Runtime / TVM by its manifest's format)
    or anything ``edgeseq.checkpoints.load_model`` accepts (PyTorch eager)."""
    if is_artifact(source):
        artifact = read_artifact(source)
        if runtime not in (None, artifact.format, "onnxruntime" if artifact.format == "onnx" else "tvm"):
            raise InputError(f"{source}: a {artifact.format} artifact runs in its own runtime, not {runtime!r}")
        if artifact.format == "onnx":
            rt: Runtime = OnnxRuntime(artifact, device, threads)
        else:
            rt = TvmRuntime(artifact, device, threads)
        from targets.selfcheck import check_on_device

        # proof on the device: the shipped reference stream, once per device and runtime (cached)
        check_on_device(artifact.folder, artifact.manifest, f"{artifact.format}-{device}", lambda x, s: rt.step(x, s))
        return rt
    if runtime not in (None, "torch", "torch-cudagraph", "triton"):
        raise InputError(f"{source}: a model (not an exported artifact) runs in the torch runtime; export it first for {runtime}")
    from edgeseq.checkpoints import load_model

    loaded = load_model(source)
    if runtime == "triton" or (runtime is None and device.startswith("cuda") and not cuda_graph):
        # the fused Triton step (Mamba on CUDA), verified against Mamba.step; None: not applicable
        from targets.gpu.runtime import open_fused

        fused = open_fused(loaded.model, device, str(source), required=runtime == "triton")
        if fused is not None:
            return fused
    rt = TorchRuntime(loaded.model, device=device, cuda_graph=cuda_graph or runtime == "torch-cudagraph", source=str(source))
    rt.set_threads(threads)
    return rt


__all__ = [
    "Artifact",
    "OnnxRuntime",
    "Runtime",
    "StepIO",
    "TensorSpec",
    "TorchRuntime",
    "TvmRuntime",
    "is_artifact",
    "module_bytes",
    "open_runtime",
    "peak_rss_bytes",
    "read_artifact",
    "step_io_from_model",
]
