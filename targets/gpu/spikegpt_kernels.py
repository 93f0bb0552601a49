"""Triton kernels of the fused SpikeGPT decode step (batch 1). Imported only by ``targets.gpu.spikegpt``.

A SpikeGPT layer has four grid-wide dependencies — each GEMV needs the whole vector the previous
stage produced, and a LIF neuron needs its complete input current — so a layer is four kernels,
and a step of L layers is 4·L + 1 launches in one CUDA graph:

* ``spk_att_in_kernel`` — LayerNorm ln1 of the residual (block 0: the binary embedding row through
  ln0 first), the token-shift mixes with the previous step's ln1 output, the key / value /
  receptance GEMVs for a block of channels, σ(r), and the WKV recurrence of those channels
  (numerically stable (a, b, p) form, state updated in place: each channel belongs to one program);
  writes σ(r)·wkv and its share of the ln1 output (the next step's token shift, copied into the
  state by the next kernel, because every program of this one reads the old shift in full).
* ``spk_att_out_kernel`` — the output GEMV for a block of residual channels, LIF neuron 1 (charge,
  fire, reset) on it, the spikes added into the fp32 residual, the spike train recorded (uint8), the
  ln1 output copied into the state's token shift.
* ``spk_ffn_in_kernel`` — LayerNorm ln2, token-shift mixes, the ChannelMix key GEMV (4·d_model rows)
  with relu², and its share of the receptance GEMV with σ; writes both and its share of the ln2 output.
* ``spk_ffn_out_kernel`` — the value GEMV (d_ffn wide rows) gated by σ(r), LIF neuron 2, the spikes
  into the residual, the spike record, the ln2 output into the state's token shift.
* ``spk_head_kernel`` — LayerNorm ln_out, the (untied) head GEMV writing fp32 logits, and the
  arg-max folded into one int64 ``atomic_max`` (as ``kernels.lm_head_kernel``).

With programmatic dependent launch every kernel first loads what no earlier kernel of the step
writes (its weights, the mixing coefficients, its own recurrent state), then waits
(``gdc_wait``) for the previous kernel, then lets the next one start; only then does it read the
previous kernel's outputs or write anything that kernel reads. Weights are bf16; activations,
state, the residual and every sum are fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from targets.gpu.kernels import AMAX_RESET, _next_token, gdc_launch_dependents, gdc_wait


@triton.jit
def _layer_norm(v, w, b, offs, D: tl.constexpr, eps):
    """LayerNorm of a [BD] fp32 tile holding D values (the rest masked to 0 by the caller)."""
    dm = offs < D
    mean = tl.sum(v, axis=0) / D
    c = tl.where(dm, v - mean, 0.0)
    var = tl.sum(c * c, axis=0) / D
    return c / tl.sqrt(var + eps) * w + b


@triton.jit
def _lif(current, membrane, inv_tau, thr, FIRE_GE: tl.constexpr, HARD: tl.constexpr):
    """One LIF step (edgeseq.models.lif.LIF.step): spikes (fp32 0/1) and the membrane after reset."""
    v = membrane + (current - membrane) * inv_tau
    if FIRE_GE:
        s = tl.where(v >= thr, 1.0, 0.0)
    else:
        s = tl.where(v > thr, 1.0, 0.0)
    if HARD:
        v = v * (1.0 - s)
    else:
        v = v - s * thr
    return s, v


@triton.jit
def spk_att_in_kernel(
    tok_ptr, amax_ptr, emb_ptr, h_ptr, ln0_w_ptr, ln0_b_ptr, ln_w_ptr, ln_b_ptr, mu_k_ptr, mu_v_ptr, mu_r_ptr,
    w_k_ptr, w_v_ptr, w_r_ptr, decay_ptr, bonus_ptr, shift_ptr, wa_ptr, wb_ptr, wp_ptr, rw_ptr, xn_ptr,
    eps, vocab,
    D: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr, FIRST: tl.constexpr, FROM_ARGMAX: tl.constexpr,
    PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    chans = pid * BC + tl.arange(0, BC)
    cm = chans < D
    offs = tl.arange(0, BD)
    dm = offs < D
    m2 = cm[:, None] & dm[None, :]
    # 1. weights, coefficients and this layer's own state (nothing an earlier kernel of the step writes)
    wk = tl.load(w_k_ptr + chans[:, None] * D + offs[None, :], mask=m2, other=0.0)
    wv = tl.load(w_v_ptr + chans[:, None] * D + offs[None, :], mask=m2, other=0.0)
    wr = tl.load(w_r_ptr + chans[:, None] * D + offs[None, :], mask=m2, other=0.0)
    lw = tl.load(ln_w_ptr + offs, mask=dm, other=0.0)
    lb = tl.load(ln_b_ptr + offs, mask=dm, other=0.0)
    mk = tl.load(mu_k_ptr + offs, mask=dm, other=0.0)
    mv = tl.load(mu_v_ptr + offs, mask=dm, other=0.0)
    mr = tl.load(mu_r_ptr + offs, mask=dm, other=0.0)
    sh = tl.load(shift_ptr + offs, mask=dm, other=0.0)
    w = tl.load(decay_ptr + chans, mask=cm, other=0.0)
    u = tl.load(bonus_ptr + chans, mask=cm, other=0.0)
    a = tl.load(wa_ptr + chans, mask=cm, other=0.0)
    b = tl.load(wb_ptr + chans, mask=cm, other=1.0)
    p = tl.load(wp_ptr + chans, mask=cm, other=0.0)
    if FIRST:
        l0w = tl.load(ln0_w_ptr + offs, mask=dm, other=0.0)
        l0b = tl.load(ln0_b_ptr + offs, mask=dm, other=0.0)
    # 2. the previous kernel's outputs from here on (the head of the previous step, or the last layer)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    if FIRST:  # the binary embedding (a spike table), through ln0: the residual stream's start
        tok = _next_token(tok_ptr, amax_ptr, vocab, FROM_ARGMAX)
        x = tl.load(emb_ptr + tok * D + offs, mask=dm, other=0).to(tl.float32)
        x = _layer_norm(x, l0w, l0b, offs, D, eps)
        xc = tl.sum(tl.where(offs[None, :] == chans[:, None], x[None, :], 0.0), axis=1)
        tl.store(h_ptr + chans, xc, mask=cm)
    else:
        x = tl.load(h_ptr + offs, mask=dm, other=0.0)
    xn = _layer_norm(x, lw, lb, offs, D, eps)
    xn = tl.where(dm, xn, 0.0)
    xk = xn * mk + sh * (1.0 - mk)
    xv = xn * mv + sh * (1.0 - mv)
    xr = xn * mr + sh * (1.0 - mr)
    k = tl.sum(wk.to(tl.float32) * xk[None, :], axis=1)
    v = tl.sum(wv.to(tl.float32) * xv[None, :], axis=1)
    r = 1.0 / (1.0 + tl.exp(-tl.sum(wr.to(tl.float32) * xr[None, :], axis=1)))
    # WKV: the output with the current token's bonus, then the decayed state plus the current token
    cur = u + k
    p_out = tl.maximum(p, cur)
    e1 = tl.exp(p - p_out)
    e2 = tl.exp(cur - p_out)
    wkv = (e1 * a + e2 * v) / (e1 * b + e2)
    dec = p - w
    p_new = tl.maximum(dec, k)
    e1 = tl.exp(dec - p_new)
    e2 = tl.exp(k - p_new)
    tl.store(wa_ptr + chans, e1 * a + e2 * v, mask=cm)
    tl.store(wb_ptr + chans, e1 * b + e2, mask=cm)
    tl.store(wp_ptr + chans, p_new, mask=cm)
    tl.store(rw_ptr + chans, r * wkv, mask=cm)
    # this program's share of the ln1 output (the next step's token shift)
    xs = tl.sum(tl.where(offs[None, :] == chans[:, None], xn[None, :], 0.0), axis=1)
    tl.store(xn_ptr + chans, xs, mask=cm)


@triton.jit
def spk_att_out_kernel(
    h_ptr, amax_ptr, rw_ptr, w_o_ptr, lif_ptr, xn_ptr, shift_ptr, spk_ptr, inv_tau, thr,
    D: tl.constexpr, BD: tl.constexpr, BO: tl.constexpr, FIRE_GE: tl.constexpr, HARD: tl.constexpr,
    RESET_AMAX: tl.constexpr, PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BO + tl.arange(0, BO)
    rm = rows < D
    offs = tl.arange(0, BD)
    dm = offs < D
    wo = tl.load(w_o_ptr + rows[:, None] * D + offs[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
    mem = tl.load(lif_ptr + rows, mask=rm, other=0.0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    y = tl.load(rw_ptr + offs, mask=dm, other=0.0)
    out = tl.sum(wo.to(tl.float32) * y[None, :], axis=1)
    s, mem = _lif(out, mem, inv_tau, thr, FIRE_GE, HARD)
    tl.store(lif_ptr + rows, mem, mask=rm)
    hr = tl.load(h_ptr + rows, mask=rm, other=0.0)
    tl.store(h_ptr + rows, hr + s, mask=rm)
    tl.store(spk_ptr + rows, s.to(tl.uint8), mask=rm)
    tl.store(shift_ptr + rows, tl.load(xn_ptr + rows, mask=rm, other=0.0), mask=rm)
    if RESET_AMAX:  # the first kernel has read the previous arg-max: the head's atomic_max restarts
        if pid == 0:
            tl.store(amax_ptr, AMAX_RESET)


@triton.jit
def spk_ffn_in_kernel(
    h_ptr, ln_w_ptr, ln_b_ptr, mu_k_ptr, mu_r_ptr, w_k_ptr, w_r_ptr, shift_ptr, kk_ptr, rr_ptr, xn_ptr, eps,
    D: tl.constexpr, BD: tl.constexpr, F: tl.constexpr, BH: tl.constexpr, BR: tl.constexpr, PDL: tl.constexpr,
):
    """Program q: key rows [q·BH, (q+1)·BH) of the d_ffn hidden units, receptance (and ln2 output)
    rows [q·BR, (q+1)·BR) of the d_model channels."""
    pid = tl.program_id(0)
    hrows = pid * BH + tl.arange(0, BH)
    hm = hrows < F
    rrows = pid * BR + tl.arange(0, BR)
    rm = rrows < D
    offs = tl.arange(0, BD)
    dm = offs < D
    wk = tl.load(w_k_ptr + hrows[:, None] * D + offs[None, :], mask=hm[:, None] & dm[None, :], other=0.0)
    wr = tl.load(w_r_ptr + rrows[:, None] * D + offs[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
    lw = tl.load(ln_w_ptr + offs, mask=dm, other=0.0)
    lb = tl.load(ln_b_ptr + offs, mask=dm, other=0.0)
    mk = tl.load(mu_k_ptr + offs, mask=dm, other=0.0)
    mr = tl.load(mu_r_ptr + offs, mask=dm, other=0.0)
    sh = tl.load(shift_ptr + offs, mask=dm, other=0.0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    x = tl.load(h_ptr + offs, mask=dm, other=0.0)
    xn = tl.where(dm, _layer_norm(x, lw, lb, offs, D, eps), 0.0)
    xk = xn * mk + sh * (1.0 - mk)
    xr = xn * mr + sh * (1.0 - mr)
    k = tl.maximum(tl.sum(wk.to(tl.float32) * xk[None, :], axis=1), 0.0)
    tl.store(kk_ptr + hrows, k * k, mask=hm)
    r = 1.0 / (1.0 + tl.exp(-tl.sum(wr.to(tl.float32) * xr[None, :], axis=1)))
    tl.store(rr_ptr + rrows, r, mask=rm)
    xs = tl.sum(tl.where(offs[None, :] == rrows[:, None], xn[None, :], 0.0), axis=1)
    tl.store(xn_ptr + rrows, xs, mask=rm)


@triton.jit
def spk_ffn_out_kernel(
    h_ptr, kk_ptr, rr_ptr, w_v_ptr, lif_ptr, xn_ptr, shift_ptr, spk_ptr, inv_tau, thr,
    D: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, BO: tl.constexpr, FIRE_GE: tl.constexpr,
    HARD: tl.constexpr, PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BO + tl.arange(0, BO)
    rm = rows < D
    offs = tl.arange(0, BF)
    fm = offs < F
    wv = tl.load(w_v_ptr + rows[:, None] * F + offs[None, :], mask=rm[:, None] & fm[None, :], other=0.0)
    mem = tl.load(lif_ptr + rows, mask=rm, other=0.0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    k = tl.load(kk_ptr + offs, mask=fm, other=0.0)
    r = tl.load(rr_ptr + rows, mask=rm, other=0.0)
    out = r * tl.sum(wv.to(tl.float32) * k[None, :], axis=1)
    s, mem = _lif(out, mem, inv_tau, thr, FIRE_GE, HARD)
    tl.store(lif_ptr + rows, mem, mask=rm)
    hr = tl.load(h_ptr + rows, mask=rm, other=0.0)
    tl.store(h_ptr + rows, hr + s, mask=rm)
    tl.store(spk_ptr + rows, s.to(tl.uint8), mask=rm)
    tl.store(shift_ptr + rows, tl.load(xn_ptr + rows, mask=rm, other=0.0), mask=rm)


@triton.jit
def spk_head_kernel(
    h_ptr, ln_w_ptr, ln_b_ptr, w_ptr, logits_ptr, amax_ptr, eps, vocab,
    D: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr, PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = tl.arange(0, BD)
    dm = offs < D
    rows = pid * BV + tl.arange(0, BV)
    rmask = rows < vocab
    w = tl.load(w_ptr + rows[:, None] * D + offs[None, :], mask=rmask[:, None] & dm[None, :], other=0.0)
    lw = tl.load(ln_w_ptr + offs, mask=dm, other=0.0)
    lb = tl.load(ln_b_ptr + offs, mask=dm, other=0.0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    x = tl.load(h_ptr + offs, mask=dm, other=0.0)
    xn = tl.where(dm, _layer_norm(x, lw, lb, offs, D, eps), 0.0)
    acc = tl.sum(w.to(tl.float32) * xn[None, :], axis=1)
    tl.store(logits_ptr + rows, acc, mask=rmask)
    vals = tl.where(rmask, acc, float("-inf"))
    best = tl.max(vals, axis=0)
    idx = tl.min(tl.where(vals == best, rows, vocab), axis=0)
    bits = best.to(tl.int32, bitcast=True)
    key32 = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # order-preserving as a signed integer
    key = (key32.to(tl.int64) << 32) + (vocab - 1 - idx).to(tl.int64)
    tl.atomic_max(amax_ptr, key, sem="relaxed")
