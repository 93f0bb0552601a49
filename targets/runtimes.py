"""The runtime layer: one ``Runtime`` contract, one implementation per engine.

Every way edgeseq runs a model goes through here — ``edgeseq run``, ``eval`` and ``profile`` on an
artifact, and the export's own verification of the graphs it has just written — so what is timed
is byte for byte what was verified.

* :class:`Runtime` — the contract, over numpy arrays (torch tensors for the torch engine, which
  keeps them on its device): ``io`` (:class:`StepIO`: the input, the state tensors, the task),
  ``init_state(batch)``, ``step(x_t, state) -> (y_t, state)``, ``prefill(x, state, all_outputs)``,
  ``set_threads``, ``model_bytes``, ``peak_memory_bytes()``, ``label`` (engine and device).
* Engines: :class:`TorchRuntime` (PyTorch eager, optionally one CUDA graph), :class:`OnnxRuntime`,
  :class:`TvmRuntime` (the Relax VM on this machine's CPU or GPU, with the artifact's
  ahead-of-time cubins), ``targets.rpc.RemoteTvmRuntime`` (a TVM artifact on a device reached
  through RPC) and ``targets.gpu.runtime.TritonMambaRuntime`` (fused GPU kernels).
* :class:`ArtifactModel` — the thin torch adapter: an artifact runtime seen as a streaming model
  (torch tensors, state dicts), so evaluators written for ``StreamingModel`` run artifacts unchanged.

``open_runtime(source)`` opens a model name/checkpoint (torch) or an artifact folder (by its
manifest's format, after :func:`targets.manifest.read_artifact` has checked it and, on the first
load on a device, the device has reproduced the artifact's reference stream).
``open_artifact(folder)`` is ``ArtifactModel(open_runtime(folder))``. TVM and ONNX Runtime are
imported only when such a runtime is opened.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeseq.errors import EdgeseqError, InputError, require
from targets.hostinfo import host_arch
from targets.manifest import Artifact, is_artifact, np_dtype, read_artifact
from targets.ort_capi import custom_ops_library
from targets.runtime_base import (
    Runtime,
    StepIO,
    TensorSpec,
    current_rss_bytes,
    module_bytes,
    peak_rss_bytes,
    step_io_from_manifest,
    step_io_from_model,
)

# --------------------------------------------------------------------------------------------
# PyTorch eager (and CUDA graphs)
# --------------------------------------------------------------------------------------------


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

    def _concat(self, outputs: list[Any]) -> Any:
        return self.torch.cat(outputs, dim=1)

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
# exported artifacts: what every engine over an artifact shares
# --------------------------------------------------------------------------------------------


class ArtifactRuntime(Runtime):
    """An engine over a checked :class:`~targets.manifest.Artifact`: it casts inputs to the dtypes
    the graphs declare, refuses token ids outside the vocabulary (ONNX ``Gather`` wraps negative
    ids where PyTorch raises) and starts from the artifact's shipped initial state."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        super().__init__(step_io_from_manifest(artifact.manifest), artifact.model_bytes, str(artifact.folder))
        self._initial = artifact.initial_state()

    @property
    def manifest(self) -> dict[str, Any]:
        return self.artifact.manifest

    def init_state(self, batch: int = 1) -> list[np.ndarray]:
        state = []
        for spec in self.io.state:
            shape = spec.concrete(batch)
            if spec.name in self._initial:
                value = np.broadcast_to(self._initial[spec.name].astype(np_dtype(spec.dtype)), shape).copy()
            else:
                value = np.zeros(shape, dtype=np_dtype(spec.dtype))
            state.append(value)
        return state

    def step(self, x_t: Any, state: Sequence[Any]) -> tuple[Any, list[Any]]:
        return super().step(*self._arrays(x_t, state))

    def prefill(self, x: Any, state: Sequence[Any] | None = None, all_outputs: bool = False) -> tuple[Any, list[Any]]:
        x = _numpy(x)
        x, state = self._arrays(x, self.init_state(x.shape[0]) if state is None else state)
        return super().prefill(x, state, all_outputs)

    def _arrays(self, x: Any, state: Sequence[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        if len(state) != len(self.io.state):
            raise InputError(f"the state holds {len(state)} tensors; this artifact's step takes {len(self.io.state)} "
                             f"({', '.join(self.io.state_names)}): use its init_state()")
        if self.io.task == "lm":
            self._check_ids(x)
        x = np.ascontiguousarray(np.asarray(x).astype(np_dtype(self.io.x.dtype), copy=False))
        state = [np.ascontiguousarray(np.asarray(s).astype(np_dtype(spec.dtype), copy=False)) for s, spec in zip(state, self.io.state)]
        return x, state

    def _check_ids(self, x: Any) -> None:
        ids = np.asarray(x)
        if ids.size == 0:
            return
        if not np.issubdtype(ids.dtype, np.integer) and not np.all(np.mod(ids, 1) == 0):
            raise InputError(f"token ids must be integers, got {ids.dtype} values")
        vocab = self.io.vocab_size
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or (vocab is not None and high >= vocab):
            raise InputError(f"token id {low if low < 0 else high} is outside the model's vocabulary (0..{(vocab or 0) - 1})")


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------


# mlas.disable_kleidiai: on aarch64 CPUs with sdot or i8mm, ONNX Runtime (1.2x-1.3x) hands 4-bit
# MatMulNBits at accuracy level 4 to KleidiAI, whose kernels quantize the activations per row
# (asymmetric), not per block as MLAS's own kernels and the block recipes do: another
# function (0.8% relative error on one layer, measured under qemu; docs/export.md). With it off,
# aarch64 computes what verification checked on x86-64. No effect on x86-64.
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "1", "mlas.disable_kleidiai": "1"}


def disabled_optimizers(path: str | Path) -> list[str]:
    """ONNX Runtime graph optimizers an edgeseq graph is opened without.

    ``MatMulAddFusion`` (basic level) turns ``MatMul`` + ``Add`` into ``Gemm`` before the QDQ fusions
    (extended level) see the ``DequantizeLinear → MatMul`` pair, and ``Gemm`` has no integer form
    without an output ``QuantizeLinear``: a static-int8 layer followed by a bias or residual add then
    dequantizes its int8 weight to float on every call (w8a8-norotate's out_proj and dt_proj: 6-layer
    130m-width step 18 → 6 ms at one thread, same outputs to 6e-7). Graphs holding static int8
    activation quantizers (``QuantizeLinear``) are opened without it; others keep it (neutral on
    float and block-quantized graphs, measured).
    """
    try:  # the op type is a plain string in the protobuf ("DequantizeLinear" does not contain it)
        graph = Path(path).read_bytes()
    except OSError:  # unreadable: ONNX Runtime says why, in ort_session
        return []
    return ["MatMulAddFusion"] if b"QuantizeLinear" in graph else []


def ort_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                optimized_model: str | Path | None = None, mem_pattern: bool = True):
    """An ONNX Runtime session for an edgeseq graph, configured as verification ran it.

    Profilers and runners must use the same settings as verification, or they measure another
    computation: ``accuracy_level`` 1 keeps float32 activations in fused MatMulNBits (ONNX
    Runtime's default, 4, quantizes them to int8 on the fly: not what a w4a16 recipe means).
    ``optimized_model`` also writes the graph as ONNX Runtime optimized it (the kernels it runs).
    ``mem_pattern=False`` leaves out ONNX Runtime's memory-pattern planning: for the prefill graph
    (large, short-lived activations) the planned block is allocated beside the arena the first
    run grew, which doubles the activation memory (130m w8a8-block, 128 tokens: 769 → 576 MiB
    peak RSS, the same tokens/s).
    """
    ort = require("onnxruntime", "pip install 'edgeseq[onnx]'")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = mem_pattern
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model is not None:
        options.optimized_model_filepath = str(optimized_model)
    library = custom_ops_library(path)
    if library is not None:
        try:
            options.register_custom_ops_library(str(library))
        except Exception as exc:
            raise EdgeseqError(f"cannot load the custom-op library {library}: {str(exc).strip().splitlines()[0][:200]}") from None
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    disabled = disabled_optimizers(path)
    try:
        return ort.InferenceSession(str(path), options, providers=chosen, disabled_optimizers=disabled)
    except Exception as exc:
        if "output_dtype" not in str(exc):
            raise EdgeseqError(f"{path}: ONNX Runtime cannot load this graph ({str(exc).strip().splitlines()[0][:300]})") from None
        # onnxruntime 1.2x-1.3x: on opset-21 graphs its QDQ propagation inserts QuantizeLinear nodes
        # whose output_dtype contradicts their zero point; the graph is valid without that pass
        return ort.InferenceSession(str(path), options, providers=chosen,
                                    disabled_optimizers=disabled + ["QDQPropagationTransformer"])


def _refcounts(arrays: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(a) for a in arrays]


class _BoundStep:
    """The CPU step graph run through two fixed IoBindings that ping-pong between two output sets.

    ``sets[k]`` holds one array per step output (``y``, then every state tensor) for one input
    shape; ``bindings[k]`` reads the input buffer ``x`` and ``sets[k]``'s state and writes
    ``sets[1 - k]``. Every array is allocated here, so it owns its memory and any view a caller
    takes of it references it; the bindings hold raw addresses, so the only references the
    runtime keeps are the lists (``baseline``: their reference counts when last bound). A set is
    written only while its reference counts are at that baseline: an array a caller still holds
    (a kept state, collected logits, a view or tensor over one) is left to the caller and a new
    one takes its place in the set and in both bindings.
    """

    def __init__(self, session: Any, x: np.ndarray, outputs: Sequence[np.ndarray]):
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        self.x = np.empty(x.shape, x.dtype)
        self.sets = [[np.empty(o.shape, o.dtype) for o in outputs] for _ in range(2)]
        self.bindings = [session.io_binding() for _ in range(2)]
        for k in range(2):
            self.bindings[k].bind_input(self.inputs[0], "cpu", 0, self.x.dtype, self.x.shape, self.x.ctypes.data)
            self._bind(k, range(len(outputs)))
        self.baseline = [_refcounts(s) for s in self.sets]
        self.last: int | None = None  # the set handed out last

    @staticmethod
    def fits(x: np.ndarray, state: list[np.ndarray], outputs: Sequence[Any]) -> bool:
        """Whether the step's outputs are ``y`` and then the state, tensor for tensor (shape and dtype)."""
        return (len(outputs) == len(state) + 1 and all(isinstance(o, np.ndarray) for o in outputs)
                and all(o.shape == s.shape and o.dtype == s.dtype for o, s in zip(outputs[1:], state)))

    def _bind(self, j: int, indices: Any) -> None:
        """Bind ``sets[j]``'s arrays at ``indices``: written by ``bindings[1 - j]``, the state read by ``bindings[j]``."""
        for i in indices:
            a = self.sets[j][i]
            self.bindings[1 - j].bind_output(self.outputs[i], "cpu", 0, a.dtype, a.shape, a.ctypes.data)
            if i:
                self.bindings[j].bind_input(self.inputs[i], "cpu", 0, a.dtype, a.shape, a.ctypes.data)

    def _claim(self, j: int) -> None:
        """Make ``sets[j]`` safe to overwrite: arrays referenced outside the runtime are replaced."""
        held = [i for i, (now, base) in enumerate(zip(_refcounts(self.sets[j]), self.baseline[j])) if now != base]
        if held:
            for i in held:
                self.sets[j][i] = np.empty_like(self.sets[j][i])
            self._bind(j, held)
            self.baseline[j] = _refcounts(self.sets[j])

    def step(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray] | None:
        """The step through the bindings, or None unless ``state`` is the set returned last."""
        k = self.last
        if k is None or len(state) != len(self.sets[k]) - 1 or any(a is not b for a, b in zip(state, self.sets[k][1:])):
            return None
        self._claim(1 - k)
        np.copyto(self.x, x)
        self.session.run_with_iobinding(self.bindings[k])
        self.last = 1 - k
        return list(self.sets[1 - k])

    def adopt(self, outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """A plain step's outputs copied into a set, so that the next step can run bound."""
        j = 0 if self.last == 1 else 1
        self._claim(j)
        for target, value in zip(self.sets[j], outputs):
            np.copyto(target, value)
        self.last = j
        return list(self.sets[j])


class OnnxRuntime(ArtifactRuntime):
    """ONNX Runtime sessions for the step (and prefill) graph; CUDA when asked and available.

    On the CPU provider a decode stream runs through preallocated I/O (:class:`_BoundStep`): the
    runtime owns two sets of output arrays (``y`` and every state tensor) per input shape (two
    shapes at a time) and two IoBindings built once, the state read from one set and the next
    written into the other, with no per-step allocation or copy of the state. The contract stays
    ``step(x_t, state) -> (y, new_state)`` and is safe for any caller:

    * the bound path runs only when ``state`` is exactly the list of arrays this runtime returned
      last (the same objects); any other state (``init_state``, a prefill's, one kept from
      earlier, another batch size, other dtypes) takes the plain ``session.run``. When a plain
      step's state is what the previous plain step returned (the caller feeds states back), its
      outputs are copied into a set and the following steps run bound: a stream from a fresh or a
      prefill's state runs two plain steps, then bound; teacher-forced states are never copied;
    * a set is overwritten only when nothing outside the runtime references any of its arrays
      (CPython reference counts against those the runtime itself holds): arrays a caller keeps
      (an old state, logits collected in a list, views or ``torch.from_numpy`` tensors over them)
      stay valid and unchanged forever; the runtime allocates new ones in their place;
    * the arrays are handed out, not lent: the caller may modify their values, which the next
      step reads (``new_state``) as it would any state (not their shape or dtype in place:
      ``a.shape = ...`` on a returned array is not supported). A step called while another
      thread's bound step runs takes the plain path.

    Outputs are bitwise those of ``session.run`` (the same session and kernels; tests/targets/
    test_onnx_bound_step.py). The CUDA provider always takes the plain path.
    """

    name = "onnxruntime"

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None, providers: list[str] | None = None):
        from targets import ort_capi

        if not (device == "cpu" and providers in (None, ["CPUExecutionProvider"]) and ort_capi.available()):
            # the Python binding (its import alone is 15 MiB of a runtime process; the C API's
            # library is loaded instead where it serves)
            require("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu for CUDA)")
        super().__init__(artifact)
        self.device = device
        self.providers = providers or self._providers()
        self.threads = threads
        self._make_sessions()
        self.has_prefill = self.artifact.prefill_file is not None

    @property
    def label(self) -> str:
        return self.name if self.device == "cpu" else f"{self.name}-{self.device}"

    def _providers(self) -> list[str]:
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in require("onnxruntime").get_available_providers():
                raise EdgeseqError("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu) — profile on --target host instead")
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _make_sessions(self) -> None:
        self.weights = self._shared_weights()
        self.step_session = self._session(self.artifact.step_file)
        self.step_inputs = [i.name for i in self.step_session.get_inputs()]
        cpu = self.step_session.get_providers() == ["CPUExecutionProvider"]
        self._bound: dict[tuple[int, ...], _BoundStep | None] | None = {} if cpu else None  # by input shape
        self._bound_lock = threading.Lock()
        self._plain_ids: dict[tuple[int, ...], list[int]] = {}  # id() of the state the last plain step returned, by input shape
        self._prefill_session = None  # opened on the first prompt: a decode-only stream never holds its weights

    @property
    def prefill_session(self) -> Any:
        if self._prefill_session is None and self.artifact.prefill_file is not None:
            self._prefill_session = self._session(self.artifact.prefill_file, mem_pattern=False)
            self.prefill_inputs = [i.name for i in self._prefill_session.get_inputs()]
            self._logits_from = any(i.name == "logits_from" for i in self._prefill_session.get_overridable_initializers())
        return self._prefill_session

    def _shared_weights(self) -> Any:
        """One copy of the weights for the step and prefill sessions (``targets.ort_capi``): on the
        CPU provider where ONNX Runtime's C API is usable, else None (each session its own)."""
        if self.providers != ["CPUExecutionProvider"]:
            return None
        from targets import ort_capi

        if not ort_capi.available():
            return None
        try:
            return ort_capi.SharedWeights(Path(self.artifact.step_file).parent)
        except (OSError, EdgeseqError):  # the C API unusable here after all: the Python binding
            require("onnxruntime", "pip install onnxruntime")
            return None

    def _session(self, path: Any, mem_pattern: bool = True) -> Any:
        if self.weights is None:
            return ort_session(path, self.threads, self.providers, mem_pattern=mem_pattern)
        from targets.ort_capi import CapiSession

        disabled = disabled_optimizers(path)
        try:
            return CapiSession(path, self.weights, self.threads, ORT_SESSION_CONFIG, mem_pattern, disabled)
        except EdgeseqError as exc:
            if "output_dtype" not in str(exc):
                raise
            # as in ort_session: onnxruntime 1.2x-1.3x QDQ propagation on opset-21 graphs
            return CapiSession(path, self.weights, self.threads, ORT_SESSION_CONFIG, mem_pattern,
                               disabled + ["QDQPropagationTransformer"])

    @property
    def kernels(self) -> str | None:
        """The artifact's own CPU kernels this runtime registers with ONNX Runtime and the ISA pass
        this CPU runs (``edgeseq.ops, avx2 loops``); None for a graph without them."""
        if self.providers != ["CPUExecutionProvider"]:
            return None
        from targets.ort_capi import custom_ops_library, fused_ops_loops

        library = custom_ops_library(self.artifact.step_file)
        if library is None:
            return None
        loops = fused_ops_loops(library)
        return "edgeseq.ops" + (f", {loops} loops" if loops else "")

    @property
    def binding(self) -> str:
        """Which ONNX Runtime binding opened the sessions: ``c-api`` (shared weights) or ``python``."""
        return "python" if self.weights is None else "c-api"

    def set_threads(self, threads: int | None) -> None:
        if threads != self.threads:
            self.threads = threads
            self._make_sessions()

    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:
        if self._bound is None or not self._bound_lock.acquire(blocking=False):
            return self.step_session.run(None, dict(zip(self.step_inputs, [x_t, *state])))
        try:
            bound = self._bound.get(x_t.shape)
            outputs = bound.step(x_t, state) if bound else None
            if outputs is not None:
                return outputs
            outputs = self.step_session.run(None, dict(zip(self.step_inputs, [x_t, *state])))
            fed = [id(a) for a in state] == self._plain_ids.pop(x_t.shape, None)  # what the last plain step returned
            if not fed:  # a fresh or teacher-forced state: not worth a copy
                self._plain_ids[x_t.shape] = [id(a) for a in outputs[1:]]
                return outputs
            if x_t.shape not in self._bound:
                if len(self._bound) >= 2:  # two input shapes keep their sets at a time
                    del self._bound[next(iter(self._bound))]
                fits = _BoundStep.fits(x_t, state, outputs)
                self._bound[x_t.shape] = _BoundStep(self.step_session, x_t, outputs) if fits else None
            bound = self._bound[x_t.shape]
            return bound.adopt(outputs) if bound else outputs
        finally:
            self._bound_lock.release()

    def _prefill(self, x: Any, state: list[Any]) -> Sequence[Any]:
        session = self.prefill_session  # opens it (and names its inputs) on the first prompt
        return session.run(None, dict(zip(self.prefill_inputs, [np.ascontiguousarray(x), *state])))

    def _prefill_last(self, x: Any, state: list[Any]) -> Sequence[Any]:
        # a prefill graph with the optional logits_from input (export.graphs.OUTPUTS_FROM) runs
        # the LM head on the last position only; older graphs compute every position
        session = self.prefill_session
        feeds = dict(zip(self.prefill_inputs, [np.ascontiguousarray(x), *state]))
        if self._logits_from:
            feeds["logits_from"] = np.array(x.shape[1] - 1, dtype=np.int64)
        return session.run(None, feeds)


# --------------------------------------------------------------------------------------------
# TVM (this machine's CPU or GPU)
# --------------------------------------------------------------------------------------------


_CUBINS: dict[str, bytes] = {}  # sha256 of CUDA kernel source -> the cubin shipped for it
_CUBIN_CALLBACK: list[Any] = []


def register_cubins(artifact: Artifact) -> None:
    """Serve the artifact's ahead-of-time cubins to TVM's load-time CUDA compile callback.

    TVM 0.27 libraries carry CUDA source and ask ``tvm_callback_cuda_compile`` for a binary when
    they load (see :func:`export.tvm_build.write_cubin`); this answers with the shipped cubin
    when the source's sha256 matches, and defers to the previous callback otherwise.
    """
    import tvm_ffi

    for spec in artifact.manifest["graphs"].values():
        if spec.get("cubin"):
            _CUBINS[spec["cuda_source_sha256"]] = (artifact.folder / spec["cubin"]).read_bytes()
    if _CUBIN_CALLBACK:
        return
    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def serve(code):
        digest = hashlib.sha256(str(code).encode()).hexdigest()
        if digest in _CUBINS:
            return bytearray(_CUBINS[digest])
        if previous is None:
            raise RuntimeError("no shipped cubin matches this CUDA source and no CUDA compiler is registered")
        return previous(code)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", serve, override=True)
    _CUBIN_CALLBACK.append(serve)


def tvm_outputs(result: Any) -> list[np.ndarray]:
    """A Relax VM call's result (one tensor or a tuple of them) as numpy arrays."""
    items = [result] if hasattr(result, "numpy") else list(result)
    return [r.numpy() for r in items]


class TvmRuntime(ArtifactRuntime):
    """The TVM Relax VM over a compiled library (``export_library`` .so) on this machine."""

    name = "tvm"

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None):
        self.tvm = require("tvm", "pip install 'edgeseq[tvm]' (apache-tvm)")
        target = artifact.target
        if target.get("arch") not in (None, host_arch()):
            raise InputError(f"{artifact.folder}: built for {target.get('arch')} ({target.get('name')}); copy it to that "
                             "device and run it there (or profile it through --rpc)")
        super().__init__(artifact)
        self.device = "cuda" if target.get("cuda_arch") else device
        self.set_threads(threads)
        self.dev = self._device()
        if target.get("cuda_arch"):
            register_cubins(artifact)
        self.step_vm = self._vm(artifact.step_file)
        self.prefill_vm = self._vm(artifact.prefill_file) if artifact.prefill_file else None
        self.has_prefill = self.prefill_vm is not None

    @property
    def label(self) -> str:
        return f"{self.name}-{self.device}"

    def _device(self) -> Any:
        if self.device.startswith("cuda"):
            dev = self.tvm.cuda(0)
            if not dev.exist:
                raise EdgeseqError("TVM sees no CUDA device here: run a CPU artifact, or this one on its GPU")
            return dev
        return self.tvm.cpu(0)

    def _vm(self, path: Path) -> Any:
        from tvm import relax

        try:
            return relax.VirtualMachine(self.tvm.runtime.load_module(str(path)), self.dev)
        except Exception as exc:
            raise EdgeseqError(f"{path}: the TVM runtime here cannot load it ({str(exc).strip().splitlines()[-1][:200]}); "
                               "was it compiled for this machine?") from None

    def set_threads(self, threads: int | None) -> None:
        super().set_threads(threads)
        if threads:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # read when the thread pool starts
            try:
                self.tvm.get_global_func("runtime.config_threadpool")(0, threads)
            except Exception:  # runtimes without it: the env var still applies
                pass

    def _run(self, vm: Any, args: list[Any]) -> list[Any]:
        return tvm_outputs(vm["main"](*[self.tvm.runtime.tensor(np.ascontiguousarray(a), device=self.dev) for a in args]))

    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:
        return self._run(self.step_vm, [x_t, *state])

    def _prefill(self, x: Any, state: list[Any]) -> Sequence[Any]:
        return self._run(self.prefill_vm, [x, *state])


# --------------------------------------------------------------------------------------------
# the torch adapter
# --------------------------------------------------------------------------------------------


class ArtifactModel:
    """An artifact runtime seen as a streaming model: ``step``/``prefill``/``forward`` on torch
    tensors with state dicts, ``task``, ``family``, ``config``, ``manifest``. ``engine`` is the
    :class:`ArtifactRuntime` underneath (numpy); ``runtime`` its label."""

    def __init__(self, engine: ArtifactRuntime):
        from edgeseq.models import config_class

        import torch

        self.torch = torch
        self.engine = engine
        self.runtime = engine.label
        self.folder = engine.artifact.folder
        self.manifest = engine.manifest
        model = self.manifest.get("model")
        if not isinstance(model, dict) or "family" not in model:
            raise InputError(f"{self.folder}: the manifest's 'model' entry lacks the family; re-export it with `edgeseq export`")
        self.task = model.get("task", engine.io.task)
        self.family = model["family"]
        self.config = config_class(self.family).from_dict(model.get("config") or {})
        self.prefill_length = engine.io.prefill_length if engine.has_prefill else 0
        self._handed: tuple[list[Any], list[np.ndarray]] = ([], [])

    def eval(self) -> "ArtifactModel":
        return self

    @property
    def vocab_size(self) -> int | None:
        return self.engine.io.vocab_size

    def state_names(self) -> list[str]:
        return self.engine.io.state_names

    def state_spec(self) -> list[dict[str, Any]]:
        return [vars(s).copy() for s in self.engine.io.state]

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> dict[str, Any]:
        return {n: self.torch.from_numpy(v) for n, v in zip(self.state_names(), self.engine.init_state(batch_size))}

    def _state_list(self, state: dict[str, Any]) -> list[np.ndarray]:
        missing = [n for n in self.state_names() if n not in state]
        if missing:
            raise InputError(f"state lacks {missing[0]!r}; use init_state() of this artifact")
        values = [state[n] for n in self.state_names()]
        tensors, arrays = self._handed
        if len(values) == len(tensors) and all(v is t and t.data_ptr() == a.ctypes.data for v, t, a in zip(values, tensors, arrays)):
            return list(arrays)  # the engine's own arrays under them: its bound step (OnnxRuntime) applies
        return [_numpy(v) for v in values]

    def _hand(self, new: list[np.ndarray]) -> dict[str, Any]:
        """The engine's state as tensors; remembered (with the arrays under them) for _state_list."""
        tensors = [self.torch.from_numpy(a) for a in new]
        self._handed = (tensors, new)
        return dict(zip(self.state_names(), tensors))

    def step(self, x_t: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        y, new = self.engine.step(_numpy(x_t), self._state_list(state))
        return self.torch.from_numpy(y), self._hand(new)

    def prefill(self, x: Any, state: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        y, new = self.engine.prefill(_numpy(x), None if state is None else self._state_list(state), all_outputs=True)
        return self.torch.from_numpy(y), self._hand(new)

    def prefill_last(self, x: Any, state: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """``prefill`` returning only the last position's output ``[B, ...]`` — what a generator
        needs; the ONNX prefill graph then skips the LM head for the other positions."""
        y, new = self.engine.prefill(_numpy(x), None if state is None else self._state_list(state), all_outputs=False)
        return self.torch.from_numpy(np.asarray(y)), self._hand(new)

    def forward(self, x: Any) -> Any:
        return self.prefill(x)[0]

    __call__ = forward


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# --------------------------------------------------------------------------------------------
# choosing a runtime
# --------------------------------------------------------------------------------------------


ARTIFACT_ENGINES = {"onnx": ("onnxruntime", "onnx"), "tvm": ("tvm",)}


def open_artifact_runtime(
    folder: str | Path, device: str = "cpu", threads: int | None = None, providers: list[str] | None = None,
    *, require_verified: bool = True, verify_files: bool = True, selfcheck: bool = True,
) -> ArtifactRuntime:
    """The engine for an artifact folder, after :func:`targets.manifest.read_artifact` checked it.

    With ``selfcheck`` (and a verified, checked artifact) the device first reproduces the
    artifact's reference stream, once per device and engine (cached, :mod:`targets.selfcheck`).
    """
    artifact = read_artifact(folder, require_verified=require_verified, verify_files=verify_files)
    if artifact.format == "onnx":
        engine: ArtifactRuntime = OnnxRuntime(artifact, device, threads, providers)
    else:
        engine = TvmRuntime(artifact, device, threads)
    if selfcheck and require_verified and verify_files:
        from targets.selfcheck import check_on_device

        check_on_device(artifact.folder, artifact.manifest, engine.label, engine.step)
    return engine


def open_artifact(
    folder: str | Path, threads: int | None = None, device: str = "cpu", providers: list[str] | None = None,
    verify_files: bool = True, require_verified: bool = True,
) -> ArtifactModel:
    """An artifact as a streaming model (torch tensors): :class:`ArtifactModel` over its engine."""
    return ArtifactModel(open_artifact_runtime(folder, device, threads, providers, require_verified=require_verified,
                                               verify_files=verify_files))


def open_runtime(
    source: str | Path, device: str = "cpu", threads: int | None = None, runtime: str | None = None,
    cuda_graph: bool = False,
) -> Runtime:
    """A runtime for ``source``: an artifact folder (ONNX Runtime / TVM by its manifest's format)
    or anything ``edgeseq.checkpoints.load_model`` accepts (PyTorch eager, or the fused GPU step)."""
    if is_artifact(source):
        engine = open_artifact_runtime(source, device, threads)
        fmt = engine.artifact.format
        if runtime not in (None, *ARTIFACT_ENGINES[fmt]):
            raise InputError(f"{source}: a {fmt} artifact runs in its own runtime ({ARTIFACT_ENGINES[fmt][0]}), not {runtime!r}")
        return engine
    if runtime not in (None, "torch", "torch-cudagraph", "triton"):
        raise InputError(f"{source}: a model (not an exported artifact) runs in the torch runtime; export it first for {runtime}")
    from edgeseq.checkpoints import load_model

    loaded = load_model(source)
    if runtime == "triton" or (runtime is None and device.startswith("cuda") and not cuda_graph):
        # the fused Triton step (Mamba or SpikeGPT on CUDA), verified against the model's step; None: not applicable
        from targets.gpu.runtime import open_fused

        fused = open_fused(loaded.model, device, str(source), required=runtime == "triton")
        if fused is not None:
            return fused
    rt = TorchRuntime(loaded.model, device=device, cuda_graph=cuda_graph or runtime == "torch-cudagraph", source=str(source))
    rt.set_threads(threads)
    return rt


__all__ = [
    "ArtifactModel", "ArtifactRuntime", "OnnxRuntime", "Runtime", "StepIO", "TensorSpec", "TorchRuntime", "TvmRuntime",
    "current_rss_bytes", "module_bytes", "open_artifact", "open_artifact_runtime", "open_runtime", "ort_session",
    "peak_rss_bytes", "register_cubins", "step_io_from_manifest", "step_io_from_model",
]
