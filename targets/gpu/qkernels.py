"""Triton kernels of the fused Mamba-1 decode step for models quantized by an edgeseq recipe
(``quantize.quantize_model``: W4A16, W8A8, ...). Imported only by ``targets.gpu.qmamba``.

They compute what the fake-quant PyTorch model computes, with the recipe's own integers and scales:

* every GEMV weight (in_proj, x_proj, dt_proj, out_proj) is the recipe's integer tensor with its
  scales, per output channel or per group of input columns (a "channel" scale is one group as wide
  as the input). in_proj and out_proj are stored 4-bit packed (two values a byte, offset by 8) for
  4-bit recipes and as int8 otherwise; x_proj and dt_proj (2.5% of the bytes) one value a byte;
* with int8 activations (W8A8), each quantized input is rounded in the kernel exactly as
  ``quantize.qdq.fake_quant`` does: ``clamp(round_half_even(x / s), -128, 127)`` with IEEE
  division; the dot products then run over integers (exact in fp32: |partial sums| < 2^24) and are
  scaled once per group (weight scale x activation scale);
* the token embedding (and the tied LM head) is the recipe's int8 table with a per-row scale;
* a rotated out_proj (Quamba's Hadamard rotation) gets its input rotated in the kernels:
  ``H = (H_m ⊗ H_p) / sqrt(n)``; the SSM kernel of a channel block writes its share of the
  Sylvester part (``sum_b' (-1)^popcount(b & b') y[b']``), the out_proj kernel adds those shares
  with the small ``H_m`` and rounds the rotated input before its GEMV. That costs a third kernel
  per layer (the rotation needs the whole y, a dependency across the grid).

Activations, the recurrent state and every accumulation are fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from targets.gpu.kernels import (AMAX_RESET, _copy_share, _next_token, _nib_f32, _prefetch_l2, _prefetch_l2_share,
                                 gdc_launch_dependents, gdc_wait)

try:  # round-half-even on the GPU (PTX cvt.rni); the interpreter has no libdevice
    from triton.language.extra.cuda.libdevice import rint as _rint_dev
except ImportError:  # pragma: no cover
    _rint_dev = None



@triton.jit
def _round_half_even(t, INTERP: tl.constexpr):
    """Round to the nearest integer, halves to even (|t| < 2^22). On the GPU libdevice ``rint``
    (PTX cvt.rni): the compiler may fold the add-and-subtract trick, which the interpreter (numpy
    fp32) uses instead."""
    if INTERP:
        r = (t + 12582912.0) - 12582912.0
    else:
        r = _rint_dev(t)
    return r


@triton.jit
def _qint(x, s, INTERP: tl.constexpr):
    """The integer level (as fp32) of fake_quant(x, s, 8): clamp(round_half_even(x / s), -128, 127),
    x / s with IEEE rounding as torch divides."""
    t = tl.math.div_rn(x, s)
    t = _round_half_even(tl.minimum(tl.maximum(t, -130.0), 130.0), INTERP)
    return tl.minimum(tl.maximum(t, -128.0), 127.0)


@triton.jit
def _parity(v):
    v = v ^ (v >> 16)
    v = v ^ (v >> 8)
    v = v ^ (v >> 4)
    v = v ^ (v >> 2)
    v = v ^ (v >> 1)
    return v & 1


@triton.jit
def _sum_all(x, L3: tl.constexpr):
    if L3:
        out = tl.sum(tl.sum(x, axis=1), axis=0)
    else:
        out = tl.sum(x, axis=0)
    return out


@triton.jit
def q_in_kernel(
    tok_ptr, amax_ptr, emb_ptr, emb_s_ptr, h_ptr, norm_w_ptr, w_in_ptr, s_in_ptr, conv_w_ptr, conv_b_ptr, conv_ptr,
    w_xT_ptr, s_x_ptr, act_s_ptr, xc_ptr, zg_ptr, xsum_ptr, eps, vocab,
    D: tl.constexpr, E: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, XD: tl.constexpr, BX: tl.constexpr,
    BC: tl.constexpr, CH: tl.constexpr, NCH: tl.constexpr, BNCH: tl.constexpr, NGI: tl.constexpr, GI: tl.constexpr,
    NGX: tl.constexpr, GX: tl.constexpr, WB: tl.constexpr, IN_AQ: tl.constexpr, SSM_AQ: tl.constexpr,
    FIRST: tl.constexpr, FROM_ARGMAX: tl.constexpr, LDW: tl.constexpr, INTERP: tl.constexpr, L3: tl.constexpr,
    BDW: tl.constexpr, EVW: tl.constexpr, PDL: tl.constexpr = False, PRE: tl.constexpr = False,
):
    """RMSNorm -> in_proj (x, z rows of BC channels; integer weights) -> conv + SiLU (-> ssm_in
    rounding) -> this block's x_proj share added into xsum. The d_model row is cut into NCH chunks
    of CH columns, each inside one scale group; a 4-bit byte of chunk j holds columns j*CH + k (low
    nibble) and j*CH + CH/2 + k (high), so both halves of the activation are contiguous loads.
    L3: the row as a [NCH, CH] tile, partial dot products per chunk (exact integers when the input
    is rounded), scaled once per chunk; else a flat row of BDW stored elements with one scale each."""
    pid = tl.program_id(0)
    chans = pid * BC + tl.arange(0, BC)
    kk = tl.arange(0, KP)
    xo = tl.arange(0, BX)
    if WB == 4:
        HALF: tl.constexpr = CH // 2
    else:
        HALF: tl.constexpr = CH
    if L3:
        j = tl.arange(0, BNCH)
        jm = j < NCH
        kq = tl.arange(0, HALF)
        boff = j[:, None] * HALF + kq[None, :]  # stored element (byte) index in the row
        cl = j[:, None] * CH + kq[None, :]  # the column it holds (the low nibble's)
        am = jm[:, None]
        wm = jm[None, :, None]
        woff = chans[:, None, None] * LDW + boff[None, :, :]
        sxg = tl.load(s_in_ptr + chans[:, None] * NGI + ((j * CH) // GI)[None, :], mask=jm[None, :], other=0.0)
        szg = tl.load(s_in_ptr + (chans[:, None] + E) * NGI + ((j * CH) // GI)[None, :], mask=jm[None, :], other=0.0)
    else:
        boff = tl.arange(0, BDW)
        am = boff < NCH * HALF
        cl = (boff // HALF) * CH + boff % HALF
        wm = am[None, :]
        woff = chans[:, None] * LDW + boff[None, :]
        sxg = tl.load(s_in_ptr + chans[:, None] * NGI + (cl // GI)[None, :], mask=wm, other=0.0)
        szg = tl.load(s_in_ptr + (chans[:, None] + E) * NGI + (cl // GI)[None, :], mask=wm, other=0.0)
    bx = tl.load(w_in_ptr + woff, mask=wm, other=0, eviction_policy=EVW)
    bz = tl.load(w_in_ptr + E * LDW + woff, mask=wm, other=0, eviction_policy=EVW)
    nwl = tl.load(norm_w_ptr + cl, mask=am, other=0.0)
    if WB == 4:
        nwh = tl.load(norm_w_ptr + cl + HALF, mask=am, other=0.0)
    wxT = tl.load(w_xT_ptr + chans[:, None] * XD + xo[None, :], mask=xo[None, :] < XD, other=0, eviction_policy=EVW)
    sxp = tl.load(s_x_ptr + xo * NGX + (pid * BC) // GX, mask=xo < XD, other=0.0)
    cw = tl.load(conv_w_ptr + chans[:, None] * K + kk[None, :], mask=kk[None, :] < K, other=0.0)
    cb = tl.load(conv_b_ptr + chans)
    smask = kk[None, :] < (K - 1)
    window = tl.load(conv_ptr + chans[:, None] * (K - 1) + kk[None, :], mask=smask, other=0.0)  # this layer's own
    if PRE:  # float activations: the weights dequantized (integer x scale, as the fake-quant weight) before the wait
        if L3:
            gx = sxg[:, :, None]
            gz = szg[:, :, None]
        else:
            gx = sxg
            gz = szg
        if WB == 4:
            bxi = bx.to(tl.int32)
            bzi = bz.to(tl.int32)
            wxl = _nib_f32(bxi & 15) * gx
            wxh = _nib_f32(bxi >> 4) * gx
            wzl = _nib_f32(bzi & 15) * gz
            wzh = _nib_f32(bzi >> 4) * gz
        else:
            wxl = bx.to(tl.float32) * gx
            wzl = bz.to(tl.float32) * gz
    if PDL:  # programmatic dependent launch: the weights are on their way; now the previous kernel's outputs
        gdc_wait()
        gdc_launch_dependents()
    # activations: the residual row (or the token's int8 embedding row for layer 0)
    if FIRST:
        tok = _next_token(tok_ptr, amax_ptr, vocab, FROM_ARGMAX)
        es = tl.load(emb_s_ptr + tok)
        vl = tl.load(emb_ptr + tok * D + cl, mask=am, other=0).to(tl.float32) * es
        if pid == 0:
            tl.store(h_ptr + cl, vl, mask=am)
        if WB == 4:
            vh = tl.load(emb_ptr + tok * D + cl + HALF, mask=am, other=0).to(tl.float32) * es
            if pid == 0:
                tl.store(h_ptr + cl + HALF, vh, mask=am)
    else:
        vl = tl.load(h_ptr + cl, mask=am, other=0.0)
        if WB == 4:
            vh = tl.load(h_ptr + cl + HALF, mask=am, other=0.0)
    if WB == 4:
        ss = _sum_all(vl * vl + vh * vh, L3)
    else:
        ss = _sum_all(vl * vl, L3)
    rstd = 1.0 / tl.sqrt(ss / D + eps)
    if IN_AQ:
        s_a = tl.load(act_s_ptr + 0)
    ul = vl * rstd * nwl
    if IN_AQ:
        ul = _qint(ul, s_a, INTERP)
    if WB == 4:
        uh = vh * rstd * nwh
        if IN_AQ:
            uh = _qint(uh, s_a, INTERP)
    if PRE:
        if WB == 4:
            px = wxl * ul[None] + wxh * uh[None]
            pz = wzl * ul[None] + wzh * uh[None]
        else:
            px = wxl * ul[None]
            pz = wzl * ul[None]
        if L3:
            acc_x = tl.sum(tl.sum(px, axis=2), axis=1)
            acc_z = tl.sum(tl.sum(pz, axis=2), axis=1)
        else:
            acc_x = tl.sum(px, axis=1)
            acc_z = tl.sum(pz, axis=1)
    elif WB == 4:
        bxi = bx.to(tl.int32)
        bzi = bz.to(tl.int32)
        px = _nib_f32(bxi & 15) * ul[None] + _nib_f32(bxi >> 4) * uh[None]
        pz = _nib_f32(bzi & 15) * ul[None] + _nib_f32(bzi >> 4) * uh[None]
    else:
        px = bx.to(tl.float32) * ul[None]
        pz = bz.to(tl.float32) * ul[None]
    if not PRE:
        if L3:
            acc_x = tl.sum(tl.sum(px, axis=2) * sxg, axis=1)
            acc_z = tl.sum(tl.sum(pz, axis=2) * szg, axis=1)
        else:
            acc_x = tl.sum(px * sxg, axis=1)
            acc_z = tl.sum(pz * szg, axis=1)
    if IN_AQ:
        acc_x = acc_x * s_a
        acc_z = acc_z * s_a
    _in_tail(acc_x, acc_z, window, cw, cb, wxT, sxp, chans, kk, xo, act_s_ptr, conv_ptr, xc_ptr, zg_ptr, xsum_ptr,
             K, XD, SSM_AQ, INTERP)


@triton.jit
def _in_tail(acc_x, acc_z, window, cw, cb, wxT, sxp, chans, kk, xo, act_s_ptr, conv_ptr, xc_ptr, zg_ptr, xsum_ptr,
             K: tl.constexpr, XD: tl.constexpr, SSM_AQ: tl.constexpr, INTERP: tl.constexpr):
    """After the in_proj rows: depthwise conv over [window, x] + bias, SiLU (-> ssm_in rounding), the
    shifted window, x and SiLU(z) stored, this block's x_proj share added into xsum."""
    smask = kk[None, :] < (K - 1)
    window = tl.where(kk[None, :] == (K - 1), acc_x[:, None], window)
    conv = tl.sum(window * cw, axis=1) + cb
    xs = conv / (1.0 + tl.exp(-conv))
    if SSM_AQ:  # the ssm_in point: x rounded once, used by x_proj and the scan
        s_m = tl.load(act_s_ptr + 1)
        xs = _qint(xs, s_m, INTERP) * s_m
    shift = (kk[:, None] == (kk[None, :] + 1)).to(tl.float32)
    new_window = tl.sum(window[:, :, None] * shift[None, :, :], axis=1)
    tl.debug_barrier()
    tl.store(conv_ptr + chans[:, None] * (K - 1) + kk[None, :], new_window, mask=smask)
    tl.store(xc_ptr + chans, xs)
    tl.store(zg_ptr + chans, acc_z / (1.0 + tl.exp(-acc_z)))
    part = tl.sum(wxT.to(tl.float32) * xs[:, None], axis=0) * sxp
    tl.atomic_add(xsum_ptr + xo, part, mask=xo < XD, sem="relaxed")



@triton.jit
def _in4_side_tiles(w_xT_ptr, s_x_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, pid, chans, kk, xo,
                    K: tl.constexpr, XD: tl.constexpr, NGX: tl.constexpr, GX: tl.constexpr, BC: tl.constexpr):
    """The 4-bit in_proj kernels' small tiles, loaded before the wait: the program's x_proj rows
    (stored transposed) and their column scales, the conv weights, bias and window."""
    wxT = tl.load(w_xT_ptr + chans[:, None] * XD + xo[None, :], mask=xo[None, :] < XD, other=0)
    sxp = tl.load(s_x_ptr + xo * NGX + (pid * BC) // GX, mask=xo < XD, other=0.0)
    cw = tl.load(conv_w_ptr + chans[:, None] * K + kk[None, :], mask=kk[None, :] < K, other=0.0)
    cb = tl.load(conv_b_ptr + chans)
    window = tl.load(conv_ptr + chans[:, None] * (K - 1) + kk[None, :], mask=kk[None, :] < (K - 1), other=0.0)
    return wxT, sxp, cw, cb, window


@triton.jit
def _in4_residual(tok_ptr, amax_ptr, emb_ptr, emb_s_ptr, h_ptr, offs, dm, pid, vocab, D: tl.constexpr,
                  FIRST: tl.constexpr, FROM_ARGMAX: tl.constexpr):
    """The layer's input row (after the wait): the first layer reads the token's embedding row (its
    token, scale, and program 0 starts the residual stream with it), later layers the residual."""
    if FIRST:
        tok = _next_token(tok_ptr, amax_ptr, vocab, FROM_ARGMAX)
        es = tl.load(emb_s_ptr + tok)
        v = tl.load(emb_ptr + tok * D + offs, mask=dm, other=0).to(tl.float32) * es
        if pid == 0:
            tl.store(h_ptr + offs, v, mask=dm)
    else:
        tok = 0
        es = 1.0
        v = tl.load(h_ptr + offs, mask=dm, other=0.0)
    return tok, es, v


@triton.jit
def q_in4_kernel(
    tok_ptr, amax_ptr, emb_ptr, emb_s_ptr, h_ptr, norm_w_ptr, w_in_ptr, s_in_ptr, conv_w_ptr, conv_b_ptr, conv_ptr,
    w_xT_ptr, s_x_ptr, act_s_ptr, xc_ptr, zg_ptr, xsum_ptr, eps, vocab,
    D: tl.constexpr, E: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, XD: tl.constexpr, BX: tl.constexpr,
    BC: tl.constexpr, CH: tl.constexpr, NCH: tl.constexpr, NGI: tl.constexpr, GI: tl.constexpr,
    NGX: tl.constexpr, GX: tl.constexpr, SSM_AQ: tl.constexpr, FIRST: tl.constexpr, FROM_ARGMAX: tl.constexpr,
    LDW: tl.constexpr, INTERP: tl.constexpr, BD: tl.constexpr, CPI: tl.constexpr, STAGES: tl.constexpr,
    PF: tl.constexpr, NT: tl.constexpr, PDL: tl.constexpr = False,
):
    """``q_in_kernel`` for 4-bit weights with float activations (W4A16), with few live values: the
    program's x and z rows are read in a loop over CPI chunks of CH columns at a time (software
    pipelined over STAGES), not held as one dequantized [BC, d_model] tile. Before the wait the
    program only asks L2 for its rows (PF: sm_90 bulk prefetch) and loads the small tiles (x_proj,
    conv); after it, the residual's norm, then per chunk Σ q·(v·norm_w) scaled by the chunk's group
    scales, and rstd applied once at the end (the same sum as (q·s)·(v·rstd·norm_w) up to fp32
    rounding order)."""
    pid = tl.program_id(0)
    chans = pid * BC + tl.arange(0, BC)
    kk = tl.arange(0, KP)
    xo = tl.arange(0, BX)
    HALF: tl.constexpr = CH // 2
    kq = tl.arange(0, HALF)
    jj = tl.arange(0, CPI)
    if PF:
        if not INTERP:
            _prefetch_l2(w_in_ptr + pid * BC * LDW, BC * LDW, NT, False)
            _prefetch_l2(w_in_ptr + (E + pid * BC) * LDW, BC * LDW, NT, False)
    wxT, sxp, cw, cb, window = _in4_side_tiles(w_xT_ptr, s_x_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, pid, chans, kk, xo,
                                               K, XD, NGX, GX, BC)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    offs = tl.arange(0, BD)
    dm = offs < D
    tok, es, v = _in4_residual(tok_ptr, amax_ptr, emb_ptr, emb_s_ptr, h_ptr, offs, dm, pid, vocab, D, FIRST, FROM_ARGMAX)
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
    acc_x = tl.zeros([BC], dtype=tl.float32)
    acc_z = tl.zeros([BC], dtype=tl.float32)
    for it in tl.range(0, NCH // CPI, num_stages=STAGES):
        j = it * CPI + jj
        boff = j[:, None] * HALF + kq[None, :]
        cl = j[:, None] * CH + kq[None, :]
        woff = chans[:, None, None] * LDW + boff[None, :, :]
        bx = tl.load(w_in_ptr + woff)
        bz = tl.load(w_in_ptr + E * LDW + woff)
        sx = tl.load(s_in_ptr + chans[:, None] * NGI + ((j * CH) // GI)[None, :])
        sz = tl.load(s_in_ptr + (chans[:, None] + E) * NGI + ((j * CH) // GI)[None, :])
        if FIRST:  # layer 0 reads the embedding row itself (program 0 is still writing h)
            vl = tl.load(emb_ptr + tok * D + cl).to(tl.float32) * es
            vh = tl.load(emb_ptr + tok * D + cl + HALF).to(tl.float32) * es
        else:
            vl = tl.load(h_ptr + cl)
            vh = tl.load(h_ptr + cl + HALF)
        ul = vl * tl.load(norm_w_ptr + cl)
        uh = vh * tl.load(norm_w_ptr + cl + HALF)
        bxi = bx.to(tl.int32)
        bzi = bz.to(tl.int32)
        px = tl.sum(_nib_f32(bxi & 15) * ul[None] + _nib_f32(bxi >> 4) * uh[None], axis=2)
        pz = tl.sum(_nib_f32(bzi & 15) * ul[None] + _nib_f32(bzi >> 4) * uh[None], axis=2)
        acc_x += tl.sum(px * sx, axis=1)
        acc_z += tl.sum(pz * sz, axis=1)
    acc_x = acc_x * rstd
    acc_z = acc_z * rstd
    _in_tail(acc_x, acc_z, window, cw, cb, wxT, sxp, chans, kk, xo, act_s_ptr, conv_ptr, xc_ptr, zg_ptr, xsum_ptr,
             K, XD, SSM_AQ, INTERP)


@triton.jit
def q_in4r_kernel(
    tok_ptr, amax_ptr, emb_ptr, emb_s_ptr, h_ptr, norm_w_ptr, norm_wh_ptr, w_in_ptr, s_in_ptr, conv_w_ptr, conv_b_ptr, conv_ptr,
    w_xT_ptr, s_x_ptr, act_s_ptr, xc_ptr, zg_ptr, xsum_ptr, eps, vocab,
    D: tl.constexpr, E: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, XD: tl.constexpr, BX: tl.constexpr,
    BC: tl.constexpr, CH: tl.constexpr, NCH: tl.constexpr, BNCH: tl.constexpr, NGI: tl.constexpr, GI: tl.constexpr,
    NGX: tl.constexpr, GX: tl.constexpr, SSM_AQ: tl.constexpr, FIRST: tl.constexpr, FROM_ARGMAX: tl.constexpr,
    LDW: tl.constexpr, INTERP: tl.constexpr, BD: tl.constexpr, NIBH: tl.constexpr, PDL: tl.constexpr = False,
):
    """``q_in_kernel`` for 4-bit weights with float activations (W4A16) as a 2-D tile of rows: row r
    of the program's x (and z) tile is chunk r % BNCH of channel r // BNCH (CH/2 contiguous bytes),
    so the GEMV's reduction runs along the bytes of a row (in registers, then across a few lanes),
    each row's partial sum is scaled once by its group scale, and the BNCH row sums of a channel are
    added at the end. The activation is gathered per row (column j·CH + k, from L2), 1/rms applied
    after the sums; the high nibble read in place with NIBH: or'ed into the mantissa of 2^23 without
    the shift it is 2^23 + 16·q, minus 2^23 + 128: 16·(q − 8), exact, against norm_wh = the norm
    weight / 16 (exact); without NIBH norm_wh is the norm weight and the nibble is shifted down."""
    pid = tl.program_id(0)
    chans = pid * BC + tl.arange(0, BC)
    kk = tl.arange(0, KP)
    xo = tl.arange(0, BX)
    HALF: tl.constexpr = CH // 2
    R: tl.constexpr = BC * BNCH
    r = tl.arange(0, R)
    c = pid * BC + r // BNCH
    j = r % BNCH
    rm = j < NCH
    kq = tl.arange(0, HALF)
    woff = tl.multiple_of(c * LDW + j * HALF, 16)[:, None] + tl.max_contiguous(kq, HALF)[None, :]
    bx = tl.load(w_in_ptr + woff, mask=rm[:, None], other=0)
    bz = tl.load(w_in_ptr + E * LDW + woff, mask=rm[:, None], other=0)
    sx = tl.load(s_in_ptr + c * NGI + (j * CH) // GI, mask=rm, other=0.0)
    sz = tl.load(s_in_ptr + (c + E) * NGI + (j * CH) // GI, mask=rm, other=0.0)
    cl = (j * CH)[:, None] + kq[None, :]  # the column of each low nibble
    nwl = tl.load(norm_w_ptr + cl, mask=rm[:, None], other=0.0)
    nwh = tl.load(norm_wh_ptr + cl + HALF, mask=rm[:, None], other=0.0)
    wxT, sxp, cw, cb, window = _in4_side_tiles(w_xT_ptr, s_x_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, pid, chans, kk, xo,
                                               K, XD, NGX, GX, BC)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    offs = tl.arange(0, BD)
    dm = offs < D
    tok, es, v = _in4_residual(tok_ptr, amax_ptr, emb_ptr, emb_s_ptr, h_ptr, offs, dm, pid, vocab, D, FIRST, FROM_ARGMAX)
    if FIRST:
        vl = tl.load(emb_ptr + tok * D + cl, mask=rm[:, None], other=0).to(tl.float32) * es
        vh = tl.load(emb_ptr + tok * D + cl + HALF, mask=rm[:, None], other=0).to(tl.float32) * es
    else:
        vl = tl.load(h_ptr + cl, mask=rm[:, None], other=0.0)
        vh = tl.load(h_ptr + cl + HALF, mask=rm[:, None], other=0.0)
    ul = vl * nwl
    uh = vh * nwh
    bxi = bx.to(tl.int32)
    bzi = bz.to(tl.int32)
    xl = (bxi & 15 | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
    zl = (bzi & 15 | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
    if NIBH:
        xh = (bxi & 240 | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
        zh = (bzi & 240 | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
    else:
        xh = ((bxi >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
        zh = ((bzi >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
    px = tl.sum(xl * ul + xh * uh, axis=1) * sx
    pz = tl.sum(zl * ul + zh * uh, axis=1) * sz
    acc_x = tl.sum(tl.reshape(px, (BC, BNCH)), axis=1)
    acc_z = tl.sum(tl.reshape(pz, (BC, BNCH)), axis=1)
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
    _in_tail(acc_x * rstd, acc_z * rstd, window, cw, cb, wxT, sxp, chans, kk, xo, act_s_ptr, conv_ptr, xc_ptr, zg_ptr,
             xsum_ptr, K, XD, SSM_AQ, INTERP)


@triton.jit
def _out_load(w_oT_ptr, s_o_ptr, chans, c0, po, D: tl.constexpr, BO: tl.constexpr, NGO: tl.constexpr,
              GO: tl.constexpr, WB: tl.constexpr, LDW: tl.constexpr, EVW: tl.constexpr, PRE: tl.constexpr):
    """The out_proj tile of rows `chans` (stored transposed [E, D]) and columns [po*BO, (po+1)*BO) with
    its scales (the channels lie in one scale group, c0 // GO): loaded before the kernel waits for
    its inputs. 4-bit: byte k of column block po holds columns po*BO + k (low nibble) and
    po*BO + BO/2 + k (high); returns (bytes, low-column scales, high-column scales), or with PRE
    (float inputs) the dequantized fp32 tiles (low columns, high columns, unused)."""
    if WB == 4:
        k = tl.arange(0, BO // 2)
        cl = po * BO + k
        ch = cl + BO // 2
        bo = tl.load(w_oT_ptr + chans[:, None] * LDW + (po * (BO // 2) + k)[None, :], eviction_policy=EVW)
        sol = tl.load(s_o_ptr + cl * NGO + c0 // GO, mask=cl < D, other=0.0)
        soh = tl.load(s_o_ptr + ch * NGO + c0 // GO, mask=ch < D, other=0.0)
    else:
        cols = po * BO + tl.arange(0, BO)
        cm = cols < D
        bo = tl.load(w_oT_ptr + chans[:, None] * LDW + cols[None, :], mask=cm[None, :], other=0, eviction_policy=EVW)
        sol = tl.load(s_o_ptr + cols * NGO + c0 // GO, mask=cm, other=0.0)
        soh = sol
    if PRE:
        if WB == 4:
            boi = bo.to(tl.int32)
            wl = _nib_f32(boi & 15) * sol[None, :]
            wh = _nib_f32(boi >> 4) * soh[None, :]
        else:
            wl = bo.to(tl.float32) * sol[None, :]
            wh = wl
        bo = wl
        sol = wh
    return bo, sol, soh


@triton.jit
def _out_apply(h_ptr, bo, sol, soh, y, po, D: tl.constexpr, BO: tl.constexpr, WB: tl.constexpr, PRE: tl.constexpr):
    """The loaded out_proj tile times y, added into the residual columns of block po."""
    if PRE:
        if WB == 4:
            k = tl.arange(0, BO // 2)
            cl = po * BO + k
            ch = cl + BO // 2
            tl.atomic_add(h_ptr + cl, tl.sum(bo * y[:, None], axis=0), mask=cl < D, sem="relaxed")
            tl.atomic_add(h_ptr + ch, tl.sum(sol * y[:, None], axis=0), mask=ch < D, sem="relaxed")
        else:
            cols = po * BO + tl.arange(0, BO)
            tl.atomic_add(h_ptr + cols, tl.sum(bo * y[:, None], axis=0), mask=cols < D, sem="relaxed")
    elif WB == 4:
        k = tl.arange(0, BO // 2)
        cl = po * BO + k
        ch = cl + BO // 2
        boi = bo.to(tl.int32)
        lo = tl.sum(_nib_f32(boi & 15) * y[:, None], axis=0) * sol
        hi = tl.sum(_nib_f32(boi >> 4) * y[:, None], axis=0) * soh
        tl.atomic_add(h_ptr + cl, lo, mask=cl < D, sem="relaxed")
        tl.atomic_add(h_ptr + ch, hi, mask=ch < D, sem="relaxed")
    else:
        cols = po * BO + tl.arange(0, BO)
        contrib = tl.sum(bo.to(tl.float32) * y[:, None], axis=0) * sol
        tl.atomic_add(h_ptr + cols, contrib, mask=cols < D, sem="relaxed")


@triton.jit
def q_ssm_kernel(
    h_ptr, amax_ptr, xc_ptr, zg_ptr, xsum_ptr, xzero_ptr, w_dt_ptr, s_dt_ptr, dt_b_ptr, a_ptr, dskip_ptr, ssm_ptr,
    ssm_out_ptr, prev_out_ptr, prev_ssm_ptr, act_s_ptr, w_oT_ptr, s_o_ptr, ppart_ptr,
    hpf_w_ptr, hpf_w_bytes, hpf_s_ptr, hpf_s_bytes,
    D: tl.constexpr, E: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, R: tl.constexpr, BR: tl.constexpr,
    XD: tl.constexpr, BX: tl.constexpr, BE: tl.constexpr, BO: tl.constexpr, NGD: tl.constexpr, GD: tl.constexpr,
    NGO: tl.constexpr, GO: tl.constexpr, WB: tl.constexpr, DT_AQ: tl.constexpr, OUT_AQ: tl.constexpr,
    ROT: tl.constexpr, P2: tl.constexpr, RESET_AMAX: tl.constexpr, ZERO_PREV: tl.constexpr, COPY_BLK: tl.constexpr,
    LDW: tl.constexpr, INTERP: tl.constexpr, EVW: tl.constexpr, PDL: tl.constexpr = False,
    HPF_L2: tl.constexpr = False, NT: tl.constexpr = 64,
):
    """dt_proj (integer weights) + softplus, the state update, y = C·h + D·x, gate. Without rotation
    (ROT False, 2-D grid as ``mamba_ssm_out2_kernel``): (rounded) y times this block's out_proj share
    into the residual; the new state goes to a side buffer, copied into place by the next kernel
    of this kind (or the head). With rotation (1-D grid, state updated in place): this block's share
    of the Sylvester transform of y, ppart[pe, b] = sum_{c in block} (-1)^popcount(b & (c mod P2)) y[c].
    HPF_L2: before the wait, the grid asks L2 (sm_90 bulk prefetch, fire and forget) for bytes
    [0, hpf_w_bytes) of hpf_w_ptr and [0, hpf_s_bytes) of hpf_s_ptr: this layer's share of the head's
    table and scales, so that the head kernel after the last layer reads L2 instead of HBM."""
    pe = tl.program_id(0)
    po = tl.program_id(1)
    if ZERO_PREV:
        _copy_share(prev_out_ptr, prev_ssm_ptr, E * N, pe * tl.num_programs(1) + po,
                    tl.num_programs(0) * tl.num_programs(1), COPY_BLK)
    chans = pe * BE + tl.arange(0, BE)
    r = tl.arange(0, BR)
    rm = r[None, :] < R
    n = tl.arange(0, BN)
    nm = n[None, :] < N
    wdt = tl.load(w_dt_ptr + chans[:, None] * R + r[None, :], mask=rm, other=0, eviction_policy=EVW)
    if NGD == 1:
        sdt = tl.load(s_dt_ptr + chans)[:, None]
    else:
        sdt = tl.load(s_dt_ptr + chans[:, None] * NGD + r[None, :] // GD, mask=rm, other=0.0)
    dtb = tl.load(dt_b_ptr + chans)
    a = tl.load(a_ptr + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
    dsk = tl.load(dskip_ptr + chans)
    if not ROT:
        bo, sol, soh = _out_load(w_oT_ptr, s_o_ptr, chans, pe * BE, po, D, BO, NGO, GO, WB, LDW, EVW, not OUT_AQ)
    hs = tl.load(ssm_ptr + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
    if HPF_L2:
        if not INTERP:
            q = pe * tl.num_programs(1) + po
            nq = tl.num_programs(0) * tl.num_programs(1)
            _prefetch_l2_share(hpf_w_ptr, hpf_w_bytes, q, nq, NT)
            _prefetch_l2_share(hpf_s_ptr, hpf_s_bytes, q, nq, NT)
    if PDL:  # the in_proj kernel's outputs from here on; the next kernel may start loading its weights
        gdc_wait()
        gdc_launch_dependents()
    dt_low = tl.load(xsum_ptr + r, mask=r < R, other=0.0)
    b = tl.load(xsum_ptr + R + n, mask=n < N, other=0.0)
    c = tl.load(xsum_ptr + R + N + n, mask=n < N, other=0.0)
    x = tl.load(xc_ptr + chans)
    zg = tl.load(zg_ptr + chans)
    if DT_AQ:
        s_d = tl.load(act_s_ptr + 2)
        dt_low = _qint(dt_low, s_d, INTERP)
        dt = tl.sum(wdt.to(tl.float32) * sdt * dt_low[None, :], axis=1) * s_d + dtb
    else:
        dt = tl.sum(wdt.to(tl.float32) * sdt * dt_low[None, :], axis=1) + dtb
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    hs = tl.exp(dt[:, None] * a) * hs + (dt * x)[:, None] * b[None, :]
    y = (tl.sum(hs * c[None, :], axis=1) + dsk * x) * zg
    if ROT:
        tl.store(ssm_ptr + chans[:, None] * N + n[None, :], hs, mask=nm)
        bb = tl.arange(0, P2)
        sgn = 1.0 - 2.0 * _parity(bb[:, None] & (chans % P2)[None, :]).to(tl.float32)  # [P2, BE]
        part = tl.sum(sgn * y[None, :], axis=1)
        tl.store(ppart_ptr + pe * P2 + bb, part)
        if pe == 0:
            if RESET_AMAX:
                tl.store(amax_ptr, AMAX_RESET)
    else:
        if OUT_AQ:
            s_o = tl.load(act_s_ptr + 3)
            y = _qint(y, s_o, INTERP) * s_o
        _out_apply(h_ptr, bo, sol, soh, y, po, D, BO, WB, not OUT_AQ)
        if po == 0:
            tl.store(ssm_out_ptr + chans[:, None] * N + n[None, :], hs, mask=nm)
            if pe == 0:
                if ZERO_PREV:
                    xo = tl.arange(0, BX)
                    tl.store(xzero_ptr + xo, tl.zeros([BX], dtype=tl.float32), mask=xo < XD)
                if RESET_AMAX:
                    tl.store(amax_ptr, AMAX_RESET)


@triton.jit
def q_rot_out_kernel(
    h_ptr, ppart_ptr, hm_ptr, act_s_ptr, w_oT_ptr, s_o_ptr, xsum_ptr,
    D: tl.constexpr, E: tl.constexpr, XD: tl.constexpr, BX: tl.constexpr, BE: tl.constexpr, BO: tl.constexpr,
    P2: tl.constexpr, M: tl.constexpr, NPP: tl.constexpr, BNPP: tl.constexpr, PER_ROW: tl.constexpr,
    NGO: tl.constexpr, GO: tl.constexpr, WB: tl.constexpr, OUT_AQ: tl.constexpr, LDW: tl.constexpr,
    INTERP: tl.constexpr, EVW: tl.constexpr, PDL: tl.constexpr = False,
):
    """The rotated out_proj input for channels [pe*BE, (pe+1)*BE) (all in row a = pe*BE // P2 of
    H_m ⊗ H_p): rot[a, b] = sum_k hm[a, k // PER_ROW] * ppart[k, b] (hm holds H_m / sqrt(E)), rounded
    when the recipe quantizes the input, times out_proj rows, added into the residual. Program (0, 0)
    zeroes this layer's x_proj sum (its readers, the SSM kernel, have ended)."""
    pe = tl.program_id(0)
    po = tl.program_id(1)
    chans = pe * BE + tl.arange(0, BE)
    arow = (pe * BE) // P2
    k = tl.arange(0, BNPP)
    km = k < NPP
    coef = tl.load(hm_ptr + arow * M + k // PER_ROW, mask=km, other=0.0)
    bo, sol, soh = _out_load(w_oT_ptr, s_o_ptr, chans, pe * BE, po, D, BO, NGO, GO, WB, LDW, EVW, not OUT_AQ)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pp = tl.load(ppart_ptr + k[:, None] * P2 + (chans % P2)[None, :], mask=km[:, None], other=0.0)
    rot = tl.sum(coef[:, None] * pp, axis=0)
    if OUT_AQ:
        s_o = tl.load(act_s_ptr + 3)
        rot = _qint(rot, s_o, INTERP) * s_o
    _out_apply(h_ptr, bo, sol, soh, rot, po, D, BO, WB, not OUT_AQ)
    if pe == 0:
        if po == 0:
            xo = tl.arange(0, BX)
            tl.store(xsum_ptr + xo, tl.zeros([BX], dtype=tl.float32), mask=xo < XD)


@triton.jit
def _h4_load(emb_ptr, emb_s_ptr, rows, rmask, j, jm, kq, D: tl.constexpr, HALF: tl.constexpr, NGH: tl.constexpr,
             EVH: tl.constexpr):
    """A 4-bit head's [rows, groups, GH/2] bytes and [rows, groups] scales (rows past the vocabulary masked)."""
    wb = tl.load(emb_ptr + rows[:, None, None] * (D // 2) + (j[:, None] * HALF + kq[None, :])[None, :, :],
                 mask=rmask[:, None, None] & jm[None, :, None], other=0, eviction_policy=EVH)
    gs = tl.load(emb_s_ptr + rows[:, None] * NGH + j[None, :], mask=rmask[:, None] & jm[None, :], other=0.0)
    return wb, gs


@triton.jit
def _h4_dot(wb, gs, ul, uh):
    """The 4-bit head's logits of a row block: sum over groups of scale x (low nibbles . ul + high . uh)."""
    wi = wb.to(tl.int32)
    part = _nib_f32(wi & 15) * ul[None] + _nib_f32(wi >> 4) * uh[None]
    return tl.sum(tl.sum(part, axis=2) * gs, axis=1)


@triton.jit
def _argmax_key(acc, rows, rmask, vocab):
    """The int64 arg-max key of a block of logits: (order-preserving int32 of the largest) << 32 |
    (vocab - 1 - its first index), so one atomic_max over all blocks gives torch.argmax."""
    vals = tl.where(rmask, acc, float("-inf"))
    best = tl.max(vals, axis=0)
    idx = tl.min(tl.where(vals == best, rows, vocab), axis=0)
    bits = best.to(tl.int32, bitcast=True)
    key32 = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key32.to(tl.int64) << 32) + (vocab - 1 - idx).to(tl.int64)


@triton.jit
def q_head_kernel(
    h_ptr, norm_w_ptr, emb_ptr, emb_s_ptr, logits_ptr, amax_ptr, eps, vocab, xzero_ptr, last_out_ptr, last_ssm_ptr,
    D: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr, XZ: tl.constexpr, BXZ: tl.constexpr, COPY_N: tl.constexpr,
    COPY_BLK: tl.constexpr, EVH: tl.constexpr, NGH: tl.constexpr, GH: tl.constexpr, ABLK: tl.constexpr,
    INTERP: tl.constexpr, PDL: tl.constexpr = False, HB4: tl.constexpr = False, BNG: tl.constexpr = 1,
    LOOP: tl.constexpr = 1, HPF: tl.constexpr = False, NT: tl.constexpr = 128,
):
    """Final RMSNorm, the head over int8 weights, fp32 logits, arg-max folded into one int64
    atomic_max (as ``lm_head_kernel``). The weights are the tied int8 embedding (per-row scales,
    ``NGH`` 1) or the head's own copy (``head_bits``: ``NGH`` scale groups of ``GH`` columns per
    row); ``ABLK`` > 0 rounds the normalized activation to int8 per block of ``ABLK`` features
    first, as ``quantize.modules.block_fake_quant`` does (0: float activations). HB4: a 4-bit head
    stored two values a byte (``pack_int4_halves`` with blocks of one group: byte k of group j holds
    columns j*GH + k and j*GH + GH/2 + k), float activations, dequantized here with its group scale.
    LOOP > 1 (4-bit head only): program p takes the row blocks p, p + P, ... (P programs, LOOP blocks
    each), normalizes the activation once, loads block i + 1 while it computes block i, and keeps
    its running arg-max key for one atomic_max: fewer, longer programs for a head that moves few
    bytes per row, so that latency, not the norm and launch of thousands of short programs, is
    what streams the table. HPF (with LOOP > 1): program p takes the contiguous row blocks
    p*LOOP .. p*LOOP + LOOP - 1 and, before it waits for the last layer, asks L2 for all their bytes
    and scales (sm_90 bulk prefetch), so that the loop reads L2 while HBM streams at the copy
    engine's pace instead of one latency-bound block at a time."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BD)
    dm = offs < D
    if HPF:
        rows = pid * LOOP * BV + tl.arange(0, BV)
        if not INTERP:
            r0 = pid * LOOP * BV
            nr = tl.minimum(LOOP * BV, vocab - r0)
            _prefetch_l2(emb_ptr + r0 * (D // 2), (nr * (D // 2)) // 16 * 16, NT, False)
            _prefetch_l2(emb_s_ptr.to(tl.pointer_type(tl.uint8)) + r0 * NGH * 4, (nr * NGH * 4) // 16 * 16, NT, False)
    else:
        rows = pid * BV + tl.arange(0, BV)
    rmask = rows < vocab
    if HB4:
        HALF: tl.constexpr = GH // 2
        j = tl.arange(0, BNG)
        jm = j < NGH
        kq = tl.arange(0, HALF)
        cl = j[:, None] * GH + kq[None, :]  # [BNG, HALF]: the low nibbles' columns
        wb, gs = _h4_load(emb_ptr, emb_s_ptr, rows, rmask, j, jm, kq, D, HALF, NGH, EVH)
        nwl = tl.load(norm_w_ptr + cl, mask=jm[:, None], other=0.0)
        nwh = tl.load(norm_w_ptr + cl + HALF, mask=jm[:, None], other=0.0)
    elif NGH > 1:  # int8 in groups of GH columns: [rows, groups, GH] tiles, one scale per (row, group)
        j = tl.arange(0, BNG)
        jm = j < NGH
        cg = j[:, None] * GH + tl.arange(0, GH)[None, :]  # [BNG, GH]
        wg = tl.load(emb_ptr + rows[:, None, None] * D + cg[None, :, :], mask=rmask[:, None, None] & jm[None, :, None],
                     other=0, eviction_policy=EVH)
        gs = tl.load(emb_s_ptr + rows[:, None] * NGH + j[None, :], mask=rmask[:, None] & jm[None, :], other=0.0)
        nwg = tl.load(norm_w_ptr + cg, mask=jm[:, None], other=0.0)
    else:
        w = tl.load(emb_ptr + rows[:, None] * D + offs[None, :], mask=rmask[:, None] & dm[None, :], other=0,
                    eviction_policy=EVH)
        ws = tl.load(emb_s_ptr + rows, mask=rmask, other=0.0)
        nw = tl.load(norm_w_ptr + offs, mask=dm, other=0.0)
    if PDL:  # the last layer's kernel has ended: its side buffer and x_proj sum are free
        gdc_wait()
        gdc_launch_dependents()
    if COPY_N > 0:
        _copy_share(last_out_ptr, last_ssm_ptr, COPY_N, pid, tl.num_programs(0), COPY_BLK)
    if XZ > 0:
        if pid == 0:
            xz = tl.arange(0, BXZ)
            tl.store(xzero_ptr + xz, tl.zeros([BXZ], dtype=tl.float32), mask=xz < XZ)
    if HB4:
        vl = tl.load(h_ptr + cl, mask=jm[:, None], other=0.0)
        vh = tl.load(h_ptr + cl + HALF, mask=jm[:, None], other=0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(vl * vl + vh * vh, axis=1), axis=0) / D + eps)
        ul = vl * rstd * nwl
        uh = vh * rstd * nwh
        if LOOP > 1:  # block i + 1 loaded while block i is computed
            nprog = tl.num_programs(0)
            kbest = tl.full((), AMAX_RESET, tl.int64)
            for it in range(LOOP):
                if HPF:
                    nrows = (pid * LOOP + it + 1) * BV + tl.arange(0, BV)
                else:
                    nrows = (pid + (it + 1) * nprog) * BV + tl.arange(0, BV)
                nmask = nrows < vocab
                wb_n, gs_n = _h4_load(emb_ptr, emb_s_ptr, nrows, nmask, j, jm, kq, D, HALF, NGH, EVH)
                acc = _h4_dot(wb, gs, ul, uh)
                tl.store(logits_ptr + rows, acc, mask=rmask)
                kbest = tl.maximum(kbest, _argmax_key(acc, rows, rmask, vocab))
                wb, gs, rows, rmask = wb_n, gs_n, nrows, nmask
        else:
            acc = _h4_dot(wb, gs, ul, uh)
    elif NGH > 1:
        vg = tl.load(h_ptr + cg, mask=jm[:, None], other=0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(vg * vg, axis=1), axis=0) / D + eps)
        ug = vg * rstd * nwg
        if ABLK > 0:  # dynamic int8 per group (ABLK == GH): q = round_half_even(u * (127 / amax)), q * (amax / 127)
            am = tl.max(tl.abs(ug), axis=1)
            inv = tl.where(am > 0, tl.math.div_rn(tl.full((BNG,), 127.0, tl.float32), am), 0.0)
            t = _round_half_even(ug * inv[:, None], INTERP)
            ug = t * tl.math.div_rn(am, tl.full((BNG,), 127.0, tl.float32))[:, None]
        acc = tl.sum(tl.sum(wg.to(tl.float32) * ug[None], axis=2) * gs, axis=1)
    else:
        v = tl.load(h_ptr + offs, mask=dm, other=0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
        u = v * rstd * nw
        acc = tl.sum(w.to(tl.float32) * u[None, :], axis=1) * ws
    if HB4 and LOOP > 1:
        tl.atomic_max(amax_ptr, kbest, sem="relaxed")
    else:
        tl.store(logits_ptr + rows, acc, mask=rmask)
        tl.atomic_max(amax_ptr, _argmax_key(acc, rows, rmask, vocab), sem="relaxed")


@triton.jit
def q_head4_kernel(
    h_ptr, norm_w_ptr, emb_ptr, emb_s_ptr, logits_ptr, amax_ptr, eps, vocab, xzero_ptr, last_out_ptr, last_ssm_ptr,
    D: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr, XZ: tl.constexpr, BXZ: tl.constexpr, COPY_N: tl.constexpr,
    COPY_BLK: tl.constexpr, NGH: tl.constexpr, GH: tl.constexpr, LOOP: tl.constexpr, GPI: tl.constexpr,
    STAGES: tl.constexpr, PF: tl.constexpr, NT: tl.constexpr, INTERP: tl.constexpr, PDL: tl.constexpr = False,
):
    """The 4-bit head (``q_head_kernel`` with HB4) with few live values: program p takes the LOOP
    contiguous row blocks of BV rows from p*LOOP*BV, and reads each block GPI scale groups (of GH
    columns) at a time in one flat software-pipelined loop (STAGES deep), instead of holding a
    [BV, d_model] tile; before it waits for the last layer it asks L2 for its rows and scales (PF:
    sm_90 bulk prefetch). Logits = rstd * sum over groups of scale x (q . (v * norm_w)), the
    fake-quant head's sum up to fp32 rounding order; arg-max as one atomic_max per program."""
    pid = tl.program_id(0)
    HALF: tl.constexpr = GH // 2
    NIT: tl.constexpr = NGH // GPI
    kq = tl.arange(0, HALF)
    jj = tl.arange(0, GPI)
    r0 = pid * LOOP * BV
    if PF:
        if not INTERP:
            nr = tl.minimum(LOOP * BV, vocab - r0)
            _prefetch_l2(emb_ptr + r0 * (D // 2), (nr * (D // 2)) // 16 * 16, NT, False)
            _prefetch_l2(emb_s_ptr.to(tl.pointer_type(tl.uint8)) + r0 * NGH * 4, (nr * NGH * 4) // 16 * 16, NT, False)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    if COPY_N > 0:
        _copy_share(last_out_ptr, last_ssm_ptr, COPY_N, pid, tl.num_programs(0), COPY_BLK)
    if XZ > 0:
        if pid == 0:
            xz = tl.arange(0, BXZ)
            tl.store(xzero_ptr + xz, tl.zeros([BXZ], dtype=tl.float32), mask=xz < XZ)
    offs = tl.arange(0, BD)
    v = tl.load(h_ptr + offs, mask=offs < D, other=0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
    kbest = tl.full((), AMAX_RESET, tl.int64)
    acc = tl.zeros([BV], dtype=tl.float32)
    for t in tl.range(0, LOOP * NIT, num_stages=STAGES):
        blk = t // NIT
        g = t % NIT
        rows = r0 + blk * BV + tl.arange(0, BV)
        rmask = rows < vocab
        j = g * GPI + jj
        wb = tl.load(emb_ptr + rows[:, None, None] * (D // 2) + (j[:, None] * HALF + kq[None, :])[None, :, :],
                     mask=rmask[:, None, None], other=0)
        gs = tl.load(emb_s_ptr + rows[:, None] * NGH + j[None, :], mask=rmask[:, None], other=0.0)
        cl = j[:, None] * GH + kq[None, :]
        ul = tl.load(h_ptr + cl) * tl.load(norm_w_ptr + cl)
        uh = tl.load(h_ptr + cl + HALF) * tl.load(norm_w_ptr + cl + HALF)
        acc += _h4_dot(wb, gs, ul, uh)
        if g == NIT - 1:
            res = acc * rstd
            tl.store(logits_ptr + rows, res, mask=rmask)
            kbest = tl.maximum(kbest, _argmax_key(res, rows, rmask, vocab))
            acc = tl.zeros([BV], dtype=tl.float32)
    tl.atomic_max(amax_ptr, kbest, sem="relaxed")
