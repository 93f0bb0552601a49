"""A fused CUDA runtime for the Mamba-1 decode step (batch 1): Triton kernels, one CUDA graph.

    rt = FusedMambaStep(model)                  # an edgeseq ``Mamba`` (any size), weights -> GPU
    logits = rt.step(token)                     # [vocab] fp32, the state kept on the device
    rt.next_token()                             # arg-max of the last logits, computed in the head kernel

The step is 2 kernels per layer + 1 for the head (``kernels.py`` says what each fuses), captured
once into a CUDA graph and replayed. Weights are bf16 by default (``weights="int8"`` or ``"int4"``:
weight-only, per-row / per-group scales, dequantized inside the GEMVs); activations, state and
every accumulation are fp32. The state lives in this object (``state_dict()`` / ``load_state()``
convert to and from the model's named state).

Triton is imported here, never by ``import edgeseq`` or ``import targets``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from edgeseq.errors import EdgeseqError, InputError


def interpreted() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``): the kernels run on CPU tensors, slowly
    (used by the tests on machines without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """True when Triton is importable and a CUDA device (or Triton's interpreter) is there."""
    try:
        import torch

        if not (torch.cuda.is_available() or interpreted()):
            return False
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _divisor_block(total: int, want: int) -> int:
    """The largest power of two <= want that divides total (the kernels need exact blocks)."""
    b = _pow2(want)
    while b > 1 and (total % b or b > want):
        b //= 2
    return b


@dataclass
class Blocks:
    """Launch shapes (the defaults: the fastest of a sweep on an H200 at 24 x 768, see
    benchmarks/decode_gpu.json; any powers of two work)."""

    in_channels: int = 4  # channels (x and z rows) per program of the in_proj kernel
    ssm_channels: int = 64  # channels per program of the SSM/out_proj kernel
    ssm_cols: int = 128  # > 0: the 2-D SSM/out_proj kernel, this many residual columns per program
    head_rows: int = 16  # vocabulary rows per program of the head
    warps_in: int = 8
    warps_ssm: int = 2
    warps_head: int = 4
    prefetch_ahead: int = 0  # kernels whose weights each kernel prefetches into L2 (0: none; not faster)
    # programmatic dependent launch (Hopper+): each kernel is launched while the one before it runs,
    # loads its weights, then waits (gdc_wait) for that kernel's outputs; 253 -> 200 us on an H200
    pdl: bool = True
    # all layers in one launch with grid barriers: correct, slower so far (770 us at 96 programs); only
    # used when d_inner / in_channels programs fit one per multiprocessor, else the per-layer kernels run
    persistent: bool = False
    fence: bool = False  # the persistent kernel's barrier: every thread fences (on top of bar.sync + release)
    # recipe-quantized runtime (qmamba): in_proj rows as [chunks, CH] tiles with one scale per chunk
    # (True), or flat rows with a scale per element (False)
    q_chunked: bool = True
    # recipe-quantized runtime: layer weights loaded with L2 evict_last, the head's table evict_first, so
    # that the (4-bit: ~45 MB) layer weights can stay in the 60 MB L2 from one step to the next
    q_l2: bool = True
    # recipe-quantized runtime's 4-bit head (head_bits 4): row blocks of head_rows each program takes in
    # turn (1: one block a program, thousands of short programs)
    head_loop: int = 1
    # recipe-quantized runtime's looping 4-bit head: each program's row blocks contiguous and asked
    # into L2 (sm_90 bulk prefetch) before the program waits for the last layer
    head_prefetch: bool = False
    # recipe-quantized runtime, 4-bit weights with float activations: > 0 runs in_proj as a loop over
    # this many CH-column chunks at a time (software pipelined over in_stages, the program's rows asked
    # into L2 before the wait when in_prefetch), not one [channels, d_model] register tile
    in_chunks: int = 0
    # recipe-quantized runtime's 4-bit head: > 0 reads each row block this many scale groups at a time in
    # one flat pipelined loop (head_stages deep; head_loop blocks of head_rows rows a program)
    head_chunks: int = 0
    head_stages: int = 3
    # recipe-quantized runtime: the SSM kernels of the last head_l2_layers layers ask L2 (sm_90 bulk
    # prefetch, before their PDL wait) for the head's table and scales, 1/head_l2_layers each, while
    # the layer chain leaves HBM mostly idle; the head then reads L2 (0: off)
    head_l2_layers: int = 0
    in_stages: int = 3
    in_prefetch: bool = True
    # recipe-quantized runtime, 4-bit weights with float activations (whole-row design): in_proj through
    # q_in4r_kernel, a 2-D tile of (channel, chunk) rows reduced along each row's bytes, instead of
    # q_in_kernel's [channels, chunks, columns] tile; in_nibh: its high nibble converted in place
    # (16·(q − 8) against the norm weight / 16, no shift)
    in_rows: bool = False
    in_nibh: bool = False


# the launch shapes of the PDL-less design measured before (benchmarks/decode_gpu.json keeps its rows)
NO_PDL = Blocks(ssm_channels=32, warps_head=8, pdl=False)
# the recipe-quantized runtime's defaults (fastest with PDL in the H200 sweep, decode_gpu_parts.json):
# the rotated recipes' 1-D SSM kernel wants 32-channel blocks
QUANT_BLOCKS = Blocks(in_channels=8, warps_in=4, ssm_channels=32, warps_head=4)
# 4-bit recipes (W4A16): the same, with the 4-bit head taking 12 row blocks a program and no L2 eviction
# hints (each ~1 us off the step in the H200 sweeps of benchmarks/decode_gpu_w4_sweeps.json)
# and (benchmarks/decode_gpu_w4rows*.json) the rows in_proj kernel with the nibble read in place, and 1-warp SSM
# programs, which fit on a multiprocessor beside that kernel's 220-register programs (so they load their
# weights before in_proj ends)
QUANT4_BLOCKS = Blocks(in_channels=8, warps_in=4, ssm_channels=32, warps_head=4, head_loop=12, q_l2=False, head_l2_layers=4,
                       in_rows=True, in_nibh=True, warps_ssm=1)
# 4-bit recipes at d_model > 1024: 64-channel SSM/out_proj blocks (at 48 x 2048 on the H200 the 32-channel
# grid, 2,048 programs a layer, cost 767 us of SSM kernels a step against 577 with 64; at 768 wide, 64
# channels were slower: benchmarks/decode_gpu_w4_loop*.json)
QUANT4_WIDE_BLOCKS = Blocks(in_channels=8, warps_in=4, ssm_channels=64, warps_head=4, head_loop=12, q_l2=False)


# rotated 4-bit recipes (3 kernels a layer): the rows in_proj kernel, the SSM programs as before (2 warps;
# 1 warp not measured with the rotation)
QUANT4_ROT_BLOCKS = Blocks(**{**QUANT4_BLOCKS.__dict__, "warps_ssm": 2})


def quant_blocks(wbits: int, d_model: int, rotate: bool = False) -> Blocks:
    """The recipe runtime's default launch shapes for a weight width and model width."""
    if wbits == 4:
        if d_model > 1024:
            return QUANT4_WIDE_BLOCKS
        return QUANT4_ROT_BLOCKS if rotate else QUANT4_BLOCKS
    return QUANT_BLOCKS


def quantize_rows_int8(w):
    """Symmetric int8 per row (the GEMV's output row): w ~ q * s[:, None]."""
    import torch

    s = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.clamp(torch.round(w / s[:, None]), -127, 127).to(torch.int8)
    return q, s.float()


def quantize_groups_int4(w, group: int):
    """Symmetric int4 with one scale per `group` consecutive columns, two values per byte (low nibble
    first), stored with an offset of 8: w ~ (nibble - 8) * s."""
    import torch

    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group)
    s = g.abs().amax(dim=2).clamp(min=1e-12) / 7.0
    q = torch.clamp(torch.round(g / s[:, :, None]), -8, 7).reshape(rows, cols).to(torch.int32) + 8
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    return packed, s.float()


def dequantize_int4(packed, s, group: int):
    import torch

    lo = (packed & 15).to(torch.int32) - 8
    hi = (packed >> 4).to(torch.int32) - 8
    q = torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1).float()
    return q * s.repeat_interleave(group, dim=1)


class FusedMambaStep:
    """The fused decode step of one ``edgeseq.models.mamba.Mamba`` on a CUDA device."""

    name = "triton-fused"

    def __init__(self, model: Any, device: str = "cuda", weights: str = "bf16", blocks: Blocks | None = None,
                 group: int = 128, cuda_graph: bool = True):
        import torch

        if not available():
            raise EdgeseqError("the fused GPU runtime needs a CUDA device and Triton")
        cfg = model.config
        if getattr(cfg, "family", None) != "mamba":
            raise InputError(f"the fused GPU runtime runs Mamba models, not {getattr(cfg, 'family', '?')!r}")
        if cfg.bias:
            raise InputError("the fused GPU runtime has no in_proj/out_proj bias (Mamba checkpoints have none)")
        if not cfg.tie_embeddings:
            raise InputError("the fused GPU runtime expects a tied embedding / LM head")
        if weights not in ("bf16", "int8", "int4"):
            raise InputError(f"weights must be bf16, int8 or int4, not {weights!r}")
        self.torch, self.cfg, self.device, self.weights = torch, cfg, torch.device(device), weights
        self.quant = {"bf16": 0, "int8": 8, "int4": 4}[weights]
        self.blocks = blocks or Blocks()
        D, E, N, R, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.rank, cfg.d_conv
        self.group = group if weights == "int4" else 1
        if D > 2048:
            raise InputError(f"the fused GPU runtime holds a whole d_model row in registers: d_model <= 2048, not {D}")
        if weights == "int4" and (D % group or D % 2):
            raise InputError(f"int4 groups of {group} need d_model divisible by it (d_model {D})")
        self.D, self.E, self.N, self.R, self.K, self.V = D, E, N, R, K, cfg.vocab_size
        self.XD = R + 2 * N
        self.eps = float(model.layers[0].norm.eps)
        dev, f32, bf16 = self.device, torch.float32, torch.bfloat16
        self.layers = []
        self.bytes_per_step = 0
        with torch.no_grad():
            for block in model.layers:
                mx = block.mixer
                w_in = mx.in_proj.weight.detach().float()
                w_o = mx.out_proj.weight.detach().float()  # [D, E]
                layer = {
                    "norm_w": block.norm.weight.detach().float().to(dev).contiguous(),
                    "conv_w": mx.conv1d.weight.detach().float()[:, 0, :].to(dev).contiguous(),
                    "conv_b": (mx.conv1d.bias.detach().float() if mx.conv1d.bias is not None
                               else torch.zeros(E)).to(dev).contiguous(),
                    "w_xT": mx.x_proj.weight.detach().float().t().contiguous().to(dev, bf16),
                    "w_dt": mx.dt_proj.weight.detach().float().to(dev, bf16).contiguous(),
                    "dt_b": mx.dt_proj.bias.detach().float().to(dev).contiguous(),
                    "A": (-torch.exp(mx.A_log.detach().float())).to(dev).contiguous(),
                    "Dskip": mx.D.detach().float().to(dev).contiguous(),
                }
                layer.update(self._pack(w_in, "w_in", transpose=False))
                layer.update(self._pack(w_o, "w_oT", transpose=True))
                self.layers.append(layer)
            self.norm_f = model.norm_f.weight.detach().float().to(dev).contiguous()
            self.emb = model.embedding.weight.detach().to(dev, bf16).contiguous()
        for layer in self.layers:
            self.bytes_per_step += sum(t.numel() * t.element_size() for t in layer.values())
        self.weight_bytes = self.bytes_per_step - 2 * 4 * len(self.layers) * E * (K - 1 + N)
        self._build_stream()
        self.bytes_per_step += self.emb.numel() * 2 + self.norm_f.numel() * 4
        self.bytes_per_step += 2 * 4 * len(self.layers) * E * (K - 1 + N)  # state read + written
        # device buffers (the CUDA graph bakes their addresses in)
        self.tok = torch.zeros(1, dtype=torch.int64, device=dev)
        self.h = torch.zeros(D, dtype=f32, device=dev)
        self.xc = torch.zeros(E, dtype=f32, device=dev)
        self.zg = torch.zeros(E, dtype=f32, device=dev)
        self.logits = torch.zeros(self.V, dtype=f32, device=dev)
        from targets.gpu.kernels import AMAX_RESET_VALUE

        self.amax = torch.full((1,), AMAX_RESET_VALUE, dtype=torch.int64, device=dev)
        self.conv_all = torch.zeros(len(self.layers), E, K - 1, dtype=f32, device=dev)
        self.ssm_all = torch.zeros(len(self.layers), E, N, dtype=f32, device=dev)
        self.conv = list(self.conv_all)  # per-layer views
        self.ssm = list(self.ssm_all)
        self.bar = torch.zeros(1, dtype=torch.int32, device=dev)
        self.xsum = torch.zeros(len(self.layers), self.XD, dtype=f32, device=dev)  # x_proj sums (2-D SSM kernel)
        self.ssm_side = torch.zeros(2, E, N, dtype=f32, device=dev)  # its new states, by layer parity
        # the persistent kernel reads each weight kind stacked over layers
        self.stacked = {name: torch.stack([L[name] for L in self.layers]).contiguous()
                        for name in self.layers[0]}
        self.use_graph = cuda_graph and self.device.type == "cuda"
        self.set_blocks(self.blocks)

    def set_blocks(self, blocks: Blocks) -> None:
        """Change the launch shapes (the captured graphs are dropped)."""
        self.blocks = blocks
        # a program holds whole d_model rows in registers: cap the rows per program
        self.BC = _divisor_block(self.E, min(blocks.in_channels, max(1, 16384 // _pow2(self.D))))
        self.BE = _divisor_block(self.E, min(blocks.ssm_channels, max(1, 32768 // _pow2(self.D))))
        self.BO = min(_pow2(blocks.ssm_cols), _pow2(self.D)) if blocks.ssm_cols else 0
        if self.BO:
            self.BE = _divisor_block(self.E, min(blocks.ssm_channels, max(1, 32768 // self.BO)))
        self.P1 = self.E // self.BC
        self.xpart = self.torch.zeros(self.P1, self.XD, dtype=self.torch.float32, device=self.device)
        self._graphs: dict[Any, Any] = {}

    # -- weights ---------------------------------------------------------------------------------

    KERNEL_WEIGHTS = (("w_in", "w_in_s", "w_xT"), ("w_dt", "w_oT", "w_oT_s"))

    def _build_stream(self) -> None:
        """Move every layer's GEMV weights into one byte buffer, in the order the kernels read them
        (256-byte aligned): kernel j's weights are bytes [kernel_off[j], kernel_off[j + 1])."""
        torch = self.torch
        entries, total = [], 0
        self.kernel_off = []
        for layer in self.layers:
            for names in self.KERNEL_WEIGHTS:
                self.kernel_off.append(total)
                for name in names:
                    t = layer[name]
                    entries.append((layer, name, total))
                    total += -(-t.numel() * t.element_size() // 256) * 256
        self.kernel_off.append(total)
        self.stream = torch.empty(total, dtype=torch.uint8, device=self.device)
        for layer, name, off in entries:
            t = layer[name]
            n = t.numel() * t.element_size()
            view = self.stream[off:off + n].view(t.dtype).view(t.shape)
            view.copy_(t)
            layer[name] = view

    def _prefetch_args(self, j: int) -> tuple:
        ahead = self.blocks.prefetch_ahead
        off, last = self.kernel_off, len(self.kernel_off) - 1
        start = off[0] if j == 0 else off[min(j + 1, last)]
        end = off[min(j + 1 + ahead, last)] if ahead > 0 else start
        nbytes = max(0, end - start)
        return self.stream[min(start, off[last] - 16):], nbytes

    def _pack(self, w, name: str, transpose: bool) -> dict:
        """in_proj is used as stored ([2E, D], rows = outputs); out_proj transposed ([E, D]) so
        that a block of input channels is contiguous. Quantized: int8 per output row, int4 per group
        of `group` consecutive stored columns."""
        torch, dev = self.torch, self.device
        if self.quant == 0:
            stored = (w.t() if transpose else w).contiguous()
            return {name: stored.to(dev, torch.bfloat16), name + "_s": torch.zeros(1, device=dev)}
        if self.quant == 8:
            q, s = quantize_rows_int8(w)  # per output row of the original layout
            stored = (q.t() if transpose else q).contiguous()
            return {name: stored.to(dev), name + "_s": s.to(dev)}
        stored = (w.t() if transpose else w).contiguous()
        packed, s = quantize_groups_int4(stored, self.group)
        return {name: packed.to(dev), name + "_s": s.to(dev).contiguous()}

    def dequantized_model(self, model: Any) -> Any:
        """A copy of `model` whose weights are exactly what the kernels compute with (bf16-rounded,
        or the dequantized int8/int4 values), in fp32: the reference of the tests."""
        import copy

        torch = self.torch
        ref = copy.deepcopy(model).float().cpu()
        bf = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
        with torch.no_grad():
            ref.embedding.weight.copy_(bf(ref.embedding.weight))
            for block, layer in zip(ref.layers, self.layers):
                mx = block.mixer
                mx.x_proj.weight.copy_(bf(mx.x_proj.weight))
                mx.dt_proj.weight.copy_(bf(mx.dt_proj.weight))
                for lin, name, transpose in ((mx.in_proj, "w_in", False), (mx.out_proj, "w_oT", True)):
                    stored, s = layer[name].cpu(), layer[name + "_s"].cpu()
                    if self.quant == 0:
                        w = stored.float()
                    elif self.quant == 8:
                        q = stored.float()
                        w = (q.t() if transpose else q) * s[:, None]
                        lin.weight.copy_(w)
                        continue
                    else:
                        w = dequantize_int4(stored, s, self.group)
                    lin.weight.copy_(w.t() if transpose else w)
        return ref

    # -- state -----------------------------------------------------------------------------------

    def reset(self) -> None:
        for t in (*self.conv, *self.ssm):
            t.zero_()

    def load_state(self, state: dict) -> None:
        """Copy a model's named state (conv_i [1, E, K-1], ssm_i [1, E, N]) into the device state."""
        for i in range(len(self.layers)):
            self.conv[i].copy_(state[f"conv_{i}"].reshape(self.E, self.K - 1))
            self.ssm[i].copy_(state[f"ssm_{i}"].reshape(self.E, self.N))

    def state_dict(self) -> dict:
        out = {}
        for i in range(len(self.layers)):
            out[f"conv_{i}"] = self.conv[i].clone().reshape(1, self.E, self.K - 1)
            out[f"ssm_{i}"] = self.ssm[i].clone().reshape(1, self.E, self.N)
        return out

    # -- the step --------------------------------------------------------------------------------

    def _launch(self, from_argmax: bool, parts: tuple = ("in", "ssm", "head")) -> None:
        from targets.gpu.kernels import lm_head_kernel, mamba_in_kernel, mamba_ssm_out2_kernel, mamba_ssm_out_kernel

        b, D, E, N, R, K = self.blocks, self.D, self.E, self.N, self.R, self.K
        ldw = D if self.quant != 4 else D // 2
        bd = _pow2(D)
        pf = b.prefetch_ahead > 0 and not interpreted()
        pdl = bool(b.pdl) and not interpreted() and self.torch.cuda.get_device_capability(self.device)[0] >= 9
        if self._persistent():
            if "in" in parts or "ssm" in parts:
                from targets.gpu.kernels import mamba_layers_kernel

                S = self.stacked
                mamba_layers_kernel[(self.P1,)](
                    self.tok, self.amax, self.emb, self.h, self.bar, self.xpart, self.eps, self.V,
                    S["norm_w"], S["w_in"], S["w_in_s"], S["conv_w"], S["conv_b"], self.conv_all, S["w_xT"],
                    S["w_dt"], S["dt_b"], S["A"], S["Dskip"], self.ssm_all, S["w_oT"], S["w_oT_s"],
                    NL=len(self.layers), D=D, E=E, K=K, KP=_pow2(K), XD=self.XD, BX=_pow2(self.XD), N=N, BN=_pow2(N),
                    R=R, BR=_pow2(R), BC=self.BC, BD=bd, P=self.P1, BP=_pow2(self.P1), FROM_ARGMAX=from_argmax,
                    QUANT=self.quant, GROUP=self.group, LDW=ldw, SW=0, SS_IN=S["w_in_s"][0].numel(),
                    SS_O=S["w_oT_s"][0].numel(), FENCE=b.fence, num_warps=b.warps_in,
                )
        for i, L in enumerate(self.layers if not self._persistent() else []):
            if "in" in parts:
                mamba_in_kernel[(E // self.BC,)](
                    self.tok, self.amax, self.emb, self.h, L["norm_w"], L["w_in"], L["w_in_s"], L["conv_w"],
                    L["conv_b"], self.conv[i], L["w_xT"], self.xc, self.zg, self.xsum[i] if self.BO else self.xpart,
                    self.eps, self.V,
                    *self._prefetch_args(2 * i),
                    D=D, E=E, K=K, KP=_pow2(K), XD=self.XD, BX=_pow2(self.XD), BC=self.BC, BD=bd,
                    FIRST=(i == 0), FROM_ARGMAX=from_argmax, QUANT=self.quant, GROUP=self.group, LDW=ldw,
                    PREFETCH=pf, NT=32 * b.warps_in, PDL=pdl, XATOMIC=bool(self.BO),
                    num_warps=b.warps_in, launch_pdl=pdl,
                )
            if "ssm" in parts and self.BO:
                mamba_ssm_out2_kernel[(E // self.BE, triton_cdiv(D, self.BO))](
                    self.h, self.amax, self.xc, self.zg, self.xsum[i], self.xsum[max(i - 1, 0)], L["w_dt"], L["dt_b"],
                    L["A"], L["Dskip"], self.ssm[i], L["w_oT"], L["w_oT_s"], self.ssm_side[i % 2],
                    self.ssm_side[(i - 1) % 2], self.ssm[max(i - 1, 0)],
                    D=D, E=E, N=N, BN=_pow2(N), R=R, BR=_pow2(R), XD=self.XD, BX=_pow2(self.XD), BE=self.BE, BO=self.BO,
                    RESET_AMAX=(i == 0), ZERO_PREV=(i > 0), QUANT=self.quant, GROUP=self.group, LDW=ldw,
                    COPY_BLK=_pow2(triton_cdiv(E * N, (E // self.BE) * triton_cdiv(D, self.BO))), PDL=pdl,
                    num_warps=b.warps_ssm, launch_pdl=pdl,
                )
            elif "ssm" in parts:
                mamba_ssm_out_kernel[(E // self.BE,)](
                    self.h, self.amax, self.xc, self.zg, self.xpart, L["w_dt"], L["dt_b"], L["A"], L["Dskip"],
                    self.ssm[i], L["w_oT"], L["w_oT_s"], *self._prefetch_args(2 * i + 1),
                    D=D, E=E, N=N, BN=_pow2(N), R=R, BR=_pow2(R), XD=self.XD, P1=self.P1, BP=_pow2(self.P1),
                    BE=self.BE, BD=bd, RESET_AMAX=(i == 0), QUANT=self.quant, GROUP=self.group, LDW=ldw,
                    PREFETCH=pf, NT=32 * b.warps_ssm, PDL=pdl,
                    num_warps=b.warps_ssm, launch_pdl=pdl,
                )
        if "head" in parts:
            lm_head_kernel[(triton_cdiv(self.V, b.head_rows),)](
                self.h, self.norm_f, self.emb, self.logits, self.amax, self.eps, self.V, self.bar,
                D=D, BV=b.head_rows, BD=bd, WRITE_LOGITS=True, PREFETCH=False, NT=32 * b.warps_head,
                PDL=pdl, RESET_BAR=self._persistent(), xzero_ptr=self.xsum[-1],
                XZ=self.XD if (self.BO and not self._persistent()) else 0, BXZ=_pow2(self.XD),
                last_out_ptr=self.ssm_side[(len(self.layers) - 1) % 2], last_ssm_ptr=self.ssm[-1],
                COPY_N=E * N if (self.BO and not self._persistent()) else 0,
                COPY_BLK=_pow2(triton_cdiv(E * N, triton_cdiv(self.V, b.head_rows))),
                num_warps=b.warps_head, launch_pdl=pdl,
            )

    def _persistent(self) -> bool:
        """The one-launch layers kernel: CUDA only (its grid barrier needs every program resident at
        once, so at most one program per multiprocessor), not under the interpreter."""
        if not self.blocks.persistent or interpreted() or self.device.type != "cuda":
            return False
        return self.P1 <= self.torch.cuda.get_device_properties(self.device).multi_processor_count

    def graph(self, from_argmax: bool = False, parts: tuple = ("in", "ssm", "head")) -> Any:
        """The CUDA graph of one step (or of some of its kernels, for timing them apart); captured
        on first use, after one direct launch that compiles the kernels (the state is restored)."""
        torch = self.torch
        key = (from_argmax, tuple(parts))
        if key not in self._graphs:
            saved = [t.clone() for t in (*self.conv, *self.ssm, self.h, self.amax, self.bar, self.xsum)]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._launch(from_argmax, parts)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._launch(from_argmax, parts)
            for t, s in zip((*self.conv, *self.ssm, self.h, self.amax, self.bar, self.xsum), saved):
                t.copy_(s)
            self._graphs[key] = graph
        return self._graphs[key]

    def _run(self, from_argmax: bool) -> None:
        if self.use_graph:
            self.graph(from_argmax).replay()
        else:
            self._launch(from_argmax)

    def step(self, token: Any) -> Any:
        """One token (int or a 1-element tensor) -> logits [vocab] fp32 (a view of the runtime's
        buffer: clone it to keep it past the next step)."""
        torch = self.torch
        if isinstance(token, torch.Tensor):
            self.tok.copy_(token.reshape(1))
        else:
            self.tok.fill_(int(token))
        self._run(from_argmax=False)
        return self.logits

    def step_greedy(self) -> None:
        """One step fed by the previous step's arg-max, without leaving the device."""
        self._run(from_argmax=True)

    def next_token(self) -> Any:
        """The arg-max of the last step's logits (an int64 tensor of one element, on the device)."""
        key = self.amax
        return self.V - 1 - (key - ((key >> 32) << 32))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["NO_PDL", "QUANT4_BLOCKS", "QUANT4_ROT_BLOCKS", "QUANT4_WIDE_BLOCKS", "QUANT_BLOCKS", "Blocks", "FusedMambaStep", "available", "dequantize_int4", "interpreted", "quant_blocks", "quantize_groups_int4",
           "quantize_rows_int8"]
