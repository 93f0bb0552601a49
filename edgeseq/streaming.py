"""The streaming-model contract every edgeseq model follows.

A streaming model is a ``torch.nn.Module`` with

* ``config`` — a :class:`ModelConfig` dataclass that round-trips through JSON;
* ``forward(x)`` — the parallel form over a whole sequence ``[B, T, ...]``;
* ``init_state(batch_size)`` — named, fixed-shape recurrent state (``dict[str, Tensor]``);
* ``step(x_t, state) -> (y_t, new_state)`` — one token/frame at constant cost;
* ``prefill(x, state=None) -> (y, final_state)`` — the parallel form that also returns the state;
* ``state_spec()`` — names, per-example shapes and dtypes of the state (what export needs);
* ``io_spec()`` — what ``step`` takes and returns (an :class:`IOSpec`): token ids below a
  vocabulary size, or frames of a number of features; logits over a vocabulary, or class scores;
* ``quant_points()`` — where a quantizer may act (see :class:`QuantPoint`).

``state_spec()`` and ``io_spec()`` together describe the step graph completely: what builds
inputs for a model or exports it (export's graph I/O and verification inputs, the spiking
simulator's data, training's data plumbing, generation) reads the sizes from them, never from
config field names; ``IOSpec.to_dict()`` is the record of it a manifest stores.
Configs name the fields that set those sizes (``ModelConfig.input_size_field`` and
``output_size_field``) so that a model can be built to fit its data before it exists.

Conventions shared by every model:

* language models (``task == "lm"``) take token ids: ``forward`` maps ``[B, T]`` int64 to logits
  ``[B, T, V]``; ``step`` maps ``[B]`` int64 to ``[B, V]``;
* classifiers (``task == "classify"``) take frames: ``forward`` maps ``[B, T, F]`` to per-frame
  scores ``[B, T, C]`` (the running mean over time is the streaming prediction, see
  ``running_mean_scores``); ``step`` maps ``[B, F]`` to ``[B, C]`` (per-frame score *before*
  averaging; the average is kept by the caller or in the state — models document which);
* ``io_spec()`` says which: ``IOSpec(input_kind="tokens", input_size=V, output_kind="logits",
  output_size=V)`` or ``IOSpec(input_kind="features", input_size=F, output_kind="scores",
  output_size=C)``;
* state tensors have the batch dimension first; ``state_spec`` lists shapes *without* it;
* ``step`` never grows Python-side state: everything the future needs is in the returned dict.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
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

    Subclasses set ``family`` (a ClassVar: the registry name of the model family) and the names
    of the fields that set the step's input and output sizes (``input_size_field``: the
    vocabulary size or the features per frame; ``output_size_field``: the vocabulary size or the
    number of classes; see :class:`IOSpec`). Training sets those fields from its data.
    """

    family: ClassVar[str] = ""
    input_size_field: ClassVar[str] = ""
    output_size_field: ClassVar[str] = ""

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


@dataclass
class QuantizationRecord:
    """What post-training quantization did to a model, carried on it as ``model.quantization``.

    ``quantize`` sets it; export (integer embedding tables), the spiking simulator (integer-rounded
    tables), ``edgeseq info`` and the quantized-folder writer read it. ``None`` on a float model.
    """

    recipe: str
    embedding_bits: int = 0  # 0: float embedding tables; else rows rounded to this many bits
    embedding_tables: list[str] = field(default_factory=list)  # module paths of the rounded tables
    state_bits: int = 0  # 0: float decode state; else the state is carried as integers
    report: dict[str, Any] = field(default_factory=dict, repr=False)  # quantize's per-layer report, when at hand

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "report"}


def quantization_of(model: Any) -> QuantizationRecord | None:
    """A model's :class:`QuantizationRecord` (None for float models and other objects)."""
    record = getattr(model, "quantization", None)
    return record if isinstance(record, QuantizationRecord) else None


_DTYPES = {"int64": torch.int64, "int32": torch.int32, "float32": torch.float32, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass(frozen=True)
class IOSpec:
    """What ``step`` takes and returns (what ``io_spec()`` declares; batch dimension excluded).

    * ``input_kind="tokens"`` — ``step`` takes token ids ``[B]`` (``input_dtype`` int64) in
      ``0 .. input_size - 1``: ``input_size`` is the vocabulary size;
    * ``input_kind="features"`` — ``step`` takes one frame ``[B, input_size]`` (``input_dtype``
      float32; like float state, it follows the dtype the model or artifact runs in);
    * ``output_kind="logits"`` — ``step`` returns next-token logits ``[B, output_size]`` over a
      vocabulary of ``output_size``; ``output_kind="scores"`` — per-frame class scores
      ``[B, output_size]`` over ``output_size`` classes.

    ``forward``/``prefill`` take and return the same with a time axis after the batch.
    """

    input_kind: Literal["tokens", "features"]
    input_size: int
    output_kind: Literal["logits", "scores"]
    output_size: int
    input_dtype: torch.dtype = None  # type: ignore[assignment]  # int64 for tokens, float32 for features

    def __post_init__(self) -> None:
        if self.input_kind not in ("tokens", "features"):
            raise InputError(f"IOSpec.input_kind must be 'tokens' or 'features', got {self.input_kind!r}")
        if self.output_kind not in ("logits", "scores"):
            raise InputError(f"IOSpec.output_kind must be 'logits' or 'scores', got {self.output_kind!r}")
        for name in ("input_size", "output_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"IOSpec.{name} must be a positive integer, got {value!r}")
        if self.input_dtype is None:
            object.__setattr__(self, "input_dtype", torch.int64 if self.input_kind == "tokens" else torch.float32)
        if self.input_kind == "tokens" and self.input_dtype.is_floating_point:
            raise InputError(f"IOSpec: token ids must have an integer dtype, got {self.input_dtype}")
        if self.input_kind == "features" and not self.input_dtype.is_floating_point:
            raise InputError(f"IOSpec: frames must have a floating-point dtype, got {self.input_dtype}")

    @classmethod
    def tokens(cls, vocab_size: int, output_size: int | None = None) -> "IOSpec":
        """A language model: token ids below ``vocab_size`` in, logits (over ``vocab_size`` unless
        given) out."""
        return cls("tokens", vocab_size, "logits", vocab_size if output_size is None else output_size)

    @classmethod
    def features(cls, n_features: int, n_classes: int) -> "IOSpec":
        """A frame classifier: frames of ``n_features`` in, scores over ``n_classes`` out."""
        return cls("features", n_features, "scores", n_classes)

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary size of token inputs (None for frame inputs)."""
        return self.input_size if self.input_kind == "tokens" else None

    def step_input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch,) if self.input_kind == "tokens" else (batch, self.input_size)

    def step_output_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.output_size)

    def to_dict(self) -> dict[str, Any]:
        return {"input_kind": self.input_kind, "input_size": self.input_size,
                "input_dtype": str(self.input_dtype).replace("torch.", ""),
                "output_kind": self.output_kind, "output_size": self.output_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IOSpec":
        """The inverse of :meth:`to_dict` (what a manifest stores); a bad record is a one-line error."""
        try:
            dtype = data.get("input_dtype")
            if dtype is not None and dtype not in _DTYPES:
                raise InputError(f"IOSpec: unknown input_dtype {dtype!r}")
            return cls(data["input_kind"], data["input_size"], data["output_kind"], data["output_size"],
                       None if dtype is None else _DTYPES[dtype])
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"not an IOSpec record ({type(exc).__name__}: {exc})") from None


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
    """Base class: subclasses implement forward, step, state_spec, io_spec (and quant_points)."""

    config: ModelConfig
    task: ClassVar[Literal["lm", "classify"]] = "lm"
    # Whether integer recipes may round the model's ``nn.Embedding`` tables (per-row, to the
    # recipe's ``embedding_bits``). A model whose embedding output feeds a threshold (a spiking
    # encoder) sets this False: rounding the table moves values across the threshold.
    embeddings_quantizable: ClassVar[bool] = True
    # set by quantization (see QuantizationRecord); None on a float model
    quantization: QuantizationRecord | None = None

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

    def io_spec(self) -> IOSpec:
        """What ``step`` takes and returns (see :class:`IOSpec`). Every model declares it."""
        raise InputError(f"{type(self).__name__} does not declare what its step takes and returns: "
                         "implement io_spec() (see edgeseq.streaming.IOSpec)")

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
    "QuantizationRecord",
    "quantization_of",
    "ActPoint",
    "FlatPrefill",
    "FlatStep",
    "IOSpec",
    "ModelConfig",
    "QuantPoint",
    "State",
    "StateSpec",
    "StreamingModel",
    "field",
    "running_mean_scores",
]
