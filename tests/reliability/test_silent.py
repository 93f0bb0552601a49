"""Issue 17, silently wrong results: each case used to exit 0 with a wrong number; now it is a
one-line error (or, for the tokenizer, the recorded behaviour)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from reliability_helpers import assert_one_line_error, run_cli


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("To be, or not to be, that is the question. " * 4)
    return path


def _rewrite_weights(folder: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


WEIGHT_CASES = {
    "int64 weights": (lambda t: t.update({"embedding.weight": torch.ones_like(t["embedding.weight"], dtype=torch.int64)}), 2, "is int64"),
    "bool weights": (lambda t: t.update({"embedding.weight": torch.ones_like(t["embedding.weight"], dtype=torch.bool)}), 2, "is bool"),
    "float64 beyond float32": (lambda t: t.update({"embedding.weight": torch.full_like(t["embedding.weight"], 1e300, dtype=torch.float64)}), 2,
                               "NaN or Inf after conversion to float32"),
    "NaN weights": (lambda t: t["embedding.weight"].__setitem__((0, 0), float("nan")), 2, "holds NaN or Inf"),
    "finite weights that overflow in the forward pass": (
        lambda t: t["layers.0.mixer.in_proj.weight"].fill_(1e30), 1, "not finite"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_CASES))
def test_bad_weights_never_give_a_number(capsys, tiny_ckpt, text_file, case):
    edit, code, needle = WEIGHT_CASES[case]
    _rewrite_weights(tiny_ckpt, edit)
    code_, out, err = run_cli(capsys, "eval", tiny_ckpt, "--data", text_file, "--json")
    assert_one_line_error(code_, out, err, code, needle, json_mode=True)  # strict JSON, never a bare NaN


def _rewrite_config(folder: Path, **changes) -> Path:
    header = json.loads((folder / "edgeseq.json").read_text())
    header["config"] = None if changes.get("null") else {**header["config"], **changes}
    (folder / "edgeseq.json").write_text(json.dumps(header))
    return folder


@pytest.mark.parametrize("changes, needle", [
    ({"d_model": 65536, "n_layer": 64}, "has shape"),  # hundreds of GB: refused before any allocation
    ({"n_layer": 4096}, "the config describes"),  # same shapes, far more layers than the file holds
    ({"null": True}, "'config' must be a JSON object"),
])
def test_config_is_checked_against_the_weights_header_first(capsys, tiny_ckpt, monkeypatch, changes, needle):
    import edgeseq.models as models

    real = models.build_model
    built = []

    def spy(family, config=None, **kw):
        model = real(family, config, **kw)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(models, "build_model", spy)
    _rewrite_config(tiny_ckpt, **changes)
    code, out, err = run_cli(capsys, "info", tiny_ckpt)
    assert_one_line_error(code, out, err, 2, needle)
    assert "cpu" not in built  # only the meta-device skeleton was built: nothing allocated


def test_recorded_tokenizer_wins_over_a_stray_tokenizer_json(capsys, tmp_path, tiny_ckpt, text_file):
    from tokenizers import Tokenizer, models

    from edgeseq.checkpoints import load_model

    q = tmp_path / "q"
    code, _, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", "fp16", "-o", q, "--json")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "eval", q, "--data", text_file, "--json")
    before = json.loads(out)["bits_per_byte"]
    Tokenizer(models.WordLevel({"[UNK]": 0, "To": 1, "be": 2}, unk_token="[UNK]")).save(str(q / "tokenizer.json"))
    assert load_model(q).tokenizer.kind == "bytes"
    code, out, err = run_cli(capsys, "eval", q, "--data", text_file, "--json")
    assert code == 0, err
    assert json.loads(out)["bits_per_byte"] == before


def _tampered(artifact: Path, folder: Path, edit) -> Path:
    shutil.copytree(artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(folder, manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _outside(folder, manifest):
    shutil.copy(folder / "step.onnx", folder.parent / "x.onnx")
    manifest["graphs"]["step"]["file"] = "../x.onnx"


def _absolute(folder, manifest):
    shutil.copy(folder / "step.onnx", folder.parent / "abs.onnx")
    manifest["graphs"]["step"]["file"] = str(folder.parent / "abs.onnx")


def _listed_outside(folder, manifest):
    _outside(folder, manifest)
    manifest["files"].append({"path": "../x.onnx", "bytes": 1, "sha256": "0" * 64})


def _symlink(folder, manifest):
    shutil.move(folder / "step.onnx", folder.parent / "real.onnx")
    (folder / "step.onnx").symlink_to(folder.parent / "real.onnx")


def _unlisted(folder, manifest):
    shutil.copy(folder / "step.onnx", folder / "other.onnx")
    manifest["graphs"]["step"]["file"] = "other.onnx"


def _altered(folder, manifest):
    data = bytearray((folder / "step.onnx").read_bytes())
    data[-1] ^= 1
    (folder / "step.onnx").write_bytes(bytes(data))


MANIFEST_CASES = {
    "graph path ../x.onnx": (_outside, "points outside the artifact folder"),
    "absolute graph path": (_absolute, "points outside the artifact folder"),
    "files entry outside": (_listed_outside, "points outside the artifact folder"),
    "graph symlinked outside": (_symlink, "points outside the artifact folder"),
    "graph not listed with sha256": (_unlisted, "is not listed with its sha256"),
    "graph altered after export": (_altered, "sha256 mismatch"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
@pytest.mark.parametrize("command", ["run", "profile"])
def test_manifest_paths_stay_inside_and_are_checked(capsys, tmp_path, artifact, case, command):
    edit, needle = MANIFEST_CASES[case]
    folder = _tampered(artifact, tmp_path / "art", edit)
    argv = ["run", folder, "--max-new-tokens", 2] if command == "run" else ["profile", folder, "--tokens", 2]
    code, out, err = run_cli(capsys, *argv, "--json")
    assert_one_line_error(code, out, err, 2, needle, json_mode=True)


@pytest.mark.parametrize("token", [-1, 256, 10**6])
def test_out_of_range_token_ids_are_refused_before_the_runtime(artifact, token):
    from edgeseq.errors import InputError
    from targets.runtimes import open_artifact

    runner = open_artifact(artifact)
    state = runner.init_state(1)
    with pytest.raises(InputError, match=f"token id {token} is outside the model's vocabulary"):
        runner.step(torch.tensor([token]), state)
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        runner.prefill(torch.tensor([[1, token]]))
    y, _ = runner.step(torch.tensor([255]), state)  # the last valid id still works
    assert y.shape == (1, 256)


def test_classifier_with_overflowing_scores_is_an_error_not_an_accuracy():
    from edgeseq.errors import EdgeseqError
    from edgeseq.evaluate import evaluate
    from edgeseq.models import build_model

    model = build_model("lmuformer", dim=8, depth=1, n_classes=3, input_dim=4).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.fill_(1e30)  # finite weights, scores overflow to Inf/NaN
    frames, labels = torch.randn(4, 6, 4), torch.tensor([0, 1, 2, 0])
    with pytest.raises(EdgeseqError, match="scores hold NaN/Inf"):
        evaluate(model, data=(frames, labels), quiet=True)
