"""Every recipe on a tiny Mamba-2 through its declared points: step ≡ forward, close to float,
save → load.

Oracle: the float Mamba-2 itself (and its own step ≡ forward, proven in tests/edgeseq/test_mamba2.py).
The tiny model has ngroups 2 and a head dimension of 12 (d_inner 96 = 12·8: a Hadamard size that is
not a power of two, so the rotation goes through the Kronecker construction).
"""

import copy

import pytest
import torch

from edgeseq.models.mamba2 import Mamba2, Mamba2Config
from quantize.apply import quantize_model
from quantize.io import load_quantized, save_quantized
from quantize.modules import QuantAct, QuantLinear
from quantize.recipes import RECIPES


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Mamba2(Mamba2Config(vocab_size=256, d_model=48, n_layer=2, d_state=8, headdim=12, ngroups=2,
                                chunk_size=8)).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (2, 24), generator=gen) for _ in range(2)]
    tokens = torch.randint(0, 256, (2, 20), generator=gen)
    return model, batches, tokens


@pytest.mark.parametrize("recipe", sorted(r for r in RECIPES if not RECIPES[r].state_bits))
def test_every_recipe_applies_and_step_equals_forward(tiny, recipe):
    """Static scales make every quantizer a per-element function, so the parallel and the step form
    compute the same quantized function: checked in float64 (1e-10). In float32 the two forms round
    differently by a few ulps, and an activation that sits within that of a level boundary can land
    on the neighbouring level in one form only, a difference the SSM state then carries (seen: w4a8,
    one flip at t = 14, max 5e-3 on logits of scale 0.2); there only a sanity bound is checked."""
    model, batches, tokens = tiny
    qmodel, report = quantize_model(model, recipe, batches, progress=False)
    spec = RECIPES[recipe]
    # + the tied head's own copy (head_bits); block recipes quantize activations dynamically (no observers)
    assert report["summary"]["quantized_weights"] == (4 + bool(spec.head_bits) if spec.weight_bits else 0)
    if spec.act_bits and spec.act_granularity == "tensor":
        assert report["summary"]["quantized_activations"] >= 6  # x, B, C of both layers at least
    with torch.no_grad():
        logits = qmodel(tokens)
        stepped, _ = qmodel.step_sequence(tokens)
        q64 = copy.deepcopy(qmodel).double()
        logits64 = q64(tokens)
        stepped64, _ = q64.step_sequence(tokens)
    assert torch.isfinite(logits).all()
    assert (stepped64 - logits64).abs().max().item() <= 1e-10
    assert (stepped - logits).abs().max().item() <= 0.05 * logits.abs().max().item()
    assert isinstance(model.layers[0].mixer.in_proj, torch.nn.Linear)  # the float model is untouched


def test_w8a8_structure_and_closeness(tiny):
    model, batches, tokens = tiny
    qmodel, report = quantize_model(model, "w8a8", batches, progress=False)
    mixer = qmodel.layers[0].mixer
    assert isinstance(mixer.ssm_in, QuantAct) and isinstance(mixer.ssm_B, QuantAct) and isinstance(mixer.ssm_C, QuantAct)
    assert isinstance(mixer.out_proj, QuantLinear) and mixer.out_proj.rotate
    ssm = next(layer for layer in report["layers"] if layer["path"].endswith("0.mixer.ssm_in"))
    assert ssm["observer"] == "percentile" and ssm["clip"] <= ssm["amax"]
    with torch.no_grad():
        ref = model(tokens).log_softmax(-1)
        # the bound of Mamba-1's test for 16/8-bit; int4 per-channel weights (48 columns: no group
        # of 128 fits) of this untrained model move log-probabilities by ~0.12
        for recipe, bound in (("fp16", 0.1), ("w8a8", 0.1), ("w4a16", 0.3)):
            q, _ = quantize_model(model, recipe, batches, progress=False)
            assert (q(tokens).log_softmax(-1) - ref).abs().max() < bound, recipe


@pytest.mark.parametrize("recipe", ["w8a8", "w4a8"])
def test_save_load_identical_outputs(tiny, recipe, tmp_path):
    model, batches, tokens = tiny
    qmodel, report = quantize_model(model, recipe, batches, progress=False)
    save_quantized(qmodel, tmp_path / "q", recipe, report, source="tiny")
    loaded, header = load_quantized(tmp_path / "q")
    assert header["recipe"]["name"] == recipe and isinstance(loaded, Mamba2)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), qmodel(tokens))
