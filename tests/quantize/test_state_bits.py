"""``state_bits = 8``: the decode state is stored and carried as int8 with static per-channel scales
(quantize.state), on Mamba-1 and Mamba-2.

Oracles: the same quantized model with a float state (what the int8 state approximates), and a
hand-rolled reference of the rounding (dequantize → float step → quantize) for exactness.
"""

import pytest
import torch

from edgeseq.models.mamba import Mamba, MambaConfig
from edgeseq.models.mamba2 import Mamba2, Mamba2Config
from quantize.apply import quantize_model
from quantize.io import load_quantized, save_quantized
from quantize.recipes import QuantRecipe, get_recipe, with_overrides
from edgeseq.errors import InputError

MODELS = {
    "mamba": lambda: Mamba(MambaConfig(vocab_size=64, d_model=32, n_layer=2, d_state=4)),
    "mamba2": lambda: Mamba2(Mamba2Config(vocab_size=64, d_model=32, n_layer=2, d_state=8, headdim=16, ngroups=2,
                                          chunk_size=8)),
}


def _data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 32), generator=gen) for _ in range(2)], torch.randint(0, 64, (2, 40), generator=gen)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_int8_state_is_carried_and_close_to_the_float_state(family):
    torch.manual_seed(0)
    model = MODELS[family]().eval()
    batches, tokens = _data()
    float_state, _ = quantize_model(model, "w8a8", batches, progress=False)
    int_state, report = quantize_model(model, "w8a8-s8", batches, progress=False)
    specs = int_state.state_spec()
    assert all(spec.dtype == torch.int8 for spec in specs)
    assert report["state"]["bits"] == 8 and set(report["state"]["states"]) == {s.name for s in specs}
    # a scale per channel (conv) and per head/channel (SSM); the calibrated range is used
    first_conv = report["state"]["states"]["conv_0"]
    assert first_conv["scales"] == specs[0].shape[0] and first_conv["scale_max"] > first_conv["scale_min"] > 0
    ssm = specs[1].shape  # Mamba [Di, N]: a scale per channel; Mamba-2 [H, P, N]: per (head, channel)
    assert report["state"]["states"]["ssm_0"]["scales"] == torch.Size(ssm[:-1]).numel()
    state = int_state.init_state(2)
    assert all(t.dtype == torch.int8 for t in state.values())
    with torch.no_grad():
        reference, _ = float_state.step_sequence(tokens)
        stepped, final = int_state.step_sequence(tokens)
        # exactness of the mechanism: one step = dequantize, the float-state step, quantize
        logits, new_state = int_state.step(tokens[:, 0], final)
        deq = int_state.state_quant.dequantize(final, torch.float32)
        ref_logits, ref_state = float_state.step(tokens[:, 0], deq)
    assert all(t.dtype == torch.int8 for t in final.values())
    assert torch.equal(logits, ref_logits)
    assert all(torch.equal(new_state[k], int_state.state_quant.quantize(ref_state)[k]) for k in new_state)
    # the rounding of the state costs little on a random model over 40 steps
    ref_lp, lp = reference.log_softmax(-1), stepped.log_softmax(-1)
    assert (lp - ref_lp).abs().max().item() < 0.1
    assert (lp - ref_lp).abs().max().item() > 0  # and it is really rounded


def test_int8_state_saves_and_loads_and_halves_nothing_else(tmp_path):
    torch.manual_seed(0)
    model = MODELS["mamba2"]().eval()
    batches, tokens = _data()
    qmodel, report = quantize_model(model, "w8a8-s8", batches, progress=False)
    save_quantized(qmodel, tmp_path / "q", "w8a8-s8", report, source="tiny")
    loaded, header = load_quantized(tmp_path / "q")
    assert header["recipe"]["state_bits"] == 8
    with torch.no_grad():
        a, sa = qmodel.step_sequence(tokens)
        b, sb = loaded.step_sequence(tokens)
        pa, pstate = loaded.prefill(tokens)
    assert torch.equal(a, b) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(t.dtype == torch.int8 for t in pstate.values())
    from edgeseq.checkpoints import model_info, load_model

    info = model_info(load_model(tmp_path / "q"))
    float_bytes = sum(4 * torch.Size(s.shape).numel() for s in model.state_spec())
    assert info["state_bytes"] == float_bytes // 4


def test_state_bits_needs_calibration_and_valid_bits():
    model = MODELS["mamba"]().eval()
    with pytest.raises(InputError, match="calibration data"):
        quantize_model(model, with_overrides(get_recipe("w4a16"), state_bits=8), None, progress=False)
    with pytest.raises(InputError, match="state_bits must be"):
        with_overrides(get_recipe("w8a8"), state_bits=4)
    assert QuantRecipe.from_dict({"name": "x", "state_bits": 8}).state_bits == 8
