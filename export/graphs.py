"""The graphs edgeseq exports: the streaming step and the fixed-length prefill, with their I/O.

Both graphs take the recurrent state as flat, named tensors in ``state_spec()`` order:

* **step** — ``(x_t, *state) -> (y_t, *new_state)``: one token (``token``: int64 ``[B]``) or one
  frame (``frame``: float ``[B, F]``) to ``logits`` ``[B, V]`` / ``scores`` ``[B, C]``;
* **prefill** — ``(x, *state) -> (y, *final_state)``: a chunk of ``prefill_length`` tokens or
  frames starting from any state (the runtime feeds long prompts chunk by chunk and the remainder
  through ``step``). Only exported for models whose ``prefill`` is a parallel form; for the others
  the runtime streams the prompt through ``step``.

The batch dimension is symbolic (``batch``); the prefill length is fixed at export time (the
parallel scans unroll over it). The ONNX prefill graph of a language model whose ``prefill`` takes
``outputs_from`` (Mamba, Mamba-2) has one more input, ``logits_from`` (int64 scalar), stored with a
default of 0 (an initializer of the same name: callers that do not feed it get every position,
as before): fed ``L - 1``, the graph applies the LM head to the last position only and returns
``logits`` ``[B, 1, V]`` — what a generator needs, without ``L - 1`` head products.

Input kind and sizes come from the model's ``io_spec()``, the state from its ``state_spec()``;
:func:`check_state_spec` runs one step to check that both are true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from edgeseq.errors import InputError
from edgeseq.streaming import FlatPrefill, FlatStep, StateSpec, StreamingModel


@dataclass
class GraphIO:
    """Names, shapes (``"batch"``/``"time"`` for symbolic dims) and dtypes of a graph's tensors."""

    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    # inputs with a stored default that callers may leave out (the prefill's logits_from)
    optional_inputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [t["name"] for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t["name"] for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        out = {"inputs": self.inputs, "outputs": self.outputs}
        if self.optional_inputs:
            out["optional_inputs"] = self.optional_inputs
        return out


def input_name(model: StreamingModel) -> str:
    return "token" if model.io_spec().input_kind == "tokens" else "frame"


def output_name(model: StreamingModel) -> str:
    return "logits" if model.io_spec().output_kind == "logits" else "scores"


def input_features(model: StreamingModel) -> int:
    """Features per frame of a classifier (``io_spec().input_size``)."""
    io = model.io_spec()
    if io.input_kind != "features":
        raise InputError(f"{type(model).__name__} takes token ids, not frames of features")
    return io.input_size


def output_size(model: StreamingModel) -> int:
    """Logits per token (the vocabulary) or scores per frame (the classes): ``io_spec().output_size``."""
    return model.io_spec().output_size


def has_parallel_prefill(model: StreamingModel) -> bool:
    """True when the model overrides ``prefill`` with a parallel form (worth a graph of its own)."""
    return type(model).prefill is not StreamingModel.prefill


def sample_inputs(model: StreamingModel, batch: int, length: int, seed: int = 0) -> Tensor:
    """Seeded sample inputs ``[B, T]`` token ids or ``[B, T, F]`` frames (what verification feeds)."""
    gen = torch.Generator().manual_seed(seed)
    io = model.io_spec()
    if io.input_kind == "tokens":
        return torch.randint(0, io.input_size, (batch, length), generator=gen, dtype=io.input_dtype)
    return torch.randn(batch, length, io.input_size, generator=gen)


def check_state_spec(model: StreamingModel, batch: int = 2) -> list[StateSpec]:
    """Refuse a model whose ``init_state``/``step`` disagree with its ``state_spec`` (one line)."""
    specs = model.state_spec()
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"{type(model).__name__}.state_spec() repeats a state name: {names}")
    state = model.init_state(batch)
    if list(state) != names:
        raise InputError(
            f"{type(model).__name__}: init_state() gives {list(state)} but state_spec() lists {names}; "
            "they must name the same tensors in the same order"
        )
    io = model.io_spec()
    try:
        with torch.no_grad():
            y, new_state = model.step(sample_inputs(model, batch, 1)[:, 0], state)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{type(model).__name__}.step() fails on the zero state its state_spec() describes ({message}); "
            "state_spec() must list every state tensor with its shape without the batch dimension"
        ) from None
    for spec in specs:
        got = new_state.get(spec.name)
        if got is None:
            raise InputError(f"{type(model).__name__}.step() does not return state {spec.name!r} of its state_spec()")
        if tuple(got.shape) != (batch, *spec.shape):
            raise InputError(
                f"{type(model).__name__}.step() returns state {spec.name!r} with shape {tuple(got.shape)}, "
                f"state_spec() says {(batch, *spec.shape)} (batch first)"
            )
    extra = sorted(set(new_state) - set(names))
    if extra:
        raise InputError(f"{type(model).__name__}.step() returns state not in state_spec(): {extra}")
    if tuple(y.shape) != io.step_output_shape(batch):
        raise InputError(
            f"{type(model).__name__}.step() returns {io.output_kind} of shape {tuple(y.shape)}, "
            f"io_spec() says {io.step_output_shape(batch)} (batch first)"
        )
    return specs


# the traced wrappers are the contract's flat forms: (x_t, *state) -> (y_t, *new_state), and the
# prefill from any state (x, *state) -> (y, *final_state)
StepGraph = FlatStep

# the prefill graph's optional input: outputs for positions logits_from.. only (default 0: all)
OUTPUTS_FROM = "logits_from"


def takes_outputs_from(model: StreamingModel) -> bool:
    """True for a language model whose ``prefill`` accepts ``outputs_from`` (its LM head can
    skip positions): its ONNX prefill graph gets the ``logits_from`` input."""
    import inspect

    if model.io_spec().output_kind != "logits":
        return False
    return "outputs_from" in inspect.signature(type(model).prefill).parameters


class PrefillGraph(FlatPrefill):
    """``FlatPrefill``; with ``outputs_from`` the last argument is the first position whose output
    is computed (a 0-d int64 tensor, traced as the graph input ``logits_from``)."""

    def __init__(self, model: StreamingModel, outputs_from: bool = False):
        super().__init__(model)
        self.outputs_from = outputs_from

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:  # arg names as FlatPrefill's (torch.export)
        if not self.outputs_from:
            return super().forward(x, *state)
        *state, first = state
        y, final = self.model.prefill(x, dict(zip(self.names, state)) if state else None, outputs_from=first)
        return (y, *[final[n] for n in self.names])


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def step_io(model: StreamingModel, float_dtype: torch.dtype = torch.float32) -> GraphIO:
    io = model.io_spec()
    x_name, y_name = input_name(model), output_name(model)
    if io.input_kind == "tokens":
        x = {"name": x_name, "shape": ["batch"], "dtype": _dtype_name(io.input_dtype)}
    else:
        x = {"name": x_name, "shape": ["batch", io.input_size], "dtype": _dtype_name(float_dtype)}
    y = {"name": y_name, "shape": ["batch", io.output_size], "dtype": _dtype_name(float_dtype)}
    states = [{"name": s.name, "shape": ["batch", *s.shape], "dtype": _state_dtype(s, float_dtype)} for s in model.state_spec()]
    new_states = [{**s, "name": f"new_{s['name']}"} for s in states]
    return GraphIO([x, *states], [y, *new_states])


def prefill_io(model: StreamingModel, length: int, float_dtype: torch.dtype = torch.float32) -> GraphIO:
    io = step_io(model, float_dtype)
    x = dict(io.inputs[0])
    x["shape"] = ["batch", length, *x["shape"][1:]]
    y = dict(io.outputs[0])
    y["shape"] = ["batch", length, *y["shape"][1:]]
    return GraphIO([x, *io.inputs[1:]], [y, *io.outputs[1:]])


def _state_dtype(spec: StateSpec, float_dtype: torch.dtype) -> str:
    # a float state the model stores narrower than float32 (a float16 SSM state, quantize.state) keeps its dtype
    narrow = spec.dtype.is_floating_point and spec.dtype != torch.float32
    return _dtype_name(float_dtype if spec.dtype.is_floating_point and not narrow else spec.dtype)


def example_args(model: StreamingModel, batch: int, length: int | None, float_dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Example inputs for tracing: ``length=None`` for the step graph."""
    x = sample_inputs(model, batch, length or 1)
    if model.io_spec().input_kind == "features":
        x = x.to(float_dtype)
    if length is None:
        x = x[:, 0]
    state = model.init_state(batch, dtype=float_dtype)
    return (x, *state.values())


__all__ = [
    "GraphIO",
    "OUTPUTS_FROM",
    "PrefillGraph",
    "StepGraph",
    "check_state_spec",
    "example_args",
    "has_parallel_prefill",
    "input_features",
    "input_name",
    "output_name",
    "output_size",
    "prefill_io",
    "sample_inputs",
    "step_io",
    "takes_outputs_from",
]
