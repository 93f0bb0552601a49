"""LMUFormer and Spiking LMUFormer (Liu et al., 2024, "LMUFormer: Low Complexity Yet Powerful
Spiking Model With Legendre Memory Units"), truly streaming.

The Legendre Memory Unit (Voelker et al., 2019) keeps a d-dimensional memory of a scalar signal
u over a sliding window θ::

    θ ṁ(t) = A m(t) + B u(t)
    A[i, j] = (2i+1) · (-1 if i < j else (-1)^(i-j+1)),   B[i] = (2i+1) · (-1)^i

discretised with a zero-order hold (dt = 1 frame) into m_t = Ā m_{t-1} + B̄ u_t. Unrolled from a
zero state, m_t = Σ_k Ā^k B̄ u_{t-k}: a causal convolution with the kernel H[k] = Ā^k B̄, which the
parallel form evaluates with an FFT (Chilkuri & Eliasmith, 2021, "Parallelizing Legendre Memory
Unit Training") or, for short sequences, a direct Toeplitz product.

Model (both variants; module and parameter names follow the published code so that its state
dicts load by renaming only, see ``edgeseq.convert.lmuformer``)::

    frames [B, T, F] ─► causal conv patch embedding ─► N × (x + LMU mixer(x); x + conv FFN(x))
                     ─► per-frame head ─► scores [B, T, C]   (the running mean is the prediction)

* LMU token mixer: u = f(W_u x) (one scalar per frame), m = LMU memory(u), h = f(W_h [m; x]),
  out = BN(proj_conv h).
* Channel mixer: two 1×1 convolutions (ratio 4).
* Spiking variant ("membrane shortcut" layout of the published spiking model): every
  convolution/linear layer is preceded by BatchNorm → LIF (τ = 2), so it receives binary spikes —
  the only exception is the very first embedding convolution, which sees the input features. The
  memory itself is followed by BN → LIF (the published recurrent path skips it; ours does not).

Streaming: the published embedding uses centred kernel-3 convolutions (each looks one frame
ahead; four stacked plus the positional conv see ~5 frames of future). Here every convolution is
causal (left padding, the last k−1 inputs kept in the state) and the residual around the
positional convolution is delayed by (k−1)/2 frames, so the embedding computes exactly the
published embedding delayed by D = (n_layers+1)·(k−1)/2 frames (5 for the published sizes) once a
warm-up of 2D−1 frames has passed (the published code zero-pads every layer at the sequence
start; the causal layers see their predecessors' response to the start instead). ``step`` costs the same at frame 1 and
frame 10,000: the state is the conv windows, the delayed residual, the LMU memories and (spiking)
the LIF membranes — all of fixed size.

In ``eval()`` mode BatchNorm uses running statistics (a fixed per-channel affine map), so ``step``
≡ ``forward``; :func:`fold_batchnorm` folds the BatchNorms that directly follow a convolution into
its weights for deployment.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseq.errors import InputError
from edgeseq.models.lif import LIF
from edgeseq.streaming import IOSpec, ModelConfig, QuantPoint, State, StateSpec, StreamingModel

# --------------------------------------------------------------------------------------------
# the Legendre memory
# --------------------------------------------------------------------------------------------


def legendre_continuous(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Continuous-time LMU matrices (float64): ``A [d, d]`` and ``B [d, 1]``, already divided by θ."""
    if order < 1:
        raise InputError(f"LMU memory order must be >= 1, got {order}")
    if theta <= 0:
        raise InputError(f"LMU window theta must be > 0, got {theta}")
    q = np.arange(order, dtype=np.float64)
    rate = (2 * q + 1)[:, None] / theta  # [d, 1]
    i, j = np.meshgrid(q, q, indexing="ij")
    A = rate * np.where(i < j, -1.0, (-1.0) ** (i - j + 1))
    B = rate * ((-1.0) ** q)[:, None]
    return A, B


def discretize_zoh(A: np.ndarray, B: np.ndarray, dt: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order hold: ``expm([[A, B], [0, 0]]·dt) = [[Ā, B̄], [0, I]]`` (float64)."""
    from scipy.linalg import expm

    d, k = B.shape
    augmented = np.zeros((d + k, d + k), dtype=np.float64)
    augmented[:d, :d] = A
    augmented[:d, d:] = B
    exp = expm(augmented * dt)
    return exp[:d, :d], exp[:d, d:]


def legendre_memory_matrices(order: int, theta: float, dt: float = 1.0) -> tuple[Tensor, Tensor]:
    """Discrete LMU matrices as float64 tensors: ``Ā [d, d]``, ``B̄ [d, 1]``."""
    A_bar, B_bar = discretize_zoh(*legendre_continuous(order, theta), dt)
    return torch.from_numpy(A_bar), torch.from_numpy(B_bar)


def power_sequence(A: Tensor, v: Tensor, length: int) -> Tensor:
    """``out[..., k, :] = A^k v`` for k < length, by doubling (log2(length) matrix products).

    ``A [d, d]``, ``v [..., d]`` -> ``[..., length, d]``.
    """
    seq = v.unsqueeze(-2)  # [..., 1, d]
    power = A  # A^(current length)
    while seq.shape[-2] < length:
        seq = torch.cat([seq, seq @ power.transpose(0, 1)], dim=-2)
        power = power @ power
    return seq[..., :length, :]


def memory_kernel(A_bar: Tensor, B_bar: Tensor, length: int) -> Tensor:
    """Impulse response of the memory, ``H[k] = Ā^k B̄``: ``[length, d]`` (computed in float64)."""
    H = power_sequence(A_bar.double(), B_bar.double()[:, 0], length)
    return H.to(A_bar.dtype)


def causal_conv_fft(u: Tensor, kernel: Tensor) -> Tensor:
    """``m[b, t] = Σ_{s<=t} kernel[t-s] u[b, s]`` via FFT: ``u [B, T]``, ``kernel [T, d]`` -> ``[B, T, d]``."""
    length = u.shape[1]
    n = 1 << (2 * length - 1).bit_length()  # no circular wrap-around
    u_f = torch.fft.rfft(u, n=n, dim=1)  # [B, n/2+1]
    k_f = torch.fft.rfft(kernel, n=n, dim=0)  # [n/2+1, d]
    m = torch.fft.irfft(u_f[:, :, None] * k_f[None], n=n, dim=1)
    return m[:, :length]


def causal_conv_direct(u: Tensor, kernel: Tensor) -> Tensor:
    """Same as :func:`causal_conv_fft` as a Toeplitz product (exact order of sums; short T only)."""
    length = u.shape[1]
    t = torch.arange(length, device=u.device)
    lag = t[:, None] - t[None, :]  # [T(out), T(in)]
    toeplitz = kernel[lag.clamp(min=0)] * (lag >= 0)[:, :, None].to(kernel.dtype)  # [T, T, d]
    return torch.einsum("bs,tsd->btd", u, toeplitz)


def memory_parallel(u: Tensor, A_bar: Tensor, B_bar: Tensor, m0: Tensor | None = None, method: str = "auto") -> Tensor:
    """All memories ``[B, T, d]`` of the recurrence ``m_t = Ā m_{t-1} + B̄ u_t`` from ``m_{-1} = m0``.

    ``u [B, T]``; ``method``: ``"fft"``, ``"direct"`` or ``"auto"`` (direct up to 64 frames).
    """
    length = u.shape[1]
    if length == 1:  # the recurrent update itself
        m = u * B_bar[:, 0]
        if m0 is not None:
            m = m + m0 @ A_bar.transpose(0, 1)
        return m[:, None]
    kernel = memory_kernel(A_bar, B_bar, length)
    if method == "auto":
        method = "direct" if length <= 64 else "fft"
    if method == "fft":
        m = causal_conv_fft(u, kernel)
    elif method == "direct":
        m = causal_conv_direct(u, kernel)
    else:
        raise InputError(f"unknown LMU memory method {method!r}; use 'auto', 'fft' or 'direct'")
    if m0 is not None:  # + Ā^(t+1) m0
        start = m0 @ A_bar.transpose(0, 1)
        m = m + power_sequence(A_bar, start, length)
    return m


def memory_step(m: Tensor, u: Tensor, A_bar: Tensor, B_bar: Tensor) -> Tensor:
    """One recurrent update: ``m [B, d]``, ``u [B]`` -> ``Ā m + B̄ u``."""
    return m @ A_bar.transpose(0, 1) + u[:, None] * B_bar[:, 0]


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------


@dataclass
class LMUFormerConfig(ModelConfig):
    family = "lmuformer"
    input_size_field = "input_dim"
    output_size_field = "n_classes"

    input_dim: int = 8  # F: features per frame
    dim: int = 64  # embedding width
    depth: int = 1  # LMUFormer blocks
    n_classes: int = 10
    memory_size: int = 0  # LMU order d; 0 = dim (published ANN)
    theta: float = 8.0  # LMU window in frames (published: 128 for Speech Commands)
    embed_layers: int = 4  # convolutions in the patch embedding
    embed_kernel: int = 3  # odd: published centred kernel 3, here causal
    mlp_ratio: float = 4.0
    memory_method: str = "auto"  # "auto" | "fft" | "direct"
    dataset: str = "digits"
    dataset_options: dict = field(default_factory=lambda: {"mode": "rows"})

    @property
    def order(self) -> int:
        return self.memory_size or self.dim

    @property
    def hidden(self) -> int:
        return int(round(self.dim * self.mlp_ratio))


@dataclass
class SpikingLMUFormerConfig(LMUFormerConfig):
    family = "spiking-lmuformer"

    memory_size: int = 0  # 0 = 2·dim (published spiking model)
    tau: float = 2.0
    threshold: float = 1.0
    mixer_threshold: float = 0.5  # the LIF in front of the LMU mixer (published: 0.5)

    @property
    def order(self) -> int:
        return self.memory_size or 2 * self.dim


def _check_config(cfg: LMUFormerConfig) -> None:
    for name in ("input_dim", "dim", "depth", "n_classes", "embed_layers", "embed_kernel"):
        if int(getattr(cfg, name)) < 1:
            raise InputError(f"{type(cfg).__name__}.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.embed_kernel % 2 != 1:
        raise InputError(f"embed_kernel must be odd (the published kernel is 3), got {cfg.embed_kernel}")
    if cfg.memory_method not in ("auto", "fft", "direct"):
        raise InputError(f"memory_method must be 'auto', 'fft' or 'direct', got {cfg.memory_method!r}")


# --------------------------------------------------------------------------------------------
# causal pieces shared by both variants ([B, C, T] layout inside, as the published code)
# --------------------------------------------------------------------------------------------


def causal_conv(conv: nn.Conv1d, x: Tensor, window: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Causal ``conv`` (built with padding 0) over ``x [B, Cin, T]`` after ``window [B, Cin, k-1]``.

    Returns ``y [B, Cout, T]`` and the new window (the last k−1 inputs). The module itself is
    called, so hooks and quantized replacements see every call.
    """
    k = conv.kernel_size[0]
    if k == 1:
        return conv(x), window
    if window is None:
        window = x.new_zeros(x.shape[0], x.shape[1], k - 1)
    full = torch.cat([window, x], dim=2)
    return conv(full), full[:, :, -(k - 1):]


def conv_window_spec(name: str, conv: nn.Conv1d) -> list[StateSpec]:
    """The state ``causal_conv`` keeps for ``conv``: its last k−1 inputs (none when k = 1)."""
    k = conv.kernel_size[0]
    return [StateSpec(name, (conv.in_channels, k - 1))] if k > 1 else []


def rpe_skip_spec(rpe_conv: nn.Conv1d, skip_delay: int) -> list[StateSpec]:
    """State of the embedding's tail: the positional conv's window and the delayed residual."""
    skip = [StateSpec("embed_skip", (rpe_conv.in_channels, skip_delay))] if skip_delay else []
    return conv_window_spec("embed_rpe", rpe_conv) + skip


def delay(x: Tensor, buffer: Tensor | None, frames: int) -> tuple[Tensor, Tensor | None]:
    """``x [B, C, T]`` delayed by ``frames`` (zeros, or ``buffer [B, C, frames]``, fill in)."""
    if frames == 0:
        return x, buffer
    if buffer is None:
        buffer = x.new_zeros(x.shape[0], x.shape[1], frames)
    full = torch.cat([buffer, x], dim=2)
    return full[:, :, : x.shape[2]], full[:, :, -frames:]


def run_lif(lif: LIF, current: Tensor, membrane: Tensor | None) -> tuple[Tensor, Tensor]:
    """LIF over ``current [B, C, T]`` from ``membrane [B, C]``: spikes and the final membrane.

    One frame (``step``) calls ``LIF.step`` directly: the same arithmetic, less overhead."""
    if current.shape[2] == 1:
        membrane = torch.zeros_like(current[:, :, 0]) if membrane is None else membrane
        spikes, membrane = lif.step(current[:, :, 0], membrane)
        return spikes[:, :, None], membrane
    return lif.run(current, membrane, time_dim=2)


def _get(state: State | None, name: str) -> Tensor | None:
    """A state entry; None before the first call, and for state a layer does not keep (a 1-wide
    conv has no window: ``conv_window_spec`` names none)."""
    return None if state is None else state.get(name)


def _put(new: State, name: str, value: Tensor | None) -> None:
    if value is not None:
        new[name] = value


class LMUCell(nn.Module):
    """The LMU of the token mixer (names as the published ``LMUFFTCell``/``SpikingLMUFFTCell``)."""

    def __init__(self, dim: int, order: int, theta: float, spiking: bool, tau: float = 2.0, threshold: float = 1.0):
        super().__init__()
        self.spiking = spiking
        self.order = order
        self.theta = float(theta)
        self.W_u = nn.Linear(dim, 1)
        self.W_h = nn.Linear(order + dim, dim)
        A_bar, B_bar = legendre_memory_matrices(order, theta)
        self.register_buffer("A", A_bar.float())  # Ā [d, d]
        self.register_buffer("B", B_bar.float())  # B̄ [d, 1]
        if spiking:
            self.bn_u = nn.BatchNorm1d(1)
            self.f_u = LIF(tau, threshold)
            self.bn_m = nn.BatchNorm1d(order)
            self.f_m = LIF(tau, threshold)
            self.bn_h = nn.BatchNorm1d(dim)
            self.f_h = LIF(tau, threshold)

    def run(self, x: Tensor, state: State | None, prefix: str, method: str) -> tuple[Tensor, State]:
        """``x [B, C, T]`` -> ``h [B, C, T]`` and this cell's new state entries."""
        new: State = {}
        x_btc = x.transpose(1, 2)
        u = self.W_u(x_btc).transpose(1, 2)  # [B, 1, T]
        if self.spiking:
            u, new[f"{prefix}u_lif"] = run_lif(self.f_u, self.bn_u(u), _get(state, f"{prefix}u_lif"))
        else:
            u = F.relu(u)
        memory = memory_parallel(u[:, 0], self.A, self.B, _get(state, f"{prefix}memory"), method)  # [B, T, d]
        new[f"{prefix}memory"] = memory[:, -1]
        if self.spiking:
            m, new[f"{prefix}m_lif"] = run_lif(self.f_m, self.bn_m(memory.transpose(1, 2)), _get(state, f"{prefix}m_lif"))
            memory = m.transpose(1, 2)
        h = self.W_h(torch.cat([memory, x_btc], dim=-1)).transpose(1, 2)  # [B, C, T]
        if self.spiking:
            h, new[f"{prefix}h_lif"] = run_lif(self.f_h, self.bn_h(h), _get(state, f"{prefix}h_lif"))
        else:
            h = F.relu(h)
        return h, new

    def state_spec(self, prefix: str, dim: int) -> list[StateSpec]:
        specs = [StateSpec(f"{prefix}memory", (self.order,))]
        if self.spiking:
            specs = [StateSpec(f"{prefix}u_lif", (1,)), *specs, StateSpec(f"{prefix}m_lif", (self.order,)),
                     StateSpec(f"{prefix}h_lif", (dim,))]
        return specs


# --------------------------------------------------------------------------------------------
# ANN LMUFormer
# --------------------------------------------------------------------------------------------


class ConvEmbedding(nn.Module):
    """Published ``Tokenizer``: n × (conv k, ReLU, BN) + positional conv with a residual — causal."""

    def __init__(self, cfg: LMUFormerConfig):
        super().__init__()
        k, dim = cfg.embed_kernel, cfg.dim
        widths = [cfg.input_dim] + [dim] * cfg.embed_layers
        self.conv_layers = nn.ModuleList(
            nn.Sequential(nn.Conv1d(widths[i], widths[i + 1], k, bias=False), nn.ReLU(), nn.Identity(),
                          nn.BatchNorm1d(widths[i + 1]))
            for i in range(cfg.embed_layers)
        )
        self.rpe_conv = nn.Conv1d(dim, dim, k, bias=False)
        self.skip_delay = (k - 1) // 2

    def run(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        new: State = {}
        for i, layer in enumerate(self.conv_layers):
            x, window = causal_conv(layer[0], x, _get(state, f"embed_conv_{i}"))
            _put(new, f"embed_conv_{i}", window)
            x = layer[3](layer[2](layer[1](x)))
        rpe, window = causal_conv(self.rpe_conv, x, _get(state, "embed_rpe"))
        _put(new, "embed_rpe", window)
        skip, skip_state = delay(x, _get(state, "embed_skip"), self.skip_delay)
        if skip_state is not None:
            new["embed_skip"] = skip_state
        return skip + rpe, new

    def state_spec(self) -> list[StateSpec]:
        specs = []
        for i, layer in enumerate(self.conv_layers):
            specs += conv_window_spec(f"embed_conv_{i}", layer[0])
        return specs + rpe_skip_spec(self.rpe_conv, self.skip_delay)


class LMUMixer(nn.Module):
    """Published ``LMU``: LMU cell then 1×1 conv + BN."""

    def __init__(self, cfg: LMUFormerConfig, spiking: bool = False):
        super().__init__()
        self.spiking = spiking
        if spiking:
            cfg_s: Any = cfg
            self.prev_bn = nn.BatchNorm1d(cfg.dim)
            self.prev_lif = LIF(cfg_s.tau, cfg_s.mixer_threshold)
            self.lmu = LMUCell(cfg.dim, cfg.order, cfg.theta, True, cfg_s.tau, cfg_s.threshold)
        else:
            self.lmu = LMUCell(cfg.dim, cfg.order, cfg.theta, False)
        self.proj_conv = nn.Conv1d(cfg.dim, cfg.dim, 1)
        self.proj_bn = nn.BatchNorm1d(cfg.dim)

    def run(self, x: Tensor, state: State | None, prefix: str, method: str) -> tuple[Tensor, State]:
        new: State = {}
        if self.spiking:
            x, new[f"{prefix}prev_lif"] = run_lif(self.prev_lif, self.prev_bn(x), _get(state, f"{prefix}prev_lif"))
        h, cell_state = self.lmu.run(x, state, prefix, method)
        new.update(cell_state)
        return self.proj_bn(self.proj_conv(h)), new

    def state_spec(self, prefix: str, dim: int) -> list[StateSpec]:
        specs = [StateSpec(f"{prefix}prev_lif", (dim,))] if self.spiking else []
        return specs + self.lmu.state_spec(prefix, dim)


class ConvFFN(nn.Module):
    """Channel mixer. ANN (published ``ConvFFN``): conv→BN→GELU→conv→BN→ReLU.
    Spiking (published ``ConvFFNMs``): BN→LIF→conv→BN→LIF→conv."""

    def __init__(self, cfg: LMUFormerConfig, spiking: bool = False):
        super().__init__()
        self.spiking = spiking
        dim, hidden = cfg.dim, cfg.hidden
        if spiking:
            cfg_s: Any = cfg
            self.fc1_bn = nn.BatchNorm1d(dim)
            self.fc1_lif = LIF(cfg_s.tau, cfg_s.threshold)
            self.fc1_conv = nn.Conv1d(dim, hidden, 1)
            self.fc2_bn = nn.BatchNorm1d(hidden)
            self.fc2_lif = LIF(cfg_s.tau, cfg_s.threshold)
            self.fc2_conv = nn.Conv1d(hidden, dim, 1)
        else:
            self.fc1_conv = nn.Conv1d(dim, hidden, 1)
            self.fc1_bn = nn.BatchNorm1d(hidden)
            self.fc2_conv = nn.Conv1d(hidden, dim, 1)
            self.fc2_bn = nn.BatchNorm1d(dim)

    def run(self, x: Tensor, state: State | None, prefix: str) -> tuple[Tensor, State]:
        if not self.spiking:
            x = F.gelu(self.fc1_bn(self.fc1_conv(x)))
            return F.relu(self.fc2_bn(self.fc2_conv(x))), {}
        new: State = {}
        s, new[f"{prefix}fc1_lif"] = run_lif(self.fc1_lif, self.fc1_bn(x), _get(state, f"{prefix}fc1_lif"))
        x = self.fc1_conv(s)
        s, new[f"{prefix}fc2_lif"] = run_lif(self.fc2_lif, self.fc2_bn(x), _get(state, f"{prefix}fc2_lif"))
        return self.fc2_conv(s), new

    def state_spec(self, prefix: str, dim: int, hidden: int) -> list[StateSpec]:
        if not self.spiking:
            return []
        return [StateSpec(f"{prefix}fc1_lif", (dim,)), StateSpec(f"{prefix}fc2_lif", (hidden,))]


class Block(nn.Module):
    def __init__(self, cfg: LMUFormerConfig, spiking: bool = False):
        super().__init__()
        self.attn = LMUMixer(cfg, spiking)
        self.mlp = ConvFFN(cfg, spiking)

    def run(self, x: Tensor, state: State | None, prefix: str, method: str) -> tuple[Tensor, State]:
        y, new = self.attn.run(x, state, prefix, method)
        x = x + y
        y, new_mlp = self.mlp.run(x, state, prefix)
        new.update(new_mlp)
        return x + y, new


class _LMUFormerBase(StreamingModel):
    """Shared streaming machinery: one ``_run`` serves forward, prefill and step."""

    task = "classify"
    spiking = False
    config: LMUFormerConfig

    def _embed(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:  # pragma: no cover
        raise NotImplementedError

    def _head(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:  # pragma: no cover
        raise NotImplementedError

    def _run(self, frames: Tensor, state: State | None) -> tuple[Tensor, State]:
        """``frames [B, T, F]`` from ``state`` (None = zero state) -> ``scores [B, T, C]``, final state."""
        if frames.dim() != 3 or frames.shape[-1] != self.config.input_dim:
            raise InputError(
                f"{self.family} expects frames [batch, time, {self.config.input_dim}], got {tuple(frames.shape)}"
            )
        x, new = self._embed(frames.transpose(1, 2), state)  # [B, C, T]
        for j, block in enumerate(self.block):
            x, block_state = block.run(x, state, f"block{j}_", self.config.memory_method)
            new.update(block_state)
        scores, head_state = self._head(x, state)
        new.update(head_state)
        return scores, {name: new[name] for name in self.state_names()}

    def io_spec(self) -> IOSpec:
        """Frames of ``input_dim`` features in, per-frame scores over ``n_classes`` out."""
        return IOSpec.features(self.config.input_dim, self.config.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Per-frame scores ``[B, T, C]`` for frames ``[B, T, F]`` (parallel form, zero state)."""
        return self._run(x, None)[0]

    def prefill(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        return self._run(x, state)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One frame ``[B, F]`` -> per-frame scores ``[B, C]`` (fixed cost; no running mean inside)."""
        if x_t.dim() != 2:
            raise InputError(f"{self.family}.step expects one frame [batch, {self.config.input_dim}], got {tuple(x_t.shape)}")
        scores, new = self._run(x_t[:, None], state)
        return scores[:, 0], new

    def predict(self, x: Tensor) -> Tensor:
        """Class scores of whole sequences: the mean of the per-frame scores ``[B, C]``."""
        return self.forward(x).mean(dim=1)


class LMUFormer(_LMUFormerBase):
    """ANN LMUFormer (published ``lmu_rnn_conv1d``), causal."""

    def __init__(self, config: LMUFormerConfig | None = None):
        super().__init__()
        cfg = config or LMUFormerConfig()
        _check_config(cfg)
        self.config = cfg
        self.patch_embed = ConvEmbedding(cfg)
        self.block = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.head = nn.Linear(cfg.dim, cfg.n_classes)

    def _embed(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        return self.patch_embed.run(x, state)

    def _head(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        return self.head(x.transpose(1, 2)), {}

    def state_spec(self) -> list[StateSpec]:
        cfg = self.config
        specs = self.patch_embed.state_spec()
        for j, block in enumerate(self.block):
            specs += block.attn.state_spec(f"block{j}_", cfg.dim) + block.mlp.state_spec(f"block{j}_", cfg.dim, cfg.hidden)
        return specs

    def quant_points(self) -> list[QuantPoint]:
        points = [QuantPoint(f"patch_embed.conv_layers.{i}.0", "conv",
                             note="causal conv" + (" on the input features" if i == 0 else ", input: BN output"))
                  for i in range(self.config.embed_layers)]
        points.append(QuantPoint("patch_embed.rpe_conv", "conv", note="causal positional conv"))
        for j in range(self.config.depth):
            p = f"block.{j}"
            points += [
                QuantPoint(f"{p}.attn.lmu.W_u", "linear", note="LMU input projection (to one scalar per frame)"),
                QuantPoint(f"{p}.attn.lmu.W_h", "linear", rotatable=True, note="input: [memory; x]"),
                QuantPoint(f"{p}.attn.proj_conv", "conv", rotatable=True, note="1x1 conv, input: ReLU output"),
                QuantPoint(f"{p}.mlp.fc1_conv", "conv", rotatable=True, note="1x1 conv, input: residual stream"),
                QuantPoint(f"{p}.mlp.fc2_conv", "conv", rotatable=True, note="1x1 conv, input: GELU output"),
            ]
        points.append(QuantPoint("head", "linear", rotatable=True, note="per-frame classifier"))
        return points


class SpikingEmbedding(nn.Module):
    """Published ``Conv1d4EBMs``: conv, then (BN → LIF → conv) × (n−1), + BN → LIF → positional conv."""

    def __init__(self, cfg: SpikingLMUFormerConfig):
        super().__init__()
        k, dim, n = cfg.embed_kernel, cfg.dim, cfg.embed_layers
        self.n_layers = n
        for i in range(n):
            suffix = "" if i == 0 else str(i)
            self.add_module(f"proj_conv{suffix}", nn.Conv1d(cfg.input_dim if i == 0 else dim, dim, k, bias=False))
            self.add_module(f"proj_bn{suffix}", nn.BatchNorm1d(dim))
            self.add_module(f"proj_lif{suffix}", LIF(cfg.tau, cfg.threshold))
        self.rpe_conv = nn.Conv1d(dim, dim, k, bias=False)
        self.skip_delay = (k - 1) // 2

    def _layer(self, name: str, i: int) -> nn.Module:
        return getattr(self, f"{name}{'' if i == 0 else i}")

    def run(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        new: State = {}
        for i in range(self.n_layers):
            if i > 0:
                x, new[f"embed_lif_{i - 1}"] = run_lif(self._layer("proj_lif", i - 1), self._layer("proj_bn", i - 1)(x),
                                                       _get(state, f"embed_lif_{i - 1}"))
            x, window = causal_conv(self._layer("proj_conv", i), x, _get(state, f"embed_conv_{i}"))
            _put(new, f"embed_conv_{i}", window)
        last = self.n_layers - 1
        s, new[f"embed_lif_{last}"] = run_lif(self._layer("proj_lif", last), self._layer("proj_bn", last)(x),
                                              _get(state, f"embed_lif_{last}"))
        rpe, window = causal_conv(self.rpe_conv, s, _get(state, "embed_rpe"))
        _put(new, "embed_rpe", window)
        skip, skip_state = delay(x, _get(state, "embed_skip"), self.skip_delay)
        if skip_state is not None:
            new["embed_skip"] = skip_state
        return skip + rpe, new

    def state_spec(self) -> list[StateSpec]:
        specs = []
        for i in range(self.n_layers):
            conv = self._layer("proj_conv", i)
            specs += conv_window_spec(f"embed_conv_{i}", conv)
            specs.append(StateSpec(f"embed_lif_{i}", (conv.out_channels,)))
        return specs + rpe_skip_spec(self.rpe_conv, self.skip_delay)


class SpikingLMUFormer(_LMUFormerBase):
    """Spiking LMUFormer (published ``slmu_rnn_ms_conv1d``), causal: every conv/linear but the
    first embedding conv receives spikes from a BN → LIF (τ = 2) in front of it."""

    spiking = True

    def __init__(self, config: SpikingLMUFormerConfig | None = None):
        super().__init__()
        cfg = config or SpikingLMUFormerConfig()
        _check_config(cfg)
        self.config = cfg
        self.patch_embed = SpikingEmbedding(cfg)
        self.block = nn.ModuleList(Block(cfg, spiking=True) for _ in range(cfg.depth))
        self.head_bn = nn.BatchNorm1d(cfg.dim)
        self.head_lif = LIF(cfg.tau, cfg.threshold)
        self.head = nn.Linear(cfg.dim, cfg.n_classes)

    def _embed(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        return self.patch_embed.run(x, state)

    def _head(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        s, membrane = run_lif(self.head_lif, self.head_bn(x), _get(state, "head_lif"))
        return self.head(s.transpose(1, 2)), {"head_lif": membrane}

    def state_spec(self) -> list[StateSpec]:
        cfg = self.config
        specs = self.patch_embed.state_spec()
        for j, block in enumerate(self.block):
            specs += block.attn.state_spec(f"block{j}_", cfg.dim) + block.mlp.state_spec(f"block{j}_", cfg.dim, cfg.hidden)
        return specs + [StateSpec("head_lif", (cfg.dim,))]

    def quant_points(self) -> list[QuantPoint]:
        n = self.config.embed_layers
        points = [QuantPoint("patch_embed.proj_conv", "conv", note="causal conv on the input features (real)")]
        points += [QuantPoint(f"patch_embed.proj_conv{i}", "conv", input="spike") for i in range(1, n)]
        points.append(QuantPoint("patch_embed.rpe_conv", "conv", input="spike"))
        for j in range(self.config.depth):
            p = f"block.{j}"
            points += [
                QuantPoint(f"{p}.attn.lmu.W_u", "linear", input="spike"),
                QuantPoint(f"{p}.attn.lmu.W_h", "linear", input="spike", note="input: [memory spikes; x spikes]"),
                QuantPoint(f"{p}.attn.proj_conv", "conv", input="spike"),
                QuantPoint(f"{p}.mlp.fc1_conv", "conv", input="spike"),
                QuantPoint(f"{p}.mlp.fc2_conv", "conv", input="spike"),
            ]
        points.append(QuantPoint("head", "linear", input="spike"))
        return points


# --------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------


def batchnorm_affine(bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """The eval-mode BatchNorm as ``x·scale + shift`` (per channel)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    return scale, shift


def _fold_into(layer: nn.Conv1d | nn.Linear, bn: nn.BatchNorm1d) -> None:
    """``bn(layer(x))`` -> ``layer'(x)``; ``bn`` becomes an exact identity (kept so names stay)."""
    scale, shift = batchnorm_affine(bn)
    with torch.no_grad():
        bias = layer.bias if layer.bias is not None else torch.zeros_like(shift)
        new_bias = bias * scale + shift
        layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.detach().clone())
        else:
            layer.bias.copy_(new_bias)
        bn.reset_parameters()  # mean 0, var 1, weight 1, bias 0
    bn.eps = 0.0


def fold_batchnorm(model: _LMUFormerBase) -> _LMUFormerBase:
    """A copy of ``model`` in eval mode with every BatchNorm that directly follows a convolution or
    linear layer folded into its weights (the BatchNorm stays as an exact identity, so module names
    do not change). BatchNorms elsewhere (after a ReLU in the ANN embedding, on the residual stream
    in front of a LIF) stay per-channel affine maps. Computes the same function (float rounding).

    Folded biases change ``state_dict`` keys where a layer had none, so save the unfolded model.
    """
    model = copy.deepcopy(model).eval()
    pairs: list[tuple[nn.Module, nn.BatchNorm1d]] = []
    for block in model.block:
        pairs.append((block.attn.proj_conv, block.attn.proj_bn))
        if isinstance(model, SpikingLMUFormer):
            pairs += [(block.attn.lmu.W_u, block.attn.lmu.bn_u), (block.attn.lmu.W_h, block.attn.lmu.bn_h),
                      (block.mlp.fc1_conv, block.mlp.fc2_bn)]
        else:
            pairs += [(block.mlp.fc1_conv, block.mlp.fc1_bn), (block.mlp.fc2_conv, block.mlp.fc2_bn)]
    if isinstance(model, SpikingLMUFormer):
        embed = model.patch_embed
        # the last embedding conv's output also feeds the skip path raw: its BN stays
        pairs += [(embed._layer("proj_conv", i), embed._layer("proj_bn", i)) for i in range(embed.n_layers - 1)]
    for layer, bn in pairs:
        _fold_into(layer, bn)  # type: ignore[arg-type]
    return model


__all__ = [
    "LMUFormer",
    "LMUFormerConfig",
    "SpikingLMUFormer",
    "SpikingLMUFormerConfig",
    "batchnorm_affine",
    "causal_conv_direct",
    "causal_conv_fft",
    "discretize_zoh",
    "fold_batchnorm",
    "legendre_continuous",
    "legendre_memory_matrices",
    "memory_kernel",
    "memory_parallel",
    "memory_step",
    "power_sequence",
]
