"""Export spiking edgeseq models to NIR, read NIR graphs back, and run them.

NIR (the Neuromorphic Intermediate Representation, Pedersen et al., Nature Communications 2024)
describes a network as continuous-time primitives joined by edges; every simulator or chip
discretises them itself. Our LIF is already discrete (``edgeseq.models.lif``)::

    v_t = v_{t-1} + (I_t - v_{t-1}) / tau ;  s_t = [v_t >= threshold] ;  v_t <- 0 where s_t (hard reset)

NIR's LIF is ``tau_nir · dv/dt = (v_leak - v) + r · I`` with a reset to ``v_reset`` on ``v > v_threshold``.
One forward-Euler step of length ``dt`` gives ``v += dt / tau_nir · (v_leak - v + r · I)``, which
is exactly ours with::

    tau_nir = tau · dt,   r = 1,   v_leak = 0,   v_threshold = threshold,   v_reset = 0

``dt`` is a free time unit, recorded in the graph's metadata (default ``1e-4`` s, the step snnTorch's
NIR import assumes). Two gaps remain and are recorded in each LIF node's metadata:

* NIR fires on ``v > v_threshold``; ours fires on ``v >= threshold`` (SpikeGPT/LMUFormer) —
  identical unless a membrane lands exactly on the threshold (:func:`run_nir` honours the
  ``fire_on`` metadata; other readers may not);
* a soft reset (subtract the threshold) has no NIR LIF form: such models are refused.

Other mappings: ``nn.Linear`` → ``Affine``/``Linear``; an eval-mode BatchNorm → folded into the
preceding layer's weights or, on a residual stream, a diagonal ``Affine``; the LMU memory
``m_t = Ā m_{t-1} + B̄ u_t`` → an integrator ``I`` (r = 1/dt) fed by ``Linear(B̄)`` and by itself
through ``Linear(Ā − Id)``; a causal time convolution of kernel k →  k taps ``Linear(W[:, :, k-1-j])``
each behind a ``Delay`` of j steps; a residual sum → an identity ``Scale`` node that sums its
input edges (NIR sums the edges entering a node).
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgeseq.errors import EdgeseqError, InputError, require
from edgeseq.models.lif import LIF

DEFAULT_DT = 1e-4


def _nir():
    return require("nir", "pip install nir  (or: pip install 'edgeseq[spiking]')")


def _np(t: Tensor | np.ndarray | float) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# node builders
# --------------------------------------------------------------------------------------------


def lif_node(lif: LIF, n: int, dt: float = DEFAULT_DT):
    """Our discrete LIF population of ``n`` neurons as a NIR ``LIF`` (exact Euler mapping, see above)."""
    nir = _nir()
    cfg = lif.cfg
    if cfg.reset != "hard":
        raise EdgeseqError("NIR's LIF resets to v_reset (a hard reset); a soft-reset LIF (subtract threshold) "
                           "has no NIR form")
    return nir.LIF(
        tau=np.full(n, cfg.tau * dt),
        r=np.ones(n),
        v_leak=np.zeros(n),
        v_threshold=np.full(n, cfg.threshold),
        v_reset=np.zeros(n),
        metadata={"fire_on": cfg.fire_on, "edgeseq": "discrete LIF v += (I - v)/tau, hard reset", "dt": dt},
    )


def affine_node(weight: Tensor | np.ndarray, bias: Tensor | np.ndarray | None = None):
    """``y = W x (+ b)`` as NIR ``Affine`` (with a bias) or ``Linear``."""
    nir = _nir()
    weight = _np(weight)
    if bias is None:
        return nir.Linear(weight=weight)
    return nir.Affine(weight=weight, bias=_np(bias))


def _identity(n: int):
    return _nir().Scale(scale=np.ones(n))


def _batchnorm_affine(bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    scale = 1 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = bn.weight.double() * scale
    shift = (bn.bias.double() if bn.affine else 0) - bn.running_mean.double() * scale
    return scale, shift


def _is_identity_bn(bn: nn.BatchNorm1d) -> bool:
    scale, shift = _batchnorm_affine(bn)
    return bool(torch.all(scale == 1) and torch.all(shift == 0))


class _GraphBuilder:
    """Collects named nodes and edges; names are module paths where there is one."""

    def __init__(self, dt: float):
        self.nir = _nir()
        self.dt = dt
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: Any, *sources: str) -> str:
        if name in self.nodes:
            raise ValueError(f"duplicate NIR node name {name!r}")
        self.nodes[name] = node
        for source in sources:
            self.edges.append((source, name))
        return name

    def connect(self, source: str, target: str) -> None:
        self.edges.append((source, target))

    def graph(self, metadata: dict[str, Any]):
        return self.nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata={"dt": self.dt, **metadata})

    # composite pieces --------------------------------------------------------------------
    def delay(self, name: str, steps: int, n: int, source: str) -> str:
        if steps == 0:
            return source
        return self.add(name, self.nir.Delay(delay=np.full(n, steps * self.dt)), source)

    def time_conv(self, name: str, conv: nn.Conv1d, source: str, target: str,
                  scale: Tensor | None = None, shift: Tensor | None = None) -> None:
        """A causal time convolution (padding 0, stride 1, groups 1) from ``source`` into ``target``.

        Tap j (0 = the current frame) is ``Linear(W[:, :, k-1-j])`` behind a j-step ``Delay``; an
        optional per-output ``scale``/``shift`` (a folded BatchNorm) goes into the taps.
        """
        if conv.groups != 1 or conv.stride[0] != 1 or conv.dilation[0] != 1:
            raise EdgeseqError(f"{name}: only plain causal convolutions (groups 1, stride 1, dilation 1) map to NIR delays")
        weight = conv.weight.detach().double()  # [out, in, k]
        k = weight.shape[2]
        bias = conv.bias.detach().double() if conv.bias is not None else None
        if scale is not None:
            weight = weight * scale[:, None, None]
            bias = (bias * scale if bias is not None else torch.zeros_like(scale)) + shift
        previous = source
        for j in range(k):
            tap_in = self.delay(f"{name}.delay{j}", 1, conv.in_channels, previous) if j else source
            previous = tap_in
            tap_bias = bias if j == 0 else None
            self.add(f"{name}.tap{j}", affine_node(weight[:, :, k - 1 - j], tap_bias), tap_in)
            self.connect(f"{name}.tap{j}", target)


# --------------------------------------------------------------------------------------------
# exporters
# --------------------------------------------------------------------------------------------


def export_spiking_mlp(model: nn.Module, dt: float = DEFAULT_DT):
    """:class:`edgeseq.spiking.mlp.SpikingMLP` → NIR: Input → (Affine → LIF)* → Affine → Output."""
    nir = _nir()
    b = _GraphBuilder(dt)
    cfg = model.config
    previous = b.add("input", nir.Input(input_type={"input": np.array([cfg.in_features])}))
    for i, (layer, lif) in enumerate(zip(model.layers, model.lifs)):
        previous = b.add(f"layers.{i}", affine_node(layer.weight, layer.bias), previous)
        previous = b.add(f"lifs.{i}", lif_node(lif, layer.out_features, dt), previous)
    previous = b.add("head", affine_node(model.head.weight, model.head.bias), previous)
    b.add("output", nir.Output(output_type={"output": np.array([cfg.n_classes])}), previous)
    return b.graph({"source": "edgeseq spiking-mlp", "config": cfg.to_json()})


def export_spiking_lmuformer(model: nn.Module, dt: float = DEFAULT_DT):
    """Spiking LMUFormer → NIR (eval mode; BatchNorms folded).

    Per frame: causal embedding convolutions as delayed taps, BN → LIF as (folded) Affine → LIF,
    the LMU memory as an integrator with input ``Linear(B̄)`` and recurrent ``Linear(Ā − Id)``,
    residual sums as identity ``Scale`` junctions, and the per-frame head.
    """
    nir = _nir()
    from edgeseq.models.lmuformer import fold_batchnorm

    model = fold_batchnorm(model)
    cfg = model.config
    dim, order, hidden = cfg.dim, cfg.order, cfg.hidden
    b = _GraphBuilder(dt)
    b.add("input", nir.Input(input_type={"input": np.array([cfg.input_dim])}))
    embed = model.patch_embed

    def bn_then_lif(bn_path: str, lif_path: str, n: int, source: str) -> str:
        """A BatchNorm (a diagonal Affine, left out when folded away) in front of a LIF."""
        bn, lif = model.get_submodule(bn_path), model.get_submodule(lif_path)
        if not _is_identity_bn(bn):
            scale, shift = _batchnorm_affine(bn)
            source = b.add(bn_path, affine_node(torch.diag(scale), shift), source)
        return b.add(lif_path, lif_node(lif, n, dt), source)

    # embedding: conv_0 sees the frames; conv_i sees LIF_{i-1}(BN_{i-1}(conv_{i-1}))
    source = "input"
    for i in range(embed.n_layers):
        suffix = "" if i == 0 else str(i)
        conv = embed._layer("proj_conv", i)
        junction = b.add(f"patch_embed.proj_conv{suffix}", _identity(dim))
        b.time_conv(f"patch_embed.proj_conv{suffix}", conv, source, junction)
        source = bn_then_lif(f"patch_embed.proj_bn{suffix}", f"patch_embed.proj_lif{suffix}", dim, junction)
    last_conv = f"patch_embed.proj_conv{'' if embed.n_layers == 1 else embed.n_layers - 1}"
    x = b.add("patch_embed.sum", _identity(dim))
    b.time_conv("patch_embed.rpe_conv", embed.rpe_conv, source, x)
    skip = b.delay("patch_embed.skip_delay", embed.skip_delay, dim, last_conv)
    b.connect(skip, x)

    for j, block in enumerate(model.block):
        p = f"block.{j}"
        attn, lmu, mlp = block.attn, block.attn.lmu, block.mlp
        s = bn_then_lif(f"{p}.attn.prev_bn", f"{p}.attn.prev_lif", dim, x)
        w_u = b.add(f"{p}.attn.lmu.W_u", affine_node(lmu.W_u.weight, lmu.W_u.bias), s)
        u = bn_then_lif(f"{p}.attn.lmu.bn_u", f"{p}.attn.lmu.f_u", 1, w_u)
        memory = b.add(f"{p}.attn.lmu.memory", nir.I(r=np.full(order, 1.0 / dt)))
        b.add(f"{p}.attn.lmu.B", affine_node(lmu.B.double()), u)
        b.connect(f"{p}.attn.lmu.B", memory)
        b.add(f"{p}.attn.lmu.A_minus_I", affine_node(lmu.A.double() - torch.eye(order, dtype=torch.float64)), memory)
        b.connect(f"{p}.attn.lmu.A_minus_I", memory)  # recurrent edge: reads the previous step's memory
        m = bn_then_lif(f"{p}.attn.lmu.bn_m", f"{p}.attn.lmu.f_m", order, memory)
        h = b.add(f"{p}.attn.lmu.f_h", lif_node(lmu.f_h, dim, dt))  # bn_h is folded into W_h
        if not _is_identity_bn(lmu.bn_h):
            raise EdgeseqError(f"{p}.attn.lmu.bn_h is not folded: export a model folded by fold_batchnorm")
        w_h = lmu.W_h.weight.detach().double()
        b.add(f"{p}.attn.lmu.W_h.memory", affine_node(w_h[:, :order], lmu.W_h.bias), m)
        b.add(f"{p}.attn.lmu.W_h.input", affine_node(w_h[:, order:]), s)
        b.connect(f"{p}.attn.lmu.W_h.memory", h)
        b.connect(f"{p}.attn.lmu.W_h.input", h)
        x_mid = b.add(f"{p}.attn.residual", _identity(dim), x)
        proj = attn.proj_conv
        scale, shift = _batchnorm_affine(attn.proj_bn)
        b.add(f"{p}.attn.proj_conv", affine_node(proj.weight[:, :, 0].double() * scale[:, None],
                                                 proj.bias.double() * scale + shift), h)
        b.connect(f"{p}.attn.proj_conv", x_mid)
        s1 = bn_then_lif(f"{p}.mlp.fc1_bn", f"{p}.mlp.fc1_lif", dim, x_mid)
        fc1 = b.add(f"{p}.mlp.fc1_conv", affine_node(mlp.fc1_conv.weight[:, :, 0], mlp.fc1_conv.bias), s1)
        s2 = bn_then_lif(f"{p}.mlp.fc2_bn", f"{p}.mlp.fc2_lif", hidden, fc1)
        x = b.add(f"{p}.mlp.residual", _identity(dim), x_mid)
        b.add(f"{p}.mlp.fc2_conv", affine_node(mlp.fc2_conv.weight[:, :, 0], mlp.fc2_conv.bias), s2)
        b.connect(f"{p}.mlp.fc2_conv", x)

    s = bn_then_lif("head_bn", "head_lif", dim, x)
    b.add("head", affine_node(model.head.weight, model.head.bias), s)
    b.add("output", nir.Output(output_type={"output": np.array([cfg.n_classes])}), "head")
    return b.graph({"source": "edgeseq spiking-lmuformer", "config": cfg.to_json(),
                    "note": "per-frame scores; the streaming prediction is their running mean"})


# What SpikeGPT needs that NIR 1.0 has no primitive for (see docs/spiking.md)
SPIKEGPT_GAPS: tuple[tuple[str, str], ...] = (
    ("blocks.*.ln0/ln1/ln2, ln_out (LayerNorm)",
     "divides by a data-dependent standard deviation; NIR has only fixed affine maps"),
    ("blocks.*.att (WKV recurrence)",
     "exp(k), exp(w), running max p and the division a/b are non-linear in the state; NIR's recurrent "
     "primitives (I, LI, LIF, CubaLIF) are linear between spikes"),
    ("blocks.*.att, blocks.*.ffn (receptance gates)",
     "σ(r)·wkv and σ(r)·(W_v·relu(W_k·x)²) multiply two activations; NIR edges only add"),
    ("blocks.*.ffn (relu²)", "a squared ReLU is not a NIR primitive"),
)
SPIKEGPT_EXPRESSIBLE = (
    "binary embedding (a Linear on one-hot tokens followed by a Threshold)",
    "token shift (a one-step Delay with per-channel Scale mixes)",
    "the LIF neurons after each mixer (NIR LIF, exact mapping)",
    "the key/value/receptance/output linear layers (NIR Linear)",
)


def spikegpt_gap_message() -> str:
    return ("SpikeGPT cannot be exported to NIR 1.0: " + "; ".join(f"{where}: {why}" for where, why in SPIKEGPT_GAPS)
            + ". Expressible alone: " + ", ".join(SPIKEGPT_EXPRESSIBLE) + " — see docs/spiking.md")


EXPORTABLE_FAMILIES = ("spiking-mlp", "spiking-lmuformer")


def check_exportable(model: nn.Module) -> None:
    """Raise the error :func:`export_nir` would raise for a model NIR cannot express (cheap)."""
    family = getattr(getattr(model, "config", None), "family", "")
    if family == "spikegpt":
        raise EdgeseqError(spikegpt_gap_message())
    if family not in EXPORTABLE_FAMILIES:
        raise InputError(f"NIR export supports {' and '.join(EXPORTABLE_FAMILIES)} models, not {family or type(model).__name__!r}")


def export_nir(model: nn.Module, path: str | Path | None = None, dt: float = DEFAULT_DT, warn: bool = True):
    """Export a spiking model to a NIR graph (and write it to ``path`` when given).

    Supports :class:`SpikingMLP` and the Spiking LMUFormer; SpikeGPT is refused with the exact list
    of operations NIR cannot express. With ``warn`` (default) a ``UserWarning`` names every known NIR
    consumer (snnTorch, Norse) that cannot import the graph or would not reproduce its spikes (``>``
    versus our ``>=``; Norse's ``dt``); :func:`consumer_notes` measures the difference on inputs.
    """
    if dt <= 0:
        raise InputError(f"dt must be > 0, got {dt}")
    check_exportable(model)
    family = model.config.family
    graph = export_spiking_mlp(model, dt) if family == "spiking-mlp" else export_spiking_lmuformer(model, dt)
    if path is not None:
        _nir().write(str(path), graph)
    if warn:
        import warnings

        lines = consumer_warnings(graph)
        if lines:
            warnings.warn("; ".join(lines), UserWarning, stacklevel=2)
    return graph


def read_nir(path: str | Path):
    """Read a NIR file (``nir.read``) with a one-line error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: NIR file not found")
    try:
        return _nir().read(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------
# a discrete-time NIR interpreter (forward Euler with the graph's dt)
# --------------------------------------------------------------------------------------------


def _order(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> tuple[list[str], set[tuple[str, str]]]:
    """Evaluation order of the nodes and the set of back edges (those read the previous step)."""
    succ: dict[str, list[str]] = defaultdict(list)
    for a, c in edges:
        succ[a].append(c)
    state: dict[str, int] = {}  # 1 = on stack, 2 = done
    post: list[str] = []
    back: set[tuple[str, str]] = set()
    roots = [n for n, node in nodes.items() if type(node).__name__ == "Input"] + list(nodes)
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(succ[root]))]
        state[root] = 1
        while stack:
            name, children = stack[-1]
            for child in children:
                if state.get(child) == 1:
                    back.add((name, child))
                elif child not in state:
                    state[child] = 1
                    stack.append((child, iter(succ[child])))
                    break
            else:
                state[name] = 2
                post.append(name)
                stack.pop()
    return post[::-1], back


@torch.no_grad()
def run_nir(graph, inputs: Tensor, record: bool = False, fire_on: str | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Run a NIR graph on ``inputs`` ``[B, T, F]`` in discrete time (Euler, ``dt`` from the metadata).

    Edges into a node are summed; a feedback edge delivers its source's value of the previous step.
    LIF nodes fire on ``v > v_threshold`` as NIR specifies, or on ``>=`` when their metadata says
    ``fire_on: ge`` (what edgeseq writes for its neurons); ``fire_on="gt"``/``"ge"`` overrides the
    metadata for every node (``"gt"``: what snnTorch and Norse do). Returns the ``Output`` values
    ``[B, T, ...]`` and, with ``record``, every spiking node's spikes ``[T, B, n]``.
    """
    if fire_on not in (None, "ge", "gt"):
        raise InputError(f"fire_on must be 'ge', 'gt' or None (the nodes' metadata), not {fire_on!r}")
    nodes, edges = graph.nodes, list(graph.edges)
    dt = float(graph.metadata.get("dt", DEFAULT_DT)) if graph.metadata else DEFAULT_DT
    order, back = _order(nodes, edges)
    incoming: dict[str, list[str]] = defaultdict(list)
    for a, c in edges:
        incoming[c].append(a)
    inputs = inputs.double()
    batch, steps = inputs.shape[0], inputs.shape[1]
    t64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    params = {name: {k: t64(v) for k, v in vars(node).items() if isinstance(v, np.ndarray)} for name, node in nodes.items()}
    value: dict[str, Tensor] = {}
    previous: dict[str, Tensor] = {}
    membrane: dict[str, Tensor] = {}
    delay_lines: dict[str, list[Tensor]] = {}
    outputs: list[Tensor] = []
    trace: dict[str, list[Tensor]] = defaultdict(list)

    def gather(name: str) -> Tensor | None:
        total = None
        for source in incoming[name]:
            x = previous.get(source) if (source, name) in back else value.get(source)
            if x is None:
                continue  # a feedback source at the first step: zero
            total = x if total is None else total + x
        return total

    for t in range(steps):
        value = {}
        for name in order:
            node, p = nodes[name], params[name]
            kind = type(node).__name__
            if kind == "Input":
                value[name] = inputs[:, t].reshape(batch, -1)
                continue
            x = gather(name)
            if x is None:
                x = torch.zeros(batch, int(np.prod(_in_shape(node))), dtype=torch.float64)
            if kind in ("Affine", "Linear"):
                y = x @ p["weight"].T
                value[name] = y + p["bias"] if kind == "Affine" else y
            elif kind == "Scale":
                value[name] = x * p["scale"]
            elif kind == "Output":
                value[name] = x
            elif kind in ("LIF", "IF", "LI", "I"):
                v = membrane.get(name, torch.zeros_like(x))
                if kind == "LIF" or kind == "LI":
                    v = v + (p["r"] * x + p["v_leak"] - v) * (dt / p["tau"])
                else:
                    v = v + dt * p["r"] * x
                if kind in ("LIF", "IF"):
                    ge = ((node.metadata or {}).get("fire_on") == "ge") if fire_on is None else fire_on == "ge"
                    spikes = (v >= p["v_threshold"]) if ge else (v > p["v_threshold"])
                    spikes = spikes.double()
                    v = torch.where(spikes.bool(), p["v_reset"].expand_as(v), v)
                    value[name] = spikes
                    if record:
                        trace[name].append(spikes)
                else:
                    value[name] = v
                membrane[name] = v
            elif kind == "Delay":
                n_steps = int(round(float(p["delay"].reshape(-1)[0]) / dt))
                line = delay_lines.setdefault(name, [torch.zeros_like(x) for _ in range(n_steps)])
                line.append(x)
                value[name] = line.pop(0)
            elif kind == "Threshold":
                value[name] = (x > p["threshold"]).double()
            elif kind == "Flatten":
                value[name] = x.reshape(batch, -1)
            else:
                raise EdgeseqError(f"run_nir: node {name!r} of type {kind} is not supported by this interpreter")
        outputs.append(torch.stack([value[n] for n, node in nodes.items() if type(node).__name__ == "Output"], 0).sum(0))
        previous = value
    return torch.stack(outputs, 1), {name: torch.stack(s, 0) for name, s in trace.items()}


def _in_shape(node: Any) -> tuple[int, ...]:
    shape = next(iter(node.input_type.values()))
    return tuple(int(s) for s in np.asarray(shape).reshape(-1))


# --------------------------------------------------------------------------------------------
# other NIR consumers: what they read, and where their semantics differ from ours
# --------------------------------------------------------------------------------------------

# node types each consumer's NIR import maps to modules (snntorch 1.0 + nirtorch 2.x; norse 1.1);
# Input/Output are structural
NIR_CONSUMERS: dict[str, dict[str, Any]] = {
    "snntorch": {
        "node_types": frozenset({"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "AvgPool2d", "IF", "LIF",
                                 "CubaLIF"}),
        "fires_on": "gt",
        "dt": "fixed at 1e-4 s by its importer (edgeseq's default dt); the LIF threshold is rescaled by tau/(r·dt)",
    },
    "norse": {
        "node_types": frozenset({"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "SumPool2d", "IF", "LIF",
                                 "CubaLIF"}),
        "fires_on": "gt",
        "dt": "an argument of norse.torch.from_nir (default 1e-3 s); the graph's dt is ignored, so pass "
              "dt=graph.metadata['dt'] (run_with_norse does)",
    },
}


def consumer_unsupported(graph, consumer: str) -> list[str]:
    """Node types of ``graph`` that ``consumer``'s NIR import cannot map (sorted names)."""
    if consumer not in NIR_CONSUMERS:
        raise InputError(f"unknown NIR consumer {consumer!r}; known: {', '.join(NIR_CONSUMERS)}")
    return sorted({type(node).__name__ for node in graph.nodes.values()} - NIR_CONSUMERS[consumer]["node_types"])


def consumer_notes(graph, inputs: Tensor | None = None) -> dict[str, dict[str, Any]]:
    """Per consumer: the node types it cannot import, and where its semantics change our spikes.

    Our neurons fire on ``v >= threshold`` (metadata ``fire_on: ge``); snnTorch and Norse fire on
    ``v > threshold``. With ``inputs`` the size of that difference is measured: the graph is run by
    :func:`run_nir` both ways and the spikes that flip are counted (they differ only where a membrane
    lands exactly on the threshold, which dyadic weights — e.g. quantized ones — make likely)."""
    ge = any((getattr(node, "metadata", None) or {}).get("fire_on") == "ge" for node in graph.nodes.values())
    flips = None
    if inputs is not None and ge:
        _, ours = run_nir(graph, inputs, record=True)
        _, strict = run_nir(graph, inputs, record=True, fire_on="gt")
        total = sum(int(s.numel()) for s in ours.values())
        changed = sum(int((ours[k] != strict[k]).sum()) for k in ours)
        fired = sum(int(s.sum()) for s in ours.values())
        flips = {"neuron_steps": total, "spikes": fired, "changed": changed}
    notes = {}
    for consumer, spec in NIR_CONSUMERS.items():
        entry: dict[str, Any] = {"unsupported": consumer_unsupported(graph, consumer), "dt": spec["dt"]}
        if ge:
            entry["fire_on"] = ("edgeseq fires on v >= threshold, " + consumer + " on v > threshold: spikes differ "
                                "where a membrane lands exactly on the threshold")
            if flips is not None:
                entry["strict_threshold_flips"] = flips
        notes[consumer] = entry
    return notes


def consumer_warnings(graph, inputs: Tensor | None = None, notes: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """One line per consumer whose import or semantics would not reproduce edgeseq's spikes
    (``notes``: a :func:`consumer_notes` result, to avoid measuring twice)."""
    lines = []
    for consumer, note in (notes if notes is not None else consumer_notes(graph, inputs)).items():
        parts = []
        if note["unsupported"]:
            parts.append(f"cannot import {', '.join(note['unsupported'])} nodes")
        if "fire_on" in note:
            flips = note.get("strict_threshold_flips")
            size = "" if flips is None else (f" ({flips['changed']} of {flips['neuron_steps']} neuron-steps flip on these "
                                             f"inputs)")
            parts.append(f"fires on v > threshold where edgeseq fires on v >= threshold{size}")
        if consumer == "norse":
            parts.append("ignores the graph's dt (pass dt=graph.metadata['dt'] to norse.torch.from_nir)")
        if parts:
            lines.append(f"NIR consumer {consumer}: " + "; ".join(parts))
    return lines


@torch.no_grad()
def run_with_norse(graph, inputs: Tensor, dt: float | None = None) -> Tensor:
    """Import ``graph`` with ``norse.torch.from_nir`` at the graph's ``dt`` and run it step by step on
    ``inputs [B, T, F]`` (float32). Norse fires on ``>``; its LIF (``LIFBoxCell``) integrates
    ``v += dt/tau · (v_leak − v + I)``, our Euler step, when given the graph's ``dt`` — it ignores the
    graph's own ``dt`` and defaults to 1e-3 s, which scrambles the dynamics silently."""
    missing = consumer_unsupported(graph, "norse")
    if missing:
        raise EdgeseqError(f"Norse's NIR import has no mapping for {', '.join(missing)} node(s) in this graph; "
                           "run it with edgeseq.spiking.nir_export.run_nir instead")
    norse = require("norse.torch", "pip install norse --no-deps  (it needs torch and nir only for NIR import)")
    dt = float(graph.metadata.get("dt", DEFAULT_DT)) if dt is None else float(dt)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = norse.from_nir(graph, dt=dt)
    outs, state = [], None
    for t in range(inputs.shape[1]):
        y, state = net(inputs[:, t].float(), state)
        outs.append(y)
    return torch.stack(outs, 1)


# --------------------------------------------------------------------------------------------
# snnTorch's reader
# --------------------------------------------------------------------------------------------


# node types snntorch.import_nir maps to modules (snntorch 1.0); Input/Output are structural
SNNTORCH_NODE_TYPES = NIR_CONSUMERS["snntorch"]["node_types"]


def snntorch_unsupported(graph) -> list[str]:
    """Node types of ``graph`` that snnTorch's NIR import cannot map (sorted names)."""
    return consumer_unsupported(graph, "snntorch")


@torch.no_grad()
def run_with_snntorch(graph, inputs: Tensor) -> Tensor:
    """Import ``graph`` with ``snntorch.import_nir`` and run it step by step on ``inputs [B, T, F]``.

    snnTorch assumes ``dt = 1e-4`` s and scales the LIF threshold by ``tau/(r·dt)`` so that its
    ``Leaky`` neuron (``mem = beta·mem + input``) matches; it fires on ``>``. Runs in float32 (its
    neurons' parameters are float32). Needs ``nirtorch``.
    """
    require("nirtorch", "pip install nirtorch")
    snntorch_nir = require("snntorch.import_nir", "pip install snntorch nirtorch")
    missing = snntorch_unsupported(graph)
    if missing:
        raise EdgeseqError(f"snnTorch's NIR import has no mapping for {', '.join(missing)} node(s) in this graph; "
                           "run it with edgeseq.spiking.nir_export.run_nir instead")
    from snntorch import utils as snn_utils

    with contextlib.redirect_stdout(io.StringIO()):  # its importer prints notes on stdout
        net = snntorch_nir.import_from_nir(graph)
    snn_utils.reset(net)
    net = net.float()  # snnTorch neurons keep float32 parameters
    outs = []
    state = None
    for t in range(inputs.shape[1]):
        x_t = inputs[:, t].float()
        out = net(x_t, state) if state is not None else net(x_t)
        y, state = out if isinstance(out, tuple) else (out, None)
        outs.append(y)
    return torch.stack(outs, 1)


__all__ = [
    "DEFAULT_DT",
    "NIR_CONSUMERS",
    "consumer_notes",
    "consumer_unsupported",
    "consumer_warnings",
    "run_with_norse",
    "SPIKEGPT_GAPS",
    "affine_node",
    "check_exportable",
    "export_nir",
    "export_spiking_lmuformer",
    "export_spiking_mlp",
    "lif_node",
    "read_nir",
    "run_nir",
    "run_with_snntorch",
    "snntorch_unsupported",
    "spikegpt_gap_message",
]
