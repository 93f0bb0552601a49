"""The Python front door: quantize, export and profile with one ``import edgeseq``."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture()
def tiny():
    from targets.testing import tiny_mamba

    return tiny_mamba(seed=0)


def test_quantize_export_profile_in_one_import(tiny, tmp_path, monkeypatch):
    import edgeseq

    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache"))
    calib = [torch.randint(0, 32, (2, 32)) for _ in range(2)]
    qmodel = edgeseq.quantize(tiny, "w8a8", calib=calib)
    assert qmodel.quantization.recipe == "w8a8" and qmodel.quantization.report["layers"]
    assert tiny.quantization is None  # the float model is untouched

    manifest = edgeseq.export(qmodel, tmp_path / "art", steps=8, prefill=False)
    assert manifest["recipe"] == "w8a8" and manifest["verification"]["passed"]
    assert manifest["target"]["name"] == "host"

    report = edgeseq.profile(tmp_path / "art", tokens=3, warmup=1, prompt_len=0, threads=1)
    assert report["runtime"] == "onnxruntime" and report["p50_ms"] > 0
    torch_report = edgeseq.profile(tiny, tokens=3, warmup=1, prompt_len=0, threads=1)
    assert torch_report["runtime"] == "torch"


def test_export_options_as_a_dataclass_or_keywords(tiny, tmp_path):
    import edgeseq

    options = edgeseq.ExportOptions(format="onnx", steps=8, prefill=False)
    manifest = edgeseq.export(tiny, tmp_path / "a", options)
    assert manifest["recipe"] == "fp32"
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["verification"]["steps"] == 8
    with pytest.raises(edgeseq.InputError, match="unknown export option.*colour"):
        edgeseq.export(tiny, tmp_path / "b", colour="red")
    with pytest.raises(edgeseq.InputError, match="expected an edgeseq model"):
        edgeseq.quantize(object())


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's front-door block, as written (zoo model, default calibration, host target)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- front-door example: tests/test_front_door.py runs this block -->", 1)[1]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["manifest"]["verification"]["passed"] and namespace["report"]["p50_ms"] > 0
    assert (tmp_path / "out" / "q8-onnx" / "manifest.json").is_file()
