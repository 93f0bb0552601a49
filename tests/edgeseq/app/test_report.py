"""edgeseq report end to end on a tiny model: quantize, evaluate in PyTorch and through the
exported ONNX artifact (ONNX Runtime), profile, write the files; a re-run resumes."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

from edgeseq.checkpoints import save_model  # noqa: E402
from edgeseq.models.mamba import Mamba, MambaConfig  # noqa: E402
from edgeseq.app.report import build_report  # noqa: E402

OPTIONS = dict(max_bytes=300, calib_samples=4, profile_tokens=4, profile_prompt_len=4, verify_steps=8,
               latency_rounds=3, latency_tokens=8)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "mamba"
    model = Mamba(MambaConfig(d_model=32, n_layer=1, d_state=4))
    save_model(model, folder, meta={"task": "lm", "dataset": "shakespeare"})
    return str(folder)


def test_report_matches_artifact_and_resumes(tiny_model, tmp_path):
    out = tmp_path / "report"
    summary = build_report([tiny_model], out, recipes=["fp32", "w8a8"], targets=["cpu"], progress=False, **OPTIONS)
    assert summary["failed"] == 0
    for r in summary["results"]:
        assert not r["stage_errors"], r["stage_errors"]
        # the artifact, run in ONNX Runtime, gives the PyTorch (fake-quant) bits per byte to 3 decimals
        assert round(r["artifact"], 3) == round(r["torch"], 3)
    results = json.loads((out / "report.json").read_text())["results"]
    assert {r["config"]["recipe"] for r in results} == {"fp32", "w8a8"}
    cpu = results[0]["targets"]["cpu"]
    assert cpu["p50_ms"] > 0 and cpu["p10_ms"] <= cpu["p50_ms"] <= cpu["p90_ms"]
    # latency from interleaved rounds over every artifact, with the unit's own short profile kept aside
    assert cpu["rounds"] == 3 and cpu["tokens"] == 24 and len(cpu["round_p50_ms"]) == 3
    assert cpu["runtime"] == "onnxruntime" and "interleaved across 2 artifacts" in cpu["timing"]
    assert cpu["single_run"]["tokens"] == 4
    for name in ("report.md", "report.csv", "report.html", "accuracy_vs_bits.png"):
        assert (out / name).is_file(), name

    # resuming: nothing left to do, the stored results are reused unchanged
    before = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    build_report([tiny_model], out, recipes=["fp32", "w8a8"], targets=["cpu"], progress=False, **OPTIONS)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()} == before


def test_report_cli_rejects_unknown_recipe(tiny_model, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeseq", "report", tiny_model, "--recipes", "w3a3-magic",
                           "-o", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "w3a3-magic" in proc.stderr
    assert not (tmp_path / "r").exists()
