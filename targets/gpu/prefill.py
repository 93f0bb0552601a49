"""GPU prefill of a Mamba-1 prompt (batch 1): the projections as bf16 GEMMs (cuBLAS through
PyTorch) and the selective scan as a chunked parallel scan in three Triton kernels.

    pf = MambaPrefill(model)                 # weights -> GPU (bf16 GEMM weights)
    logits, state = pf.prefill(tokens)       # last position's logits [vocab] fp32, the model's named state
    logits, state = pf.prefill_graphed(tokens)   # the same, replayed as one CUDA graph per prompt length
    rt.load_state(state)                     # hand over to the fused decode step (FusedMambaStep)

The scan (``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t``, ``y_t = C_t·h_t + D x_t``, gated by
SiLU(z_t)) runs over chunks of L steps in parallel, as in the chunked scans of Blelloch (1990)
and of Mamba's hardware-aware kernel (Gu & Dao, 2023):

1. ``scan_chunk_state_kernel`` — every (channel block, chunk) runs its L steps from a zero state:
   the chunk's own contribution ``h_loc`` and its decay ``exp(A · Σ dt)``;
2. ``scan_chunk_carry_kernel`` — per channel block, sequentially over the chunks (T / L steps):
   ``h_in[c] = h``, ``h = decay[c] · h + h_loc[c]``; the last h is the new state;
3. ``scan_chunk_out_kernel`` — every (channel block, chunk) reruns its L steps from ``h_in[c]``,
   writing the gated output.

fp32 throughout the scan; the GEMMs take bf16 inputs (fp32 accumulation), so the prompt's logits
differ from the fp32 model by bf16 rounding (~1e-2 relative), while the scan itself matches the
fp32 reference scan to ~1e-6.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from edgeseq.errors import InputError


@triton.jit
def scan_chunk_state_kernel(x_ptr, dt_ptr, b_ptr, a_ptr, hloc_ptr, decay_ptr, T,
                            E: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BE: tl.constexpr, L: tl.constexpr):
    pe = tl.program_id(0)
    c = tl.program_id(1)
    chans = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, BN)
    nm = n[None, :] < N
    a = tl.load(a_ptr + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
    h = tl.zeros([BE, BN], dtype=tl.float32)
    sdt = tl.zeros([BE], dtype=tl.float32)
    for i in range(L):
        t = c * L + i
        live = t < T
        dt = tl.load(dt_ptr + t * E + chans, mask=(chans < E) & live, other=0.0)
        x = tl.load(x_ptr + t * E + chans, mask=(chans < E) & live, other=0.0)
        bv = tl.load(b_ptr + t * N + n, mask=(n < N) & live, other=0.0)
        h = tl.exp(dt[:, None] * a) * h + (dt * x)[:, None] * bv[None, :]
        sdt += dt
    out = (c * E + chans[:, None]) * N + n[None, :]
    tl.store(hloc_ptr + out, h, mask=nm)
    tl.store(decay_ptr + out, tl.exp(a * sdt[:, None]), mask=nm)


@triton.jit
def scan_chunk_carry_kernel(hloc_ptr, decay_ptr, hin_ptr, h0_ptr, hT_ptr, NCHUNK: tl.constexpr,
                            E: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BE: tl.constexpr):
    pe = tl.program_id(0)
    chans = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, BN)
    nm = n[None, :] < N
    off = chans[:, None] * N + n[None, :]
    h = tl.load(h0_ptr + off, mask=nm, other=0.0)
    for c in range(NCHUNK):
        tl.store(hin_ptr + c * E * N + off, h, mask=nm)
        h = tl.load(decay_ptr + c * E * N + off, mask=nm, other=0.0) * h + tl.load(hloc_ptr + c * E * N + off, mask=nm, other=0.0)
    tl.store(hT_ptr + off, h, mask=nm)


@triton.jit
def scan_chunk_out_kernel(x_ptr, dt_ptr, b_ptr, c_ptr, z_ptr, a_ptr, d_ptr, hin_ptr, y_ptr, T,
                          E: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, BE: tl.constexpr, L: tl.constexpr,
                          GATE: tl.constexpr):
    pe = tl.program_id(0)
    c = tl.program_id(1)
    chans = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, BN)
    nm = n[None, :] < N
    a = tl.load(a_ptr + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
    dsk = tl.load(d_ptr + chans)
    h = tl.load(hin_ptr + (c * E + chans[:, None]) * N + n[None, :], mask=nm, other=0.0)
    for i in range(L):
        t = c * L + i
        live = t < T
        m = (chans < E) & live
        dt = tl.load(dt_ptr + t * E + chans, mask=m, other=0.0)
        x = tl.load(x_ptr + t * E + chans, mask=m, other=0.0)
        bv = tl.load(b_ptr + t * N + n, mask=(n < N) & live, other=0.0)
        cv = tl.load(c_ptr + t * N + n, mask=(n < N) & live, other=0.0)
        h = tl.exp(dt[:, None] * a) * h + (dt * x)[:, None] * bv[None, :]
        y = tl.sum(h * cv[None, :], axis=1) + dsk * x
        if GATE:
            z = tl.load(z_ptr + t * E + chans, mask=m, other=0.0)
            y = y * (z / (1.0 + tl.exp(-z)))
        tl.store(y_ptr + t * E + chans, y, mask=m)


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def chunked_scan(x, dt, A, B, C, D, h0=None, z=None, chunk: int = 64, block: int = 32):
    """The selective scan of one sequence on the GPU: x, dt, z [T, E]; A [E, N]; B, C [T, N]; D [E];
    h0 [E, N] (zeros if None). Returns (y [T, E] (times SiLU(z) when z is given), h_T [E, N]), fp32."""
    import torch

    T, E = x.shape
    N = A.shape[1]
    be = block
    while be > 1 and E % be:
        be //= 2
    f = lambda t: t.float().contiguous()  # noqa: E731
    x, dt, B, C, A, D = f(x), f(dt), f(B), f(C), f(A), f(D)
    h0 = torch.zeros(E, N, device=x.device) if h0 is None else f(h0)
    nchunk = -(-T // chunk)
    hloc = torch.empty(nchunk, E, N, device=x.device)
    decay = torch.empty_like(hloc)
    hin = torch.empty_like(hloc)
    hT = torch.empty(E, N, device=x.device)
    y = torch.empty(T, E, device=x.device)
    scan_chunk_state_kernel[(E // be, nchunk)](x, dt, B, A, hloc, decay, T, E=E, N=N, BN=_pow2(N), BE=be, L=chunk)
    scan_chunk_carry_kernel[(E // be,)](hloc, decay, hin, h0, hT, NCHUNK=nchunk, E=E, N=N, BN=_pow2(N), BE=be)
    scan_chunk_out_kernel[(E // be, nchunk)](x, dt, B, C, x if z is None else f(z), A, D, hin, y, T, E=E, N=N,
                                             BN=_pow2(N), BE=be, L=chunk, GATE=z is not None)
    return y, hT


class MambaPrefill:
    """Prefill of an edgeseq ``Mamba`` on a CUDA device (see the module docs)."""

    def __init__(self, model: Any, device: str = "cuda", dtype: str = "bfloat16", chunk: int = 64):
        import torch

        cfg = model.config
        if getattr(cfg, "family", None) != "mamba":
            raise InputError(f"the GPU prefill runs Mamba models, not {getattr(cfg, 'family', '?')!r}")
        if not cfg.tie_embeddings:
            raise InputError("the GPU prefill expects a tied embedding / LM head")
        self.torch, self.cfg, self.device, self.chunk = torch, cfg, torch.device(device), chunk
        self.dtype = getattr(torch, dtype)
        dev, f32, wt = self.device, torch.float32, self.dtype
        self.layers = []
        with torch.no_grad():
            for block in model.layers:
                mx = block.mixer
                g = lambda t, d=wt: t.detach().to(dev, d).contiguous()  # noqa: E731
                self.layers.append({
                    "norm_w": g(block.norm.weight, f32), "eps": float(block.norm.eps),
                    "w_in": g(mx.in_proj.weight), "b_in": None if mx.in_proj.bias is None else g(mx.in_proj.bias, f32),
                    "conv_w": g(mx.conv1d.weight, f32), "conv_b": None if mx.conv1d.bias is None else g(mx.conv1d.bias, f32),
                    "w_x": g(mx.x_proj.weight), "w_dt": g(mx.dt_proj.weight), "b_dt": g(mx.dt_proj.bias, f32),
                    "A": (-torch.exp(mx.A_log.detach().float())).to(dev).contiguous(), "D": g(mx.D, f32),
                    "w_out": g(mx.out_proj.weight), "b_out": None if mx.out_proj.bias is None else g(mx.out_proj.bias, f32),
                })
            self.emb = model.embedding.weight.detach().to(dev, wt).contiguous()
            self.norm_f = model.norm_f.weight.detach().to(dev, f32).contiguous()
            self.eps_f = float(model.norm_f.eps)
        self._graphs: dict[int, Any] = {}

    def _lin(self, x, w, b=None):
        import torch.nn.functional as F

        out = F.linear(x.to(self.dtype), w).float()
        return out if b is None else out + b

    def prefill(self, tokens: Any) -> tuple[Any, dict]:
        """tokens [T] (or [1, T]) -> (logits of the last position [vocab] fp32, the model's named state)."""
        torch = self.torch
        import torch.nn.functional as F

        cfg = self.cfg
        tokens = torch.as_tensor(tokens, device=self.device).reshape(-1)
        T, E, N, R, K = tokens.numel(), cfg.d_inner, cfg.d_state, cfg.rank, cfg.d_conv
        h = self.emb[tokens].float()
        state = {}
        with torch.no_grad():
            for i, L in enumerate(self.layers):
                u = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + L["eps"]) * L["norm_w"]
                xz = self._lin(u, L["w_in"], L["b_in"])
                x, z = xz[:, :E], xz[:, E:]
                xp = F.pad(x.t().unsqueeze(0), (K - 1, 0))  # [1, E, T + K - 1], zero initial window
                conv = F.conv1d(xp, L["conv_w"], L["conv_b"], groups=E)[0].t()  # [T, E]
                state[f"conv_{i}"] = xp[:, :, -(K - 1):].contiguous() if K > 1 else xp[:, :, :0]
                xs = F.silu(conv)
                dbc = self._lin(xs, L["w_x"])
                dt = F.softplus(self._lin(dbc[:, :R], L["w_dt"], L["b_dt"]))
                y, hT = chunked_scan(xs, dt, L["A"], dbc[:, R:R + N], dbc[:, R + N:], L["D"], z=z, chunk=self.chunk)
                state[f"ssm_{i}"] = hT.unsqueeze(0)
                h = h + self._lin(y, L["w_out"], L["b_out"])
            last = h[-1]
            last = last * torch.rsqrt(last.pow(2).mean() + self.eps_f) * self.norm_f
            logits = F.linear(last.to(self.dtype), self.emb).float()
        return logits, state

    def prefill_graphed(self, tokens: Any) -> tuple[Any, dict]:
        """``prefill`` captured once per prompt length into a CUDA graph and replayed: the ~300
        launches of a 24-layer prompt leave the host once. Returns views of the graph's output
        buffers (clone them to keep them past the next call of the same length)."""
        torch = self.torch
        tokens = torch.as_tensor(tokens, device=self.device).reshape(-1)
        length = tokens.numel()
        if length not in self._graphs:
            static = tokens.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.prefill(static)  # compiles the kernels for this length outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.prefill(static)
            self._graphs[length] = (graph, static, out)
        graph, static, out = self._graphs[length]
        static.copy_(tokens)
        graph.replay()
        return out


__all__ = ["MambaPrefill", "chunked_scan", "scan_chunk_carry_kernel", "scan_chunk_out_kernel", "scan_chunk_state_kernel"]
