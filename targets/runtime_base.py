"""The ``Runtime`` contract every engine implements, and the I/O description it runs on.

* :class:`StepIO` / :class:`TensorSpec` — the step graph's input and state tensors, the task;
* :class:`Runtime` — ``io``, ``init_state``, ``step``, ``prefill``, ``set_threads``,
  ``model_bytes``, ``peak_memory_bytes``, ``label``; engines implement ``_step``/``_prefill``.

The engines themselves live in :mod:`targets.runtimes` (torch, ONNX Runtime, TVM),
:mod:`targets.rpc` (TVM over RPC) and :mod:`targets.gpu.runtime` (fused GPU kernels); they all
import this module, and nothing here imports them.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgeseq.errors import InputError
from targets.manifest import np_dtype

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
        return n * np.dtype(np_dtype(self.dtype)).itemsize


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
            return rng.integers(0, self.vocab_size or 2, size=shape).astype(np_dtype(self.x.dtype))
        return rng.standard_normal(shape).astype(np_dtype(self.x.dtype))

    def zero_state(self, batch: int = 1) -> list[np.ndarray]:
        return [np.zeros(s.concrete(batch), dtype=np_dtype(s.dtype)) for s in self.state]

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": vars(self.x), "state": [vars(s) for s in self.state], "task": self.task,
            "vocab_size": self.vocab_size, "prefill_length": self.prefill_length,
        }


def step_io_from_model(model: Any) -> StepIO:
    """The StepIO of a StreamingModel (its ``io_spec`` and ``state_spec``)."""
    io = model.io_spec()
    if io.input_kind == "tokens":
        x = TensorSpec("token", ["batch"], "int64")
    else:
        x = TensorSpec("frame", ["batch", io.input_size], "float32")
    state = [TensorSpec(s.name, ["batch", *s.shape], str(s.dtype).replace("torch.", "")) for s in model.state_spec()]
    return StepIO(x, state, model.task, io.vocab_size)


def step_io_from_manifest(manifest: dict[str, Any]) -> StepIO:
    """StepIO from an artifact manifest's graph description (``graphs.step.inputs``)."""
    graphs = manifest["graphs"]
    inputs = graphs["step"].get("inputs")
    if not inputs:
        raise InputError("the manifest lacks the step graph's inputs (graphs.step.inputs); re-export the artifact")
    specs = [TensorSpec(e["name"], list(e["shape"]), str(e.get("dtype", "float32"))) for e in inputs]
    prefill = graphs.get("prefill") if isinstance(graphs.get("prefill"), dict) else {}
    prefill_length = prefill.get("length") or prefill.get("prefill_length")
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    task = model.get("task") or manifest.get("task") or ("lm" if specs[0].dtype.startswith("int") else "classify")
    io = model.get("io") if isinstance(model.get("io"), dict) else {}  # the model's io_spec(), recorded at export
    vocab = io.get("input_size") if io.get("input_kind") == "tokens" else None
    if vocab is None and task == "lm":  # manifests written before io_spec was recorded
        vocab = (model.get("config") or manifest.get("config") or {}).get("vocab_size")
    return StepIO(specs[0], specs[1:], task, vocab, prefill_length)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def module_bytes(model: Any) -> int:
    """Bytes of parameters and buffers, counting shared (tied) tensors once."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


# --------------------------------------------------------------------------------------------
# the contract
# --------------------------------------------------------------------------------------------


class Runtime:
    """One way to run the step/prefill graphs. Engines implement ``_step`` (and ``_prefill``)."""

    name = "runtime"
    device = "cpu"
    has_prefill = False

    def __init__(self, io: StepIO, model_bytes: int, source: str = ""):
        self.io = io
        self.model_bytes = int(model_bytes)
        self.source = source
        self.threads: int | None = None

    @property
    def label(self) -> str:
        """Engine and device, e.g. ``onnxruntime``, ``tvm-cuda``: names verification records and caches."""
        return self.name

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

    def prefill(self, x: Any, state: Sequence[Any] | None = None, all_outputs: bool = False) -> tuple[Any, list[Any]]:
        """A whole prompt ``[B, P, ...]`` from ``state`` (zero state by default): whole chunks
        of the prefill graph's length through it, the rest through ``step``. Returns the last
        output (all ``P`` outputs, ``[B, P, ...]``, with ``all_outputs``) and the final state."""
        state = list(self.init_state(x.shape[0]) if state is None else state)
        length = x.shape[1]
        if length < 1:
            raise InputError("prefill needs at least one token/frame")
        chunk = self.io.prefill_length
        position, outputs = 0, []
        if self.has_prefill:
            size = chunk or length
            while position + size <= length:
                part = x[:, position:position + size]
                result = self._prefill(part, state) if all_outputs else self._prefill_last(part, state)
                outputs.append(result[0] if all_outputs else result[0][:, -1:])
                state = list(result[1:])
                position += size
        while position < length:  # the remainder (or everything) through step
            y, state = self.step(x[:, position], state)
            outputs.append(y[:, None])
            position += 1
        if not all_outputs:
            return outputs[-1][:, 0], state
        return self._concat(outputs), state

    def _concat(self, outputs: list[Any]) -> Any:
        return np.concatenate([np.asarray(o) for o in outputs], axis=1)

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA); a no-op on CPU."""

    def peak_memory_bytes(self) -> int | None:
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

    def _prefill_last(self, x: Any, state: list[Any]) -> Sequence[Any]:
        """``_prefill`` where only the last position's output is used; engines whose graph can
        skip the other positions' outputs (the ONNX prefill's ``logits_from``) override it."""
        return self._prefill(x, state)


__all__ = ["Runtime", "StepIO", "TensorSpec", "current_rss_bytes", "module_bytes", "peak_rss_bytes", "step_io_from_manifest", "step_io_from_model"]
