"""The simulation engine: event-driven execution of spiking streaming models, with instrumented
operation counts. (Whole-model reports built on it are :mod:`edgeseq.spiking.report`; a minimal
spiking model to run through it is :mod:`edgeseq.spiking.mlp`.)

A spiking model runs through its own ``step`` code, unchanged. Inside :class:`Simulator`
(a context manager) every ``nn.Linear`` / ``nn.Conv1d`` of the model has its ``forward``
temporarily replaced:

* ``mode="event"`` — when the layer's input is binary spikes (all values in {0, 1}, checked at
  run time on every call), the output is computed address-event style: the weight columns of the
  inputs that fired are **gathered** and **summed** (``index_add``), no dense matmul. The
  accumulate count is taken from the event list handed to the gather kernel (columns really
  gathered × fan-out).
  Layers whose input is real-valued run dense. The weights are kept fan-out major (one row of
  outgoing weights per input, as an event-driven engine stores its synapses) and the gather-and-sum
  runs as one ``embedding_bag`` kernel over the list of fired inputs.
* ``mode="dense"`` — every layer runs its dense matmul; the same NeuroBench counts are derived
  from the inputs (non-zero count × fan-out), so the two modes can be compared.

LIF populations report through their ``counter`` hook (neuron updates, spikes, spike rate).
Every other arithmetic operation the model performs while stepping (LayerNorm, the WKV
recurrence, gates, matmuls in model code) is counted at the ATen dispatch level by a
``TorchDispatchMode`` and attributed to the innermost module (or sub-block ``step``) running it,
so dense non-synaptic work is reported honestly instead of being left out. Counts follow
NeuroBench (Yik et al. 2023, arXiv:2304.04640); see :mod:`edgeseq.spiking.counts`.

Typical use::

    result = simulate(model, tokens)            # [B, T] ids or [B, T, F] frames
    result.counts.to_dict()["total"]["eff_acs"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from edgeseq.errors import InputError
from edgeseq.spiking.counts import Counts, LayerCounts
from edgeseq.models.lif import LIF
from edgeseq.streaming import quantization_of

Mode = Literal["event", "dense"]
STATE_BUCKET = "(recurrent state)"
CODE_BUCKET = "(model step code)"
ATTRIBUTED_METHODS = ("step", "run")  # sub-module methods whose arithmetic is attributed to that sub-module

# --------------------------------------------------------------------------------------------
# the gathers: what an address-event synaptic layer computes
# --------------------------------------------------------------------------------------------


def is_binary(x: Tensor) -> bool:
    """True when every value of ``x`` is exactly 0 or 1 (spikes)."""
    if x.dtype == torch.bool:
        return True
    return bool(((x == 0) | (x == 1)).all())


def _bag_offsets(bag_idx: Tensor, n_bags: int) -> Tensor:
    """Start of each bag in a sorted list of bag ids (``embedding_bag`` offsets)."""
    counts = torch.bincount(bag_idx, minlength=n_bags)
    offsets = torch.zeros(n_bags, dtype=torch.long, device=bag_idx.device)
    offsets[1:] = counts.cumsum(0)[:-1]
    return offsets


def gather_sum(table: Tensor, event_idx: Tensor, bag_idx: Tensor, n_bags: int) -> Tensor:
    """The address-event accumulate: for each output row (bag), sum the ``table`` rows its events name.

    ``table`` ``[inputs, out]`` holds one weight column per presynaptic input (fan-out major);
    ``event_idx`` ``[events]`` the inputs that fired, ``bag_idx`` ``[events]`` (sorted) the output
    row each event belongs to. Runs as one ``embedding_bag(mode="sum")`` kernel: the columns are
    gathered and summed without materialising them or touching silent inputs.
    """
    return F.embedding_bag(event_idx, table, _bag_offsets(bag_idx, n_bags), mode="sum")


def gather_linear(spikes: Tensor, weight: Tensor, bias: Tensor | None,
                  weight_by_input: Tensor | None = None) -> tuple[Tensor, int]:
    """``y = W s + b`` for binary ``s``, by gathering the columns of ``W`` whose input fired.

    ``spikes`` ``[..., in]``, ``weight`` ``[out, in]`` -> ``(y [..., out], columns_gathered)``.
    ``weight_by_input`` is ``W`` stored fan-out major (``[in, out]``, contiguous: one row per
    presynaptic neuron, as an event-driven engine stores its synapses); built when not given.
    """
    if weight_by_input is None:
        weight_by_input = weight.t().contiguous()
    rows = spikes.reshape(-1, spikes.shape[-1])  # [N, in]
    row_idx, in_idx = rows.nonzero(as_tuple=True)  # one address event per spike, sorted by row
    out = gather_sum(weight_by_input, in_idx, row_idx, rows.shape[0])  # gather the fired columns, sum
    if bias is not None:
        out = out + bias
    return out.reshape(*spikes.shape[:-1], weight.shape[0]), int(in_idx.numel())


def conv_weight_by_input(conv: Any) -> Tensor:
    """A conv weight fan-out major: ``[groups * C_in/groups * K, C_out/groups]`` contiguous (row =
    group-major (group, input channel, tap(s))). ``conv``: an ``nn.Conv1d``/``nn.Conv2d`` or any object
    with ``weight``, ``groups`` and ``out_channels``."""
    groups, c_out = conv.groups, conv.out_channels
    per_group = conv.weight.reshape(groups, c_out // groups, -1).permute(0, 2, 1)  # [g, C_g*K, Cout_g]
    return per_group.reshape(-1, c_out // groups).contiguous()


def _conv1d_padding(conv: Any) -> tuple[int, int]:
    k, dil = conv.kernel_size[0], conv.dilation[0]
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0, 0
        total = dil * (k - 1)  # "same"
        return total // 2, total - total // 2
    return conv.padding[0], conv.padding[0]


def conv1d_patches(x: Tensor, conv: Any) -> Tensor:
    """Input patches of a 1-D convolution: ``[B, C, L] -> [B * L_out, groups, C/groups * K]``.

    Zero padding adds zeros, which never fire and are never multiplied in an event-driven layer.
    """
    k, dil, stride, groups = conv.kernel_size[0], conv.dilation[0], conv.stride[0], conv.groups
    left, right = _conv1d_padding(conv)
    x = F.pad(x, (left, right))
    span = dil * (k - 1) + 1
    patches = x.unfold(2, span, stride)[..., ::dil]  # [B, C, L_out, K]
    b, c, l_out, _ = patches.shape
    return patches.permute(0, 2, 1, 3).reshape(b * l_out, groups, (c // groups) * k)


def _conv2d_pads(conv: Any) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) of a 2-D convolution's zero padding."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0, 0, 0, 0
        pads = []
        for k, dil in zip(reversed(conv.kernel_size), reversed(conv.dilation)):  # width first for F.pad
            total = dil * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    ph, pw = conv.padding
    return pw, pw, ph, ph


def conv2d_patches(x: Tensor, conv: Any) -> Tensor:
    """Input patches of a 2-D convolution: ``[B, C, H, W] -> [B * L_out, groups, C/groups * kh * kw]``."""
    x = F.pad(x, _conv2d_pads(conv))
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)  # [B, C*kh*kw, L]
    b, ck, l_out = cols.shape
    return cols.permute(0, 2, 1).reshape(b * l_out, conv.groups, ck // conv.groups)


def gather_conv1d(spikes: Tensor, conv: Any, weight_by_input: Tensor | None = None) -> tuple[Tensor, int]:
    """Event-driven 1-D convolution of binary ``spikes`` ``[B, C, L]`` -> ``([B, C_out, L_out], columns)``.

    Each fired input element of each output position's receptive field gathers the weight column
    ``W[group's outputs, c, k]`` and adds it into that output position.
    """
    b = spikes.shape[0]
    groups = conv.groups
    c_out = conv.out_channels
    if weight_by_input is None:
        weight_by_input = conv_weight_by_input(conv)  # [g, C_g*K, Cout_g]
    patches = conv1d_patches(spikes, conv)  # [B*L_out, g, C_g*K]
    l_out, taps = patches.shape[0] // b, patches.shape[2]
    pos_idx, group_idx, tap_idx = patches.nonzero(as_tuple=True)  # sorted by (position, group)
    out = gather_sum(weight_by_input, group_idx * taps + tap_idx, pos_idx * groups + group_idx,
                     patches.shape[0] * groups)  # [B*L_out*g, Cout_g]
    out = out.reshape(b, l_out, c_out).permute(0, 2, 1)
    if conv.bias is not None:
        out = out + conv.bias[None, :, None]
    return out, int(tap_idx.numel())


# --------------------------------------------------------------------------------------------
# synaptic layers: float nn.Linear / nn.Conv1d / nn.Conv2d, and modules following the protocol
# --------------------------------------------------------------------------------------------

SYNAPTIC_PROTOCOL = "synaptic_spec"
"""Name of the method a module defines to be simulated as a synaptic layer (duck typing: edgeseq
imports nothing from the module's package). ``module.synaptic_spec()`` returns a dict:

========================  =====================================================================
``kind``                  ``"linear"``, ``"conv1d"`` or ``"conv2d"``
``weight``                the weight as the layer's arithmetic uses it (dequantized), shaped as
                          ``nn.Linear``/``nn.ConvNd`` weights
``bias``                  tensor or None
``transform_input``       callable ``x -> values multiplied`` (e.g. rotation + input quantization),
                          or None; the layer must compute ``linear/convNd(transform_input(x),
                          weight.to(x.dtype), bias.to(x.dtype), ...)``
``weight_bits``           bits per stored weight (0: float, counted at its dtype's size)
``act_bits``              bits the layer quantizes its input to (0: it multiplies float inputs)
``weight_bytes``          storage of the weight, scales included (bytes; may be fractional)
``scale_bytes``           of which scales
``group_size``            input columns sharing one scale per output (0: per tensor/channel)
``stride``, ``padding``,  convolutions: as ``nn.ConvNd`` (tuples, or a padding string)
``dilation``, ``groups``
========================  =====================================================================

``edgeseq``'s quantized layers (``quantize.modules.QuantLinear``/``QuantConv1d``/``QuantConv2d``)
implement it."""


class _ConvView:
    """A convolution's geometry and (a given version of) its weight, as the patch/gather helpers read it."""

    def __init__(self, syn: "Synapse", weight: Tensor, bias: Tensor | None = None):
        self.weight, self.bias = weight, bias
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding, self.dilation, self.groups = syn.stride, syn.padding, syn.dilation, syn.groups
        self.out_channels = weight.shape[0]


@dataclass
class Synapse:
    """What the simulator needs of one synaptic layer."""

    kind: str  # linear | conv1d | conv2d
    weight: Tensor
    bias: Tensor | None
    transform: Callable[[Tensor], Tensor] | None = None
    weight_bits: int = 0
    act_bits: int = 0
    weight_nbytes: float = 0.0  # storage, scales included
    scale_nbytes: float = 0.0
    group_size: int = 0
    stride: tuple[int, ...] = (1,)
    padding: Any = (0,)
    dilation: tuple[int, ...] = (1,)
    groups: int = 1

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()  # inputs per output (per group for convolutions)

    @property
    def element_bytes(self) -> float:
        """Bytes of one stored weight."""
        return self.weight_bits / 8 if self.weight_bits else self.weight.element_size()

    @property
    def scale_groups(self) -> int:
        """Scale groups along one output's inputs (per-group quantization), else 1."""
        return self.fan_in // self.group_size if self.group_size else 1

    @property
    def bias_nbytes(self) -> int:
        return 0 if self.bias is None else _bytes(self.bias)


def synapse_of(module: nn.Module) -> Synapse | None:
    """The synaptic view of ``module``: a float ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` with its own
    ``forward``, or a module implementing :data:`SYNAPTIC_PROTOCOL`; None for anything else."""
    spec_fn = getattr(module, SYNAPTIC_PROTOCOL, None)
    if callable(spec_fn):
        spec = spec_fn()
        weight = spec["weight"]
        kind = spec["kind"]
        if kind not in ("linear", "conv1d", "conv2d"):
            raise InputError(f"{type(module).__name__}.{SYNAPTIC_PROTOCOL}() gave kind {kind!r}; "
                             "expected linear, conv1d or conv2d")
        dims = 2 if kind == "conv2d" else 1
        tup = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims)
        padding = spec.get("padding", 0)
        return Synapse(
            kind, weight, spec.get("bias"), spec.get("transform_input"), int(spec.get("weight_bits", 0)),
            int(spec.get("act_bits", 0)), float(spec.get("weight_bytes", _bytes(weight))),
            float(spec.get("scale_bytes", 0.0)), int(spec.get("group_size", 0)), tup(spec.get("stride", 1)),
            padding if isinstance(padding, str) else tup(padding), tup(spec.get("dilation", 1)),
            int(spec.get("groups", 1)),
        )
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return Synapse("linear", module.weight, module.bias, weight_nbytes=_bytes(module.weight))
    for cls, kind in ((nn.Conv1d, "conv1d"), (nn.Conv2d, "conv2d")):
        if isinstance(module, cls) and type(module).forward is cls.forward:
            if module.padding_mode != "zeros":
                return None
            return Synapse(kind, module.weight, module.bias, weight_nbytes=_bytes(module.weight),
                           stride=module.stride, padding=module.padding, dilation=module.dilation,
                           groups=module.groups)
    return None


def _row_kinds(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of ``rows [N, k]``: (non-zero count, all values in {0, 1}, all values in {−1, 0, 1})."""
    zero = rows == 0
    one = rows == 1
    binary = (zero | one).all(-1)
    ternary = (zero | one | (rows == -1)).all(-1)
    return (~zero).sum(-1), binary, ternary


# --------------------------------------------------------------------------------------------
# counting the rest: ATen-level operation counter
# --------------------------------------------------------------------------------------------

# ops per output element (elementwise arithmetic, comparisons and selections)
ELEMENTWISE_OPS: dict[str, int] = {
    name: 1
    for name in (
        "add sub rsub mul div neg exp exp2 expm1 log log1p log2 sigmoid tanh relu gelu silu softplus "
        "pow sqrt rsqrt reciprocal square maximum minimum fmax fmin clamp clamp_min clamp_max abs "
        "sign sgn where lerp ge gt le lt eq ne logical_not logical_and logical_or heaviside erf "
        "sin cos floor ceil round trunc hardtanh leaky_relu elu hardsigmoid hardswish masked_fill "
        "threshold mish"
    ).split()
}
ELEMENTWISE_OPS.update({"addcmul": 2, "addcdiv": 2})
# ops per *input* element (reductions)
REDUCTION_OPS = set("sum mean amax amin max min prod logsumexp cumsum cumprod var std var_mean std_mean norm linalg_vector_norm".split())
# ops per element of normalisations / softmax (textbook formula, see docs/spiking.md)
PER_ELEMENT_OPS = {
    "native_layer_norm": 7,  # mean, centre, square-accumulate (2), scale, affine (2)
    "native_group_norm": 7,
    "_native_batch_norm_legit_no_training": 2,  # folded scale and shift
    "native_batch_norm": 2,
    "_softmax": 5,  # max-subtract, exp, sum, divide (+ max)
    "_log_softmax": 5,
}
MATMUL_OPS = {"mm", "bmm", "addmm", "baddbmm", "mv", "addmv", "dot", "convolution"}


def _matmul_counts(name: str, args: tuple, out: Tensor) -> tuple[int, int, int, int]:
    """``(dense_macs, nonzero_real_macs, nonzero_spike_macs, extra_adds)`` of a matmul-like ATen op.

    Each row of the left operand (one input vector) is classified on its own: all values in
    {0, 1} -> spikes (accumulates), else real (MACs), so counts do not depend on the batch."""
    if name in ("addmm", "baddbmm", "addmv"):
        bias, a, b = args[0], args[1], args[2]
        extra = out.numel()
    else:
        a, b = args[0], args[1]
        extra = 0
    if name == "convolution":
        weight = args[1]
        per_out = weight[0].numel()  # C_in/groups * K...
        dense = out.numel() * per_out
        return dense, dense, 0, 0  # inputs of an un-patched conv: counted dense (and warned about)
    fan_out = b.shape[-1] if b.dim() >= 2 else 1
    dense = a.numel() * fan_out
    rows = a.reshape(-1, a.shape[-1]) if a.dim() >= 1 else a.reshape(1, 1)
    nonzero, binary, _ = _row_kinds(rows)
    spike = int(nonzero[binary].sum()) * fan_out
    real = int(nonzero[~binary].sum()) * fan_out
    return dense, real, spike, extra


# modules with weights that are not synaptic layers and are counted correctly at the operator level
_NON_SYNAPTIC_WEIGHTED = tuple(
    cls for cls in (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.Embedding, getattr(nn, "RMSNorm", None))
    if cls is not None
)


class _OpCounter(TorchDispatchMode):
    """Counts arithmetic ATen ops into the simulator's current bucket (unless suppressed)."""

    def __init__(self, sim: "Simulator"):
        super().__init__()
        self.sim = sim

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sim = self.sim
        if sim._suppress:
            return out
        name = func.overloadpacket.__name__.rstrip("_")
        layer = None
        if name in ELEMENTWISE_OPS and isinstance(out, Tensor):
            layer = sim._bucket()
            layer.add_op(name, ELEMENTWISE_OPS[name] * out.numel())
        elif name in REDUCTION_OPS and args and isinstance(args[0], Tensor):
            layer = sim._bucket()
            layer.add_op(name, args[0].numel())
        elif name in PER_ELEMENT_OPS and args and isinstance(args[0], Tensor):
            layer = sim._bucket()
            layer.add_op(name, PER_ELEMENT_OPS[name] * args[0].numel())
        elif name in MATMUL_OPS and isinstance(out, Tensor):
            layer = sim._bucket()
            dense, real, spike, extra = _matmul_counts(name, args, out)
            if name == "convolution" and not sim._matmuls_as_ops:
                sim._warn(f"{sim._stack[-1] if sim._stack else CODE_BUCKET}: a convolution outside the synaptic layers "
                          "was counted as dense MACs (every input treated as non-zero, no weight bytes)")
            if sim._matmuls_as_ops:  # inside a synaptic layer's input transform (e.g. a rotation)
                layer.add_op(f"{name}({sim._matmuls_as_ops})", dense + extra)
                return out
            layer.dense_macs += dense
            layer.eff_macs += real
            layer.eff_acs += spike
            if extra:
                layer.add_op("bias_add", extra)
        return out


# --------------------------------------------------------------------------------------------
# the simulator
# --------------------------------------------------------------------------------------------


def _bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class _Patch:
    module: nn.Module
    attr: str
    had_own: bool
    old: Any


class Simulator:
    """Context manager that instruments (and, in event mode, re-routes) a model's layers.

    ``declared_spike_layers``: module paths whose input the model declares binary
    (``quant_points()`` with ``input="spike"``); defaults to the model's declaration. A declared
    layer that receives non-binary values is run dense and reported in ``warnings``.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: Mode = "event",
        count_ops: bool = True,
        record_spikes: bool = False,
        declared_spike_layers: Iterable[str] | None = None,
    ):
        if mode not in ("event", "dense"):
            raise InputError(f"simulation mode must be 'event' or 'dense', not {mode!r}")
        self.model = model
        self.mode = mode
        self.count_ops = count_ops
        self.record_spikes = record_spikes
        if declared_spike_layers is None:
            points = model.quant_points() if hasattr(model, "quant_points") else []
            declared_spike_layers = [p.path for p in points if getattr(p, "input", "real") == "spike"]
        self.declared_spike_layers = set(declared_spike_layers)
        self.counts = Counts()
        self.spike_trace: dict[str, list[Tensor]] = {}
        self.warnings: list[str] = []
        self._patches: list[_Patch] = []
        self._hooks: list[Any] = []
        self._stack: list[str] = []
        self._suppress = 0
        self._matmuls_as_ops = ""  # set while a synaptic layer transforms its input (rotation, quantizer)
        self._lif_started: set[str] = set()
        self._mode_ctx: _OpCounter | None = None

    # -- buckets ---------------------------------------------------------------------------
    def _bucket(self) -> LayerCounts:
        name = self._stack[-1] if self._stack else CODE_BUCKET
        if name in self.counts.layers:
            return self.counts.layers[name]
        module = self._modules.get(name)
        kind = "norm" if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) else "ops"
        return self.counts.layer(name, kind)

    # -- patching --------------------------------------------------------------------------
    def _patch(self, module: nn.Module, attr: str, new: Callable) -> None:
        had_own = attr in module.__dict__
        self._patches.append(_Patch(module, attr, had_own, module.__dict__.get(attr)))
        setattr(module, attr, new)

    def _synaptic_forward(self, name: str, module: nn.Module, synapse: Synapse) -> Callable:
        """The replacement ``forward`` of a synaptic layer: same values as the module's own forward
        (dense mode: the same kernel on the same operands), counted per input vector."""
        layer = self.counts.layer(name, synapse.kind)
        layer.weight_bits, layer.act_bits = synapse.weight_bits, synapse.act_bits
        if synapse.weight_bits:
            layer.op_breakdown.setdefault("dequant", 0)
        cache: dict[str, Any] = {}  # fan-out-major weights and non-zero weights per input column

        def tables(syn: Synapse, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            w = syn.weight
            key = (id(w), w._version, dtype)
            if cache.get("key") != key:
                source = w  # kept referenced, so its id cannot be reused by a new weight tensor
                w = w.detach().to(dtype)
                by_input = w.t().contiguous() if syn.kind == "linear" else conv_weight_by_input(_ConvView(syn, w))
                cache.update(key=key, source=source, by_input=by_input,
                             column_nnz=(by_input != 0).sum(-1).to(torch.float64))
            return cache["by_input"], cache["column_nnz"]

        def forward(x: Tensor) -> Tensor:
            self._suppress += 1
            try:
                syn = synapse_of(module) or synapse  # re-read: weights may be replaced between calls
            finally:
                self._suppress -= 1
            if syn.transform is not None:  # rotation / input quantization: counted as other ops of this layer
                self._stack.append(name)
                self._matmuls_as_ops = "input transform"
                try:
                    x = syn.transform(x)
                finally:
                    self._matmuls_as_ops = ""
                    self._stack.pop()
            self._suppress += 1
            try:
                layer.calls += 1
                if syn.kind == "linear":
                    return self._linear(name, layer, syn, x, tables)
                return self._conv(name, layer, syn, x, tables)
            finally:
                self._suppress -= 1

        return forward

    def _count_input_kinds(self, name: str, layer: LayerCounts, binary: Tensor, nonzero: Tensor) -> None:
        if bool((nonzero[binary] > 0).any()):
            layer.note_input("spike")
        if bool((nonzero[~binary] > 0).any()):
            layer.note_input("real")
        if name in self.declared_spike_layers and not bool(binary.all()):
            self._warn(f"{name}: declared spike input but received non-binary values; ran dense")

    def _linear(self, name: str, layer: LayerCounts, syn: Synapse, x: Tensor, tables: Callable) -> Tensor:
        fan_out, fan_in = syn.weight.shape
        rows = x.reshape(-1, fan_in)
        n_rows = rows.shape[0]
        nonzero, binary, ternary = _row_kinds(rows)
        by_input, column_nnz = tables(syn, x.dtype)
        self._count_input_kinds(name, layer, binary, nonzero)
        # counts, per input vector (one row = one sample at one step)
        layer.dense_macs += rows.numel() * fan_out
        layer.eff_acs += int(nonzero[binary].sum()) * fan_out
        layer.eff_macs += int(nonzero[~binary].sum()) * fan_out
        nb_eff = (rows != 0).to(torch.float64) @ column_nnz  # NeuroBench: zero weights skipped
        layer.nb_eff_acs += int(nb_eff[ternary].sum())
        layer.nb_eff_macs += int(nb_eff[~ternary].sum())
        layer.nb_dense += rows.numel() * fan_out
        if syn.bias is not None:
            layer.add_op("bias_add", n_rows * fan_out)
        if syn.weight_bits:  # integer weights: rescale the partial sum of every scale group
            layer.add_op("dequant", n_rows * fan_out * (2 * syn.scale_groups - 1))
        # weights are fetched per input vector (per sample at batch 1, the streaming case), so
        # traffic does not depend on the simulation's batch size
        per_row = syn.weight_nbytes + syn.bias_nbytes
        layer.dense_weight_bytes += per_row * n_rows
        weight = syn.weight.to(x.dtype)
        bias = None if syn.bias is None else syn.bias.to(x.dtype)
        event_rows = binary if self.mode == "event" else torch.zeros_like(binary)
        n_event = int(event_rows.sum())
        layer.weight_bytes += per_row * (n_rows - n_event)
        if n_event == 0:
            return F.linear(x, weight, bias)
        spikes = rows[event_rows]
        y_event, gathered = gather_linear(spikes, weight, bias, by_input)
        layer.gathered_columns += gathered
        layer.weight_bytes += gathered * fan_out * syn.element_bytes + syn.bias_nbytes * n_event
        layer.weight_bytes += self._event_scale_bytes(syn, spikes)
        if n_event == n_rows:
            y = y_event
        else:
            y = rows.new_empty(n_rows, fan_out)
            y[event_rows] = y_event
            y[~event_rows] = F.linear(rows[~event_rows], weight, bias)
        return y.reshape(*x.shape[:-1], fan_out)

    @staticmethod
    def _event_scale_bytes(syn: Synapse, spikes: Tensor) -> float:
        """Scale bytes an event-driven integer layer reads: all its scales for every input vector with an
        event (per tensor / per channel), or those of the scale groups its events fall in (per group)."""
        if not syn.weight_bits or not syn.scale_nbytes:
            return 0.0
        active = spikes.reshape(spikes.shape[0], -1) != 0
        if not syn.group_size:
            return syn.scale_nbytes * int(active.any(-1).sum())
        groups = active.reshape(active.shape[0], -1, syn.group_size).any(-1)  # [rows, scale groups]
        return syn.scale_nbytes / syn.scale_groups * int(groups.sum())

    def _conv(self, name: str, layer: LayerCounts, syn: Synapse, x: Tensor, tables: Callable) -> Tensor:
        dims = 2 if syn.kind == "conv2d" else 1
        unbatched = x.dim() == dims + 1
        xb = x.unsqueeze(0) if unbatched else x
        samples = xb.shape[0]
        fan_out = syn.out_channels // syn.groups
        geometry = _ConvView(syn, syn.weight)
        patches = (conv1d_patches if dims == 1 else conv2d_patches)(xb, geometry)  # [B*L_out, g, C_g*K]
        positions = patches.shape[0] // samples
        per_sample = patches.reshape(samples, -1)
        nonzero, binary, ternary = _row_kinds(xb.reshape(samples, -1))  # classified per sample
        patch_nonzero = (per_sample != 0).sum(-1)
        by_input, column_nnz = tables(syn, xb.dtype)
        self._count_input_kinds(name, layer, binary, nonzero)
        layer.dense_macs += patches.numel() * fan_out
        layer.eff_acs += int(patch_nonzero[binary].sum()) * fan_out
        layer.eff_macs += int(patch_nonzero[~binary].sum()) * fan_out
        nb_eff = ((per_sample != 0).reshape(samples, positions, -1).to(torch.float64) @ column_nnz).sum(-1)
        layer.nb_eff_acs += int(nb_eff[ternary].sum())
        layer.nb_eff_macs += int(nb_eff[~ternary].sum())
        ones = (conv1d_patches if dims == 1 else conv2d_patches)(torch.ones_like(xb[:1]), geometry)
        layer.nb_dense += int(ones.sum()) * fan_out * samples  # every weight, zero padding excluded
        outputs = patches.shape[0] * syn.out_channels
        if syn.bias is not None:
            layer.add_op("bias_add", outputs)
        if syn.weight_bits:
            layer.add_op("dequant", outputs * (2 * syn.scale_groups - 1))
        per_sample_bytes = syn.weight_nbytes + syn.bias_nbytes  # fetched once per sample and call
        layer.dense_weight_bytes += per_sample_bytes * samples
        weight = syn.weight.to(xb.dtype)
        bias = None if syn.bias is None else syn.bias.to(xb.dtype)
        conv = F.conv1d if dims == 1 else F.conv2d
        event = binary if (self.mode == "event" and dims == 1) else torch.zeros_like(binary)
        n_event = int(event.sum())
        layer.weight_bytes += per_sample_bytes * (samples - n_event)
        if n_event == 0:
            y = conv(xb, weight, bias, syn.stride, syn.padding, syn.dilation, syn.groups)
            return y.squeeze(0) if unbatched else y
        spikes = xb[event]
        y_event, gathered = gather_conv1d(spikes, _ConvView(syn, weight, bias), by_input)
        layer.gathered_columns += gathered
        layer.weight_bytes += gathered * fan_out * syn.element_bytes + syn.bias_nbytes * n_event
        layer.weight_bytes += self._event_scale_bytes(syn, spikes)
        if n_event == samples:
            y = y_event
        else:
            y = y_event.new_empty(samples, *y_event.shape[1:])
            y[event] = y_event
            y[~event] = conv(xb[~event], weight, bias, syn.stride, syn.padding, syn.dilation, syn.groups)
        return y.squeeze(0) if unbatched else y

    def _lif_counter(self, name: str) -> Callable:
        layer = self.counts.layer(name, "lif")

        def counter(module: LIF, spikes: Tensor) -> None:
            layer.calls += 1
            n = spikes.numel()
            layer.neuron_updates += n
            layer.neurons += n
            layer.spikes += int(spikes.sum())
            if self.record_spikes:
                self.spike_trace.setdefault(name, []).append(spikes.detach().clone())

        return counter

    def _lif_step(self, name: str, module: LIF) -> Callable:
        original = type(module).step.__get__(module)
        layer = self.counts.layer(name, "lif")

        def step(current: Tensor, membrane: Tensor) -> tuple[Tensor, Tensor]:
            self._suppress += 1  # its arithmetic is the neuron update, counted by the counter
            try:
                spikes, v = original(current, membrane)
                # NeuroBench's membrane updates: every neuron at the first step, then only where the
                # membrane changed
                if name in self._lif_started:
                    layer.nb_membrane_updates += int(torch.count_nonzero(v != membrane))
                else:
                    self._lif_started.add(name)
                    layer.nb_membrane_updates += v.numel()
                return spikes, v
            finally:
                self._suppress -= 1

        return step

    def _named_method(self, name: str, module: nn.Module, method: str) -> Callable:
        original = getattr(type(module), method).__get__(module)

        def step(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(name)
            try:
                return original(*args, **kwargs)
            finally:
                self._stack.pop()

        return step

    def _pop_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._stack.pop()  # returns None: a forward hook's return value would replace the output

    def _check_known(self, name: str, module: nn.Module) -> None:
        """Warn about a module holding weights that the simulator does not execute as a synaptic layer:
        its arithmetic is only seen at the operator level (a convolution as dense MACs, no weight bytes)."""
        if isinstance(module, _NON_SYNAPTIC_WEIGHTED):
            return
        weighty = [n for n, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
                   if "weight" in n and t is not None]
        for attr in ("weight", "weight_int"):
            if attr not in weighty and isinstance(getattr(type(module), attr, None), property):
                weighty.append(attr)
        if weighty:
            self._warn(f"{name} ({type(module).__name__}): holds {', '.join(weighty)} but is not a synaptic layer the "
                       f"simulator can execute (nn.Linear/Conv1d/Conv2d or a module with {SYNAPTIC_PROTOCOL}()); its "
                       "arithmetic is counted at the operator level only and its weight bytes are not counted")

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def __enter__(self) -> "Simulator":
        self._modules = dict(self.model.named_modules())
        record = quantization_of(self.model)
        embedding_bits = record.embedding_bits if record else 0  # integer-rounded tables
        for name, module in self._modules.items():
            if not name:
                continue
            synapse = synapse_of(module)
            if synapse is not None:
                self._patch(module, "forward", self._synaptic_forward(name, module, synapse))
            elif isinstance(module, LIF):
                self._patch(module, "counter", self._lif_counter(name))
                self._patch(module, "step", self._lif_step(name, module))
            else:
                if isinstance(module, nn.Embedding):
                    layer = self.counts.layer(name, "embedding")
                    layer.weight_bits = embedding_bits

                    def embed_hook(mod, inputs, output, layer=layer):
                        layer.calls += 1
                        if layer.weight_bits:  # one integer row and its scale per token
                            rows = output.numel() // output.shape[-1]
                            nbytes = output.numel() * layer.weight_bits / 8 + rows * 4
                        else:
                            nbytes = _bytes(output)
                        layer.weight_bytes += nbytes
                        layer.dense_weight_bytes += nbytes

                    self._hooks.append(module.register_forward_hook(embed_hook))
                else:
                    self._check_known(name, module)
                for method in ATTRIBUTED_METHODS:  # sub-blocks stepped by model code, not by __call__
                    if callable(getattr(type(module), method, None)):
                        self._patch(module, method, self._named_method(name, module, method))
                self._hooks.append(module.register_forward_pre_hook(lambda mod, inp, name=name: self._stack.append(name)))
                self._hooks.append(module.register_forward_hook(self._pop_hook))
        if self.count_ops:
            self._mode_ctx = _OpCounter(self)
            self._mode_ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._mode_ctx is not None:
            self._mode_ctx.__exit__(*exc)
            self._mode_ctx = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for patch in reversed(self._patches):
            if patch.had_own:
                setattr(patch.module, patch.attr, patch.old)
            else:
                try:
                    delattr(patch.module, patch.attr)
                except AttributeError:
                    pass
        self._patches.clear()
        self._stack.clear()

    def count_state(self, state: dict[str, Tensor]) -> None:
        """Count one read (or write) of the recurrent state (once per step each way)."""
        layer = self.counts.layer(STATE_BUCKET, "state")
        layer.state_bytes += sum(_bytes(t) for t in state.values())


# --------------------------------------------------------------------------------------------
# running a model
# --------------------------------------------------------------------------------------------


@dataclass
class SimulationResult:
    outputs: Tensor  # [B, T, ...] the stacked step outputs
    counts: Counts
    mode: str
    spike_trace: dict[str, Tensor] = field(default_factory=dict)  # name -> [T, B, ...] when recorded
    warnings: list[str] = field(default_factory=list)


@torch.no_grad()
def simulate(
    model: nn.Module,
    inputs: Tensor,
    mode: Mode = "event",
    record_spikes: bool = False,
    count_ops: bool = True,
    state: dict[str, Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Run ``model.step`` over ``inputs`` ``[B, T, ...]`` in event-driven or dense mode, counting.

    ``progress`` (optional) is called with the number of steps done after each step.
    """
    if not hasattr(model, "step") or not hasattr(model, "init_state"):
        raise InputError("simulate needs a streaming model with step() and init_state(); see edgeseq.streaming")
    if inputs.dim() < 2:
        raise InputError(f"inputs must be [batch, time, ...], got shape {tuple(inputs.shape)}")
    batch, steps = inputs.shape[0], inputs.shape[1]
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with Simulator(model, mode=mode, count_ops=count_ops, record_spikes=record_spikes) as sim:
            state = model.init_state(batch) if state is None else state
            for t in range(steps):
                sim.count_state(state)  # read
                y_t, state = model.step(inputs[:, t], state)
                sim.count_state(state)  # written
                outputs.append(y_t)
                if progress is not None:
                    progress(t + 1)
    finally:
        model.train(was_training)
    sim.counts.steps = batch * steps
    sim.counts.samples = batch
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    sim.counts.value_bytes = reference.element_size() if reference is not None else 4
    order = {name: i for i, name in enumerate(dict(model.named_modules()))}
    sim.counts.layers = dict(sorted(sim.counts.layers.items(), key=lambda kv: order.get(kv[0], len(order))))
    trace = {name: torch.stack(spikes, 0) for name, spikes in sim.spike_trace.items()}
    return SimulationResult(torch.stack(outputs, 1), sim.counts, mode, trace, sim.warnings)


__all__ = [
    "Simulator",
    "SimulationResult",
    "conv1d_patches",
    "conv_weight_by_input",
    "gather_conv1d",
    "gather_linear",
    "gather_sum",
    "is_binary",
    "simulate",
]
