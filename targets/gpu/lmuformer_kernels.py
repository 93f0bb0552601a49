"""The Triton kernel of the fused LMUFormer / Spiking LMUFormer frame step (batch 1). Imported only by
``targets.gpu.lmuformer``.

LMUFormer models are small (the published ones ~1–2 M parameters, 64–256 wide) and their step is a
chain of ~12 dependent GEMVs per block plus ~6 for the embedding, each a few KB to a few hundred
KB of weights. A launch per GEMV would make the step all launch latency, and a grid-wide barrier
per stage costs more than the stage. So the whole frame step is **one kernel of one program**: the
stages run in order inside it, separated by CTA barriers (``tl.debug_barrier``, i.e. bar.sync, which
also orders the program's global memory accesses), with the intermediate vectors in a small
scratch buffer that stays in L1/L2. Every GEMV loops over blocks of output rows with the whole
input row in registers; weights bf16 (or fp32), everything else fp32.

Per frame: the causal embedding (each conv a GEMV over its window [K−1 previous inputs; this
input], windows shifted in place; ReLU + BatchNorm, or BatchNorm → LIF spikes in the spiking model),
the positional conv plus the delayed skip, then per block the LMU token mixer (u = W_u x, the
Legendre memory m ← Ā m + B̄ u, h = W_h [m; x], the 1×1 projection and BatchNorm, residual) and the
channel mixer (two 1×1 convs with BatchNorm and GELU/ReLU, or BatchNorm → LIF in front of each), and
the head. The spiking variant puts BatchNorm → LIF (membranes in the state) where the model does.
Offsets of every weight (``o_ptr``) and state entry (``so_ptr``) come from small int64 tables built by
the host; the index layout is ``targets.gpu.lmuformer.ParamTable`` / ``StateTable``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _vec(ptr, N: tl.constexpr, BN: tl.constexpr):
    o = tl.arange(0, BN)
    return tl.load(ptr + o, mask=o < N, other=0.0)


@triton.jit
def _put(ptr, v, N: tl.constexpr, BN: tl.constexpr):
    o = tl.arange(0, BN)
    tl.store(ptr + o, v, mask=o < N)


@triton.jit
def _gemv(x_ptr, K: tl.constexpr, BK: tl.constexpr, w_ptr, N: tl.constexpr, out_ptr, TILE: tl.constexpr):
    """out[:N] = W[N, K] · x[:K] (W row-major), in blocks of TILE / BK rows (TILE weight elements in
    flight per iteration); ends with a CTA barrier."""
    RB: tl.constexpr = TILE // BK
    k = tl.arange(0, BK)
    km = k < K
    x = tl.load(x_ptr + k, mask=km, other=0.0)
    for r0 in range(0, N, RB):
        rows = r0 + tl.arange(0, RB)
        rm = rows < N
        w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=rm[:, None] & km[None, :], other=0.0)
        tl.store(out_ptr + rows, tl.sum(w.to(tl.float32) * x[None, :], axis=1), mask=rm)
    tl.debug_barrier()


@triton.jit
def _lif(v_ptr, current, N: tl.constexpr, BN: tl.constexpr, inv_tau, thr):
    """LIF step (edgeseq.models.lif defaults of LMUFormer: fire on >=, hard reset) on a vector; the
    membrane is updated in place; returns the spikes (fp32 0/1)."""
    m = _vec(v_ptr, N, BN)
    v = m + (current - m) * inv_tau
    s = tl.where(v >= thr, 1.0, 0.0)
    _put(v_ptr, v * (1.0 - s), N, BN)
    return s


@triton.jit
def _shift_window(win_ptr, CIN: tl.constexpr, KS: tl.constexpr, BW: tl.constexpr):
    """Rows 0..KS-2 of a [KS, CIN] window <- rows 1..KS-1 (the oldest input leaves)."""
    if KS > 1:
        o = tl.arange(0, BW)
        n = (KS - 1) * CIN
        keep = tl.load(win_ptr + CIN + o, mask=o < n, other=0.0)
        tl.debug_barrier()
        tl.store(win_ptr + o, keep, mask=o < n)
        tl.debug_barrier()


@triton.jit
def lmuformer_step_kernel(
    x_ptr, w_ptr, p_ptr, o_ptr, s_ptr, so_ptr, scratch_ptr, out_ptr, inv_tau, thr, thr_mix,
    F: tl.constexpr, BF: tl.constexpr, DIM: tl.constexpr, BDIM: tl.constexpr, ORDER: tl.constexpr,
    BORD: tl.constexpr, HID: tl.constexpr, BHID: tl.constexpr, NCLS: tl.constexpr, BCLS: tl.constexpr,
    KS: tl.constexpr, NEMB: tl.constexpr, DEPTH: tl.constexpr, DELAY: tl.constexpr, SPIKING: tl.constexpr,
    BKF: tl.constexpr, BKD: tl.constexpr, BCAT: tl.constexpr, BWF: tl.constexpr, BWD: tl.constexpr,
    BSK: tl.constexpr, TILE: tl.constexpr, BIG: tl.constexpr,
):
    X0 = scratch_ptr
    X1 = scratch_ptr + BIG
    CAT = scratch_ptr + 2 * BIG
    SB: tl.constexpr = 2 * NEMB + 3  # first per-block entry of the state table
    PB: tl.constexpr = 3 * NEMB + 5  # first per-block entry of the parameter table (26 a block)
    # ---- embedding: the frame into the first conv's window (its current slot, row KS-1)
    frame = _vec(x_ptr, F, BF)
    _put(s_ptr + tl.load(so_ptr + 0) + (KS - 1) * F, frame, F, BF)
    tl.debug_barrier()
    skip_src = tl.zeros([BDIM], dtype=tl.float32)
    for i in tl.static_range(NEMB):
        win = s_ptr + tl.load(so_ptr + i)
        if i == 0:
            _gemv(win, KS * F, BKF, w_ptr + tl.load(o_ptr + i), DIM, X0, TILE)
            _shift_window(win, F, KS, BWF)
        else:
            _gemv(win, KS * DIM, BKD, w_ptr + tl.load(o_ptr + i), DIM, X0, TILE)
            _shift_window(win, DIM, KS, BWD)
        y = _vec(X0, DIM, BDIM) + _vec(p_ptr + tl.load(o_ptr + PB + DEPTH * 26 + i), DIM, BDIM)  # conv bias
        bs = _vec(p_ptr + tl.load(o_ptr + NEMB + i), DIM, BDIM)
        bt = _vec(p_ptr + tl.load(o_ptr + 2 * NEMB + i), DIM, BDIM)
        if SPIKING:  # BN -> LIF in front of the next conv; the last conv's raw output is the skip path
            nxt = _lif(s_ptr + tl.load(so_ptr + NEMB + 2 + i), y * bs + bt, DIM, BDIM, inv_tau, thr)
            skip_src = y
        else:  # ReLU -> BN
            nxt = tl.maximum(y, 0.0) * bs + bt
            skip_src = nxt
        if i < NEMB - 1:
            _put(s_ptr + tl.load(so_ptr + i + 1) + (KS - 1) * DIM, nxt, DIM, BDIM)
        else:
            _put(s_ptr + tl.load(so_ptr + NEMB) + (KS - 1) * DIM, nxt, DIM, BDIM)
        tl.debug_barrier()
    # positional conv + the skip delayed by DELAY frames
    win = s_ptr + tl.load(so_ptr + NEMB)
    _gemv(win, KS * DIM, BKD, w_ptr + tl.load(o_ptr + 3 * NEMB), DIM, X0, TILE)
    _shift_window(win, DIM, KS, BWD)
    if DELAY > 0:
        sk_ptr = s_ptr + tl.load(so_ptr + NEMB + 1)
        sk = _vec(sk_ptr, DIM, BDIM)  # the oldest row
        tl.debug_barrier()
        _shift_window(sk_ptr, DIM, DELAY, BSK)  # [DELAY, DIM]: rows 0..DELAY-2 <- rows 1..DELAY-1
        _put(sk_ptr + (DELAY - 1) * DIM, skip_src, DIM, BDIM)
        tl.debug_barrier()
    else:
        sk = skip_src
    x = sk + _vec(X0, DIM, BDIM)
    # ---- blocks
    for j in tl.static_range(DEPTH):
        po = o_ptr + PB + j * 26
        st = so_ptr + SB + j * 7
        if SPIKING:
            xin = _lif(s_ptr + tl.load(st + 1), x * _vec(p_ptr + tl.load(po + 18), DIM, BDIM)
                       + _vec(p_ptr + tl.load(po + 19), DIM, BDIM), DIM, BDIM, inv_tau, thr_mix)
        else:
            xin = x
        # u = W_u x + b (one value, kept as a 2-vector)
        d = tl.arange(0, BDIM)
        u2 = tl.arange(0, 2)
        wu = tl.load(w_ptr + tl.load(po + 0) + u2[:, None] * DIM + d[None, :], mask=(u2[:, None] < 1) & (d[None, :] < DIM),
                     other=0.0)
        u = tl.sum(wu.to(tl.float32) * xin[None, :], axis=1) + _vec(p_ptr + tl.load(po + 1), 1, 2)
        if SPIKING:
            u = _lif(s_ptr + tl.load(st + 2), u * _vec(p_ptr + tl.load(po + 20), 1, 2) + _vec(p_ptr + tl.load(po + 21), 1, 2),
                     1, 2, inv_tau, thr)
        else:
            u = tl.maximum(u, 0.0)
        us = tl.sum(tl.where(u2 == 0, u, 0.0), axis=0)
        # the Legendre memory: m <- A m + B u (A fp32)
        mem = s_ptr + tl.load(st + 0)
        _gemv(mem, ORDER, BORD, p_ptr + tl.load(po + 16), ORDER, X1, TILE)
        m = _vec(X1, ORDER, BORD) + _vec(p_ptr + tl.load(po + 17), ORDER, BORD) * us
        _put(mem, m, ORDER, BORD)
        if SPIKING:
            m = _lif(s_ptr + tl.load(st + 3), m * _vec(p_ptr + tl.load(po + 22), ORDER, BORD)
                     + _vec(p_ptr + tl.load(po + 23), ORDER, BORD), ORDER, BORD, inv_tau, thr)
        _put(CAT, m, ORDER, BORD)
        _put(CAT + ORDER, xin, DIM, BDIM)
        tl.debug_barrier()
        _gemv(CAT, ORDER + DIM, BCAT, w_ptr + tl.load(po + 2), DIM, X0, TILE)
        h = _vec(X0, DIM, BDIM) + _vec(p_ptr + tl.load(po + 3), DIM, BDIM)
        if SPIKING:
            h = _lif(s_ptr + tl.load(st + 4), h * _vec(p_ptr + tl.load(po + 24), DIM, BDIM)
                     + _vec(p_ptr + tl.load(po + 25), DIM, BDIM), DIM, BDIM, inv_tau, thr)
        else:
            h = tl.maximum(h, 0.0)
        _put(X1, h, DIM, BDIM)
        tl.debug_barrier()
        _gemv(X1, DIM, BDIM, w_ptr + tl.load(po + 4), DIM, X0, TILE)
        y = _vec(X0, DIM, BDIM) + _vec(p_ptr + tl.load(po + 5), DIM, BDIM)
        x = x + y * _vec(p_ptr + tl.load(po + 6), DIM, BDIM) + _vec(p_ptr + tl.load(po + 7), DIM, BDIM)
        # channel mixer
        if SPIKING:
            s1 = _lif(s_ptr + tl.load(st + 5), x * _vec(p_ptr + tl.load(po + 10), DIM, BDIM)
                      + _vec(p_ptr + tl.load(po + 11), DIM, BDIM), DIM, BDIM, inv_tau, thr)
            _put(X1, s1, DIM, BDIM)
        else:
            _put(X1, x, DIM, BDIM)
        tl.debug_barrier()
        _gemv(X1, DIM, BDIM, w_ptr + tl.load(po + 8), HID, X0, TILE)
        f = _vec(X0, HID, BHID) + _vec(p_ptr + tl.load(po + 9), HID, BHID)
        if SPIKING:
            f = _lif(s_ptr + tl.load(st + 6), f * _vec(p_ptr + tl.load(po + 14), HID, BHID)
                     + _vec(p_ptr + tl.load(po + 15), HID, BHID), HID, BHID, inv_tau, thr)
        else:
            f = f * _vec(p_ptr + tl.load(po + 10), HID, BHID) + _vec(p_ptr + tl.load(po + 11), HID, BHID)
            f = 0.5 * f * (1.0 + tl.math.erf(f * 0.7071067811865476))
        _put(X1, f, HID, BHID)
        tl.debug_barrier()
        _gemv(X1, HID, BHID, w_ptr + tl.load(po + 12), DIM, X0, TILE)
        y = _vec(X0, DIM, BDIM) + _vec(p_ptr + tl.load(po + 13), DIM, BDIM)
        if not SPIKING:
            y = tl.maximum(y * _vec(p_ptr + tl.load(po + 14), DIM, BDIM) + _vec(p_ptr + tl.load(po + 15), DIM, BDIM), 0.0)
        x = x + y
    # ---- head
    if SPIKING:
        x = _lif(s_ptr + tl.load(so_ptr + 2 * NEMB + 2), x * _vec(p_ptr + tl.load(o_ptr + 3 * NEMB + 3), DIM, BDIM)
                 + _vec(p_ptr + tl.load(o_ptr + 3 * NEMB + 4), DIM, BDIM), DIM, BDIM, inv_tau, thr)
    _put(X1, x, DIM, BDIM)
    tl.debug_barrier()
    _gemv(X1, DIM, BDIM, w_ptr + tl.load(o_ptr + 3 * NEMB + 1), NCLS, X0, TILE)
    scores = _vec(X0, NCLS, BCLS) + _vec(p_ptr + tl.load(o_ptr + 3 * NEMB + 2), NCLS, BCLS)
    _put(out_ptr, scores, NCLS, BCLS)
