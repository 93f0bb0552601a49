"""`edgeseq quantize` end to end on a tiny checkpoint: JSON summary, reload, clear errors."""

import json

import pytest
import torch

from edgeseq.checkpoints import load_model, save_model
from edgeseq.cli import main
from edgeseq.models.mamba import Mamba, MambaConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(Mamba(MambaConfig(vocab_size=256, d_model=32, n_layer=1, d_state=4)), folder)
    return folder


def test_quantize_json_and_reload(checkpoint, tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["quantize", str(checkpoint), "--recipe", "w8a8", "--calib", "stdlib", "--calib-samples", "4",
                 "--seq-len", "32", "-o", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"] == "w8a8" and result["calibration"]["samples"] == 4
    assert {layer["path"] for layer in result["layers"]} >= {"layers.0.mixer.ssm_in", "layers.0.mixer.out_proj"}
    assert result["bytes"]["quantized_packed"] < result["bytes"]["float"]
    loaded = load_model(out)
    assert loaded.format == "quantized" and loaded.meta["recipe"] == "w8a8"
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        stepped, _ = loaded.model.step_sequence(tokens)
        assert torch.allclose(stepped, loaded.model(tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--recipe", "w2a2x"], "unknown recipe"),
        (["--calib-samples", "0"], "calibration set is empty"),
        (["--recipe", "w4a16", "--group-size", "48"], "group size 48 does not divide"),
        (["--recipe", "w4a16", "-o", "SOURCE"], "holds a float edgeseq checkpoint"),
    ],
)
def test_quantize_bad_input(checkpoint, tmp_path, capsys, extra, message):
    extra = [str(checkpoint) if arg == "SOURCE" else arg for arg in extra]
    code = main(["quantize", str(checkpoint), "-o", str(tmp_path / "q"), "--quiet", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
