"""A fused CUDA runtime for the SpikeGPT decode step (batch 1): Triton kernels, one CUDA graph.

    rt = FusedSpikeGPTStep(model)               # an edgeseq ``SpikeGPT`` (any size), weights -> GPU
    logits = rt.step(token)                     # [vocab] fp32, the state kept on the device
    rt.next_token()                             # arg-max of the last logits, computed in the head kernel
    rt.step_greedy()                            # next step fed by that arg-max, no host round trip
    rt.spikes                                   # [n_layer, 2, d_model] uint8: the last step's spike trains

The step is 4 kernels per layer + 1 for the head (``spikegpt_kernels.py`` says what each fuses),
captured once into a CUDA graph and replayed, chained by programmatic dependent launch on Hopper.
Weights are bf16 (``weights="fp32"``: as trained, twice the bytes); the binary embedding is stored
as its spikes (H(emb) is all the model reads of it); activations, the residual, the WKV and LIF
state and every sum are fp32. The state lives in this object (``state_dict()`` / ``load_state()``
convert to and from the model's named state).

Triton is imported here, never by ``import edgeseq`` or ``import targets``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeseq.errors import EdgeseqError, InputError
from targets.gpu.mamba import _pow2, available, interpreted, triton_cdiv

STATE_NAMES = ("att_shift", "ffn_shift", "wkv_a", "wkv_b", "wkv_p", "lif1_v", "lif2_v")


@dataclass
class SpikeBlocks:
    """Launch shapes (any powers of two work). The defaults: the fastest of the H200 sweep at the
    SpikeGPT-216M shape (benchmarks/decode_gpu_spikegpt.json: 251 us against 256 us for 4-channel
    programs with 8 warps, 278 us for 2-row output programs)."""

    att_rows: int = 2  # channels per program of the key/value/receptance + WKV kernel (3 rows each)
    out_rows: int = 4  # residual channels per program of the two output GEMV + LIF kernels
    ffn_rows: int = 8  # hidden units per program of the ChannelMix key kernel
    head_rows: int = 16
    warps: int = 4  # the two input-GEMV kernels (key/value/receptance + WKV; ChannelMix key + receptance)
    warps_out: int = 4  # the two output-GEMV + LIF kernels
    warps_head: int = 4
    pdl: bool = True  # programmatic dependent launch (compute capability >= 9 only)


class FusedSpikeGPTStep:
    """The fused decode step of one ``edgeseq.models.spikegpt.SpikeGPT`` on a CUDA device."""

    name = "triton-fused"

    def __init__(self, model: Any, device: str = "cuda", blocks: SpikeBlocks | None = None, cuda_graph: bool = True,
                 weights: str = "bf16"):
        import torch

        if not available():
            raise EdgeseqError("the fused GPU runtime needs a CUDA device and Triton")
        cfg = model.config
        if getattr(cfg, "family", None) != "spikegpt":
            raise InputError(f"the fused SpikeGPT runtime runs SpikeGPT models, not {getattr(cfg, 'family', '?')!r}")
        D, F = cfg.d_model, cfg.hidden
        linears = [model.head] + [m for blk in model.blocks for m in (blk.att.key, blk.att.value, blk.att.receptance,
                                                                      blk.att.output, blk.ffn.key, blk.ffn.receptance,
                                                                      blk.ffn.value)]
        if any(type(m) is not torch.nn.Linear for m in linears):
            raise InputError("the fused SpikeGPT runtime runs float models (plain nn.Linear layers); this one is quantized")
        if D > 2048 or F > 8192:
            raise InputError(f"the fused SpikeGPT runtime holds whole rows in registers: d_model <= 2048 and "
                             f"d_ffn <= 8192, not {D} / {F}")
        if weights not in ("bf16", "fp32"):
            raise InputError(f"weights must be bf16 or fp32, not {weights!r}")
        self.torch, self.cfg, self.device, self.weights = torch, cfg, torch.device(device), weights
        self.D, self.F, self.V, self.L = D, F, cfg.vocab_size, cfg.n_layer
        self.eps = float(cfg.ln_eps)
        self.inv_tau, self.thr = 1.0 / float(cfg.lif_tau), float(cfg.lif_threshold)
        self.fire_ge, self.hard = cfg.lif_fire_on == "ge", cfg.lif_reset == "hard"
        dev, f32, bf16 = self.device, torch.float32, torch.bfloat16
        vec = lambda t: t.detach().float().reshape(-1).to(dev).contiguous()  # noqa: E731
        wdt = bf16 if weights == "bf16" else f32
        mat = lambda lin: lin.weight.detach().to(dev, wdt).contiguous()  # noqa: E731
        self.layers = []
        with torch.no_grad():
            for blk in model.blocks:
                att, ffn = blk.att, blk.ffn
                self.layers.append({
                    "ln1_w": vec(blk.ln1.weight), "ln1_b": vec(blk.ln1.bias),
                    "ln2_w": vec(blk.ln2.weight), "ln2_b": vec(blk.ln2.bias),
                    "mu_k": vec(att.time_mix_k), "mu_v": vec(att.time_mix_v), "mu_r": vec(att.time_mix_r),
                    "decay": torch.exp(att.time_decay.detach().double()).float().to(dev).contiguous(),
                    "bonus": vec(att.time_first),
                    "w_k": mat(att.key), "w_v": mat(att.value), "w_r": mat(att.receptance), "w_o": mat(att.output),
                    "fmu_k": vec(ffn.time_mix_k), "fmu_r": vec(ffn.time_mix_r),
                    "f_k": mat(ffn.key), "f_r": mat(ffn.receptance), "f_v": mat(ffn.value),
                })
            b0 = model.blocks[0]
            self.ln0_w, self.ln0_b = vec(b0.ln0.weight), vec(b0.ln0.bias)
            self.lno_w, self.lno_b = vec(model.ln_out.weight), vec(model.ln_out.bias)
            self.head = mat(model.head)
            # the binary embedding H(emb) (ATan spike, fires on >= 0): only these bits reach the model
            self.emb = (model.emb.weight.detach() >= 0).to(dev, torch.uint8).contiguous()
        weight_names = ("w_k", "w_v", "w_r", "w_o", "f_k", "f_r", "f_v")
        self.weight_bytes = sum(L[n].numel() * L[n].element_size() for L in self.layers for n in weight_names)
        self.weight_bytes += self.head.numel() * self.head.element_size()
        small = sum(t.numel() * t.element_size() for L in self.layers for n, t in L.items() if n not in weight_names)
        self.state_all = torch.zeros(self.L, len(STATE_NAMES), D, dtype=f32, device=dev)
        # bytes a step moves: every weight once, the small vectors, one embedding row, the state read + written
        self.bytes_per_step = self.weight_bytes + small + D + 2 * self.state_all.numel() * 4
        self.state = {(n, i): self.state_all[i, j] for i in range(self.L) for j, n in enumerate(STATE_NAMES)}
        self.tok = torch.zeros(1, dtype=torch.int64, device=dev)
        self.h = torch.zeros(D, dtype=f32, device=dev)
        self.rw = torch.zeros(D, dtype=f32, device=dev)
        self.xn = torch.zeros(D, dtype=f32, device=dev)
        self.kk = torch.zeros(F, dtype=f32, device=dev)
        self.rr = torch.zeros(D, dtype=f32, device=dev)
        self.logits = torch.zeros(self.V, dtype=f32, device=dev)
        self.spikes = torch.zeros(self.L, 2, D, dtype=torch.uint8, device=dev)
        from targets.gpu.kernels import AMAX_RESET_VALUE

        self.amax = torch.full((1,), AMAX_RESET_VALUE, dtype=torch.int64, device=dev)
        self.use_graph = cuda_graph and self.device.type == "cuda"
        self.reset()
        self.set_blocks(blocks or SpikeBlocks())

    def set_blocks(self, blocks: SpikeBlocks) -> None:
        """Change the launch shapes (the captured graphs are dropped)."""
        self.blocks = blocks
        bd = _pow2(self.D)
        self.BC = min(_pow2(blocks.att_rows), max(1, 8192 // bd))  # 3 rows a channel
        self.BO = min(_pow2(blocks.out_rows), max(1, 16384 // _pow2(self.F)))
        self.BH = min(_pow2(blocks.ffn_rows), max(1, 16384 // bd))
        self.P3 = triton_cdiv(self.F, self.BH)
        self.BR = _pow2(triton_cdiv(self.D, self.P3))  # receptance rows of each ffn-in program
        self._graphs: dict[Any, Any] = {}

    # -- reference ---------------------------------------------------------------------------------

    def dequantized_model(self, model: Any) -> Any:
        """A copy of `model` (fp32, CPU) with the weights the kernels compute with (bf16-rounded, or
        as they are with ``weights="fp32"``): the reference of the tests."""
        import copy

        torch = self.torch
        ref = copy.deepcopy(model).float().cpu()
        if self.weights == "fp32":
            return ref
        with torch.no_grad():
            for blk in ref.blocks:
                for lin in (blk.att.key, blk.att.value, blk.att.receptance, blk.att.output,
                            blk.ffn.key, blk.ffn.receptance, blk.ffn.value):
                    lin.weight.copy_(lin.weight.to(torch.bfloat16).float())
            ref.head.weight.copy_(ref.head.weight.to(torch.bfloat16).float())
        return ref

    # -- state -----------------------------------------------------------------------------------

    def reset(self) -> None:
        """The model's initial state (zeros; the WKV exponent at "no history yet")."""
        from edgeseq.models.spikegpt import empty_wkv_exponent

        self.state_all.zero_()
        self.state_all[:, STATE_NAMES.index("wkv_p")].fill_(empty_wkv_exponent(self.torch.float32))

    def load_state(self, state: dict) -> None:
        """Copy a model's named state (``{name}_{i}``: [1, d_model]) into the device state."""
        for (n, i), t in self.state.items():
            t.copy_(state[f"{n}_{i}"].reshape(self.D))

    def state_dict(self) -> dict:
        return {f"{n}_{i}": t.clone().reshape(1, self.D) for (n, i), t in self.state.items()}

    # -- the step --------------------------------------------------------------------------------

    def _pdl(self) -> bool:
        return (bool(self.blocks.pdl) and not interpreted() and self.device.type == "cuda"
                and self.torch.cuda.get_device_capability(self.device)[0] >= 9)

    def _launch(self, from_argmax: bool) -> None:
        from targets.gpu.spikegpt_kernels import (spk_att_in_kernel, spk_att_out_kernel, spk_ffn_in_kernel,
                                                  spk_ffn_out_kernel, spk_head_kernel)

        b, D, F = self.blocks, self.D, self.F
        bd = _pow2(D)
        pdl = self._pdl()
        st = self.state
        for i, L in enumerate(self.layers):
            spk_att_in_kernel[(triton_cdiv(D, self.BC),)](
                self.tok, self.amax, self.emb, self.h, self.ln0_w, self.ln0_b, L["ln1_w"], L["ln1_b"],
                L["mu_k"], L["mu_v"], L["mu_r"], L["w_k"], L["w_v"], L["w_r"], L["decay"], L["bonus"],
                st["att_shift", i], st["wkv_a", i], st["wkv_b", i], st["wkv_p", i], self.rw, self.xn,
                self.eps, self.V,
                D=D, BD=bd, BC=self.BC, FIRST=(i == 0), FROM_ARGMAX=from_argmax, PDL=pdl,
                num_warps=b.warps, launch_pdl=pdl,
            )
            spk_att_out_kernel[(triton_cdiv(D, self.BO),)](
                self.h, self.amax, self.rw, L["w_o"], st["lif1_v", i], self.xn, st["att_shift", i],
                self.spikes[i, 0], self.inv_tau, self.thr,
                D=D, BD=bd, BO=self.BO, FIRE_GE=self.fire_ge, HARD=self.hard, RESET_AMAX=(i == 0), PDL=pdl,
                num_warps=b.warps_out, launch_pdl=pdl,
            )
            spk_ffn_in_kernel[(self.P3,)](
                self.h, L["ln2_w"], L["ln2_b"], L["fmu_k"], L["fmu_r"], L["f_k"], L["f_r"], st["ffn_shift", i],
                self.kk, self.rr, self.xn, self.eps,
                D=D, BD=bd, F=F, BH=self.BH, BR=self.BR, PDL=pdl,
                num_warps=b.warps, launch_pdl=pdl,
            )
            spk_ffn_out_kernel[(triton_cdiv(D, self.BO),)](
                self.h, self.kk, self.rr, L["f_v"], st["lif2_v", i], self.xn, st["ffn_shift", i],
                self.spikes[i, 1], self.inv_tau, self.thr,
                D=D, F=F, BF=_pow2(F), BO=self.BO, FIRE_GE=self.fire_ge, HARD=self.hard, PDL=pdl,
                num_warps=b.warps_out, launch_pdl=pdl,
            )
        spk_head_kernel[(triton_cdiv(self.V, b.head_rows),)](
            self.h, self.lno_w, self.lno_b, self.head, self.logits, self.amax, self.eps, self.V,
            D=D, BV=b.head_rows, BD=bd, PDL=pdl, num_warps=b.warps_head, launch_pdl=pdl,
        )

    def graph(self, from_argmax: bool = False) -> Any:
        """The CUDA graph of one step, captured on first use after one direct launch that compiles the
        kernels (the state is restored)."""
        torch = self.torch
        if from_argmax not in self._graphs:
            keep = (self.state_all, self.h, self.amax)
            saved = [t.clone() for t in keep]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._launch(from_argmax)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._launch(from_argmax)
            for t, s in zip(keep, saved):
                t.copy_(s)
            self._graphs[from_argmax] = graph
        return self._graphs[from_argmax]

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
            if token.numel() != 1:
                raise InputError(f"the fused SpikeGPT step runs batch 1 (one token), got shape {tuple(token.shape)}")
            self.tok.copy_(token.reshape(1))
        else:
            if not 0 <= int(token) < self.V:
                raise InputError(f"token {int(token)} is outside the vocabulary (0..{self.V - 1})")
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


__all__ = ["FusedSpikeGPTStep", "STATE_NAMES", "SpikeBlocks"]
