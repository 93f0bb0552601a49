"""quantize_model on a tiny Mamba: rotation exact in float, step ≡ forward, save → load, errors.

Oracle for the float checks: the unquantized model itself.
"""

import json

import pytest
import torch

from edgeseq.checkpoints import load_model
from edgeseq.errors import EdgeseqError, InputError
from edgeseq.models.mamba import Mamba, MambaConfig
from quantize.apply import quantize_model
from quantize.io import load_quantized, save_quantized
from quantize.modules import QuantAct, QuantLinear
from quantize.recipes import QuantRecipe, get_recipe, load_recipe_file


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=256, d_model=32, n_layer=2, d_state=4)).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (2, 24), generator=gen) for _ in range(2)]
    tokens = torch.randint(0, 256, (2, 20), generator=gen)
    return model, batches, tokens


def test_float_rotation_computes_the_same_function(tiny):
    """Online H x with W·Hᵀ fused offline, all in float, equals the unrotated model."""
    from quantize.hadamard import fuse_rotation, hadamard_transform

    model, _, tokens = tiny
    rotated = __import__("copy").deepcopy(model)
    for block in rotated.layers:
        layer = block.mixer.out_proj
        fused = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
        fused.weight.data = fuse_rotation(layer.weight.data)
        block.mixer.out_proj = torch.nn.Sequential(_Rotate(hadamard_transform), fused)
    with torch.no_grad():
        # float32: two reductions of length d_inner=64 → differences of a few ulps of the logits
        assert torch.allclose(rotated(tokens), model(tokens), atol=1e-5, rtol=1e-5)


class _Rotate(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("recipe", ["w8a8-minmax", "w8a8", "w4a8", "w4a16", "w4a16-gptq"])
def test_quantized_step_equals_forward(tiny, recipe):
    """step ≡ forward after quantization: static scales make the quantizers per-element functions,
    so both forms see the same quantized values; float32 tolerance as the float model's test."""
    model, batches, tokens = tiny
    qmodel, report = quantize_model(model, recipe, batches, progress=False)
    assert report["summary"]["quantized_weights"] == 9  # 4 linear layers × 2 and the tied head's own copy (head_bits)
    with torch.no_grad():
        logits = qmodel(tokens)
        stepped, _ = qmodel.step_sequence(tokens)
    assert torch.allclose(stepped, logits, atol=1e-4, rtol=1e-4)
    # the original model is untouched
    assert isinstance(model.layers[0].mixer.in_proj, torch.nn.Linear)


def test_w8a8_structure_and_report(tiny):
    model, batches, _ = tiny
    qmodel, report = quantize_model(model, "w8a8", batches, progress=False)
    mixer = qmodel.layers[0].mixer
    assert isinstance(mixer.ssm_in, QuantAct)
    assert isinstance(mixer.out_proj, QuantLinear) and mixer.out_proj.rotate
    assert mixer.x_proj.input_scale is None  # quantized at ssm_in already
    ssm = next(layer for layer in report["layers"] if layer["path"].endswith("ssm_in"))
    assert ssm["observer"] == "percentile" and ssm["clip"] <= ssm["amax"]
    json.dumps(report)


def test_quantized_model_is_close_to_float(tiny):
    model, batches, tokens = tiny
    with torch.no_grad():
        ref = model(tokens).log_softmax(-1)
        for recipe in ("fp16", "w8a8"):
            q, _ = quantize_model(model, recipe, batches, progress=False)
            assert (q(tokens).log_softmax(-1) - ref).abs().max() < 0.1


@pytest.mark.parametrize("recipe", ["fp16", "w8a8", "w4a16"])
def test_save_load_identical_outputs(tiny, recipe, tmp_path):
    model, batches, tokens = tiny
    qmodel, report = quantize_model(model, recipe, batches, progress=False)
    save_quantized(qmodel, tmp_path / "q", recipe, report, source="tiny")
    loaded, header = load_quantized(tmp_path / "q")
    assert header["recipe"]["name"] == recipe
    via_dispatch = load_model(tmp_path / "q")
    assert via_dispatch.format == "quantized"
    with torch.no_grad():
        assert torch.equal(loaded(tokens), qmodel(tokens))
        assert torch.equal(via_dispatch.model(tokens), qmodel(tokens))


def test_bad_inputs(tiny, tmp_path):
    model, batches, _ = tiny
    with pytest.raises(InputError, match="unknown recipe 'w3a3'"):
        quantize_model(model, "w3a3", batches)
    with pytest.raises(InputError, match="calibration set is empty"):
        quantize_model(model, "w8a8", [], progress=False)
    with pytest.raises(InputError, match="calibration data is needed"):
        quantize_model(model, "w8a8", None, progress=False)
    bad = torch.randn(2, 8, 4)
    bad[0, 1, 2] = float("nan")
    with pytest.raises(InputError, match="NaN/Inf"):
        from quantize.calibrate import check_batch

        check_batch(bad, 0)
    with pytest.raises(InputError, match="token ids outside"):
        quantize_model(model, "w8a8", [torch.full((1, 4), 300)], progress=False)
    recipe = tmp_path / "g48.toml"
    recipe.write_text('base = "w4a16"\ngroup_size = 48\n')
    with pytest.raises(InputError, match="group size 48 does not divide"):
        quantize_model(model, load_recipe_file(recipe), batches, progress=False)
    with pytest.raises(InputError, match="unknown recipe field"):
        (tmp_path / "bad.json").write_text('{"base": "w8a8", "bitz": 3}')
        get_recipe(str(tmp_path / "bad.json"))


def test_nan_activation_is_a_clear_error(tiny):
    model, batches, _ = tiny
    broken = __import__("copy").deepcopy(model)
    with torch.no_grad():
        broken.layers[0].mixer.in_proj.weight[0, 0] = float("inf")
    with pytest.raises(EdgeseqError, match="non-finite activation"):
        quantize_model(broken, "w8a8", batches, progress=False)


def test_custom_recipe_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "w8a8"\npercentile = 99.9\nrotate = false\n')
    recipe = get_recipe(str(path))
    assert isinstance(recipe, QuantRecipe)
    assert recipe.name == "mine" and recipe.percentile == 99.9 and not recipe.rotate and recipe.act_bits == 8
