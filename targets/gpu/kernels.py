"""Triton kernels of the fused Mamba-1 decode step (batch 1). Imported only by ``targets.gpu.mamba``.

Two kernels per layer and one for the head, so a 24-layer step is 49 launches in one CUDA graph:

* ``mamba_in_kernel`` — RMSNorm of the residual (recomputed by every program: 768 floats from L2),
  the in_proj GEMV for a block of channels (their x and z rows together), the depthwise causal conv
  over the window [state, x] + bias, SiLU; writes x, SiLU(z), the shifted conv window, and this
  block's *partial* x_proj product (x_proj is split over d_inner: one row of partials per program,
  reduced by the next kernel, so no atomics and a deterministic sum).
* ``mamba_ssm_out_kernel`` — sums the x_proj partials to (dt_low, B, C), dt_proj + softplus, the
  selective-state update exp(dt·A)·h + dt·x·B, y = C·h + D·x, y·SiLU(z), then this block's share of
  out_proj (the weight stored transposed, [d_inner, d_model], so a block of channels is contiguous)
  added into the fp32 residual with atomic adds — the residual add and out_proj in one pass.
* ``lm_head_kernel`` — final RMSNorm, the tied LM-head GEMV (bf16 weights) writing fp32 logits, and
  an arg-max folded into one int64 ``atomic_max``: (order-preserving int32 of the logit) << 32 |
  (vocab - 1 - index), so the largest logit wins and ties go to the first index, as torch.argmax.

The big weights of all layers lie in one buffer in the order the kernels read them; with
``PREFETCH`` each kernel first asks L2 for the next bytes of that stream (sm_90 bulk prefetch), so
HBM keeps streaming while the step's short dependency chain (norm -> GEMV -> scan -> GEMV) runs.

Weights are bf16 (or int8 / int4 with per-row / per-group scales, dequantized in the kernel);
activations, the recurrent state and every accumulation are fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl
try:  # programmatic dependent launch (Triton >= 3.3); only reached when a launch asks for PDL
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton
    gdc_launch_dependents = gdc_wait = None

AMAX_RESET_VALUE = -9223372036854775807  # below the key of every finite logit
AMAX_RESET = tl.constexpr(AMAX_RESET_VALUE)


@triton.jit
def _prefetch_l2(pf_ptr, pf_bytes, NT: tl.constexpr, SHARED: tl.constexpr = True):
    """Ask L2 for bytes [0, pf_bytes) after pf_ptr (upcoming weights of the stream), shared out over the
    grid's programs (SHARED) or all for this program, and over its threads: one bulk prefetch (sm_90
    ``cp.async.bulk.prefetch.L2``) per thread, fire and forget. pf_bytes and the pointer are
    multiples of 16."""
    if SHARED:
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
    else:
        pid = 0
        nprog = 1
    _prefetch_l2_share(pf_ptr, pf_bytes, pid, nprog, NT)


@triton.jit
def _prefetch_l2_share(pf_ptr, pf_bytes, pid, nprog, NT: tl.constexpr):
    """Share `pid` of `nprog` of the bulk L2 prefetch of bytes [0, pf_bytes) after pf_ptr (both
    multiples of 16), cut over the program's NT threads."""
    share = ((pf_bytes + nprog - 1) // nprog + 15) // 16 * 16
    piece = ((share + NT - 1) // NT + 15) // 16 * 16
    t = tl.arange(0, NT)
    start = pid * share + t * piece
    end = tl.minimum(tl.minimum(start + piece, (pid + 1) * share), pf_bytes)
    size = end - start
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [pf_ptr + start, size], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _next_token(tok_ptr, amax_ptr, vocab, FROM_ARGMAX: tl.constexpr):
    """The step's input token: the given one, or the previous head's arg-max decoded from its
    int64 atomic_max key (logit bits << 32 | vocab - 1 - index)."""
    if FROM_ARGMAX:
        key = tl.load(amax_ptr)
        tok = vocab - 1 - (key - ((key >> 32) << 32))
    else:
        tok = tl.load(tok_ptr)
    return tok


@triton.jit
def _copy_share(src_ptr, dst_ptr, total, q, nq, BLK: tl.constexpr):
    """Program q of nq copies its share of `total` floats from src to dst."""
    per = (total + nq - 1) // nq
    i = q * per + tl.arange(0, BLK)
    m = (i < (q + 1) * per) & (i < total)
    tl.store(dst_ptr + i, tl.load(src_ptr + i, mask=m, other=0.0), mask=m)


@triton.jit
def _nib_f32(n):
    """n - 8 as fp32 for int32 n in [0, 15] (a 4-bit weight stored with an offset of 8): n or'ed into
    the mantissa of 2^23 is the float 2^23 + n exactly, minus 2^23 + 8. A logic op and a float add
    instead of an integer-to-float conversion, which sm_90 issues at a quarter of the rate."""
    return (n | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0


@triton.jit
def _load_raw(w_ptr, rows, cols, ld, mask, QUANT: tl.constexpr):
    """A [rows, cols] tile of a weight as stored: bf16 (QUANT 0), int8 (QUANT 8), or for int4
    (QUANT 4) the byte holding each column (two columns a byte along the row; ld counts bytes)."""
    if QUANT == 4:
        w = tl.load(w_ptr + rows[:, None] * ld + (cols[None, :] // 2), mask=mask, other=0)
    else:
        w = tl.load(w_ptr + rows[:, None] * ld + cols[None, :], mask=mask, other=0)
    return w


@triton.jit
def _dequant(w, s_ptr, rows, cols, ld, mask, QUANT: tl.constexpr, GROUP: tl.constexpr):
    """The raw tile as fp32; int8 stays unscaled (its per-row scale is applied to the dot product),
    int4 gets its group scale: (nibble - 8) * s[row, col // GROUP]."""
    if QUANT == 4:
        b = w.to(tl.int32)
        nib = tl.where((cols[None, :] % 2) == 0, b & 15, (b >> 4) & 15)
        ng = (ld * 2) // GROUP
        s = tl.load(s_ptr + rows[:, None] * ng + cols[None, :] // GROUP, mask=mask, other=0.0)
        out = _nib_f32(nib) * s
    else:
        out = w.to(tl.float32)
    return out


@triton.jit
def mamba_in_kernel(
    tok_ptr, amax_ptr, emb_ptr, h_ptr, norm_w_ptr, w_in_ptr, w_in_s_ptr, conv_w_ptr, conv_b_ptr, conv_ptr,
    w_xT_ptr, xc_ptr, zg_ptr, xpart_ptr, eps, vocab, pf_ptr, pf_bytes,
    D: tl.constexpr, E: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, XD: tl.constexpr, BX: tl.constexpr,
    BC: tl.constexpr, BD: tl.constexpr, FIRST: tl.constexpr, FROM_ARGMAX: tl.constexpr,
    QUANT: tl.constexpr, GROUP: tl.constexpr, LDW: tl.constexpr, PREFETCH: tl.constexpr, NT: tl.constexpr,
    PDL: tl.constexpr, XATOMIC: tl.constexpr,
):
    pid = tl.program_id(0)
    chans = pid * BC + tl.arange(0, BC)
    offs = tl.arange(0, BD)  # the whole d_model in one tile (BD = next power of two)
    dm = offs < D
    kk = tl.arange(0, KP)
    xo = tl.arange(0, BX)
    # 1. everything that does not depend on the previous kernel, issued together: the weight tiles
    #    (one HBM round trip), conv weights, norm weight
    m2 = dm[None, :] & (chans[:, None] < E)
    if QUANT == 4:
        # int4: a [BC, D/2] tile of bytes; the low nibble multiplies the even columns, the high the odd
        o2 = tl.arange(0, BD // 2)
        dm2 = o2 < (D // 2)
        m4 = dm2[None, :] & (chans[:, None] < E)
        bx = tl.load(w_in_ptr + chans[:, None] * LDW + o2[None, :], mask=m4, other=0)
        bz = tl.load(w_in_ptr + (chans[:, None] + E) * LDW + o2[None, :], mask=m4, other=0)
        ng = D // GROUP
        gsx = tl.load(w_in_s_ptr + chans[:, None] * ng + (2 * o2[None, :]) // GROUP, mask=m4, other=0.0)
        gsz = tl.load(w_in_s_ptr + (chans[:, None] + E) * ng + (2 * o2[None, :]) // GROUP, mask=m4, other=0.0)
        nwe = tl.load(norm_w_ptr + 2 * o2, mask=dm2, other=0.0)
        nwo = tl.load(norm_w_ptr + 2 * o2 + 1, mask=dm2, other=0.0)
        # dequantized here, before the wait: (nibble - 8) x group scale, even and odd columns
        bxi = bx.to(tl.int32)
        bzi = bz.to(tl.int32)
        wxe = _nib_f32(bxi & 15) * gsx
        wxo = _nib_f32(bxi >> 4) * gsx
        wze = _nib_f32(bzi & 15) * gsz
        wzo = _nib_f32(bzi >> 4) * gsz
    else:
        wx = _load_raw(w_in_ptr, chans, offs, LDW, m2, QUANT)
        wz = _load_raw(w_in_ptr, chans + E, offs, LDW, m2, QUANT)
    wxT = tl.load(w_xT_ptr + chans[:, None] * XD + xo[None, :], mask=xo[None, :] < XD, other=0.0)
    cw = tl.load(conv_w_ptr + chans[:, None] * K + kk[None, :], mask=kk[None, :] < K, other=0.0)
    cb = tl.load(conv_b_ptr + chans)
    nw = tl.load(norm_w_ptr + offs, mask=dm, other=0.0)
    if QUANT == 8:
        sx = tl.load(w_in_s_ptr + chans)
        sz = tl.load(w_in_s_ptr + E + chans)
    smask = kk[None, :] < (K - 1)
    window = tl.load(conv_ptr + chans[:, None] * (K - 1) + kk[None, :], mask=smask, other=0.0)  # this layer's own
    if PREFETCH:
        _prefetch_l2(pf_ptr, pf_bytes, NT)
    # 2. wait for the previous kernel (programmatic dependent launch), then let the next one start:
    #    it only loads weights before its own wait
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    # 3. the activations
    if FIRST:
        tok = _next_token(tok_ptr, amax_ptr, vocab, FROM_ARGMAX)
        v = tl.load(emb_ptr + tok * D + offs, mask=dm, other=0.0).to(tl.float32)
        if QUANT == 4:
            ve = tl.load(emb_ptr + tok * D + 2 * o2, mask=dm2, other=0.0).to(tl.float32)
            vo = tl.load(emb_ptr + tok * D + 2 * o2 + 1, mask=dm2, other=0.0).to(tl.float32)
        if pid == 0:
            tl.store(h_ptr + offs, v, mask=dm)  # the residual stream starts as the embedding
    else:
        v = tl.load(h_ptr + offs, mask=dm, other=0.0)
        if QUANT == 4:
            ve = tl.load(h_ptr + 2 * o2, mask=dm2, other=0.0)
            vo = tl.load(h_ptr + 2 * o2 + 1, mask=dm2, other=0.0)
    # RMSNorm, in_proj rows of these channels (x and z)
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
    if QUANT == 4:
        ue = (ve * rstd * nwe)[None, :]
        uo = (vo * rstd * nwo)[None, :]
        acc_x = tl.sum(wxe * ue + wxo * uo, axis=1)
        acc_z = tl.sum(wze * ue + wzo * uo, axis=1)
    else:
        u = v * rstd * nw
        acc_x = tl.sum(_dequant(wx, w_in_s_ptr, chans, offs, LDW, m2, QUANT, GROUP) * u[None, :], axis=1)
        acc_z = tl.sum(_dequant(wz, w_in_s_ptr, chans + E, offs, LDW, m2, QUANT, GROUP) * u[None, :], axis=1)
    if QUANT == 8:
        acc_x = acc_x * sx
        acc_z = acc_z * sz
    # depthwise causal conv over [window (K-1), x], then SiLU
    window = tl.where(kk[None, :] == (K - 1), acc_x[:, None], window)  # [BC, KP]: state cols, then x
    conv = tl.sum(window * cw, axis=1) + cb
    xs = conv / (1.0 + tl.exp(-conv))
    # shifted window: new[c, j] = window[c, j + 1] (exact: products with 0/1 and sums of zeros)
    shift = (kk[:, None] == (kk[None, :] + 1)).to(tl.float32)  # [KP(src), KP(dst)]
    new_window = tl.sum(window[:, :, None] * shift[None, :, :], axis=1)
    tl.debug_barrier()  # every thread has read the old window before any writes the new one
    tl.store(conv_ptr + chans[:, None] * (K - 1) + kk[None, :], new_window, mask=smask)
    tl.store(xc_ptr + chans, xs)
    tl.store(zg_ptr + chans, acc_z / (1.0 + tl.exp(-acc_z)))
    # this block's partial x_proj: sum over its channels of W_x[:, c] * x[c]
    part = tl.sum(wxT.to(tl.float32) * xs[:, None], axis=0)
    if XATOMIC:  # x_proj summed in place (the buffer was zeroed by an earlier kernel)
        tl.atomic_add(xpart_ptr + xo, part, mask=xo < XD, sem="relaxed")
    else:
        tl.store(xpart_ptr + pid * XD + xo, part, mask=xo < XD)


@triton.jit
def mamba_ssm_out2_kernel(
    h_ptr, amax_ptr, xc_ptr, zg_ptr, xsum_ptr, xzero_ptr, w_dt_ptr, dt_b_ptr, a_ptr, dskip_ptr, ssm_ptr,
    w_oT_ptr, w_o_s_ptr, ssm_out_ptr, prev_out_ptr, prev_ssm_ptr,
    D: tl.constexpr, E: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, R: tl.constexpr, BR: tl.constexpr,
    XD: tl.constexpr, BX: tl.constexpr, BE: tl.constexpr, BO: tl.constexpr, RESET_AMAX: tl.constexpr,
    ZERO_PREV: tl.constexpr, COPY_BLK: tl.constexpr,
    QUANT: tl.constexpr, GROUP: tl.constexpr, LDW: tl.constexpr, PDL: tl.constexpr = False,
):
    """The SSM/out_proj stage on a 2-D grid: program (pe, po) redoes the (cheap) scan of channels
    [pe*BE, (pe+1)*BE) and adds their out_proj share into residual columns [po*BO, (po+1)*BO).
    Fewer channel blocks than the 1-D kernel, so ~BE/8 times fewer atomic adds per residual element,
    and x_proj arrives summed (80 floats) instead of as per-block partials. Every program reads the
    old state, so the new one goes to a side buffer (ssm_out); the next layer's kernel (or the head,
    after the last layer) copies it into the state - the previous layer's copy happens here.
    With PDL everything before ``gdc_wait`` reads only what the kernel before the previous one (or an
    earlier step) wrote: the weights, the old state, the previous layer's side buffer."""
    pe = tl.program_id(0)
    po = tl.program_id(1)
    if ZERO_PREV:  # previous layer: its new state into place (all its readers have ended)
        _copy_share(prev_out_ptr, prev_ssm_ptr, E * N, pe * tl.num_programs(1) + po,
                    tl.num_programs(0) * tl.num_programs(1), COPY_BLK)
    chans = pe * BE + tl.arange(0, BE)
    r = tl.arange(0, BR)
    rm = r[None, :] < R
    n = tl.arange(0, BN)
    nm = n[None, :] < N
    # weights first
    if QUANT == 4:
        o2 = po * (BO // 2) + tl.arange(0, BO // 2)
        dm2 = o2 < (D // 2)
        bo = tl.load(w_oT_ptr + chans[:, None] * LDW + o2[None, :], mask=dm2[None, :], other=0)
        gso = tl.load(w_o_s_ptr + chans[:, None] * (D // GROUP) + (2 * o2[None, :]) // GROUP, mask=dm2[None, :], other=0.0)
        boi = bo.to(tl.int32)  # dequantized before the wait
        woe = _nib_f32(boi & 15) * gso
        woo = _nib_f32(boi >> 4) * gso
    else:
        cols = po * BO + tl.arange(0, BO)
        cm = cols < D
        wo = _load_raw(w_oT_ptr, chans, cols, LDW, cm[None, :], QUANT)
        if QUANT == 8:
            so = tl.load(w_o_s_ptr + cols, mask=cm, other=0.0)
    wdt = tl.load(w_dt_ptr + chans[:, None] * R + r[None, :], mask=rm, other=0.0)
    dtb = tl.load(dt_b_ptr + chans)
    a = tl.load(a_ptr + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
    dsk = tl.load(dskip_ptr + chans)
    hs = tl.load(ssm_ptr + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
    if PDL:  # the in_proj kernel's outputs are needed from here on; the next kernel may start
        gdc_wait()
        gdc_launch_dependents()
    # activations
    dt_low = tl.load(xsum_ptr + r, mask=r < R, other=0.0)
    b = tl.load(xsum_ptr + R + n, mask=n < N, other=0.0)
    c = tl.load(xsum_ptr + R + N + n, mask=n < N, other=0.0)
    x = tl.load(xc_ptr + chans)
    zg = tl.load(zg_ptr + chans)
    dt = tl.sum(wdt.to(tl.float32) * dt_low[None, :], axis=1) + dtb
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    hs = tl.exp(dt[:, None] * a) * hs + (dt * x)[:, None] * b[None, :]
    y = (tl.sum(hs * c[None, :], axis=1) + dsk * x) * zg
    if QUANT == 4:
        ce = tl.sum(woe * y[:, None], axis=0)
        co = tl.sum(woo * y[:, None], axis=0)
        tl.atomic_add(h_ptr + 2 * o2, ce, mask=dm2, sem="relaxed")
        tl.atomic_add(h_ptr + 2 * o2 + 1, co, mask=dm2, sem="relaxed")
    else:
        contrib = tl.sum(wo.to(tl.float32) * y[:, None], axis=0)
        if QUANT == 8:
            contrib = contrib * so
        tl.atomic_add(h_ptr + cols, contrib, mask=cm, sem="relaxed")
    if po == 0:
        tl.store(ssm_out_ptr + chans[:, None] * N + n[None, :], hs, mask=nm)
        if pe == 0:
            if ZERO_PREV:  # the previous layer's x_proj sum: every reader of it has ended
                xo = tl.arange(0, BX)
                tl.store(xzero_ptr + xo, tl.zeros([BX], dtype=tl.float32), mask=xo < XD)
            if RESET_AMAX:
                tl.store(amax_ptr, AMAX_RESET)


@triton.jit
def mamba_ssm_out_kernel(
    h_ptr, amax_ptr, xc_ptr, zg_ptr, xpart_ptr, w_dt_ptr, dt_b_ptr, a_ptr, dskip_ptr, ssm_ptr, w_oT_ptr, w_o_s_ptr,
    pf_ptr, pf_bytes,
    D: tl.constexpr, E: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, R: tl.constexpr, BR: tl.constexpr,
    XD: tl.constexpr, P1: tl.constexpr, BP: tl.constexpr, BE: tl.constexpr, BD: tl.constexpr,
    RESET_AMAX: tl.constexpr, QUANT: tl.constexpr, GROUP: tl.constexpr, LDW: tl.constexpr,
    PREFETCH: tl.constexpr, NT: tl.constexpr, PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    chans = pid * BE + tl.arange(0, BE)
    offs = tl.arange(0, BD)
    dm = offs < D
    p = tl.arange(0, BP)
    pm = p[:, None] < P1
    r = tl.arange(0, BR)
    rm = r[None, :] < R
    n = tl.arange(0, BN)
    nm = n[None, :] < N
    # 1. weights and constants first (independent of the previous kernel)
    if QUANT == 4:
        o2 = tl.arange(0, BD // 2)
        dm2 = o2 < (D // 2)
        bo = tl.load(w_oT_ptr + chans[:, None] * LDW + o2[None, :], mask=dm2[None, :], other=0)
        gso = tl.load(w_o_s_ptr + chans[:, None] * (D // GROUP) + (2 * o2[None, :]) // GROUP, mask=dm2[None, :], other=0.0)
    else:
        wo = _load_raw(w_oT_ptr, chans, offs, LDW, dm[None, :], QUANT)  # [BE, BD]
    if QUANT == 8:
        so = tl.load(w_o_s_ptr + offs, mask=dm, other=0.0)
    wdt = tl.load(w_dt_ptr + chans[:, None] * R + r[None, :], mask=rm, other=0.0)
    dtb = tl.load(dt_b_ptr + chans)
    a = tl.load(a_ptr + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
    dsk = tl.load(dskip_ptr + chans)
    if PREFETCH:
        _prefetch_l2(pf_ptr, pf_bytes, NT)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    # 2. activations and state
    dt_low = tl.sum(tl.load(xpart_ptr + p[:, None] * XD + r[None, :], mask=pm & rm, other=0.0), axis=0)
    b = tl.sum(tl.load(xpart_ptr + p[:, None] * XD + R + n[None, :], mask=pm & nm, other=0.0), axis=0)
    c = tl.sum(tl.load(xpart_ptr + p[:, None] * XD + R + N + n[None, :], mask=pm & nm, other=0.0), axis=0)
    x = tl.load(xc_ptr + chans)
    zg = tl.load(zg_ptr + chans)
    hs = tl.load(ssm_ptr + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
    # dt_proj + softplus (torch's threshold 20)
    dt = tl.sum(wdt.to(tl.float32) * dt_low[None, :], axis=1) + dtb
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    # selective-state update, output, D skip, gate
    hs = tl.exp(dt[:, None] * a) * hs + (dt * x)[:, None] * b[None, :]
    tl.store(ssm_ptr + chans[:, None] * N + n[None, :], hs, mask=nm)
    y = (tl.sum(hs * c[None, :], axis=1) + dsk * x) * zg
    # this block's share of out_proj, added into the residual
    if QUANT == 4:
        ys = gso * y[:, None]
        boi = bo.to(tl.int32)
        ce = tl.sum(_nib_f32(boi & 15) * ys, axis=0)
        co = tl.sum(_nib_f32(boi >> 4) * ys, axis=0)
        tl.atomic_add(h_ptr + 2 * o2, ce, mask=dm2, sem="relaxed")
        tl.atomic_add(h_ptr + 2 * o2 + 1, co, mask=dm2, sem="relaxed")
    else:
        contrib = tl.sum(_dequant(wo, w_o_s_ptr, chans, offs, LDW, dm[None, :], QUANT, GROUP) * y[:, None], axis=0)
        if QUANT == 8:
            contrib = contrib * so
        tl.atomic_add(h_ptr + offs, contrib, mask=dm, sem="relaxed")
    if RESET_AMAX:
        if pid == 0:
            tl.store(amax_ptr, AMAX_RESET)


@triton.jit
def lm_head_kernel(
    h_ptr, norm_w_ptr, emb_ptr, logits_ptr, amax_ptr, eps, vocab, bar_ptr,
    D: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr, WRITE_LOGITS: tl.constexpr,
    PREFETCH: tl.constexpr, NT: tl.constexpr, PDL: tl.constexpr, RESET_BAR: tl.constexpr,
    xzero_ptr, XZ: tl.constexpr, BXZ: tl.constexpr, last_out_ptr, last_ssm_ptr, COPY_N: tl.constexpr,
    COPY_BLK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = tl.arange(0, BD)
    dm = offs < D
    rows = pid * BV + tl.arange(0, BV)
    rmask = rows < vocab
    w = tl.load(emb_ptr + rows[:, None] * D + offs[None, :], mask=rmask[:, None] & dm[None, :], other=0.0)
    nw = tl.load(norm_w_ptr + offs, mask=dm, other=0.0)
    if PDL:  # the last layer's kernel has ended (its state side buffer and x_proj sum are ours now)
        gdc_wait()
        gdc_launch_dependents()
    if COPY_N > 0:  # the last layer's new SSM state (2-D SSM kernel) into place
        _copy_share(last_out_ptr, last_ssm_ptr, COPY_N, pid, tl.num_programs(0), COPY_BLK)
    if XZ > 0:  # the last layer's x_proj sum back to zero for the next step
        if pid == 0:
            xz = tl.arange(0, BXZ)
            tl.store(xzero_ptr + xz, tl.zeros([BXZ], dtype=tl.float32), mask=xz < XZ)
    if RESET_BAR:  # the persistent layers kernel before this one has ended: its barrier restarts at 0
        if pid == 0:
            tl.store(bar_ptr, 0)
    v = tl.load(h_ptr + offs, mask=dm, other=0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
    u = v * rstd * nw
    acc = tl.sum(w.to(tl.float32) * u[None, :], axis=1)
    if WRITE_LOGITS:
        tl.store(logits_ptr + rows, acc, mask=rmask)
    vals = tl.where(rmask, acc, float("-inf"))
    best = tl.max(vals, axis=0)
    idx = tl.min(tl.where(vals == best, rows, vocab), axis=0)
    bits = best.to(tl.int32, bitcast=True)
    key32 = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # order-preserving as a signed integer
    key = (key32.to(tl.int64) << 32) + (vocab - 1 - idx).to(tl.int64)
    tl.atomic_max(amax_ptr, key, sem="relaxed")


@triton.jit
def _fence():
    tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _grid_arrive(bar_ptr, FENCE: tl.constexpr):
    """This program is done with the phase: a CTA barrier (optionally every thread fences its writes
    first), then one release add (Triton does a scalar atomic from one thread) - the cooperative
    groups grid-sync pattern."""
    if FENCE:
        _fence()
    tl.debug_barrier()
    tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _grid_wait(bar_ptr, target, FENCE: tl.constexpr):
    """Spin until `target` arrivals are counted (acquire), then release the program's threads. The
    spin is bounded (~2^18 polls): a broken barrier gives wrong numbers, which the tests catch,
    rather than a hung GPU."""
    cur = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
    polls = 0
    while (cur < target) & (polls < 262144):
        cur = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
        polls += 1
    tl.debug_barrier()
    if FENCE:
        _fence()


@triton.jit
def mamba_layers_kernel(
    tok_ptr, amax_ptr, emb_ptr, h_ptr, bar_ptr, xpart_ptr, eps, vocab,
    norm_w_ptr, w_in_ptr, w_in_s_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, w_xT_ptr,
    w_dt_ptr, dt_b_ptr, a_ptr, dskip_ptr, ssm_ptr, w_oT_ptr, w_o_s_ptr,
    NL: tl.constexpr, D: tl.constexpr, E: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, XD: tl.constexpr,
    BX: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, R: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
    BD: tl.constexpr, P: tl.constexpr, BP: tl.constexpr, FROM_ARGMAX: tl.constexpr,
    QUANT: tl.constexpr, GROUP: tl.constexpr, LDW: tl.constexpr, SW: tl.constexpr, SS_IN: tl.constexpr,
    SS_O: tl.constexpr, FENCE: tl.constexpr,
):
    """All layers of the step in one persistent launch of P programs (all resident at once: P <= SMs).
    Program p owns channels [p*BC, (p+1)*BC) in both phases of every layer:
      A: RMSNorm + in_proj rows (x, z) + conv + SiLU + partial x_proj  -> grid barrier ->
      B: x_proj sum + dt_proj + softplus + state update + D skip + gate + out_proj share into the
         residual (atomic adds)                                         -> grid barrier -> next layer.
    x and SiLU(z) stay in registers between the phases (same channels); the residual and the x_proj
    partials cross programs through L2 (loads bypass L1). The barrier is split: a program issues the
    next phase's weight loads before it waits, so HBM streams while the grid synchronizes."""
    pid = tl.program_id(0)
    chans = pid * BC + tl.arange(0, BC)
    offs = tl.arange(0, BD)
    dm = offs < D
    kk = tl.arange(0, KP)
    xo = tl.arange(0, BX)
    p = tl.arange(0, BP)
    pm = p[:, None] < P
    r = tl.arange(0, BR)
    rm = r[None, :] < R
    n = tl.arange(0, BN)
    nm = n[None, :] < N
    smask = kk[None, :] < (K - 1)
    m2 = dm[None, :] & (chans[:, None] < E)
    shift = (kk[:, None] == (kk[None, :] + 1)).to(tl.float32)
    # the embedding row (layer 0's input): every program reads it, program 0 starts the residual
    tok = _next_token(tok_ptr, amax_ptr, vocab, FROM_ARGMAX)
    v0 = tl.load(emb_ptr + tok * D + offs, mask=dm, other=0.0).to(tl.float32)
    if pid == 0:
        tl.store(h_ptr + offs, v0, mask=dm)
    for i in range(NL):
        # ---------------- phase A: weights first, then wait for the previous layer
        wx = _load_raw(w_in_ptr + i * (2 * E * LDW), chans, offs, LDW, m2, QUANT)
        wz = _load_raw(w_in_ptr + i * (2 * E * LDW), chans + E, offs, LDW, m2, QUANT)
        wxT = tl.load(w_xT_ptr + i * (E * XD) + chans[:, None] * XD + xo[None, :], mask=xo[None, :] < XD, other=0.0)
        cw = tl.load(conv_w_ptr + i * (E * K) + chans[:, None] * K + kk[None, :], mask=kk[None, :] < K, other=0.0)
        cb = tl.load(conv_b_ptr + i * E + chans)
        nw = tl.load(norm_w_ptr + i * D + offs, mask=dm, other=0.0)
        window = tl.load(conv_ptr + i * (E * (K - 1)) + chans[:, None] * (K - 1) + kk[None, :], mask=smask, other=0.0)
        if i == 0:
            v = v0
        else:
            _grid_wait(bar_ptr, (2 * i) * P, FENCE)
            v = tl.load(h_ptr + offs, mask=dm, other=0.0, cache_modifier=".cg")
        rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
        u = v * rstd * nw
        acc_x = tl.sum(_dequant(wx, w_in_s_ptr + i * SS_IN, chans, offs, LDW, m2, QUANT, GROUP) * u[None, :], axis=1)
        acc_z = tl.sum(_dequant(wz, w_in_s_ptr + i * SS_IN, chans + E, offs, LDW, m2, QUANT, GROUP) * u[None, :], axis=1)
        if QUANT == 8:
            acc_x = acc_x * tl.load(w_in_s_ptr + i * SS_IN + chans)
            acc_z = acc_z * tl.load(w_in_s_ptr + i * SS_IN + E + chans)
        window = tl.where(kk[None, :] == (K - 1), acc_x[:, None], window)
        conv = tl.sum(window * cw, axis=1) + cb
        xs = conv / (1.0 + tl.exp(-conv))
        zg = acc_z / (1.0 + tl.exp(-acc_z))
        new_window = tl.sum(window[:, :, None] * shift[None, :, :], axis=1)
        tl.debug_barrier()
        tl.store(conv_ptr + i * (E * (K - 1)) + chans[:, None] * (K - 1) + kk[None, :], new_window, mask=smask)
        part = tl.sum(wxT.to(tl.float32) * xs[:, None], axis=0)
        tl.store(xpart_ptr + pid * XD + xo, part, mask=xo < XD)
        _grid_arrive(bar_ptr, FENCE)
        # ---------------- phase B: weights first, then wait for every program's x_proj partial
        wo = _load_raw(w_oT_ptr + i * (E * LDW), chans, offs, LDW, dm[None, :], QUANT)
        wdt = tl.load(w_dt_ptr + i * (E * R) + chans[:, None] * R + r[None, :], mask=rm, other=0.0)
        dtb = tl.load(dt_b_ptr + i * E + chans)
        a = tl.load(a_ptr + i * (E * N) + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
        dsk = tl.load(dskip_ptr + i * E + chans)
        hs = tl.load(ssm_ptr + i * (E * N) + chans[:, None] * N + n[None, :], mask=nm, other=0.0)
        _grid_wait(bar_ptr, (2 * i + 1) * P, FENCE)
        if i == 0:
            if pid == 0:
                tl.store(amax_ptr, AMAX_RESET)  # every program has read it (before the first barrier)
        xp = xpart_ptr + p[:, None] * XD
        dt_low = tl.sum(tl.load(xp + r[None, :], mask=pm & rm, other=0.0, cache_modifier=".cg"), axis=0)
        b = tl.sum(tl.load(xp + R + n[None, :], mask=pm & nm, other=0.0, cache_modifier=".cg"), axis=0)
        c = tl.sum(tl.load(xp + R + N + n[None, :], mask=pm & nm, other=0.0, cache_modifier=".cg"), axis=0)
        dt = tl.sum(wdt.to(tl.float32) * dt_low[None, :], axis=1) + dtb
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        hs = tl.exp(dt[:, None] * a) * hs + (dt * xs)[:, None] * b[None, :]
        tl.store(ssm_ptr + i * (E * N) + chans[:, None] * N + n[None, :], hs, mask=nm)
        y = (tl.sum(hs * c[None, :], axis=1) + dsk * xs) * zg
        contrib = tl.sum(_dequant(wo, w_o_s_ptr + i * SS_O, chans, offs, LDW, dm[None, :], QUANT, GROUP) * y[:, None], axis=0)
        if QUANT == 8:
            contrib = contrib * tl.load(w_o_s_ptr + i * SS_O + offs, mask=dm, other=0.0)
        tl.atomic_add(h_ptr + offs, contrib, mask=dm, sem="relaxed")
        _grid_arrive(bar_ptr, FENCE)
