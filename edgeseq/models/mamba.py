"""Mamba-1 (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

Block: RMSNorm pre-norm residual around the mixer

    (x, z) = in_proj(h)                                   [B, T, 2·d_inner]
    x      = SiLU(causal depthwise conv1d(x))             kernel d_conv, with bias
    (dt, B, C) = x_proj(x)                                dt_rank, d_state, d_state
    dt     = softplus(dt_proj(dt))                        [B, T, d_inner]
    h_t    = exp(dt·A) ⊙ h_{t-1} + (dt·B_t) x_t            A = -exp(A_log)  [d_inner, d_state]
    y_t    = C_t · h_t + D ⊙ x_t
    out    = out_proj(y ⊙ SiLU(z))

Parameter names follow the reference implementation so that Hugging Face and ``state-spaces``
checkpoints map onto it by renaming only (see ``edgeseq.convert.mamba``).

The parallel form evaluates the linear recurrence with a chunked scan (see ``selective_scan``):
closed form inside a chunk through cumulative log-decays, a carried state across chunks; the
exported (traced) prefill graph runs the recurrence unrolled over its fixed length. The step
form keeps, per layer, the last ``d_conv - 1`` conv inputs and the SSM state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseq.models import fused_ops
from edgeseq.streaming import ActPoint, IOSpec, ModelConfig, QuantPoint, State, StateSpec, StreamingModel


@dataclass
class MambaConfig(ModelConfig):
    family = "mamba"
    input_size_field = "vocab_size"
    output_size_field = "vocab_size"

    vocab_size: int = 256
    d_model: int = 128
    n_layer: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 = "auto": ceil(d_model / 16)
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # initialisation (as the reference implementation)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    scan_chunk: int = 16

    def __post_init__(self) -> None:
        from edgeseq.errors import InputError

        for name in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand", "scan_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"MambaConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.dt_rank, int) or isinstance(self.dt_rank, bool) or self.dt_rank < 0:
            raise InputError(f"MambaConfig.dt_rank must be 0 (auto) or a positive integer, got {self.dt_rank!r}")
        if not self.norm_eps > 0:
            raise InputError(f"MambaConfig.norm_eps must be positive, got {self.norm_eps!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.eps) * self.weight


# --------------------------------------------------------------------------------------------
# the selective scan
# --------------------------------------------------------------------------------------------


def _prefix_scan(decay: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive Kogge–Stone scan of h_t = decay_t · h_{t-1} + inputs_t along dim 1 (h_{-1} = 0).

    Returns (cumulative decay, h). Shapes ``[B, L, ...]``.
    """
    length = decay.shape[1]
    offset = 1
    while offset < length:
        prev_decay = decay[:, :-offset]
        prev_inputs = inputs[:, :-offset]
        inputs = torch.cat([inputs[:, :offset], inputs[:, offset:] + decay[:, offset:] * prev_inputs], dim=1)
        decay = torch.cat([decay[:, :offset], decay[:, offset:] * prev_decay], dim=1)
        offset *= 2
    return decay, inputs


def _is_exporting() -> bool:
    """Whether ``torch.export`` (the TVM path) is capturing: the flag it sets, read directly (see
    :func:`_is_tracing`)."""
    compiler = _compiler()
    flag = getattr(compiler, "_is_exporting_flag", None)
    if flag is None:
        flag = getattr(compiler, "is_exporting", lambda: False)()
    return bool(flag)


def _is_tracing() -> bool:
    """Whether the step is being captured for an exported graph (ONNX through the TorchScript tracer,
    TVM through ``torch.export``): the graph forms that ONNX Runtime runs fast. ``torch.compile``
    gets the plain eager form. Inside Dynamo neither ``is_exporting()`` nor ``jit.is_tracing()`` can
    be trusted (torch 2.11's Dynamo answers ``is_exporting()`` with True under ``torch.compile`` too,
    and some versions answer ``jit.is_tracing()`` with True), so the flag that ``torch.export`` sets
    is read directly; ``is_exporting()`` only where a torch has no such flag."""
    compiler = _compiler()
    if _is_exporting():
        return True
    if getattr(compiler, "is_compiling", lambda: False)():
        return False
    return torch.jit.is_tracing()


def _compiler():
    """``torch.compiler`` (one place, so that a test can stand in for another torch version's answers)."""
    return torch.compiler


def softplus(v: Tensor) -> Tensor:
    """``F.softplus`` (threshold 20); in exported graphs as ``max(log1p(e^min(v, 20)), v)``.

    ONNX Runtime's ``Softplus`` kernel is scalar: 22 µs for the 1536 channels of a 130m layer, 0.5 ms
    of a 24-layer step (this 2-core AVX-512 VM, 1 and 2 threads); this form is vectorized
    element-wise kernels. The same function: above 20 both give ``v`` (``log1p(e^v) > v``, so
    ``max`` picks the branch); below it ``log1p(e^v)``, with ``log1p`` through Goldberg's identity
    ``log(w)·u/(w − 1)``, ``w = 1 + u``: within 2e-7 of float64 softplus relative (float32
    ``F.softplus``: 1.1e-7), 0 where ``u`` < 6e-8 (off by less than that). Plain ``log(1 + e^v)``
    loses up to 6e-5 of a small step size, enough to move static int8 levels of the zoo model.
    """
    if not _is_tracing():
        return F.softplus(v)
    u = torch.exp(torch.clamp(v, max=20.0))
    w = u + 1.0
    # log1p(u) as log(w)·u/(w − 1): w − 1 is exact, so the ratio corrects the rounding of 1 + u
    # (Goldberg's identity); where w rounds to 1 (u < 6e-8) log(w) is 0 and so is the result
    return torch.maximum(torch.log(w) * (u / torch.clamp(w - 1.0, min=1e-30)), v)


# e^{-S} below must stay finite in float32: keep |cumulative log-decay| of a chunk under this
_MAX_CHUNK_LOG_DECAY = 60.0
# below this many steps per chunk the closed form loses to the prefix scan (steep decays)
_MIN_CLOSED_FORM_CHUNK = 4


def selective_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, ssm_state: Tensor | None = None, chunk: int = 16
) -> tuple[Tensor, Tensor]:
    """Parallel selective scan.

    x, dt: [B, T, Di]; A: [Di, N] (negative); B, C: [B, T, N]; D: [Di]; ssm_state: [B, Di, N] or None.
    Returns y [B, T, Di] and the final state [B, Di, N].

    Eager mode: chunks of ``chunk`` steps, each solved in closed form. Because A does not depend
    on time, the cumulative log-decay is ``S_t = A ⊙ Σ_{s<=t} dt_s`` and

        h_t = e^{S_t} ⊙ (h_0 + Σ_{s<=t} e^{-S_s} ⊙ b_s),   b_s = (dt_s x_s) ⊗ B_s,

    evaluated with time as the last (contiguous) axis, ``[B, Di, N, L]``. The chunk shrinks when
    the decay is so steep that ``e^{-S}`` could overflow, so the result is exact, never clamped;
    when it would have to shrink below a few steps, the Kogge–Stone prefix scan (products of
    decays only, stable for any decay) is used instead.

    Traced (ONNX/``torch.export``, where shapes must be static and the chunk cannot adapt to
    the input): the recurrence itself, unrolled step by step (:func:`_selective_scan_unrolled`)
    — the step graph's arithmetic, exact for any decay, and on a CPU cheaper than any
    parallel form (it does the least work, and a step's tensors stay in cache).
    """
    batch, length, d_inner = x.shape
    if ssm_state is None:
        ssm_state = x.new_zeros(batch, d_inner, A.shape[1])
    if _is_tracing():
        return _selective_scan_unrolled(x, dt, A, B, C, D, ssm_state)
    chunk = _safe_chunk(dt.detach(), (-A.detach()).amax(dim=1), max(1, min(chunk, length)))
    if chunk == 0:  # so steep (or NaN) that only products of decays are safe
        return _selective_scan_prefix(x, dt, A, B, C, D, ssm_state, chunk=64)
    y, ssm_state = _ChunkedScan.apply(x, dt, A, B, C, ssm_state, chunk)
    return y + x * D, ssm_state


def _safe_chunk(dt: Tensor, decay_rate: Tensor, chunk: int) -> int:
    """The largest chunk ≤ ``chunk`` (halving) whose cumulative log-decay stays within
    ``_MAX_CHUNK_LOG_DECAY`` in every chunk of this input, or 0 when even a few steps exceed it.

    dt: [B, T, Di]; decay_rate: max_n |A[d, n]|, [Di]. Exact bound: ``|S| <= |A|·Σ_chunk dt``.
    """
    batch, length, d_inner = dt.shape
    while chunk >= _MIN_CLOSED_FORM_CHUNK or chunk == length:
        pad = (-length) % chunk
        per_chunk = F.pad(dt, (0, 0, 0, pad)).view(batch, -1, chunk, d_inner).sum(2)  # Σ dt: [B, chunks, Di]
        steepest = float((per_chunk * decay_rate).amax())
        if steepest <= _MAX_CHUNK_LOG_DECAY:
            return chunk
        if steepest != steepest:  # NaN
            return 0
        chunk //= 2
    return 0


def _chunk_states(dt_c: Tensor, drive_c: Tensor, B_c: Tensor, A_col: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """Closed form over one chunk, time last (contiguous). dt_c, drive_c (= dt·x): [B, Di, L];
    B_c: [B, N, L]; A_col: [Di, N, 1]; h0: [B, Di, N].
    Returns (decay e^{S_t}, states h_t), both [B, Di, N, L]."""
    decay = (dt_c.cumsum(-1).unsqueeze(2) * A_col).exp_()  # e^{S_t}
    states = (drive_c.unsqueeze(2) * B_c.unsqueeze(1)).div_(decay)  # e^{-S_s} b_s
    states.cumsum_(-1)  # Σ_{s<=t} e^{-S_s} b_s
    states.add_(h0.unsqueeze(-1)).mul_(decay)  # h_t = e^{S_t}(h0 + Σ ...)
    return decay, states


def _time_last(*tensors: Tensor) -> list[Tensor]:
    """[B, T, K] -> contiguous [B, K, T]."""
    return [t.transpose(1, 2).contiguous() for t in tensors]


class _ChunkedScan(torch.autograd.Function):
    """The chunked closed-form scan with a hand-written backward.

    Forward keeps only the state at each chunk start (``[chunks, B, Di, N]``), not the per-step
    states; backward recomputes a chunk's states and solves the adjoint recurrence
    ``g_t = C_t ⊗ gy_t + a_{t+1} g_{t+1}`` in the same closed form run backwards in time:
    ``g_t = e^{-S_t}(Σ_{s>=t} e^{S_s} c_s + e^{S_L} g_carry)``. Then, with ``m_t = g_t ⊙ (h_t - b_t)``
    (= ∂L/∂(dt_t A)): dB, d(dt·x) from g; dA, d(dt) from m; dC from h.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, ssm_state, chunk):
        length = x.shape[1]
        # time last and contiguous, so that every [B, Di, N, L] temporary is laid out time-fastest
        drive_t, dt_t, B_t, C_t = _time_last(dt * x, dt, B, C)  # dt·x, dt: [B, Di, T]; B, C: [B, N, T]
        A_col = A.unsqueeze(-1)  # [Di, N, 1]
        ys, starts = [], []
        for start in range(0, length, chunk):
            sl = slice(start, start + chunk)
            starts.append(ssm_state)
            _, states = _chunk_states(dt_t[:, :, sl], drive_t[:, :, sl], B_t[:, :, sl], A_col, ssm_state)
            ssm_state = states[..., -1].clone()
            ys.append(states.mul_(C_t[:, None, :, sl]).sum(2))  # C_t · h_t: [B, Di, L]
        ctx.save_for_backward(x, dt, A, B, C, torch.stack(starts))
        ctx.chunk = chunk
        return torch.cat(ys, dim=-1).transpose(1, 2), ssm_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_state):
        x, dt, A, B, C, starts = ctx.saved_tensors
        chunk, length = ctx.chunk, x.shape[1]
        drive_t, dt_t, B_t, C_t = _time_last(dt * x, dt, B, C)
        gy_t = _time_last(grad_y)[0] if grad_y is not None else torch.zeros_like(drive_t)  # [B, Di, T]
        A_col = A.unsqueeze(-1)
        lower = torch.ones(chunk, chunk, dtype=x.dtype, device=x.device).tril_()
        carry = grad_state if grad_state is not None else torch.zeros_like(starts[0])  # dL/dh at chunk end
        g_drive, g_dt, g_B, g_C = torch.empty_like(drive_t), torch.empty_like(dt_t), torch.empty_like(B_t), torch.empty_like(C_t)
        g_A = torch.zeros_like(A)
        for index in reversed(range(len(starts))):
            sl = slice(index * chunk, min(length, (index + 1) * chunk))
            decay, states = _chunk_states(dt_t[:, :, sl], drive_t[:, :, sl], B_t[:, :, sl], A_col, starts[index])
            size = states.shape[-1]
            g_C[:, :, sl] = torch.einsum("bdnl,bdl->bnl", states, gy_t[:, :, sl])
            # adjoint g_t: reverse cumulative sum of e^{S_s} c_s, plus the carried gradient
            adjoint = gy_t[:, :, None, sl] * C_t[:, None, :, sl]  # c_t = C_t ⊗ gy_t
            adjoint.mul_(decay)
            adjoint = torch.matmul(adjoint, lower[:size, :size])  # Σ_{s>=t}: reverse cumulative sum
            adjoint.add_((decay[..., -1] * carry).unsqueeze(-1)).div_(decay)  # g_t
            carry = decay[..., 0] * adjoint[..., 0]  # dL/dh0 of this chunk
            g_drive[:, :, sl] = torch.einsum("bdnl,bnl->bdl", adjoint, B_t[:, :, sl])
            g_B[:, :, sl] = torch.einsum("bdnl,bdl->bnl", adjoint, drive_t[:, :, sl])
            # m_t = g_t ⊙ (h_t - b_t) = ∂L/∂(dt_t A)
            states.sub_(drive_t[:, :, None, sl] * B_t[:, None, :, sl]).mul_(adjoint)
            g_dt[:, :, sl] = torch.einsum("bdnl,dn->bdl", states, A)
            g_A += torch.einsum("bdnl,bdl->dn", states, dt_t[:, :, sl])
        g_dt.add_(g_drive * x.transpose(1, 2))
        g_x = (g_drive * dt_t).transpose(1, 2)
        return g_x, g_dt.transpose(1, 2), g_A, g_B.transpose(1, 2), g_C.transpose(1, 2), carry, None


def _selective_scan_prefix(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, ssm_state: Tensor, chunk: int = 64
) -> tuple[Tensor, Tensor]:
    """Static-shape scan for tracing: Kogge–Stone inside chunks, a carried state across them."""
    length = x.shape[1]
    ys = []
    for start in range(0, length, chunk):
        sl = slice(start, start + chunk)
        decay = torch.exp(dt[:, sl].unsqueeze(-1) * A)  # [B, L, Di, N]
        drive = (dt[:, sl] * x[:, sl]).unsqueeze(-1) * B[:, sl].unsqueeze(2)
        cum_decay, local = _prefix_scan(decay, drive)
        states = local + cum_decay * ssm_state.unsqueeze(1)
        ys.append(torch.einsum("bldn,bln->bld", states, C[:, sl]))
        ssm_state = states[:, -1]
    return torch.cat(ys, dim=1) + x * D, ssm_state


# time steps whose decays and drives the unrolled scan materialises at once ([B, L, N, Di]):
# small enough to stay in cache, large enough that a block's few big kernels amortise
_UNROLL_BLOCK = 16


def _selective_scan_unrolled(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, ssm_state: Tensor, block: int = _UNROLL_BLOCK
) -> tuple[Tensor, Tensor]:
    """The recurrence unrolled over time, for the traced (exported) prefill graph.

    Per block of ``block`` steps: the decays ``exp(dt_t A)`` and drives ``(dt_t x_t) B_t`` of all
    its steps in two broadcasts, then per step ``h = a_t ⊙ h + b_t`` (two kernels), then
    ``y_t = C_t · h_t`` for the block as one batched matrix product. The state is carried as
    ``[B, N, Di]`` (d_inner last and contiguous): every broadcast then runs over 1536-float spans
    instead of 16-float ones, which ONNX Runtime's elementwise kernels need to be fast. Exact for
    any decay (no cumulative products or their inverses), element for element the step's update.
    """
    length = x.shape[1]
    h = ssm_state.transpose(1, 2).unsqueeze(1)  # [B, 1, N, Di]
    A_t = A.t()  # [N, Di]
    drive = dt * x  # [B, T, Di]
    ys = []
    for start in range(0, length, block):
        sl = slice(start, start + block)
        decay = torch.exp(dt[:, sl].unsqueeze(2) * A_t)  # [B, L, N, Di]
        inputs = drive[:, sl].unsqueeze(2) * B[:, sl].unsqueeze(-1)  # [B, L, N, Di]
        states = []
        for a_t, b_t in zip(decay.split(1, dim=1), inputs.split(1, dim=1)):
            h = a_t * h + b_t
            states.append(h)
        # [B, L, 1, N] @ [B, L, N, Di]: a batched matrix product (ONNX MatMul), not an Einsum
        ys.append(torch.matmul(C[:, sl].unsqueeze(2), torch.cat(states, dim=1)).squeeze(2))
    return torch.cat(ys, dim=1) + x * D, h.squeeze(1).transpose(1, 2)


def selective_scan_loop(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, ssm_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The same scan as a Python loop over time: the reference for tests and benchmarks."""
    batch, length, d_inner = x.shape
    h = x.new_zeros(batch, d_inner, A.shape[1]) if ssm_state is None else ssm_state
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    return torch.stack(ys, 1) + x * D, h


# --------------------------------------------------------------------------------------------
# the mixer and the model
# --------------------------------------------------------------------------------------------


class MambaMixer(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        di, n, r = cfg.d_inner, cfg.d_state, cfg.rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * di, bias=cfg.bias)
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.ssm_in = ActPoint()  # the SSM input x: quantized once, used by x_proj and the scan
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, cfg.d_model, bias=cfg.bias)
        self._init_dt()

    def _init_dt(self) -> None:
        cfg = self.cfg
        std = cfg.rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(cfg.d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        ).clamp(min=cfg.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def _ssm_params(self, x: Tensor, step: bool = False, raw: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(Δ, B, C) of the SSM input ``x``; ``raw``: ``dt_proj``'s output before softplus."""
        n, r = self.cfg.d_state, self.cfg.rank
        dt, B, C = self.x_proj(x).split([r, n, n], dim=-1)
        if raw:
            return self.dt_proj(dt), B, C
        # the step graph's softplus is vectorized (``softplus``); the prefill graph keeps ONNX
        # Runtime's own kernel: over a 64-position chunk of a static-int8 model, the last-bit
        # differences of any other spelling move levels early enough in the chunk that the
        # whole-chunk test refuses a correct graph (the zoo model's w8a8, 4 verification steps:
        # 22.7% of 128 positions inexact against float64's 4.7%, allowed 20.1%)
        return (softplus if step else F.softplus)(self.dt_proj(dt)), B, C

    def forward(self, hidden: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """[B, T, d_model] -> (out, conv_state [B, Di, k-1], ssm_state [B, Di, N])."""
        k = self.cfg.d_conv
        length = hidden.shape[1]
        di = self.cfg.d_inner
        x, z = self.in_proj(hidden).split([di, di], dim=-1)  # static sizes: one ONNX Split (chunk traces 7 shape ops)
        prev = state[0] if state is not None else x.new_zeros(x.shape[0], di, k - 1)  # the conv's last k - 1 inputs
        if fused_ops.active() and k > 1:  # ONNX export with edgeseq's fused kernels: conv, bias and SiLU, one node
            bias = self.conv1d.bias if self.conv1d.bias is not None else x.new_zeros(di)
            x, conv_state = fused_ops.CausalConv1d.apply(prev, x, self.conv1d.weight[:, 0, :], bias)
            return self._scan_out(self.ssm_in(x), z, conv_state, None if state is None else state[1])
        x = x.transpose(1, 2)  # [B, Di, T]
        if state is None:
            x_padded = F.pad(x, (k - 1, 0))
            ssm_state = None
        else:
            x_padded = torch.cat([state[0], x], dim=-1)
            ssm_state = state[1]
        # the next conv state from the last k - 1 inputs alone (the old state's tail where T < k - 1):
        # the same values as x_padded's tail, but an exported graph then frees x_padded after the
        # conv instead of keeping it until the end of the run for the state output (130m prefill,
        # 32 positions: 24 × 210 KiB alive at once, 4 MiB of the peak RSS)
        if k > 1:
            conv_state = torch.cat([prev, x[:, :, -(k - 1):]], dim=-1)[:, :, -(k - 1):]
        else:
            conv_state = x[:, :, :0]
        conv = F.conv1d(x_padded, self.conv1d.weight, self.conv1d.bias, groups=self.cfg.d_inner)
        x = self.ssm_in(F.silu(conv[:, :, :length]).transpose(1, 2))  # [B, T, Di]
        return self._scan_out(x, z, conv_state, ssm_state)

    def _scan_out(self, x: Tensor, z: Tensor, conv_state: Tensor, ssm_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The selective scan of the conv's output x [B, T, Di], gated by z, and out_proj."""
        di = self.cfg.d_inner
        dt, B, C = self._ssm_params(x)
        A = -torch.exp(self.A_log.to(x.dtype))
        if fused_ops.active():  # ONNX export with edgeseq's fused kernels: the scan and its gate, one node
            if ssm_state is None:
                ssm_state = x.new_zeros(x.shape[0], di, A.shape[1])
            y, ssm_state = fused_ops.SelectiveScan.apply(dt, x, A, B, C, self.D, ssm_state, z)
            return self.out_proj(y), conv_state, ssm_state
        y, ssm_state = selective_scan(x, dt, A, B, C, self.D, ssm_state, chunk=self.cfg.scan_chunk)
        return self.out_proj(y * F.silu(z)), conv_state, ssm_state

    def step(self, hidden: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, d_model] -> (out, conv_state, ssm_state); constant cost."""
        di = self.cfg.d_inner
        x, z = self.in_proj(hidden).split([di, di], dim=-1)  # static sizes: one ONNX Split
        A = -torch.exp(self.A_log.to(x.dtype))
        if fused_ops.active():  # ONNX export with edgeseq's fused kernels: the conv, and the update with its gate
            bias = self.conv1d.bias if self.conv1d.bias is not None else x.new_zeros(di)
            x, shifted = fused_ops.CausalConv1dStep.apply(conv_state, x, self.conv1d.weight[:, 0, :], bias)
            x = self.ssm_in(x)
            dt_raw, B, C = self._ssm_params(x, raw=True)
            y, ssm_state = fused_ops.SelectiveStateUpdate.apply(dt_raw, x, A, B, C, self.D, ssm_state, z)
            return self.out_proj(y), shifted, ssm_state
        window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)  # [B, Di, k]
        conv = (window * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias
        x = self.ssm_in(F.silu(conv))
        dt, B, C = self._ssm_params(x, step=True)
        # ONNX graphs (the TorchScript tracer, not torch.export) get forms that ONNX Runtime runs fast
        traced = _is_tracing() and not _is_exporting()
        if traced:
            # the two per-channel broadcasts as matrix products of inner size 1, exact (each element
            # one product, the same numbers as below): dt [B, Di, 1] @ ones [1, N] and the outer
            # product (dt·x) [B, Di, 1] @ B [B, 1, N]. ONNX Runtime broadcasts [B, Di, 1] against
            # [Di, N] as 1536 spans of 16 floats, several times slower per element (the 130m
            # w8a8-block step, 2 threads: 11.4 -> 9.9 ms median; docs/targets.md). Not for TVM:
            # TVM 0.27 fuses the first product with the state update into one CUDA kernel that
            # drops the old state's decayed term (measured on an H200: the new state 100% off from
            # a non-zero state, the first step from zero exact; right on CPU); TVM fuses the
            # broadcasts itself.
            dt_rows = torch.matmul(dt.unsqueeze(-1), x.new_ones(1, A.shape[1]))
            drive = torch.matmul((dt * x).unsqueeze(-1), B.unsqueeze(1))
        else:
            dt_rows, drive = dt.unsqueeze(-1), (dt * x).unsqueeze(-1) * B.unsqueeze(1)
        ssm_state = torch.exp(dt_rows * A) * ssm_state + drive
        # a batched matrix-vector product (ONNX MatMul; Einsum is a slow generic kernel in ONNX Runtime)
        y = torch.matmul(ssm_state, C.unsqueeze(-1)).squeeze(-1) + self.D * x
        return self.out_proj(y * F.silu(z)), self._shifted(window, traced), ssm_state

    def _shifted(self, window: Tensor, traced: bool) -> Tensor:
        """The conv window without its oldest column; in ONNX graphs as window @ [rows 1.. of I]:
        exact, and not one 3-float span per channel."""
        if not traced:
            return window[:, :, 1:]
        return torch.matmul(window, torch.eye(self.cfg.d_conv, dtype=window.dtype, device=window.device)[:, 1:])


class MambaBlock(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = MambaMixer(cfg)


class SelectiveSSMLM(StreamingModel):
    """The language-model shell the Mamba families share: token embedding, pre-norm residual
    blocks (``block_class``: ``norm`` + ``mixer`` with ``forward(x, state)`` and ``step``), final
    RMSNorm and an LM head tied to the embedding by default. Per layer the state is
    ``conv_{i}`` and ``ssm_{i}``; subclasses give their shapes (``state_spec``)."""

    task = "lm"
    config_class: type = None  # type: ignore[assignment]
    block_class: type = None  # type: ignore[assignment]

    def __init__(self, config=None):
        super().__init__()
        self.config = cfg = config or self.config_class()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(self.block_class(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.02)
        for block in self.layers:
            # prenorm residual rescaling of the reference implementation
            nn.init.kaiming_uniform_(block.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                block.mixer.out_proj.weight /= math.sqrt(self.config.n_layer)

    def io_spec(self) -> IOSpec:
        """Token ids below ``vocab_size`` in, logits over the same vocabulary out."""
        return IOSpec.tokens(self.config.vocab_size)

    def head(self, hidden: Tensor) -> Tensor:
        hidden = self.norm_f(hidden)
        if self.lm_head is None:
            return F.linear(hidden, self.embedding.weight)
        return self.lm_head(hidden)  # a module: a quantized head quantizes its own input

    def forward(self, input_ids: Tensor) -> Tensor:
        logits, _ = self._parallel(input_ids, None)
        return logits

    def prefill(self, input_ids: Tensor, state: State | None = None, outputs_from: Tensor | int | None = None) -> tuple[Tensor, State]:
        """The parallel form from ``state``. ``outputs_from`` (a position, possibly a 0-d int64
        tensor): logits only for positions ``outputs_from:`` — the LM head, a ``d_model × vocab``
        product per position, is skipped for the others (a generator needs the last position's)."""
        return self._parallel(input_ids, state, outputs_from)

    def _parallel(self, input_ids: Tensor, state: State | None, outputs_from: Tensor | int | None = None) -> tuple[Tensor, State]:
        hidden = self.embedding(input_ids)
        new_state: State = {}
        for i, block in enumerate(self.layers):
            layer_state = None if state is None else (state[f"conv_{i}"], state[f"ssm_{i}"])
            out, conv_state, ssm_state = block.mixer(block.norm(hidden), layer_state)
            hidden = hidden + out
            new_state[f"conv_{i}"], new_state[f"ssm_{i}"] = conv_state, ssm_state
        if outputs_from is not None:
            hidden = hidden[:, outputs_from:]
        return self.head(hidden), new_state

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        hidden = self.embedding(token)
        new_state: State = {}
        for i, block in enumerate(self.layers):
            out, conv_state, ssm_state = block.mixer.step(block.norm(hidden), state[f"conv_{i}"], state[f"ssm_{i}"])
            hidden = hidden + out
            new_state[f"conv_{i}"], new_state[f"ssm_{i}"] = conv_state, ssm_state
        return self.head(hidden), new_state


class Mamba(SelectiveSSMLM):
    """A Mamba-1 language model over token ids, with a tied (by default) LM head."""

    config_class = MambaConfig
    block_class = MambaBlock

    def __init__(self, config: MambaConfig | None = None):
        super().__init__(config)

    def state_spec(self) -> list[StateSpec]:
        cfg = self.config
        specs = []
        for i in range(cfg.n_layer):
            specs.append(StateSpec(f"conv_{i}", (cfg.d_inner, cfg.d_conv - 1)))
            specs.append(StateSpec(f"ssm_{i}", (cfg.d_inner, cfg.d_state)))
        return specs

    def quant_points(self) -> list[QuantPoint]:
        points = []
        for i in range(self.config.n_layer):
            p = f"layers.{i}.mixer"
            points += [
                QuantPoint(f"{p}.in_proj", "linear", note="input: RMSNorm output"),
                QuantPoint(f"{p}.ssm_in", "act", clip="percentile", note="SSM input x (Quamba: percentile clip)"),
                QuantPoint(f"{p}.x_proj", "linear", input_quantized_at=f"{p}.ssm_in", note="input: the SSM input x"),
                QuantPoint(f"{p}.dt_proj", "linear", note="input: low-rank dt"),
                QuantPoint(f"{p}.out_proj", "linear", rotatable=True,
                           note="input y·SiLU(z) has massive outliers: Hadamard-rotate (Quamba)"),
            ]
        return points
