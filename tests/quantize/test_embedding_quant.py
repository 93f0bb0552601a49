"""Integer recipes round token embeddings in the quantizer (so eval of QDIR ≡ the exported artifact)."""

import json

import pytest
import torch

from edgeseq.errors import InputError
from quantize.apply import quantize_model
from quantize.io import load_quantized, model_bytes, save_quantized
from quantize.recipes import get_recipe, with_overrides


def _tiny(family):
    from edgeseq.models.mamba import Mamba, MambaConfig
    from edgeseq.models.spikegpt import SpikeGPT, SpikeGPTConfig

    torch.manual_seed(0)
    if family == "mamba":
        return Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=2, d_state=8)).eval()
    return SpikeGPT(SpikeGPTConfig(vocab_size=256, d_model=16, n_layer=2)).eval()


def _calib():
    return [torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]


def _on_row_grid(table, bits=8):
    scale = table.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
    q = table / scale
    return bool((q - q.round()).abs().max() < 1e-3 and q.abs().max() <= 2 ** (bits - 1) - 1 + 1e-3)


def test_w8a8_rounds_mamba_embedding_and_round_trips(tmp_path):
    model = _tiny("mamba")
    assert not _on_row_grid(model.embedding.weight.detach())
    qmodel, report = quantize_model(model, "w8a8", _calib(), progress=False)
    table = qmodel.embedding.weight.detach()
    assert _on_row_grid(table)
    assert report["embeddings"] == {"bits": 8, "tables": ["embedding"]}
    save_quantized(qmodel, tmp_path / "q", "w8a8", report)
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["embedding_bits"] == 8
    loaded, _ = load_quantized(tmp_path / "q")
    assert loaded.quantization.embedding_bits == 8
    assert torch.equal(loaded.embedding.weight, table)
    # deployed bytes count the table at 8 bits (+ a float32 scale per row), not 32
    rows, dim = table.shape
    assert model_bytes(loaded)["stored"] - model_bytes(loaded)["packed"] >= rows * dim * 3 - rows * 4


def test_idempotent_rounding():
    from quantize.qdq import quantize_embeddings

    model = _tiny("mamba")
    first = {k: v[0].clone() for k, v in quantize_embeddings(model, 8).items()}
    before = model.embedding.weight.detach().clone()
    second = quantize_embeddings(model, 8)
    assert all(torch.equal(first[k], second[k][0]) for k in first)
    assert torch.allclose(model.embedding.weight, before, rtol=1e-6, atol=0)


def test_spikegpt_keeps_its_spiking_embedding_float():
    model = _tiny("spikegpt")
    qmodel, report = quantize_model(model, "w8a8", _calib(), progress=False)
    assert torch.equal(qmodel.emb.weight, model.emb.weight)
    assert report["embeddings"]["bits"] == 0 and qmodel.quantization.embedding_bits == 0


def test_recipe_can_keep_embeddings_float_and_rejects_bad_bits():
    model = _tiny("mamba")
    recipe = with_overrides(get_recipe("w4a16"), embedding_bits=0)
    qmodel, _ = quantize_model(model, recipe, progress=False)
    assert torch.equal(qmodel.embedding.weight, model.embedding.weight)
    with pytest.raises(InputError, match="embedding_bits"):
        with_overrides(get_recipe("w8a8"), embedding_bits=12)


def test_float_recipes_leave_embeddings_alone():
    model = _tiny("mamba")
    qmodel, _ = quantize_model(model, "fp16", progress=False)
    assert qmodel.quantization.embedding_bits == 0
