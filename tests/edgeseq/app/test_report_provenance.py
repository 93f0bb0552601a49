"""A report an engineer can trust: a failed export shows as failed, with its reason, in every
format and with no latency in its place; stored units are keyed by every option that changes a
result; one run per folder; the CLI exits non-zero when configurations failed."""

import csv
import json

import pytest

pytest.importorskip("onnxruntime")

import edgeseq.app.report as report  # noqa: E402
from edgeseq.checkpoints import save_model  # noqa: E402
from edgeseq.errors import InputError  # noqa: E402
from edgeseq.models.mamba import Mamba, MambaConfig  # noqa: E402
from edgeseq.app.report import build_report  # noqa: E402
from edgeseq.app.sweep import folder_lock  # noqa: E402

OPTIONS = dict(max_bytes=300, calib_samples=4, profile_tokens=4, profile_prompt_len=4, verify_steps=8)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "mamba"
    save_model(Mamba(MambaConfig(d_model=32, n_layer=1, d_state=4)), folder, meta={"task": "lm", "dataset": "shakespeare"})
    return str(folder)


def _broken_export(*args, **kwargs):
    raise RuntimeError("simulated exporter crash")


def test_failed_export_shows_as_failed_in_every_format(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_export", _broken_export)
    out = tmp_path / "r"
    summary = build_report([tiny_model], out, recipes=["fp32"], targets=["cpu"], progress=False, **OPTIONS)
    assert summary["partial"] == 1
    result = json.loads((out / "report.json").read_text())["results"][0]
    assert result["status"] == "partial"
    assert "simulated exporter crash" in result["stage_errors"]["export"]
    assert result["stage_errors"]["profile:cpu"].startswith("not run")
    assert result["targets"] == {}  # no PyTorch latency in the artifact's place
    assert result["torch_metric"] is not None and result.get("artifact_metric") is None

    row = next(csv.DictReader(open(out / "report.csv")))
    assert row["status"] == "partial"
    assert "simulated exporter crash" in row["failed_stages"] and "simulated exporter crash" in row["error"]
    assert row["cpu.runtime"] == "failed" and row["cpu.p50_ms"] == "" and row["artifact_format"] == "failed"

    md = (out / "report.md").read_text()
    assert "Failed stages" in md and "simulated exporter crash" in md and "| partial |" in md
    page = (out / "report.html").read_text()
    assert "simulated exporter crash" in page and "class='partial'" in page
    # where the figures come from: machine, run, evaluation size
    assert "cores" in md and summary["run_id"] in md
    assert "299 bytes of shakespeare (validation)" in md  # the first byte is given, never predicted


def test_resume_is_keyed_by_every_result_option(tiny_model, tmp_path):
    out = tmp_path / "r"
    build_report([tiny_model], out, recipes=["fp32"], targets=[], progress=False, **OPTIONS)
    stored = out / "results" / next(p.name for p in (out / "results").iterdir())
    first = json.loads(stored.read_text())
    assert first["eval"]["bytes"] == 299 and first["options"]["max_bytes"] == 300
    # same options: reused untouched
    mtime = stored.stat().st_mtime_ns
    build_report([tiny_model], out, recipes=["fp32"], targets=[], progress=False, **OPTIONS)
    assert stored.stat().st_mtime_ns == mtime
    # another evaluation size: redone, not reused
    build_report([tiny_model], out, recipes=["fp32"], targets=[], progress=False, **{**OPTIONS, "max_bytes": 200})
    again = json.loads(stored.read_text())
    assert again["eval"]["bytes"] == 199 and again["fingerprint"] != first["fingerprint"]


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    with folder_lock(tmp_path / "r"):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            message = pool.apply(_try_lock, (str(tmp_path / "r"),))
    assert "in use by another edgeseq run" in message and "pid" in message
    with folder_lock(tmp_path / "r"):  # released: the next run may go
        pass


def _try_lock(folder):
    try:
        with folder_lock(folder):
            return "acquired"
    except InputError as exc:
        return str(exc)


def test_cli_exits_nonzero_and_says_which_units_failed(tiny_model, tmp_path, monkeypatch, capsys):
    from edgeseq.cli import main

    monkeypatch.setattr(report, "_export", _broken_export)
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_info:
        main(["report", tiny_model, "--recipes", "fp32", "--targets", "", "--max-bytes", "300", "--calib-samples", "4",
              "-o", str(out), "--json"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # the summary still comes out, as one JSON object
    assert summary["partial"] == 1
    assert "fp32: partial: export: RuntimeError: simulated exporter crash" in captured.err


def test_a_gpu_target_profiles_the_model_and_a_cpu_target_the_artifact(tiny_model, tmp_path, monkeypatch):
    """On a CUDA target the report times the model through its fastest verified GPU runtime (the CPU
    artifact is not what a GPU runs); on the CPU the exported artifact, as before."""
    seen = {}

    def fake_profile(source, target, tokens, prompt_len):
        seen[target] = source
        return {"p50_ms": 0.2 if target == "h200" else 3.0, "runtime": "triton-fused" if target == "h200" else "onnxruntime"}

    monkeypatch.setattr(report, "_profile", fake_profile)
    out = tmp_path / "r"
    build_report([tiny_model], out, recipes=["fp32"], targets=["cpu", "h200"], progress=False, latency_rounds=0, **OPTIONS)
    assert seen["h200"] == tiny_model  # fp32: the model itself
    assert "artifact-onnx" in seen["cpu"]
    row = next(csv.DictReader(open(out / "report.csv")))
    assert row["h200.runtime"] == "triton-fused" and float(row["h200.p50_ms"]) == 0.2


def test_pipeline_auto_targets_add_the_visible_gpu(monkeypatch):
    import torch

    from edgeseq.cli.pipeline import pipeline_targets
    from targets.registry import gpu_target_for

    assert gpu_target_for("NVIDIA H200") == "h200"
    assert gpu_target_for("NVIDIA H100 PCIe") == "h100-pcie" and gpu_target_for("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_target_for("NVIDIA GeForce RTX 4090") == "rtx-4090" and gpu_target_for("Tesla T4") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pipeline_targets("auto") == ["cpu"]
    assert pipeline_targets("cpu,aarch64") == ["cpu", "aarch64"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert pipeline_targets("auto") == ["cpu", "h200"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")  # not in the registry
    assert pipeline_targets("auto") == ["cpu"]
