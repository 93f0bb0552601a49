"""Mamba-2 (Dao & Gu, 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality").

Block: RMSNorm pre-norm residual around the mixer

    (z, xBC, dt) = in_proj(h)                       d_inner, d_inner + 2·G·N, H
    xBC          = SiLU(causal depthwise conv1d(xBC))   kernel d_conv, one conv over x, B and C
    (x, B, C)    = split(xBC)                       x: H heads of P = headdim; B, C: G groups of N
    dt           = clamp(softplus(dt + dt_bias))     one step size per head      [B, T, H]
    h_t          = exp(dt_t·A_h) h_{t-1} + dt_t · x_t ⊗ B_t    A_h = -exp(A_log_h): a scalar per head
    y_t          = h_t C_t + D_h x_t                 head h reads group h // (H / G) of B and C
    out          = out_proj(GatedRMSNorm(y, z))      RMSNorm(y · SiLU(z)) per group of d_inner / G

The SSM state of one head is ``[P, N]``; A is a scalar times the identity, so the whole
recurrence of a head is one scalar decay per step. Parameter names follow the reference
implementation so that Hugging Face ``Mamba2ForCausalLM`` and ``state-spaces/mamba2-*``
checkpoints map onto it by renaming only (see ``edgeseq.convert.mamba2``).

The parallel form is the SSD block decomposition (paper §6): the sequence is cut into chunks of
``chunk_size``; inside a chunk the output is a masked, decayed "attention" ``(C Bᵀ ∘ L) (dt·x)``
with ``L[t, s] = exp(Σ_{s<r≤t} dt_r A)``, computed for every chunk at once; each chunk's own
contribution to the state at its end is one more contraction; a short loop over chunks carries
the state (``h_next = exp(Σ_chunk dt A) h + local``); the carried state reaches the outputs of the
next chunk through ``exp(cumsum(dt A)) C h``. There is no loop over time. ``step`` is the
recurrence above at constant cost; per layer it keeps the last ``d_conv - 1`` conv inputs
``[conv_dim, d_conv - 1]`` and the SSM state ``[H, P, N]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseq.models.mamba import RMSNorm, SelectiveSSMLM
from edgeseq.streaming import ActPoint, ModelConfig, QuantPoint, StateSpec


@dataclass
class Mamba2Config(ModelConfig):
    family = "mamba2"
    input_size_field = "vocab_size"
    output_size_field = "vocab_size"

    vocab_size: int = 256
    d_model: int = 128
    n_layer: int = 4
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 32
    ngroups: int = 1
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    norm_eps: float = 1e-5  # the block RMSNorms
    gated_norm_eps: float = 1e-5  # the gated RMSNorm before out_proj
    tie_embeddings: bool = True
    # dt is clamped to [dt_limit_min, dt_limit_max] after softplus; dt_limit_max 0 = no upper limit
    dt_limit_min: float = 0.0
    dt_limit_max: float = 0.0
    # initialisation (as the reference implementation)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_init_min: float = 1.0
    A_init_max: float = 16.0
    chunk_size: int = 64  # SSD chunk length of the parallel form

    def __post_init__(self) -> None:
        from edgeseq.errors import InputError

        for name in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand", "headdim", "ngroups",
                     "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"Mamba2Config.{name} must be a positive integer, got {value!r}")
        if self.d_inner % self.headdim:
            raise InputError(f"Mamba2Config: headdim {self.headdim} does not divide d_inner = expand·d_model = {self.d_inner}")
        if self.nheads % self.ngroups:
            raise InputError(f"Mamba2Config: ngroups {self.ngroups} does not divide the {self.nheads} heads")
        if not (self.norm_eps > 0 and self.gated_norm_eps > 0):
            raise InputError(f"Mamba2Config: norm epsilons must be positive, got {self.norm_eps!r}, {self.gated_norm_eps!r}")
        if self.dt_limit_min < 0 or self.dt_limit_max < 0 or (self.dt_limit_max and self.dt_limit_max < self.dt_limit_min):
            raise InputError(f"Mamba2Config: bad dt limits ({self.dt_limit_min}, {self.dt_limit_max})")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state


class GatedRMSNorm(nn.Module):
    """``RMSNorm(y · SiLU(z))`` with the mean square taken per group of ``dim / groups`` channels."""

    def __init__(self, dim: int, groups: int = 1, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        gated = y * F.silu(z)
        # leading dimensions as -1 and back with reshape_as: an ONNX trace keeps the batch dynamic
        grouped = gated.reshape(-1, self.groups, self.weight.shape[0] // self.groups)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return grouped.reshape_as(gated) * self.weight


# --------------------------------------------------------------------------------------------
# the SSD scan
# --------------------------------------------------------------------------------------------


def _segment_sums(a: Tensor) -> Tensor:
    """``out[..., t, s] = Σ_{s<r≤t} a[..., r]`` for s ≤ t and -inf above the diagonal.

    Built as a cumulative sum down the rows of a strictly-lower-triangular copy of ``a`` (the
    stable form: no difference of two large cumulative sums). a: [..., L] -> [..., L, L].
    """
    length = a.shape[-1]
    index = torch.arange(length, device=a.device)
    strict = index[:, None] > index[None, :]  # comparisons, not eye/tril: they export to any ONNX runtime
    rows = a.unsqueeze(-1).expand(*a.shape, length).masked_fill(~strict, 0.0)  # [t, s] = a_t if t > s
    sums = rows.cumsum(-2)
    return sums.masked_fill(index[:, None] < index[None, :], -math.inf)


def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, ssm_state: Tensor | None = None,
    chunk: int = 64,
) -> tuple[Tensor, Tensor]:
    """The SSD block decomposition of the Mamba-2 recurrence.

    x: [Bt, T, H, P]; dt: [Bt, T, H] (already softplus'd and clamped); A: [H] (negative);
    B, C: [Bt, T, G, N]; D: [H]; ssm_state: [Bt, H, P, N] or None.
    Returns y [Bt, T, H, P] (with the D skip) and the final state [Bt, H, P, N].
    """
    batch, length, heads, _ = x.shape
    groups, n = B.shape[2], B.shape[3]
    if ssm_state is None:
        ssm_state = x.new_zeros(batch, heads, x.shape[3], n)
    chunk = max(1, min(chunk, length))
    pad = (-length) % chunk
    # padded steps have dt = 0: decay 1 and no input, so the carried state passes through them
    xdt = F.pad(x * dt.unsqueeze(-1), (0, 0, 0, 0, 0, pad))
    a = F.pad(dt * A, (0, 0, 0, pad))
    B = F.pad(B, (0, 0, 0, 0, 0, pad))
    C = F.pad(C, (0, 0, 0, 0, 0, pad))
    chunks = (length + pad) // chunk
    # [Bt, c, L, ...]; the heads of a group share its B and C: view heads as (groups, heads/group).
    # The batch is always -1 in views: an ONNX trace then keeps it dynamic.
    p, k = x.shape[3], heads // groups
    xdt = xdt.reshape(-1, chunks, chunk, groups, k, p)  # [b c l g k p]
    B = B.reshape(-1, chunks, chunk, groups, n)
    C = C.reshape(-1, chunks, chunk, groups, n)
    a = a.reshape(-1, chunks, chunk, groups, k).permute(0, 1, 3, 4, 2)  # [b c g k l]

    decay = torch.exp(_segment_sums(a))  # [b c g k l s]: exp(Σ_{s<r≤t} a_r), 0 above the diagonal
    from_start = torch.exp(a.cumsum(-1))  # [b c g k l]: exp(Σ_{r≤t} a_r), decay of the chunk-start state
    to_end = decay[..., -1, :]  # [b c g k s]: exp(Σ_{s<r≤L-1} a_r), decay of step s to the chunk end

    # 1. inside each chunk: y_t = Σ_{s≤t} (C_t·B_s) L[t, s] dt_s x_s
    scores = torch.einsum("bclgn,bcsgn->bcgls", C, B).unsqueeze(3) * decay  # [b c g k l s]
    y = torch.einsum("bcgkls,bcsgkp->bclgkp", scores, xdt)

    # 2. each chunk's own contribution to the state at its end
    local = torch.einsum("bcgks,bcsgn,bcsgkp->bcgkpn", to_end, B, xdt)

    # 3. carry the state across chunks (a loop over chunks, not over time)
    total = from_start[..., -1]  # [b c g k]: decay over the whole chunk
    state = ssm_state.reshape(-1, groups, k, p, n)
    starts = []
    for c in range(chunks):
        starts.append(state)
        state = total[:, c, ..., None, None] * state + local[:, c]
    starts = torch.stack(starts, 1)  # [b c g k p n]

    # 4. the carried state's share of every output: exp(Σ_{r≤t} a_r) C_t · h_start
    y = y + torch.einsum("bcgkl,bclgn,bcgkpn->bclgkp", from_start, C, starts)
    y = y.reshape(-1, chunks * chunk, heads, p)[:, :length]
    return y + x * D[:, None], state.reshape(-1, heads, p, n)


def ssd_scan_loop(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, ssm_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The same recurrence as a Python loop over time: the reference for tests."""
    batch, length, heads, p = x.shape
    per_group = heads // B.shape[2]
    B = B.repeat_interleave(per_group, dim=2)
    C = C.repeat_interleave(per_group, dim=2)
    h = x.new_zeros(batch, heads, p, B.shape[-1]) if ssm_state is None else ssm_state
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    return torch.stack(ys, 1) + x * D[:, None], h


# --------------------------------------------------------------------------------------------
# the mixer and the model
# --------------------------------------------------------------------------------------------


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        di, h = cfg.d_inner, cfg.nheads
        self.in_proj = nn.Linear(cfg.d_model, di + cfg.conv_dim + h, bias=cfg.bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, padding=cfg.d_conv - 1,
                                bias=cfg.conv_bias)
        # the SSM inputs: x (quantized once, used by the scan and the D skip), B and C
        self.ssm_in = ActPoint()
        self.ssm_B = ActPoint()
        self.ssm_C = ActPoint()
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(di, cfg.ngroups, cfg.gated_norm_eps)
        self.out_proj = nn.Linear(di, cfg.d_model, bias=cfg.bias)
        self._init_ssm()

    def _init_ssm(self) -> None:
        cfg = self.cfg
        with torch.no_grad():
            A = torch.empty(cfg.nheads).uniform_(cfg.A_init_min, cfg.A_init_max)
            self.A_log.copy_(torch.log(A))
            dt = torch.exp(
                torch.rand(cfg.nheads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
            ).clamp(min=cfg.dt_init_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def _dt(self, dt: Tensor) -> Tensor:
        dt = F.softplus(dt + self.dt_bias)
        lo, hi = self.cfg.dt_limit_min, self.cfg.dt_limit_max
        if lo > 0 or hi > 0:
            dt = dt.clamp(min=lo, max=hi if hi > 0 else None)
        return dt

    def _split_conv_out(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """SiLU'd conv output [..., conv_dim] -> x [..., H, P], B and C [..., G, N] (quantization points applied)."""
        cfg = self.cfg
        x, B, C = xBC.split([cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], dim=-1)
        lead = xBC.shape[:-1]
        x = self.ssm_in(x).reshape(*lead, cfg.nheads, cfg.headdim)
        B = self.ssm_B(B).reshape(*lead, cfg.ngroups, cfg.d_state)
        C = self.ssm_C(C).reshape(*lead, cfg.ngroups, cfg.d_state)
        return x, B, C

    def forward(self, hidden: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """[B, T, d_model] -> (out, conv_state [B, conv_dim, k-1], ssm_state [B, H, P, N])."""
        cfg = self.cfg
        k, length = cfg.d_conv, hidden.shape[1]
        z, xBC, dt = self.in_proj(hidden).split([cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        xBC = xBC.transpose(1, 2)  # [B, conv_dim, T]
        if state is None:
            padded = F.pad(xBC, (k - 1, 0))
            ssm_state = None
        else:
            padded = torch.cat([state[0], xBC], dim=-1)
            ssm_state = state[1]
        conv_state = padded[:, :, padded.shape[-1] - (k - 1):]
        conv = F.conv1d(padded, self.conv1d.weight, self.conv1d.bias, groups=cfg.conv_dim)[:, :, :length]
        x, B, C = self._split_conv_out(F.silu(conv).transpose(1, 2))
        A = -torch.exp(self.A_log.to(x.dtype))
        y, ssm_state = ssd_scan(x, self._dt(dt), A, B, C, self.D, ssm_state, chunk=cfg.chunk_size)
        return self.out_proj(self.norm(y.flatten(-2), z)), conv_state, ssm_state

    def step(self, hidden: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, d_model] -> (out, conv_state, ssm_state); constant cost."""
        cfg = self.cfg
        z, xBC, dt = self.in_proj(hidden).split([cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        window = torch.cat([conv_state, xBC.unsqueeze(-1)], dim=-1)  # [B, conv_dim, k]
        conv = (window * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias
        x, B, C = self._split_conv_out(F.silu(conv))  # x [B, H, P]; B, C [B, G, N]
        per_group = cfg.nheads // cfg.ngroups
        B = B.repeat_interleave(per_group, dim=1)  # [B, H, N]
        C = C.repeat_interleave(per_group, dim=1)
        dt = self._dt(dt)  # [B, H]
        A = -torch.exp(self.A_log.to(x.dtype))
        decay = torch.exp(dt * A)[..., None, None]
        ssm_state = decay * ssm_state + (dt[..., None] * x).unsqueeze(-1) * B.unsqueeze(-2)
        y = torch.einsum("bhpn,bhn->bhp", ssm_state, C) + self.D[:, None] * x
        return self.out_proj(self.norm(y.flatten(-2), z)), window[:, :, 1:], ssm_state


class Mamba2Block(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg)


class Mamba2(SelectiveSSMLM):
    """A Mamba-2 language model over token ids, with a tied (by default) LM head."""

    config_class = Mamba2Config
    block_class = Mamba2Block

    def __init__(self, config: Mamba2Config | None = None):
        super().__init__(config)

    def state_spec(self) -> list[StateSpec]:
        cfg = self.config
        specs = []
        for i in range(cfg.n_layer):
            specs.append(StateSpec(f"conv_{i}", (cfg.conv_dim, cfg.d_conv - 1)))
            specs.append(StateSpec(f"ssm_{i}", (cfg.nheads, cfg.headdim, cfg.d_state)))
        return specs

    def quant_points(self) -> list[QuantPoint]:
        points = []
        g, h = self.config.ngroups, self.config.nheads
        for i in range(self.config.n_layer):
            p = f"layers.{i}.mixer"
            points += [
                QuantPoint(f"{p}.in_proj", "linear", note="input: RMSNorm output"),
                QuantPoint(f"{p}.ssm_in", "act", clip="percentile", note="SSM input x (Quamba: percentile clip)",
                           groups=g, heads=h),
                QuantPoint(f"{p}.ssm_B", "act", note="SSM input B (G groups of d_state)", groups=g),
                QuantPoint(f"{p}.ssm_C", "act", note="SSM input C (G groups of d_state)", groups=g),
                QuantPoint(f"{p}.out_proj", "linear", rotatable=True,
                           note="input: the gated RMSNorm output; Hadamard-rotate it (Quamba2)"),
            ]
        return points
