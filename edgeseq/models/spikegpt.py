"""SpikeGPT (Zhu, Zhao, Li & Eshraghian, 2023, "SpikeGPT: Generative Pre-trained Language Model
with Spiking Neural Networks"): a spiking RWKV-4 language model.

Architecture (RWKV-4 of Peng et al., 2023, with LIF neurons after each mixer)::

    x   = H(emb[token])                                   binary embedding (ATan surrogate, α = 2)
    x   = ln0(x)                                          block 0 only
    x   = x + LIF(TimeMix(ln1(x)))                        every block
    x   = x + LIF(ChannelMix(ln2(x)))
    logits = head(ln_out(x))

    token shift   x'_t = μ ⊙ x_t + (1 − μ) ⊙ x_{t−1}      learned per-channel μ (x_{−1} = 0)
    TimeMix       k = W_k x'_k, v = W_v x'_v, r = W_r x'_r
                  wkv_t = (Σ_{i<t} e^{−(t−1−i)w + k_i} v_i + e^{u + k_t} v_t)
                        / (Σ_{i<t} e^{−(t−1−i)w + k_i}     + e^{u + k_t})
                  out = W_o (σ(r) ⊙ wkv)                  w = exp(time_decay), u = time_first
    ChannelMix    out = σ(W_r x'_r) ⊙ W_v relu(W_k x'_k)²  hidden d_ffn = 4·d_model

The LIF neurons (tau 2, threshold 1, hard reset to 0, fire on v ≥ 1; see ``edgeseq.models.lif``)
turn each mixer's output into spikes that are added to the residual stream.

WKV is evaluated in the numerically stable form of RWKV-4: the running numerator and
denominator are kept as ``(a, b, p)`` with ``num = a·e^p``, ``den = b·e^p`` so nothing
overflows. The parallel form (``forward``) evaluates it chunk by chunk: inside a chunk every
output is a softmax-like weighted sum over the chunk's keys and the carried state (one tensor op),
across chunks the ``(a, b, p)`` state is carried. ``step`` is the same recurrence for one token.
Both compute the trained function at every depth: unlike the official recurrent script, nothing
is rescaled per layer.

Parameter names and shapes mirror the official SpikeGPT checkpoints (``emb.weight``,
``blocks.{i}.att.time_mix_k`` ``[1, 1, C]``, ``blocks.{i}.att.time_decay`` ``[C]``, …), so
``edgeseq.convert.spikegpt`` loads them by copying tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgeseq.errors import InputError
from edgeseq.models.lif import LIF, atan_spike
from edgeseq.streaming import IOSpec, ModelConfig, QuantPoint, State, StateSpec, StreamingModel

# the initial WKV exponent: "no history yet" (e^{p} = 0 for every practical purpose; finite so
# that p − w stays finite in float32)
WKV_EMPTY_P = -1e30


def empty_wkv_exponent(dtype: torch.dtype) -> float:
    """``WKV_EMPTY_P``, or the most negative finite value of dtypes that cannot hold it (float16)."""
    return max(WKV_EMPTY_P, torch.finfo(dtype).min)


@dataclass
class SpikeGPTConfig(ModelConfig):
    family = "spikegpt"
    input_size_field = "vocab_size"
    output_size_field = "vocab_size"

    vocab_size: int = 256
    d_model: int = 128
    n_layer: int = 4
    d_ffn: int = 0  # ChannelMix hidden size; 0 = 4·d_model (as published)
    ctx_len: int = 256  # training context (the model itself has no length limit)
    ln_eps: float = 1e-5
    # LIF neurons after each mixer (SpikeGPT: tau 2, threshold 1, hard reset, fire on >=)
    lif_tau: float = 2.0
    lif_threshold: float = 1.0
    lif_reset: str = "hard"
    lif_fire_on: str = "ge"
    surrogate_alpha: float = 2.0  # ATan surrogate of the LIF neurons and of the binary embedding
    dropout: float = 0.0  # after each block, training only (the official training uses 0.03)
    wkv_chunk: int = 8  # chunk length of the parallel WKV (memory ∝ chunk²·d_model per sequence)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "wkv_chunk"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"SpikeGPTConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.d_ffn < 0:
            raise InputError(f"SpikeGPTConfig.d_ffn must be >= 0 (0 = 4·d_model), got {self.d_ffn!r}")
        if self.lif_reset not in ("hard", "soft"):
            raise InputError(f"SpikeGPTConfig.lif_reset must be 'hard' or 'soft', got {self.lif_reset!r}")
        if self.lif_fire_on not in ("ge", "gt"):
            raise InputError(f"SpikeGPTConfig.lif_fire_on must be 'ge' or 'gt', got {self.lif_fire_on!r}")
        if self.lif_tau < 1:
            raise InputError(f"SpikeGPTConfig.lif_tau must be >= 1, got {self.lif_tau!r}")

    @property
    def hidden(self) -> int:
        return self.d_ffn or 4 * self.d_model


# --------------------------------------------------------------------------------------------
# WKV: the stable recurrence, one step and chunked-parallel
# --------------------------------------------------------------------------------------------


def wkv_step(
    decay: Tensor, bonus: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, p: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One WKV step. ``decay`` = w = exp(time_decay) > 0, ``bonus`` = u = time_first: ``[C]``;
    k, v, state (a, b, p): ``[B, C]``. Returns (wkv_t, a', b', p').

    The state holds ``num = a·e^p = Σ_{i<=t} e^{−(t−i)w + k_i} v_i`` and ``den = b·e^p``.
    """
    # output: the history plus the current token with its bonus
    current = bonus + k
    p_out = torch.maximum(p, current)
    e_hist, e_cur = torch.exp(p - p_out), torch.exp(current - p_out)
    wkv = (e_hist * a + e_cur * v) / (e_hist * b + e_cur)
    # state: decay the history by one step and add the current token (no bonus)
    decayed = p - decay
    p_new = torch.maximum(decayed, k)
    e_hist, e_cur = torch.exp(decayed - p_new), torch.exp(k - p_new)
    return wkv, e_hist * a + e_cur * v, e_hist * b + e_cur, p_new


def wkv_parallel(
    decay: Tensor, bonus: Tensor, k: Tensor, v: Tensor, state: tuple[Tensor, Tensor, Tensor] | None = None,
    chunk: int = 8,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """WKV over a sequence: k, v ``[B, T, C]``; decay, bonus ``[C]``; state (a, b, p) ``[B, C]`` or None.

    Returns wkv ``[B, T, C]`` and the final state. Inside a chunk of L tokens every output is a
    weighted average whose log-weights are known in closed form (the carried history decayed by
    (t − t0)·w, key i < t decayed by (t − 1 − i)·w, the current key with its bonus), evaluated with
    the max subtracted; the state after the chunk is the same kind of sum. Cost O(T·L·C).
    """
    batch, length, channels = k.shape
    if state is None:
        a = k.new_zeros(batch, channels)
        b = k.new_zeros(batch, channels)
        p = k.new_full((batch, channels), empty_wkv_exponent(k.dtype))
    else:
        a, b, p = state
    k_all, v_all = k.transpose(1, 2), v.transpose(1, 2)  # [B, C, T]: time last, per-channel matmuls
    outputs = []
    constants: dict[int, tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = {}  # per chunk size (all but the last equal)
    for start in range(0, length, chunk):
        k_c, v_c = k_all[..., start:start + chunk], v_all[..., start:start + chunk]  # [B, C, L]
        size = k_c.shape[-1]
        if size not in constants:
            steps = torch.arange(size, device=k.device, dtype=k.dtype)
            # log-decay of key i seen from query t: −(t − 1 − i)·w for i < t, −inf for i >= t
            lag = steps[:, None] - 1 - steps[None, :]  # [L(t), L(i)]
            constants[size] = (
                torch.where(lag >= 0, -lag * decay[:, None, None], -math.inf),  # past decay [C, L, L]
                steps * decay[:, None],  # history decay at each query [C, L]
                (size - 1 - steps) * decay[:, None],  # key decay to the chunk end [C, L]
                size * decay,  # history decay over the chunk [C]
                steps,
            )
        past_decay, hist_decay, end_decay, chunk_decay, steps = constants[size]
        past_logits = k_c[:, :, None, :] + past_decay  # [B, C, L, L]
        current_logits = bonus[:, None] + k_c  # [B, C, L]
        hist_logits = p[:, :, None] - hist_decay  # [B, C, L]
        top = torch.maximum(torch.maximum(past_logits.amax(dim=-1), current_logits), hist_logits).detach()
        past_w = torch.exp(past_logits - top[..., None])
        current_w = torch.exp(current_logits - top)
        hist_w = torch.exp(hist_logits - top)
        num = (past_w @ v_c[..., None]).squeeze(-1) + current_w * v_c + hist_w * a[..., None]
        den = past_w.sum(dim=-1) + current_w + hist_w * b[..., None]
        outputs.append(num / den)
        # state after the chunk: history decayed L steps, key i decayed (L − 1 − i) steps
        end_logits = k_c - end_decay  # [B, C, L]
        hist_end = p - chunk_decay
        p_new = torch.maximum(end_logits.amax(dim=-1), hist_end).detach()
        key_end = torch.exp(end_logits - p_new[..., None])
        hist_scale = torch.exp(hist_end - p_new)
        a = hist_scale * a + (key_end * v_c).sum(dim=-1)
        b = hist_scale * b + key_end.sum(dim=-1)
        p = p_new
    return torch.cat(outputs, dim=-1).transpose(1, 2), (a, b, p)


# --------------------------------------------------------------------------------------------
# the mixers
# --------------------------------------------------------------------------------------------


def token_shift(x: Tensor, last: Tensor | None) -> Tensor:
    """x_{t−1} for every t: ``[B, T, C]``, with ``last`` (``[B, C]``, zeros when None) before t = 0."""
    first = torch.zeros_like(x[:, :1]) if last is None else last[:, None, :]
    return torch.cat([first, x[:, :-1]], dim=1)


def _mix(x: Tensor, previous: Tensor, mu: Tensor) -> Tensor:
    mu = mu.reshape(-1)  # stored [1, 1, C] as in the official checkpoints
    return x * mu + previous * (1 - mu)


class TimeMix(nn.Module):
    """RWKV-4 time mixing with the WKV recurrence (parameter names as the official checkpoints)."""

    def __init__(self, cfg: SpikeGPTConfig, layer_id: int):
        super().__init__()
        c = cfg.d_model
        self.chunk = cfg.wkv_chunk
        self.time_decay = nn.Parameter(torch.zeros(c))
        self.time_first = nn.Parameter(torch.zeros(c))
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, c))
        self.time_mix_v = nn.Parameter(torch.zeros(1, 1, c))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, c))
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)

    def _kvr(self, x: Tensor, previous: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.key(_mix(x, previous, self.time_mix_k))
        v = self.value(_mix(x, previous, self.time_mix_v))
        r = torch.sigmoid(self.receptance(_mix(x, previous, self.time_mix_r)))
        return k, v, r

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor, Tensor, Tensor] | None = None):
        """``[B, T, C]`` -> (out, (shift, a, b, p)); ``state`` = (shift, a, b, p) or None."""
        shift, wkv_state = (None, None) if state is None else (state[0], state[1:])
        k, v, r = self._kvr(x, token_shift(x, shift))
        wkv, (a, b, p) = wkv_parallel(torch.exp(self.time_decay), self.time_first, k, v, wkv_state, self.chunk)
        return self.output(r * wkv), (x[:, -1], a, b, p)

    def step(self, x: Tensor, shift: Tensor, a: Tensor, b: Tensor, p: Tensor):
        """``[B, C]`` -> (out, (shift, a, b, p))."""
        k, v, r = self._kvr(x, shift)
        wkv, a, b, p = wkv_step(torch.exp(self.time_decay), self.time_first, k, v, a, b, p)
        return self.output(r * wkv), (x, a, b, p)


class ChannelMix(nn.Module):
    """RWKV-4 channel mixing: σ(W_r x'_r) ⊙ W_v relu(W_k x'_k)²."""

    def __init__(self, cfg: SpikeGPTConfig, layer_id: int):
        super().__init__()
        c, hidden = cfg.d_model, cfg.hidden
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, c))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, c))
        self.key = nn.Linear(c, hidden, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(hidden, c, bias=False)

    def mix(self, x: Tensor, previous: Tensor) -> Tensor:
        k = torch.square(torch.relu(self.key(_mix(x, previous, self.time_mix_k))))
        return torch.sigmoid(self.receptance(_mix(x, previous, self.time_mix_r))) * self.value(k)

    def forward(self, x: Tensor, shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``[B, T, C]`` -> (out, last input ``[B, C]``)."""
        return self.mix(x, token_shift(x, shift)), x[:, -1]

    def step(self, x: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        return self.mix(x, shift), x


class Block(nn.Module):
    def __init__(self, cfg: SpikeGPTConfig, layer_id: int):
        super().__init__()
        c = cfg.d_model
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(c, eps=cfg.ln_eps)
        self.ln1 = nn.LayerNorm(c, eps=cfg.ln_eps)
        self.ln2 = nn.LayerNorm(c, eps=cfg.ln_eps)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg, layer_id)
        lif = dict(tau=cfg.lif_tau, threshold=cfg.lif_threshold, reset=cfg.lif_reset,
                   fire_on=cfg.lif_fire_on, surrogate_alpha=cfg.surrogate_alpha)
        self.lif1 = LIF(**lif)
        self.lif2 = LIF(**lif)
        self.dropout = nn.Dropout(cfg.dropout)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


class SpikeGPT(StreamingModel):
    """SpikeGPT language model over token ids (``forward``: ``[B, T]`` -> logits ``[B, T, V]``).

    State per layer i (``state_spec``): ``att_shift_i``, ``ffn_shift_i`` (token-shift inputs),
    ``wkv_a_i``, ``wkv_b_i``, ``wkv_p_i`` (WKV numerator, denominator, exponent),
    ``lif1_v_i``, ``lif2_v_i`` (LIF membranes after reset); all ``[d_model]``. The initial
    ``wkv_p`` is ``WKV_EMPTY_P`` (−1e30; −65504 in float16), not zero: use :meth:`init_state`.
    """

    # The embedding output goes straight into a spiking threshold (the binary embedding): rounding
    # the table to int8 per row flips embedding spikes and costs +1.4% bits/byte on the zoo model
    # (2.3616 -> 2.3942 over 10 kB of validation text), while on Mamba it costs +0.005%.
    embeddings_quantizable = False

    task = "lm"

    def __init__(self, config: SpikeGPTConfig | None = None):
        super().__init__()
        self.config = cfg = config or SpikeGPTConfig()
        self.emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()

    # -- initialisation (after RWKV-4: per-layer decay spread, zero-init residual outputs) ----
    @torch.no_grad()
    def _init_weights(self) -> None:
        cfg = self.config
        c, n = cfg.d_model, cfg.n_layer
        channel = torch.arange(c, dtype=torch.float32)
        position = channel / c  # 0 .. 1 over channels
        for i, block in enumerate(self.blocks):
            depth = i / max(1, n - 1)  # 0 (first layer) .. 1 (last)
            keep = 1.0 - i / n  # 1 .. ~0
            att, ffn = block.att, block.ffn
            # decay rates spread over channels from fast (−5) to slow (+3), slower in deep layers
            att.time_decay.copy_(-5 + 8 * (channel / max(1, c - 1)) ** (0.7 + 1.3 * depth))
            zigzag = ((channel.long() + 1) % 3 - 1).float() * 0.5
            att.time_first.copy_(math.log(0.3) + zigzag)
            att.time_mix_k.copy_(position.pow(keep).view(1, 1, c))
            att.time_mix_v.copy_((position.pow(keep) + 0.3 * depth).view(1, 1, c))
            att.time_mix_r.copy_(position.pow(0.5 * keep).view(1, 1, c))
            ffn.time_mix_k.copy_(position.pow(keep).view(1, 1, c))
            ffn.time_mix_r.copy_(position.pow(keep).view(1, 1, c))
            for linear in (att.key, att.value, att.receptance, att.output, ffn.key, ffn.receptance, ffn.value):
                out_f, in_f = linear.weight.shape
                nn.init.orthogonal_(linear.weight, gain=math.sqrt(out_f / in_f) if out_f > in_f else 1.0)
            # the mixer outputs drive the LIF neurons: scaled so that a few percent fire from the
            # first step (the official init zeroes them, which starts every neuron silent)
            att.output.weight.mul_(2.0)
            ffn.value.weight.mul_(2.0)
        nn.init.normal_(self.emb.weight, std=1e-4 * math.sqrt(c))  # only its sign passes H(·)
        nn.init.orthogonal_(self.head.weight, gain=0.5 * math.sqrt(max(1.0, cfg.vocab_size / c)))

    # -- forward ----------------------------------------------------------------------------
    def embed(self, tokens: Tensor) -> Tensor:
        """Binary embedding: H(emb[token]) with the ATan surrogate gradient."""
        return atan_spike(self.emb(tokens), self.config.surrogate_alpha)

    def forward(self, input_ids: Tensor) -> Tensor:
        logits, _ = self._parallel(input_ids, None)
        return logits

    def prefill(self, input_ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        return self._parallel(input_ids, state)

    def forward_with_spikes(self, input_ids: Tensor, state: State | None = None) -> tuple[Tensor, State, list[Tensor]]:
        """``prefill`` that also returns every LIF layer's spikes ``[B, T, C]`` (lif1, lif2 per block)."""
        return self._parallel(input_ids, state, keep_spikes=True)  # type: ignore[return-value]

    def _parallel(self, input_ids: Tensor, state: State | None, keep_spikes: bool = False):
        if input_ids.dim() != 2:
            raise InputError(f"SpikeGPT.forward expects token ids [batch, time], got shape {tuple(input_ids.shape)}")
        x = self.embed(input_ids)
        new_state: State = {}
        spikes: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if i == 0:
                x = block.ln0(x)
            att_state = None if state is None else tuple(state[f"{n}_{i}"] for n in ("att_shift", "wkv_a", "wkv_b", "wkv_p"))
            out, (shift, a, b, p) = block.att(block.ln1(x), att_state)
            s1, v1 = block.lif1.run(out, None if state is None else state[f"lif1_v_{i}"])
            x = x + s1
            out, ffn_shift = block.ffn(block.ln2(x), None if state is None else state[f"ffn_shift_{i}"])
            s2, v2 = block.lif2.run(out, None if state is None else state[f"lif2_v_{i}"])
            x = block.dropout(x + s2)
            new_state.update({f"att_shift_{i}": shift, f"ffn_shift_{i}": ffn_shift, f"wkv_a_{i}": a,
                              f"wkv_b_{i}": b, f"wkv_p_{i}": p, f"lif1_v_{i}": v1, f"lif2_v_{i}": v2})
            if keep_spikes:
                spikes += [s1, s2]
        logits = self.head(self.ln_out(x))
        return (logits, new_state, spikes) if keep_spikes else (logits, new_state)

    # -- step -------------------------------------------------------------------------------
    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One token ``[B]`` -> logits ``[B, V]``; constant cost."""
        x = self.embed(token)
        new_state: State = {}
        for i, block in enumerate(self.blocks):
            if i == 0:
                x = block.ln0(x)
            out, (shift, a, b, p) = block.att.step(
                block.ln1(x), state[f"att_shift_{i}"], state[f"wkv_a_{i}"], state[f"wkv_b_{i}"], state[f"wkv_p_{i}"]
            )
            s1, v1 = block.lif1.step(out, state[f"lif1_v_{i}"])
            x = x + s1
            out, ffn_shift = block.ffn.step(block.ln2(x), state[f"ffn_shift_{i}"])
            s2, v2 = block.lif2.step(out, state[f"lif2_v_{i}"])
            x = x + s2
            new_state.update({f"att_shift_{i}": shift, f"ffn_shift_{i}": ffn_shift, f"wkv_a_{i}": a,
                              f"wkv_b_{i}": b, f"wkv_p_{i}": p, f"lif1_v_{i}": v1, f"lif2_v_{i}": v2})
        return self.head(self.ln_out(x)), new_state

    # -- contract ---------------------------------------------------------------------------
    _STATE_NAMES = ("att_shift", "ffn_shift", "wkv_a", "wkv_b", "wkv_p", "lif1_v", "lif2_v")

    def state_spec(self) -> list[StateSpec]:
        c = self.config.d_model
        return [StateSpec(f"{name}_{i}", (c,)) for i in range(self.config.n_layer) for name in self._STATE_NAMES]

    def io_spec(self) -> IOSpec:
        """Token ids below ``vocab_size`` in, logits over the same vocabulary out."""
        return IOSpec.tokens(self.config.vocab_size)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        state = super().init_state(batch_size, device, dtype)
        for i in range(self.config.n_layer):
            state[f"wkv_p_{i}"].fill_(empty_wkv_exponent(state[f"wkv_p_{i}"].dtype))
        return state

    def quant_points(self) -> list[QuantPoint]:
        points = []
        for i in range(self.config.n_layer):
            att, ffn = f"blocks.{i}.att", f"blocks.{i}.ffn"
            points += [
                QuantPoint(f"{att}.key", "linear", note="input: token-shifted ln1 output"),
                QuantPoint(f"{att}.value", "linear", note="input: token-shifted ln1 output"),
                QuantPoint(f"{att}.receptance", "linear", note="input: token-shifted ln1 output"),
                QuantPoint(f"{att}.output", "linear", rotatable=True, note="input: σ(r)·wkv"),
                QuantPoint(f"{ffn}.key", "linear", note="input: token-shifted ln2 output"),
                QuantPoint(f"{ffn}.receptance", "linear", note="input: token-shifted ln2 output"),
                QuantPoint(f"{ffn}.value", "linear", rotatable=True,
                           note="input: relu(k)², non-negative with large outliers: Hadamard-rotate"),
            ]
        points.append(QuantPoint("head", "linear", note="input: ln_out output"))
        return points


@torch.no_grad()
def spike_rates(model: SpikeGPT, input_ids: Tensor, chunk_len: int = 512) -> dict[str, float]:
    """Mean firing rate of every LIF layer (``blocks.{i}.lif1`` after TimeMix, ``lif2`` after
    ChannelMix) and of the binary embedding (``emb``) over ``input_ids`` ``[B, T]``, run through
    ``prefill`` in chunks of ``chunk_len`` tokens with the state carried."""
    names = [f"blocks.{i}.{lif}" for i in range(model.config.n_layer) for lif in ("lif1", "lif2")]
    totals = dict.fromkeys(["emb", *names], 0.0)
    count = 0
    state = None
    for start in range(0, input_ids.shape[1], chunk_len):
        ids = input_ids[:, start:start + chunk_len]
        _, state, spikes = model.forward_with_spikes(ids, state)
        totals["emb"] += float(model.embed(ids).sum())
        for name, s in zip(names, spikes):
            totals[name] += float(s.sum())
        count += ids.numel() * model.config.d_model
    return {name: total / max(1, count) for name, total in totals.items()}


__all__ = [
    "SpikeGPT",
    "SpikeGPTConfig",
    "WKV_EMPTY_P",
    "spike_rates",
    "wkv_parallel",
    "wkv_step",
]
