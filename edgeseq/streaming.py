"""The streaming-model contract every edgeseq model follows.

A streaming model is a ``torch.nn.Module`` with

* ``config`` — a :class:`ModelConfig` dataclass that round-trips through JSON;
* ``forward(x)`` — the parallel form over a whole sequence ``[B, T, ...]``;
* ``init_state(batch_size)`` — named, fixed-shape recurrent state (``dict[str, Tensor]``);
* ``step(x_t, state) -> (y_t, new_state)`` — one token/frame at constant cost;
* ``prefill(x, state=None) -> (y, final_state)`` — the parallel form that also returns the state;
* ``state_spec()`` — names, per-example shapes and dtypes of the state (what export needs);
* ``quant_points()`` — where a quantizer may act (see :class:`QuantPoint`).

Conventions shared by every model:

* language models (``task == "lm"``) take token ids: ``forward`` maps ``[B, T]`` int64 to logits
  ``[B, T, V]``; ``step`` maps ``[B]`` int64 to ``[B, V]``;
* classifiers (``task == "classify"``) take frames: ``forward`` maps ``[B, T, F]`` to per-frame
  scores ``[B, T, C]`` (the running mean over time is the streaming prediction, see
  ``running_mean_scores``); ``step`` maps ``[B, F]`` to ``[B, C]`` (per-frame score *before*
  averaging; the average is kept by the caller or in the state — models document which);
* state tensors have the batch dimension first; ``state_spec`` lists shapes *without* it;
* ``step`` never grows Python-side state: everything the future needs is in the returned dict.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from edgeseq.errors import InputError

State = dict[str, Tensor]


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Base class of every model config: a dataclass with a JSON round trip.

    Subclasses set ``family`` (a ClassVar: the registry name of the model family).
    """

    family: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps({"family": self.family, **self.to_dict()}, indent=2, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = {k: v for k, v in data.items() if k != "family"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            from edgeseq.errors import InputError

            raise InputError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
                # JSON has no tuples: turn lists back into tuples where the default is one
                if isinstance(value, list) and isinstance(getattr(cls, f.name, None), tuple):
                    value = tuple(value)
                values[f.name] = value
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------------------------
# state spec and quantization points
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateSpec:
    """One named state tensor; ``shape`` excludes the leading batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype).replace("torch.", "")}


@dataclass(frozen=True)
class QuantPoint:
    """A place where a quantizer may act, declared by the model (the quantizer stays generic).

    ``path`` is a module path inside the model (``model.get_submodule(path)``):

    * ``kind="linear"``/``"conv"`` — an ``nn.Linear``/``nn.Conv1d`` whose weight may be quantized
      and whose *input* activation may be quantized. ``input="spike"`` says the input is binary
      spikes (no activation quantizer needed). ``rotatable=True`` says an online Hadamard
      transform may be applied to the input with its inverse fused into this layer's weight
      (``y = (W Hᵀ)(H x)``), which is exact in float. ``input_quantized_at`` names an ActPoint that
      already quantizes this input (then the layer needs no input quantizer of its own).
    * ``kind="act"`` — an :class:`ActPoint` (identity) module the model calls on an activation
      that is quantized on its own (e.g. Mamba's SSM input). ``clip`` is the model's
      recommendation for its observer (``"percentile"`` where outliers hurt).
    """

    path: str
    kind: Literal["linear", "conv", "act"]
    input: Literal["real", "spike"] = "real"
    clip: Literal["max", "percentile"] = "max"
    rotatable: bool = False
    input_quantized_at: str = ""  # path of the ActPoint that already quantizes this layer's input
    note: str = ""
    # the layout of an act point's last dimension, for recipes with per-group or clustered scales:
    # ``groups`` equal contiguous blocks (Mamba-2's SSD groups of B and C, or of x's heads), and
    # ``heads`` equal contiguous heads of channels (Mamba-2's x: heads × headdim); 0/1 = no structure
    groups: int = 1
    heads: int = 0


class ActPoint(nn.Identity):
    """Identity marker for an activation a quantizer may observe and quantize (see QuantPoint)."""


# --------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------


def _require_time_steps(method):
    """``forward``/``prefill`` over ``[B, T, ...]`` with ``T = 0`` (or no time axis) is a one-line
    InputError, not an error from deep inside a convolution or ``torch.cat``."""
    import functools

    @functools.wraps(method)
    def checked(self, x, *args, **kwargs):
        if isinstance(x, Tensor) and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            if x.dim() < 2:
                raise InputError(f"{type(self).__name__}.{method.__name__} takes x of shape [batch, time, ...]; "
                                 f"got shape {list(x.shape)} (use step() for one token/frame)")
            if x.shape[1] == 0:
                raise InputError(f"{type(self).__name__}.{method.__name__} needs at least one time step; "
                                 f"got x of shape {list(x.shape)}")
        return method(self, x, *args, **kwargs)

    checked._checks_time = True  # type: ignore[attr-defined]
    return checked


class StreamingModel(nn.Module):
    """Base class: subclasses implement forward, init_state, step, state_spec, quant_points."""

    config: ModelConfig
    task: ClassVar[Literal["lm", "classify"]] = "lm"
    # Whether integer recipes may round the model's ``nn.Embedding`` tables (per-row, to the
    # recipe's ``embedding_bits``). A model whose embedding output feeds a threshold (a spiking
    # encoder) sets this False: rounding the table moves values across the threshold.
    embeddings_quantizable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("forward", "prefill"):
            if name in cls.__dict__ and not getattr(cls.__dict__[name], "_checks_time", False):
                setattr(cls, name, _require_time_steps(cls.__dict__[name]))

    # -- to implement ----------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:  # pragma: no cover
        raise NotImplementedError

    def state_spec(self) -> list[StateSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def quant_points(self) -> list[QuantPoint]:
        return []

    # -- provided --------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.config.family

    def _param_like(self) -> Tensor:
        for p in self.parameters():
            return p
        for b in self.buffers():
            return b
        return torch.zeros(())

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zero state for ``batch_size`` sequences (models with non-zero initial state override)."""
        ref = self._param_like()
        device = ref.device if device is None else device
        state = {}
        for spec in self.state_spec():
            dt = spec.dtype
            if dt.is_floating_point:
                dt = dtype or (ref.dtype if ref.dtype.is_floating_point else dt)
            state[spec.name] = torch.zeros((batch_size, *spec.shape), device=device, dtype=dt)
        return state

    def prefill(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Outputs over a whole prompt and the final state.

        The default runs ``step`` over time (correct for every model); models override it with
        their parallel form where the final state falls out of it.
        """
        batch = x.shape[0]
        state = self.init_state(batch) if state is None else state
        outputs = []
        for t in range(x.shape[1]):
            y_t, state = self.step(x[:, t], state)
            outputs.append(y_t)
        return torch.stack(outputs, dim=1), state

    @torch.no_grad()
    def step_sequence(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Run ``step`` over every position of ``x`` (the reference the parity tests use)."""
        return StreamingModel.prefill(self, x, state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_names(self) -> list[str]:
        return [s.name for s in self.state_spec()]


StreamingModel.prefill = _require_time_steps(StreamingModel.prefill)  # the step-by-step default too


def running_mean_scores(frame_scores: Tensor) -> Tensor:
    """Streaming prediction of a classifier: the running mean of per-frame scores over time.

    ``[B, T, C] -> [B, T, C]`` where position t holds the mean of frames 0..t.
    """
    steps = torch.arange(1, frame_scores.shape[1] + 1, device=frame_scores.device, dtype=frame_scores.dtype)
    return frame_scores.cumsum(dim=1) / steps[None, :, None]


class FlatStep(nn.Module):
    """``step`` with flat tensor inputs/outputs, in ``state_spec`` order: what export traces.

    ``forward(x_t, *state) -> (y_t, *new_state)``.
    """

    def __init__(self, model: StreamingModel):
        super().__init__()
        self.model = model
        self.names = model.state_names()

    def forward(self, x_t: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        y_t, new_state = self.model.step(x_t, dict(zip(self.names, state)))
        return (y_t, *[new_state[n] for n in self.names])


class FlatPrefill(nn.Module):
    """``prefill`` with flat inputs/outputs: ``forward(x, *state) -> (y, *final_state)``.

    With no state tensors it starts from the zero state; with them (in ``state_spec`` order) it
    continues from that state (what the exported prefill graph does).
    """

    def __init__(self, model: StreamingModel):
        super().__init__()
        self.model = model
        self.names = model.state_names()

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        y, final = self.model.prefill(x, dict(zip(self.names, state)) if state else None)
        return (y, *[final[n] for n in self.names])


__all__ = [
    "ActPoint",
    "FlatPrefill",
    "FlatStep",
    "ModelConfig",
    "QuantPoint",
    "State",
    "StateSpec",
    "StreamingModel",
    "field",
    "running_mean_scores",
]
