"""``edgeseq export`` and ``edgeseq run`` end to end, and loading an artifact with load_model."""

import json

import torch

from edgeseq.checkpoints import load_model, save_model
from edgeseq.cli import main


def test_export_then_run_generates_through_the_artifact(tiny_mamba, tmp_path, capsys):
    save_model(tiny_mamba, tmp_path / "ckpt")
    out = tmp_path / "art"
    code = main(["export", str(tmp_path / "ckpt"), "--format", "onnx", "--target", "cpu", "-o", str(out),
                 "--steps", "8", "--prefill-length", "8", "--json"])
    manifest = json.loads(capsys.readouterr().out)
    assert code == 0 and manifest["verification"]["passed"] and manifest["model"]["family"] == "mamba"

    assert main(["run", str(out), "--prompt", "hello world", "--max-new-tokens", "6", "--temperature", "0",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 6 and result["runtime"] == "onnxruntime"
    # the same greedy continuation in PyTorch
    ids = list(b"hello world")
    with torch.no_grad():
        logits, state = tiny_mamba.prefill(torch.tensor([ids]))
        token = int(logits[0, -1].argmax())
        expected = [token]
        for _ in range(5):
            logits, state = tiny_mamba.step(torch.tensor([token]), state)
            token = int(logits[0].argmax())
            expected.append(token)
    assert result["token_ids"] == expected
    # `edgeseq generate` on the checkpoint: the same loop, flags and JSON, the same continuation
    assert main(["generate", str(tmp_path / "ckpt"), "--prompt", "hello world", "--max-new-tokens", "6",
                 "--temperature", "0", "--json"]) == 0
    through_torch = json.loads(capsys.readouterr().out)
    assert through_torch["token_ids"] == expected and through_torch["runtime"] == "pytorch"
    assert set(through_torch) == set(result)

    # the existing folder is refused (exit code 2, one line)
    code = main(["export", str(tmp_path / "ckpt"), "-o", str(out), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "already exists; pass --force" in err and len(err.strip().splitlines()) == 1


def test_load_model_opens_an_artifact(tiny_mamba, tmp_path):
    from export.artifact import export_artifact

    export_artifact(tiny_mamba, tmp_path / "art", steps=4, prefill_length=8)
    loaded = load_model(tmp_path / "art")
    assert loaded.format == "artifact" and loaded.model.task == "lm"
    tokens = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        ref = tiny_mamba(tokens)
    out = loaded.model(tokens)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-4


def test_tampered_artifact_is_refused(tiny_mamba, tmp_path):
    import pytest

    from edgeseq.errors import InputError
    from export.artifact import export_artifact
    from targets.runtimes import open_artifact

    export_artifact(tiny_mamba, tmp_path / "art", steps=2, prefill=False)
    with open(tmp_path / "art" / "step.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="sha256 mismatch"):
        open_artifact(tmp_path / "art")


def test_bits_per_byte_through_the_artifact_equals_pytorch(tiny_mamba, tmp_path):
    """``edgeseq.evaluate.lm_nats`` (the evaluator behind ``edgeseq eval``) gives the same loss
    on the PyTorch model and on its ONNX artifact, to 3 decimals of bits per byte."""
    import math

    from edgeseq.evaluate import lm_nats
    from export.artifact import export_artifact
    from targets.runtimes import open_artifact

    export_artifact(tiny_mamba, tmp_path / "art", steps=4, prefill_length=16)
    ids = torch.tensor(list(b"To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer" * 3))
    ref = lm_nats(tiny_mamba, ids, chunk_len=40) / ((ids.numel() - 1) * math.log(2))
    art = lm_nats(open_artifact(tmp_path / "art"), ids, chunk_len=40) / ((ids.numel() - 1) * math.log(2))
    assert round(ref, 3) == round(art, 3) and abs(ref - art) < 1e-4


def test_float16_onnx_export(tiny_mamba, tmp_path):
    """float16 graphs against the model cast to float16 in PyTorch (tolerance 2e-2, half precision)."""
    from export.artifact import export_artifact

    manifest = export_artifact(tiny_mamba, tmp_path / "f16", dtype="float16", steps=64, prefill=False)
    assert manifest["dtype"] == "float16" and manifest["verification"]["passed"]
    assert manifest["graphs"]["step"]["inputs"][1]["dtype"] == "float16"
