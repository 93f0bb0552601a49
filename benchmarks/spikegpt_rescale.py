"""SpikeGPT: what the fp16 "rescale every 6 layers" trick does to a spiking model.

RWKV's fp16 recurrent scripts divide the residual outputs (``att.output``, ``ffn.value``) of block
i by 2^(i // 6) and halve the residual stream after every 6th block, so that fp16 never
overflows. For a plain RWKV this is exact (LayerNorm is scale-invariant). In SpikeGPT the mixer
outputs drive LIF neurons with an absolute threshold, and the spikes added to the residual are
0/1 whatever the scale, so the rescaled recurrence computes a different function past 6 layers.

This benchmark runs, on random spiking models of 1, 7 and 13 layers (float32):

* edgeseq's ``step`` (no rescaling) against ``forward``,
* the same ``step`` with the rescaling emulated, against ``forward``,

and prints the fraction of spikes that differ and the largest logit difference.

    python benchmarks/spikegpt_rescale.py
"""

from __future__ import annotations

import copy
import math

import torch

from edgeseq.models.spikegpt import SpikeGPT, SpikeGPTConfig

RESCALE_EVERY = 6


def random_spiking_model(n_layer: int, d_model: int = 64, vocab: int = 256, seed: int = 0) -> SpikeGPT:
    gen = torch.Generator().manual_seed(seed)
    model = SpikeGPT(SpikeGPTConfig(vocab_size=vocab, d_model=d_model, n_layer=n_layer))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "time_mix" in name:
                p.copy_(torch.rand(p.shape, generator=gen))
            elif "time_decay" in name or "time_first" in name or name == "emb.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith(("att.output.weight", "ffn.value.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) * 4 / math.sqrt(p.shape[1]))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
    return model.eval()


def rescaled_copy(model: SpikeGPT) -> SpikeGPT:
    """The model with block i's residual outputs divided by 2^(i // 6), as the fp16 scripts do."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for i, block in enumerate(scaled.blocks):
            block.att.output.weight /= 2 ** (i // RESCALE_EVERY)
            block.ffn.value.weight /= 2 ** (i // RESCALE_EVERY)
    return scaled


@torch.no_grad()
def step_spikes(model: SpikeGPT, ids: torch.Tensor, rescale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, T, V] and all spikes [B, T, 2·L, C] of a token-by-token run."""
    state = model.init_state(ids.shape[0])
    all_logits, all_spikes = [], []
    for t in range(ids.shape[1]):
        x = model.embed(ids[:, t])
        spikes, new_state = [], {}
        for i, block in enumerate(model.blocks):
            if i == 0:
                x = block.ln0(x)
            out, (shift, a, b, p) = block.att.step(block.ln1(x), state[f"att_shift_{i}"], state[f"wkv_a_{i}"],
                                                   state[f"wkv_b_{i}"], state[f"wkv_p_{i}"])
            s1, v1 = block.lif1.step(out, state[f"lif1_v_{i}"])
            x = x + s1
            out, ffn_shift = block.ffn.step(block.ln2(x), state[f"ffn_shift_{i}"])
            s2, v2 = block.lif2.step(out, state[f"lif2_v_{i}"])
            x = x + s2
            if rescale and (i + 1) % RESCALE_EVERY == 0:
                x = x / 2
            new_state.update({f"att_shift_{i}": shift, f"ffn_shift_{i}": ffn_shift, f"wkv_a_{i}": a,
                              f"wkv_b_{i}": b, f"wkv_p_{i}": p, f"lif1_v_{i}": v1, f"lif2_v_{i}": v2})
            spikes += [s1, s2]
        state = new_state
        all_logits.append(model.head(model.ln_out(x)))
        all_spikes.append(torch.stack(spikes, 1))
    return torch.stack(all_logits, 1), torch.stack(all_spikes, 1)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    torch.manual_seed(0)
    torch.set_num_threads(1)
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))
    table = Table(title="SpikeGPT recurrent step vs parallel forward (float32, 2 × 48 tokens, d_model 64)")
    for column in ("layers", "recurrence", "spikes differing", "max |Δ logit|", "spike rate"):
        table.add_column(column, justify="right")
    for n_layer in (1, 7, 13):
        model = random_spiking_model(n_layer, seed=n_layer)
        with torch.no_grad():
            logits, _, spikes = model.forward_with_spikes(ids)
        reference = torch.stack(spikes, 2)  # [B, T, 2L, C]
        for label, runner, rescale in (("edgeseq step", model, False), ("rescaled every 6 (fp16 trick)", rescaled_copy(model), True)):
            step_logits, got_spikes = step_spikes(runner, ids, rescale)
            differing = float((got_spikes != reference).double().mean())
            table.add_row(str(n_layer), label, f"{differing:.2%}", f"{(step_logits - logits).abs().max().item():.2e}",
                          f"{float(reference.double().mean()):.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
