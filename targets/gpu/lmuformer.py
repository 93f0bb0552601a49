"""A fused CUDA runtime for the LMUFormer and Spiking LMUFormer frame step (batch 1): one Triton kernel.

    rt = FusedLMUFormerStep(model)              # an edgeseq LMUFormer or SpikingLMUFormer (eval mode)
    scores = rt.step(frame)                     # [n_classes] fp32 per-frame scores; the state on the device

The whole step — causal conv embedding, every block's LMU token mixer and channel mixer, the head —
is one kernel of one program (``lmuformer_kernels.py`` says why and how), replayed as a CUDA graph.
GEMV weights bf16 by default (``weights="fp32"``: as trained); the Legendre matrices, BatchNorm
affines (eval-mode running statistics), biases, activations, memories, membranes and every sum fp32.
``state_dict()`` / ``load_state()`` convert to and from the model's named state.

Triton is imported here, never by ``import edgeseq`` or ``import targets``.
"""

from __future__ import annotations

from typing import Any

from edgeseq.errors import EdgeseqError, InputError
from targets.gpu.mamba import _pow2, available

FAMILIES = ("lmuformer", "spiking-lmuformer")
# per-block entries of the parameter offset table (the kernel indexes them by these positions)
BLOCK_PARAMS = ("W_u", "b_u", "W_h", "b_h", "proj_W", "proj_b", "proj_bn_s", "proj_bn_t", "fc1_W", "fc1_b",
                "fc1_bn_s", "fc1_bn_t", "fc2_W", "fc2_b", "fc2_bn_s", "fc2_bn_t", "A", "B", "prev_bn_s", "prev_bn_t",
                "bn_u_s", "bn_u_t", "bn_m_s", "bn_m_t", "bn_h_s", "bn_h_t")
BLOCK_STATE = ("memory", "prev_lif", "u_lif", "m_lif", "h_lif", "fc1_lif", "fc2_lif")


class FusedLMUFormerStep:
    """The fused frame step of one edgeseq ``LMUFormer`` / ``SpikingLMUFormer`` on a CUDA device."""

    name = "triton-fused"

    def __init__(self, model: Any, device: str = "cuda", weights: str = "bf16", cuda_graph: bool = True,
                 num_warps: int | None = None, tile: int | None = None):
        import torch

        from edgeseq.models.lmuformer import batchnorm_affine

        if not available():
            raise EdgeseqError("the fused GPU runtime needs a CUDA device and Triton")
        cfg = model.config
        if getattr(cfg, "family", None) not in FAMILIES:
            raise InputError(f"the fused LMUFormer runtime runs LMUFormer models, not {getattr(cfg, 'family', '?')!r}")
        if model.training:
            raise InputError("the fused LMUFormer runtime runs models in eval mode (BatchNorm from running statistics)")
        if weights not in ("bf16", "fp32"):
            raise InputError(f"weights must be bf16 or fp32, not {weights!r}")
        self.torch, self.cfg, self.device, self.weights = torch, cfg, torch.device(device), weights
        self.spiking = cfg.family == "spiking-lmuformer"
        self.F, self.DIM, self.ORDER, self.HID, self.NCLS = cfg.input_dim, cfg.dim, cfg.order, cfg.hidden, cfg.n_classes
        self.KS, self.NEMB, self.DEPTH = cfg.embed_kernel, cfg.embed_layers, cfg.depth
        self.DELAY = (self.KS - 1) // 2
        if max(self.KS * max(self.F, self.DIM), self.ORDER + self.DIM, self.HID) > 8192:
            raise InputError("the fused LMUFormer runtime holds a whole GEMV input row in registers: "
                             "embed_kernel x dim, memory + dim and the hidden width must stay <= 8192")
        # one program: its warps and the weight elements each GEMV loads per loop iteration (more bytes
        # in flight per round trip; a single multiprocessor streams the whole model)
        wide = max(self.KS * max(self.F, self.DIM), self.ORDER + self.DIM, self.HID) > 512
        self.num_warps = num_warps or (16 if wide else 8)
        self.tile = tile or (16384 if wide else 8192)
        wdt = torch.bfloat16 if weights == "bf16" else torch.float32
        w_parts, p_parts = [], []
        w_len = p_len = 0

        def put_w(t):  # a GEMV weight, row-major [out, in]
            nonlocal w_len
            t = t.detach().float().reshape(t.shape[0], -1)
            w_parts.append(t.reshape(-1))
            off, w_len = w_len, w_len + t.numel()
            return off

        def put_p(t):  # an fp32 vector or matrix
            nonlocal p_len
            t = t.detach().float().reshape(-1)
            p_parts.append(t)
            off, p_len = p_len, p_len + t.numel()
            return off

        def conv_w(conv):  # [Cout, Cin, K] -> [Cout, K * Cin], column j * Cin + c (the window is frames-major)
            return conv.weight.detach().permute(0, 2, 1).reshape(conv.out_channels, -1)

        def bn(mod, n):
            if mod is None:
                return put_p(torch.ones(n)), put_p(torch.zeros(n))
            s, t = batchnorm_affine(mod)
            return put_p(s), put_p(t)

        def bias(layer, n):
            return put_p(layer.bias if layer.bias is not None else torch.zeros(n))

        with torch.no_grad():
            emb = model.patch_embed
            convs, bns, conv_biases = [], [], []
            for i in range(self.NEMB):
                if self.spiking:
                    conv, bnm = emb._layer("proj_conv", i), emb._layer("proj_bn", i)
                else:
                    conv, bnm = emb.conv_layers[i][0], emb.conv_layers[i][3]
                convs.append(put_w(conv_w(conv)))
                bns.append(bn(bnm, self.DIM))
                conv_biases.append(bias(conv, self.DIM))  # none as published; fold_batchnorm adds them
            table = convs + [s for s, _ in bns] + [t for _, t in bns] + [put_w(conv_w(emb.rpe_conv))]
            table += [put_w(model.head.weight), bias(model.head, self.NCLS)]
            table += list(bn(model.head_bn, self.DIM) if self.spiking else bn(None, self.DIM))
            for blk in model.block:
                attn, mlp, lmu = blk.attn, blk.mlp, blk.attn.lmu
                e = {
                    "W_u": put_w(lmu.W_u.weight), "b_u": bias(lmu.W_u, 1),
                    "W_h": put_w(lmu.W_h.weight), "b_h": bias(lmu.W_h, self.DIM),
                    "proj_W": put_w(attn.proj_conv.weight), "proj_b": bias(attn.proj_conv, self.DIM),
                    "fc1_W": put_w(mlp.fc1_conv.weight), "fc1_b": bias(mlp.fc1_conv, self.HID),
                    "fc2_W": put_w(mlp.fc2_conv.weight), "fc2_b": bias(mlp.fc2_conv, self.DIM),
                    "A": put_p(lmu.A), "B": put_p(lmu.B),
                }
                e["proj_bn_s"], e["proj_bn_t"] = bn(attn.proj_bn, self.DIM)
                # ANN: BN after each 1x1 conv (hidden, then dim); spiking: BN in front of each (dim, then hidden)
                e["fc1_bn_s"], e["fc1_bn_t"] = bn(mlp.fc1_bn, self.DIM if self.spiking else self.HID)
                e["fc2_bn_s"], e["fc2_bn_t"] = bn(mlp.fc2_bn, self.HID if self.spiking else self.DIM)
                if self.spiking:
                    e["prev_bn_s"], e["prev_bn_t"] = bn(attn.prev_bn, self.DIM)
                    e["bn_u_s"], e["bn_u_t"] = bn(lmu.bn_u, 1)
                    e["bn_m_s"], e["bn_m_t"] = bn(lmu.bn_m, self.ORDER)
                    e["bn_h_s"], e["bn_h_t"] = bn(lmu.bn_h, self.DIM)
                else:
                    for n in ("prev_bn", "bn_u", "bn_m", "bn_h"):
                        e[n + "_s"] = e[n + "_t"] = 0
                table += [e[n] for n in BLOCK_PARAMS]
            table += conv_biases  # after the blocks: entry 3 * NEMB + 5 + 26 * depth + i
            if emb.rpe_conv.bias is not None:
                raise InputError("the fused LMUFormer runtime expects a bias-free positional convolution (as published)")
            self.w = torch.cat(w_parts).to(self.device, wdt).contiguous()
            self.p = torch.cat(p_parts).to(self.device).contiguous()
            self.o = torch.tensor(table, dtype=torch.int64, device=self.device)
        # state: conv windows [KS, Cin] (KS-1 kept inputs, then this frame's slot), the skip [DELAY, DIM],
        # embedding / head membranes, per block the memory and membranes
        sizes, self.state_names_at = [], {}
        for i in range(self.NEMB):
            sizes.append(self.KS * (self.F if i == 0 else self.DIM))
        sizes += [self.KS * self.DIM, max(1, self.DELAY) * self.DIM]
        sizes += [self.DIM] * self.NEMB + [self.DIM]
        for _ in range(self.DEPTH):
            sizes += [self.ORDER, self.DIM, 1, self.ORDER, self.DIM, self.DIM, self.HID]
        offs, total = [], 0
        for n in sizes:
            offs.append(total)
            total += -(-n // 4) * 4
        self.s_off = offs
        self.s = torch.zeros(total, dtype=torch.float32, device=self.device)
        self.so = torch.tensor(offs, dtype=torch.int64, device=self.device)
        self.BIG = _pow2(max(self.DIM, self.HID, self.ORDER, self.NCLS))
        self.scratch = torch.zeros(3 * self.BIG + _pow2(self.ORDER + self.DIM), dtype=torch.float32, device=self.device)
        self.x = torch.zeros(self.F, dtype=torch.float32, device=self.device)
        self.out = torch.zeros(self.NCLS, dtype=torch.float32, device=self.device)
        self.inv_tau = 1.0 / float(getattr(cfg, "tau", 2.0))
        self.thr = float(getattr(cfg, "threshold", 1.0))
        self.thr_mix = float(getattr(cfg, "mixer_threshold", 1.0))
        self.weight_bytes = self.w.numel() * self.w.element_size() + self.p.numel() * 4
        self.bytes_per_step = self.weight_bytes + 2 * self.s.numel() * 4
        self.spec = {s.name: tuple(s.shape) for s in model.state_spec()}
        self.use_graph = cuda_graph and self.device.type == "cuda"
        self._graph = None

    # -- reference ---------------------------------------------------------------------------------

    def dequantized_model(self, model: Any) -> Any:
        """A copy of `model` (fp32, CPU, eval) with the GEMV weights the kernel uses (bf16-rounded, or as
        they are with ``weights="fp32"``): the reference of the tests."""
        import copy

        torch = self.torch
        ref = copy.deepcopy(model).float().cpu().eval()
        if self.weights == "fp32":
            return ref
        with torch.no_grad():
            for mod in ref.modules():
                if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d)):
                    mod.weight.copy_(mod.weight.to(torch.bfloat16).float())
        return ref

    # -- state -----------------------------------------------------------------------------------

    def _views(self) -> dict:
        """The model's state names -> (device view, how to map it): windows and the skip are stored
        frames-major ([frames, channels]), the model's as [channels, frames]."""
        K, D, E = self.KS, self.DIM, self.NEMB
        s, o = self.s, self.s_off
        v: dict = {}
        for i in range(E):
            cin = self.F if i == 0 else D
            if K > 1:
                v[f"embed_conv_{i}"] = (s[o[i]:o[i] + (K - 1) * cin].view(K - 1, cin), True)
            if self.spiking:
                v[f"embed_lif_{i}"] = (s[o[E + 2 + i]:o[E + 2 + i] + D], False)
        if K > 1:
            v["embed_rpe"] = (s[o[E]:o[E] + (K - 1) * D].view(K - 1, D), True)
        if self.DELAY:
            v["embed_skip"] = (s[o[E + 1]:o[E + 1] + self.DELAY * D].view(self.DELAY, D), True)
        if self.spiking:
            v["head_lif"] = (s[o[2 * E + 2]:o[2 * E + 2] + D], False)
        sizes = (self.ORDER, D, 1, self.ORDER, D, D, self.HID)
        for j in range(self.DEPTH):
            for k, (name, n) in enumerate(zip(BLOCK_STATE, sizes)):
                if name != "memory" and not self.spiking:
                    continue
                at = o[2 * E + 3 + 7 * j + k]
                v[f"block{j}_{name}"] = (s[at:at + n], False)
        missing = set(self.spec) - set(v)
        if missing:  # pragma: no cover - the layout above follows the models' state_spec
            raise EdgeseqError(f"fused LMUFormer state lacks {sorted(missing)}")
        return v

    def reset(self) -> None:
        self.s.zero_()

    def load_state(self, state: dict) -> None:
        for name, (view, transposed) in self._views().items():
            t = state[name].reshape(self.spec[name])
            view.copy_(t.t() if transposed else t.reshape(view.shape))

    def state_dict(self) -> dict:
        out = {}
        for name, (view, transposed) in self._views().items():
            t = view.t() if transposed else view
            out[name] = t.clone().reshape(1, *self.spec[name])
        return out

    # -- the step --------------------------------------------------------------------------------

    def _launch(self) -> None:
        from targets.gpu.lmuformer_kernels import lmuformer_step_kernel

        K, F, D = self.KS, self.F, self.DIM
        bk = max(_pow2(K * F), _pow2(K * D), _pow2(self.ORDER + D), _pow2(self.HID), _pow2(self.ORDER))  # widest row
        lmuformer_step_kernel[(1,)](
            self.x, self.w, self.p, self.o, self.s, self.so, self.scratch, self.out, self.inv_tau, self.thr,
            self.thr_mix,
            F=F, BF=_pow2(F), DIM=D, BDIM=_pow2(D), ORDER=self.ORDER, BORD=_pow2(self.ORDER), HID=self.HID,
            BHID=_pow2(self.HID), NCLS=self.NCLS, BCLS=_pow2(max(self.NCLS, 2)), KS=K, NEMB=self.NEMB,
            DEPTH=self.DEPTH, DELAY=self.DELAY, SPIKING=self.spiking, BKF=_pow2(K * F), BKD=_pow2(K * D),
            BCAT=_pow2(self.ORDER + D), BWF=_pow2(max(1, (K - 1) * F)), BWD=_pow2(max(1, (K - 1) * D)),
            BSK=_pow2(max(1, self.DELAY * D)), TILE=max(_pow2(self.tile), bk), BIG=self.BIG,
            num_warps=self.num_warps,
        )

    def graph(self) -> Any:
        torch = self.torch
        if self._graph is None:
            saved = self.s.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._launch()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._launch()
            self.s.copy_(saved)
            self._graph = graph
        return self._graph

    def step(self, frame: Any) -> Any:
        """One frame ([input_dim] or [1, input_dim]) -> per-frame scores [n_classes] fp32 (a view of the
        runtime's buffer: clone it to keep it past the next step)."""
        torch = self.torch
        frame = torch.as_tensor(frame)
        if frame.numel() != self.F:
            raise InputError(f"the fused LMUFormer step takes one frame of {self.F} features, got shape {tuple(frame.shape)}")
        self.x.copy_(frame.reshape(self.F))
        if self.use_graph:
            self.graph().replay()
        else:
            self._launch()
        return self.out


__all__ = ["FAMILIES", "FusedLMUFormerStep"]
