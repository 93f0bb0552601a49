"""The fused CUDA decode step of a Mamba-1 model quantized by an edgeseq recipe (batch 1).

    from quantize import quantize_model
    qmodel, _ = quantize_model(model, "w4a16", calib)     # or a loaded quantized checkpoint
    rt = QuantFusedMambaStep(qmodel)                       # the recipe's integers and scales -> GPU
    logits = rt.step(token)

It runs what the fake-quant PyTorch model (``qmodel.step``) computes — the same integer weights,
scales, activation rounding and Hadamard rotation — in the kernels of ``qkernels.py``: two per
layer and the head (49 launches at 24 layers) when out_proj is not rotated, three per layer when
it is (the rotation needs the whole SSM output, one more grid-wide dependency). One CUDA graph.

Supported: weight bits 4 or 8 for in_proj/out_proj (2..8 for x_proj/dt_proj), per-tensor,
per-channel or per-group scales, weight-only or static int8 activations at the recipe's points
(in_proj input, ssm_in, dt_proj input, out_proj input), an int8 (per-row) embedding read by the
tied head or a head of its own (``head_bits``: per-group scales, float or per-block int8 activations).
Not supported (a one-line InputError): integer decode state (``state_bits``), float layers left
in a quantized model, untied float heads, in_proj/out_proj bias.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from edgeseq.errors import EdgeseqError, InputError
from targets.gpu.mamba import Blocks, FusedMambaStep, _divisor_block, _pow2, available, interpreted, quant_blocks, triton_cdiv


def _pow2_divisor(n: int, cap: int) -> int:
    """The largest power of two <= cap dividing n."""
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b


def _scales(layer, in_features: int):
    """(scale [out, n_groups] fp32, group width along the input) of a QuantLinear."""
    import torch

    s = layer.weight_scale.detach().float()
    out = layer.weight_int.shape[0]
    if layer.group_size:
        return s.reshape(out, in_features // layer.group_size).contiguous(), int(layer.group_size)
    if s.dim() == 0:
        s = s.expand(out)
    return s.reshape(out, 1).contiguous().clone() if s.dim() == 1 else torch.as_tensor(s), in_features


def pack_int4_halves(q, block: int):
    """Integers in [-8, 7] of a [rows, cols] tensor, two per byte, value + 8: in each block of `block`
    columns (the last one zero-padded), byte k holds column k (low nibble) and column k + block/2
    (high nibble), so a kernel's two halves of the activation are contiguous. [rows, nblocks*block/2]."""
    import torch

    rows, cols = q.shape
    nb = -(-cols // block)
    full = torch.zeros(rows, nb * block, dtype=torch.int32)
    full[:, :cols] = q.to(torch.int32).cpu()
    u = (full + 8).reshape(rows, nb, block)
    half = block // 2
    return (u[:, :, :half] | (u[:, :, half:] << 4)).reshape(rows, nb * half).to(torch.uint8).contiguous()


def unpack_int4_halves(packed, block: int, cols: int):
    import torch

    rows = packed.shape[0]
    p = packed.to(torch.int32).reshape(rows, -1, block // 2)
    return torch.cat([(p & 15) - 8, (p >> 4) - 8], dim=2).reshape(rows, -1)[:, :cols]


def int8_embedding(weight):
    """(int8 table, per-row fp32 scale) whose product is exactly ``weight`` (the recipe's rounded
    table), or None when the table is not such a product."""
    import torch

    w = weight.detach().float().cpu()
    amax = w.abs().amax(dim=1)
    # the recipe's table is q * s with |q| <= 127 and max |q| = 127 per row: s = amax / 127 up to
    # rounding; try the nearest fp32 values until q * s reproduces the table exactly
    base = (amax / 127.0).clamp(min=1e-12)
    for ulps in (0, 1, -1, 2, -2):
        s = base if ulps == 0 else torch.nextafter(base, torch.full_like(base, math.copysign(float("inf"), ulps)))
        if abs(ulps) == 2:
            s = torch.nextafter(s, torch.full_like(s, math.copysign(float("inf"), ulps)))
        q = torch.clamp(torch.round(w / s[:, None]), -127, 127)
        exact = (q * s[:, None] == w).all(dim=1)
        if ulps == 0:
            best_q, best_s, ok = q.clone(), s.clone(), exact.clone()
        else:
            fix = exact & ~ok
            best_q[fix], best_s[fix], ok = q[fix], s[fix], ok | exact
        if bool(ok.all()):
            return best_q.to(torch.int8), best_s
    return None


class QuantFusedMambaStep(FusedMambaStep):
    """The fused decode step of a recipe-quantized ``Mamba`` (see the module docs)."""

    name = "triton-fused"

    def __init__(self, qmodel: Any, device: str = "cuda", blocks: Blocks | None = None, cuda_graph: bool = True):
        import torch

        from quantize.modules import QuantAct, QuantLinear

        if not available():
            raise EdgeseqError("the fused GPU runtime needs a CUDA device and Triton")
        cfg = qmodel.config
        if getattr(cfg, "family", None) != "mamba":
            raise InputError(f"the fused GPU runtime runs Mamba models, not {getattr(cfg, 'family', '?')!r}")
        if not cfg.tie_embeddings:
            raise InputError("the fused GPU runtime expects a tied embedding / LM head")
        try:
            from quantize.state import has_integer_state

            if has_integer_state(qmodel):
                raise InputError("the fused GPU runtime carries a float decode state; this model's recipe stores it as integers (state_bits)")
        except ImportError:  # pragma: no cover
            pass
        self.torch, self.cfg, self.device = torch, cfg, torch.device(device)
        D, E, N, R, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.rank, cfg.d_conv
        if D > 2048:
            raise InputError(f"the fused GPU runtime holds a whole d_model row in registers: d_model <= 2048, not {D}")
        self.D, self.E, self.N, self.R, self.K, self.V = D, E, N, R, K, cfg.vocab_size
        self.XD = R + 2 * N
        self.eps = float(qmodel.layers[0].norm.eps)
        self.qmodel = qmodel
        dev, f32 = self.device, torch.float32
        mixers = [block.mixer for block in qmodel.layers]
        for i, mx in enumerate(mixers):
            for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
                layer = getattr(mx, name)
                if not isinstance(layer, QuantLinear):
                    raise InputError(f"layers.{i}.mixer.{name} is not quantized: the fused quantized runtime needs every "
                                     "Mamba linear layer quantized by the recipe")
                if layer.rotate and name != "out_proj":
                    raise InputError(f"layers.{i}.mixer.{name} is rotated; only a rotated out_proj is supported")
            if mx.in_proj.bias is not None or mx.out_proj.bias is not None:
                raise InputError("the fused GPU runtime has no in_proj/out_proj bias (Mamba checkpoints have none)")
            if mx.x_proj.input_scale is not None:
                raise InputError("x_proj quantizes its own input; the fused runtime expects it quantized at ssm_in")
        first = mixers[0]
        self.wbits = first.in_proj.weight_bits
        if self.wbits not in (4, 8) or any(m.in_proj.weight_bits != self.wbits or m.out_proj.weight_bits != self.wbits
                                           for m in mixers):
            raise InputError("the fused quantized runtime needs in_proj and out_proj of one weight width, 4 or 8 bits")
        self.rotate = bool(first.out_proj.rotate)
        if any(bool(m.out_proj.rotate) != self.rotate for m in mixers):
            raise InputError("the fused quantized runtime needs every out_proj rotated, or none")
        self.aq = {
            "in": first.in_proj.input_scale is not None,
            "ssm": isinstance(first.ssm_in, QuantAct),
            "dt": first.dt_proj.input_scale is not None,
            "out": first.out_proj.input_scale is not None,
        }
        for m in mixers:
            if ({"in": m.in_proj.input_scale is not None, "ssm": isinstance(m.ssm_in, QuantAct),
                 "dt": m.dt_proj.input_scale is not None, "out": m.out_proj.input_scale is not None} != self.aq):
                raise InputError("the fused quantized runtime needs the same activation points quantized in every layer")
            for act in (m.in_proj.act_bits if m.in_proj.input_scale is not None else 8,
                        m.ssm_in.bits if isinstance(m.ssm_in, QuantAct) else 8):
                if act != 8:
                    raise InputError(f"the fused quantized runtime rounds activations to 8 bits, not {act}")
        emb = int8_embedding(qmodel.embedding.weight)
        if emb is None:
            raise InputError("the embedding is not an int8 per-row table (recipe embedding_bits = 8)")
        if self.rotate:
            from quantize.hadamard import _base_matrix, hadamard_factors

            self.hm_m, self.hm_p = hadamard_factors(E)
            self.hm = (_base_matrix(self.hm_m) / math.sqrt(E)).float().to(dev).contiguous()
        g_in = mixers[0].in_proj.group_size or D
        # chunks of the d_model row inside one in_proj scale group; 4-bit packing blocks of in_proj
        # (CH) and out_proj (PB columns: the SSM kernel's column block)
        self.CH = _pow2_divisor(math.gcd(D, g_in), 128)
        if self.wbits == 4 and (self.CH < 2 or D % 2):
            raise InputError(f"4-bit in_proj needs an even d_model and groups (d_model {D}, group {g_in})")
        self.PB = max(2, min(128, _pow2(D)))
        self.layers, self.groups = [], None
        with torch.no_grad():
            for block, mx in zip(qmodel.layers, mixers):
                s_in, g_in = _scales(mx.in_proj, D)
                s_x, g_x = _scales(mx.x_proj, E)
                s_dt, g_dt = _scales(mx.dt_proj, R)
                s_o, g_o = _scales(mx.out_proj, E)
                groups = (g_in, g_x, g_dt, g_o)
                if self.groups is None:
                    self.groups = groups
                elif groups != self.groups:
                    raise InputError("the fused quantized runtime needs the same weight groups in every layer")
                q_in = mx.in_proj.weight_int.detach()
                q_oT = mx.out_proj.weight_int.detach().t().contiguous()  # [E, D]
                if self.wbits == 4:
                    w_in, w_oT = pack_int4_halves(q_in, self.CH), pack_int4_halves(q_oT, self.PB)
                else:
                    w_in, w_oT = q_in.to(torch.int8).contiguous(), q_oT.to(torch.int8).contiguous()
                acts = torch.zeros(4)
                if self.aq["in"]:
                    acts[0] = float(mx.in_proj.input_scale)
                if self.aq["ssm"]:
                    acts[1] = float(mx.ssm_in.scale)
                if self.aq["dt"]:
                    acts[2] = float(mx.dt_proj.input_scale)
                if self.aq["out"]:
                    acts[3] = float(mx.out_proj.input_scale)
                layer = {
                    "norm_w": block.norm.weight.detach().float(),
                    "norm_w16": block.norm.weight.detach().float() * 0.0625,  # exact: for q_in4r_kernel's NIBH
                    "conv_w": mx.conv1d.weight.detach().float()[:, 0, :],
                    "conv_b": (mx.conv1d.bias.detach().float() if mx.conv1d.bias is not None else torch.zeros(E)),
                    "w_in": w_in, "s_in": s_in,
                    "w_xT": mx.x_proj.weight_int.detach().t().to(torch.int8), "s_x": s_x,
                    "w_dt": mx.dt_proj.weight_int.detach().to(torch.int8), "s_dt": s_dt,
                    "dt_b": mx.dt_proj.bias.detach().float(),
                    "A": -torch.exp(mx.A_log.detach().float()),
                    "Dskip": mx.D.detach().float(),
                    "w_oT": w_oT, "s_o": s_o,
                    "acts": acts,
                }
                self.layers.append({k: v.to(dev).contiguous() for k, v in layer.items()})
            self.norm_f = qmodel.norm_f.weight.detach().float().to(dev).contiguous()
            self.emb = emb[0].to(dev).contiguous()
            self.emb_s = emb[1].float().to(dev).contiguous()
            self._set_head(qmodel, D)
        state_bytes = 2 * 4 * len(self.layers) * E * (K - 1 + N)
        self.weight_bytes = sum(t.numel() * t.element_size() for L in self.layers for t in L.values())
        self.weight_bytes += self.norm_f.numel() * 4
        if self.head_w is not self.emb:  # a head of its own: a step reads one embedding row and the head
            self.weight_bytes += D + 4 + self.head_w.numel() + self.head_s.numel() * 4
        else:
            self.weight_bytes += self.emb.numel() + self.emb_s.numel() * 4
        self.bytes_per_step = self.weight_bytes + state_bytes
        self.tok = torch.zeros(1, dtype=torch.int64, device=dev)
        self.h = torch.zeros(D, dtype=f32, device=dev)
        self.xc = torch.zeros(E, dtype=f32, device=dev)
        self.zg = torch.zeros(E, dtype=f32, device=dev)
        self.logits = torch.zeros(self.V, dtype=f32, device=dev)
        from targets.gpu.kernels import AMAX_RESET_VALUE

        self.amax = torch.full((1,), AMAX_RESET_VALUE, dtype=torch.int64, device=dev)
        self.conv_all = torch.zeros(len(self.layers), E, K - 1, dtype=f32, device=dev)
        self.ssm_all = torch.zeros(len(self.layers), E, N, dtype=f32, device=dev)
        self.conv = list(self.conv_all)
        self.ssm = list(self.ssm_all)
        self.bar = torch.zeros(1, dtype=torch.int32, device=dev)
        self.xsum = torch.zeros(len(self.layers), self.XD, dtype=f32, device=dev)
        self.ssm_side = torch.zeros(2, E, N, dtype=f32, device=dev)
        self.use_graph = cuda_graph and self.device.type == "cuda"
        self.weights = f"w{self.wbits}a{8 if self.aq['in'] else 16}"
        self.set_blocks(blocks or quant_blocks(self.wbits, D, self.rotate))

    def _set_head(self, qmodel: Any, D: int) -> None:
        """The head's integers: the tied int8 table, or the head's own copy (recipes with ``head_bits``:
        per-group scales, float or dynamic per-block int8 activations)."""
        from quantize.modules import QuantLinear

        head = getattr(qmodel, "lm_head", None)
        self.head_w, self.head_s, self.head_groups, self.head_block = self.emb, self.emb_s, 1, 0
        self.head4 = False
        if head is None:
            return
        if not isinstance(head, QuantLinear):
            raise InputError("the fused quantized runtime needs the LM head tied or quantized by the recipe (head_bits)")
        if head.rotate or head.bias is not None or head.input_scale is not None:
            raise InputError("the fused quantized runtime's head takes no rotation, bias or static input scale")
        scales, group = _scales(head, D)
        if head.act_block and head.act_block != group:
            raise InputError(f"the head's activation block ({head.act_block}) must be its weight group ({group})")
        self.head_groups, self.head_block = scales.shape[1], int(head.act_block)
        # a 4-bit head with float activations: two values a byte, one packing block per scale group
        self.head4 = (head.weight_bits == 4 and not self.head_block and self.head_groups > 1 and group % 2 == 0
                      and _pow2(group // 2) == group // 2)
        if self.head_groups > 1 and not self.head4 and _pow2(group) != group:
            raise InputError(f"the fused quantized runtime's head needs power-of-two scale groups, not {group}")
        if self.head4:
            self.head_w = pack_int4_halves(head.weight_int.detach(), group).to(self.device)
        else:
            self.head_w = head.weight_int.detach().to(self.torch.int8).to(self.device).contiguous()
        self.head_s = scales.to(self.device).contiguous()
        if self.head_groups == 1:
            self.head_s = self.head_s.reshape(-1).contiguous()

    def set_blocks(self, blocks: Blocks) -> None:
        self.blocks = blocks
        g_in, g_x, g_dt, g_o = self.groups
        D, E = self.D, self.E
        # a program holds its channels' whole d_model rows in registers. 8-bit: at most 8 rows of 1024
        # columns (4 at d_model 2048: W8A8 1.92 ms a step on the H200 against 2.14 with 8). 4-bit: 16
        # (8 at 2048 spill 340 bytes in sm_90 ptxas, yet ran 1.56 ms against 1.71 with 4;
        # benchmarks/decode_gpu_1p4b*.json)
        cap = (16384 if self.wbits == 4 else 8192) // _pow2(D)
        if blocks.in_chunks > 0 and self.wbits == 4 and not self.aq["in"]:
            cap = 1 << 30  # the looping kernel holds CH-column chunks, not whole rows
        self.BC = _divisor_block(E, min(blocks.in_channels, max(1, cap), _pow2_divisor(g_x, 1 << 30)))
        self.NCH = D // self.CH
        # 4-bit out_proj: the column block is the packing block (repacked when the shape asks another)
        if self.wbits == 4 and not self.rotate:
            self._repack_out(max(2, min(_pow2(blocks.ssm_cols or 128), _pow2(D))))
        self.BO = self.PB if self.wbits == 4 else min(_pow2(blocks.ssm_cols or 128), _pow2(D))
        limit = math.gcd(E, g_o)
        if self.rotate:
            self.BEB = _divisor_block(math.gcd(limit, self.hm_p), blocks.ssm_channels)  # SSM kernel (1-D)
            self.BE = _divisor_block(math.gcd(limit, self.hm_p), min(blocks.ssm_channels, max(1, 32768 // self.BO)))
            self.ppart = self.torch.zeros(E // self.BEB, self.hm_p, dtype=self.torch.float32, device=self.device)
        else:
            self.BE = _divisor_block(limit, min(blocks.ssm_channels, max(1, 32768 // self.BO)))
        self._graphs = {}

    def _repack_out(self, pb: int) -> None:
        """Store the 4-bit out_proj weights in packing blocks of pb columns (the SSM kernel's column block)."""
        if pb == self.PB:
            return
        for L in self.layers:
            q = unpack_int4_halves(L["w_oT"].cpu(), self.PB, self.D)
            L["w_oT"] = pack_int4_halves(q, pb).to(self.device).contiguous()
        self.PB = pb

    def dequantized_model(self, model: Any = None) -> Any:
        """The reference: a copy of the fake-quant model this runtime was built from (fp32, CPU)."""
        return copy.deepcopy(self.qmodel).float().cpu()

    def _launch(self, from_argmax: bool, parts: tuple = ("in", "ssm", "head")) -> None:
        from targets.gpu.qkernels import q_head4_kernel, q_head_kernel, q_in4_kernel, q_in4r_kernel, q_in_kernel, q_rot_out_kernel, q_ssm_kernel

        b, D, E, N, R, K, XD = self.blocks, self.D, self.E, self.N, self.R, self.K, self.XD
        g_in, g_x, g_dt, g_o = self.groups
        ldw = D if self.wbits == 8 else D // 2
        ldo = D if self.wbits == 8 else triton_cdiv(D, self.PB) * self.PB // 2
        nl = len(self.layers)
        aq = self.aq
        evw = "evict_last" if b.q_l2 else ""  # keep the layers' weights in L2 from step to step
        # programmatic dependent launch: each kernel starts (and loads its weights) while the one
        # before it finishes; Hopper and later, never under the interpreter
        pdl = bool(b.pdl) and not interpreted() and self.torch.cuda.get_device_capability(self.device)[0] >= 9
        for i, L in enumerate(self.layers):
            if "in" in parts and self._in4_loop():
                cpi = self._in4_cpi()
                q_in4_kernel[(E // self.BC,)](
                    self.tok, self.amax, self.emb, self.emb_s, self.h, L["norm_w"], L["w_in"], L["s_in"], L["conv_w"],
                    L["conv_b"], self.conv[i], L["w_xT"], L["s_x"], L["acts"], self.xc, self.zg, self.xsum[i],
                    self.eps, self.V,
                    D=D, E=E, K=K, KP=_pow2(K), XD=XD, BX=_pow2(XD), BC=self.BC, CH=self.CH, NCH=self.NCH,
                    NGI=D // g_in, GI=g_in, NGX=E // g_x, GX=g_x, SSM_AQ=aq["ssm"], FIRST=(i == 0),
                    FROM_ARGMAX=from_argmax, LDW=ldw, INTERP=interpreted(), BD=_pow2(D), CPI=cpi,
                    STAGES=max(1, b.in_stages), PF=bool(b.in_prefetch) and (self.BC * ldw) % 16 == 0 and ldw % 16 == 0,
                    NT=32 * b.warps_in, PDL=pdl, num_warps=b.warps_in, launch_pdl=pdl,
                )
            elif "in" in parts and self._in4_rows():
                q_in4r_kernel[(E // self.BC,)](
                    self.tok, self.amax, self.emb, self.emb_s, self.h, L["norm_w"],
                    L["norm_w16"] if b.in_nibh else L["norm_w"], L["w_in"], L["s_in"], L["conv_w"],
                    L["conv_b"], self.conv[i], L["w_xT"], L["s_x"], L["acts"], self.xc, self.zg, self.xsum[i],
                    self.eps, self.V,
                    D=D, E=E, K=K, KP=_pow2(K), XD=XD, BX=_pow2(XD), BC=self.BC, CH=self.CH, NCH=self.NCH,
                    BNCH=_pow2(self.NCH), NGI=D // g_in, GI=g_in, NGX=E // g_x, GX=g_x, SSM_AQ=aq["ssm"], FIRST=(i == 0),
                    FROM_ARGMAX=from_argmax, LDW=ldw, INTERP=interpreted(), BD=_pow2(D), NIBH=bool(b.in_nibh),
                    PDL=pdl, num_warps=b.warps_in, launch_pdl=pdl,
                )
            elif "in" in parts:
                q_in_kernel[(E // self.BC,)](
                    self.tok, self.amax, self.emb, self.emb_s, self.h, L["norm_w"], L["w_in"], L["s_in"], L["conv_w"],
                    L["conv_b"], self.conv[i], L["w_xT"], L["s_x"], L["acts"], self.xc, self.zg, self.xsum[i],
                    self.eps, self.V,
                    D=D, E=E, K=K, KP=_pow2(K), XD=XD, BX=_pow2(XD), BC=self.BC, CH=self.CH, NCH=self.NCH,
                    BNCH=_pow2(self.NCH), NGI=D // g_in, GI=g_in, NGX=E // g_x, GX=g_x, WB=self.wbits,
                    IN_AQ=aq["in"], SSM_AQ=aq["ssm"], FIRST=(i == 0), FROM_ARGMAX=from_argmax, LDW=ldw, INTERP=interpreted(),
                    L3=b.q_chunked, BDW=_pow2(ldw), EVW=evw, PDL=pdl, PRE=not aq["in"],
                    num_warps=b.warps_in, launch_pdl=pdl,
                )
            if "ssm" not in parts:
                continue
            common = dict(HPF_L2=self._head_prefetch_args(i)[1] > 0, NT=32 * b.warps_ssm,
                          D=D, E=E, N=N, BN=_pow2(N), R=R, BR=_pow2(R), XD=XD, BX=_pow2(XD), NGD=R // g_dt, GD=g_dt,
                          NGO=E // g_o, GO=g_o, WB=self.wbits, DT_AQ=aq["dt"], OUT_AQ=aq["out"], LDW=ldo, INTERP=interpreted(), EVW=evw,
                          PDL=pdl, launch_pdl=pdl)
            hpf = self._head_prefetch_args(i)
            if self.rotate:
                q_ssm_kernel[(E // self.BEB, 1)](
                    self.h, self.amax, self.xc, self.zg, self.xsum[i], self.xsum[i], L["w_dt"], L["s_dt"], L["dt_b"],
                    L["A"], L["Dskip"], self.ssm[i], self.ssm[i], self.ssm[i], self.ssm[i], L["acts"], L["w_oT"],
                    L["s_o"], self.ppart, *hpf, BE=self.BEB, BO=self.BO, ROT=True, P2=self.hm_p, RESET_AMAX=(i == 0),
                    ZERO_PREV=False, COPY_BLK=1, **common, num_warps=b.warps_ssm,
                )
                q_rot_out_kernel[(E // self.BE, triton_cdiv(D, self.BO))](
                    self.h, self.ppart, self.hm, L["acts"], L["w_oT"], L["s_o"], self.xsum[i],
                    D=D, E=E, XD=XD, BX=_pow2(XD), BE=self.BE, BO=self.BO, P2=self.hm_p, M=self.hm_m,
                    NPP=E // self.BEB, BNPP=_pow2(E // self.BEB), PER_ROW=self.hm_p // self.BEB, NGO=E // g_o,
                    GO=g_o, WB=self.wbits, OUT_AQ=aq["out"], LDW=ldo, INTERP=interpreted(), EVW=evw, PDL=pdl,
                    launch_pdl=pdl, num_warps=b.warps_ssm,
                )
            else:
                grid = (E // self.BE, triton_cdiv(D, self.BO))
                q_ssm_kernel[grid](
                    self.h, self.amax, self.xc, self.zg, self.xsum[i], self.xsum[max(i - 1, 0)], L["w_dt"], L["s_dt"],
                    L["dt_b"], L["A"], L["Dskip"], self.ssm[i], self.ssm_side[i % 2], self.ssm_side[(i - 1) % 2],
                    self.ssm[max(i - 1, 0)], L["acts"], L["w_oT"], L["s_o"], self.xsum[i], *hpf,
                    BE=self.BE, BO=self.BO, ROT=False, P2=1, RESET_AMAX=(i == 0), ZERO_PREV=(i > 0),
                    COPY_BLK=_pow2(triton_cdiv(E * N, grid[0] * grid[1])), **common, num_warps=b.warps_ssm,
                )
        if "head" in parts and self.head4 and b.head_chunks > 0:
            ngh = self.head_groups
            gpi = _pow2_divisor(ngh, b.head_chunks)
            loop = max(1, b.head_loop)
            nprog = triton_cdiv(triton_cdiv(self.V, b.head_rows), loop)
            q_head4_kernel[(nprog,)](
                self.h, self.norm_f, self.head_w, self.head_s, self.logits, self.amax, self.eps, self.V,
                self.xsum[-1], self.ssm_side[(nl - 1) % 2], self.ssm[-1],
                D=D, BV=b.head_rows, BD=_pow2(D), XZ=0 if self.rotate else XD, BXZ=_pow2(XD),
                COPY_N=0 if self.rotate else E * N, COPY_BLK=_pow2(triton_cdiv(E * N, nprog)), NGH=ngh, GH=D // ngh,
                LOOP=loop, GPI=gpi, STAGES=max(1, b.head_stages),
                PF=bool(b.head_prefetch) and D % 32 == 0 and b.head_rows % 4 == 0, NT=32 * b.warps_head,
                INTERP=interpreted(), PDL=pdl, num_warps=b.warps_head, launch_pdl=pdl,
            )
        elif "head" in parts:
            loop = max(1, b.head_loop) if self.head4 else 1  # row blocks per program (4-bit head)
            nprog = triton_cdiv(triton_cdiv(self.V, b.head_rows), loop)
            q_head_kernel[(nprog,)](
                self.h, self.norm_f, self.head_w, self.head_s, self.logits, self.amax, self.eps, self.V,
                self.xsum[-1], self.ssm_side[(nl - 1) % 2], self.ssm[-1],
                D=D, BV=b.head_rows, BD=_pow2(D), XZ=0 if self.rotate else XD, BXZ=_pow2(XD),
                COPY_N=0 if self.rotate else E * N, COPY_BLK=_pow2(triton_cdiv(E * N, nprog)), EVH="evict_first" if b.q_l2 else "",
                NGH=self.head_groups, GH=D // self.head_groups, ABLK=self.head_block, INTERP=interpreted(),
                HB4=self.head4, BNG=_pow2(self.head_groups), LOOP=loop,
                HPF=bool(b.head_prefetch) and loop > 1 and D % 32 == 0 and b.head_rows % 4 == 0, NT=32 * b.warps_head,
                PDL=pdl, num_warps=b.warps_head, launch_pdl=pdl,
            )

    def _head_prefetch_args(self, i: int) -> tuple:
        """(table, table bytes, scales, scale bytes) that layer i's SSM kernel asks L2 for: with
        ``Blocks.head_l2_layers`` = n > 0, each of the last n layers takes 1/n of the head's table and
        of its scales (256-byte aligned shares); other layers, and the interpreter, prefetch nothing."""
        n = min(self.blocks.head_l2_layers, len(self.layers))
        w = self.head_w.reshape(-1).view(self.torch.uint8)
        sc = self.head_s.reshape(-1).view(self.torch.uint8)
        k = i - (len(self.layers) - n)
        if n <= 0 or k < 0 or interpreted():
            return w, 0, sc, 0

        def share(t):
            size = -(-t.numel() // (n * 256)) * 256
            start = min(k * size, t.numel())
            nbytes = max(0, min(size, t.numel() - start)) // 16 * 16
            return (t[start:] if nbytes else t), nbytes

        return (*share(w), *share(sc))

    def _in4_cpi(self) -> int:
        """Chunks of CH columns per iteration of the looping 4-bit in_proj kernel (a divisor of NCH)."""
        return _pow2_divisor(self.NCH, max(1, self.blocks.in_chunks))

    def _in4_rows(self) -> bool:
        """in_proj through ``q_in4r_kernel`` (``Blocks.in_rows``): 4-bit weights, float activations, the
        whole-row design (not the looping ``in_chunks`` kernel)."""
        return bool(self.blocks.in_rows) and self.blocks.in_chunks <= 0 and self.wbits == 4 and not self.aq["in"]

    def _in4_loop(self) -> bool:
        """The looping 4-bit in_proj kernel (``Blocks.in_chunks`` > 0): 4-bit weights, float activations."""
        return self.blocks.in_chunks > 0 and self.wbits == 4 and not self.aq["in"]

    def _persistent(self) -> bool:
        return False


__all__ = ["QuantFusedMambaStep", "int8_embedding", "interpreted", "pack_int4_halves", "unpack_int4_halves"]
