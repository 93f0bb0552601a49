"""The report files: tables, CSV, JSON, plots and one self-contained HTML page."""

import csv
import json

from edgeseq.app.report_writer import flat_rows, write_report


def _result(model, recipe, w, a, metric, latency, energy=None, status="ok"):
    r = {
        "config": {"model": model, "recipe": recipe}, "status": status, "error": None if status == "ok" else "boom",
        "family": "mamba", "task": "lm", "params": 1234, "weight_bits": w, "act_bits": a,
        "metric": "bits_per_byte", "torch_metric": metric, "artifact_metric": metric,
        "artifact_format": "onnx", "model_bytes": 1000 * w,
    }
    if latency:
        r["targets"] = {"cpu": {"p50_ms": latency, "p99_ms": latency * 1.5, "tokens_per_s": 1000 / latency,
                                "roofline_ratio": 3.0}}
    if energy:
        r["spiking"] = {"energy_per_token_j": energy}
    return r


def test_report_files(tmp_path):
    results = [
        _result("m", "fp32", 32, 32, 2.00, 1.0, {"45nm": 2e-6, "loihi": 5e-7}),
        _result("m", "w8a8", 8, 8, 2.01, 0.5, {"45nm": 1e-6, "loihi": 4e-7}),
        _result("m", "w4a16", 4, 16, 2.10, 0.4),
        _result("m", "w4a8", 4, 8, None, None, status="error"),
    ]
    paths = write_report(results, tmp_path, title="t")
    for kind in ("md", "json", "csv", "html", "accuracy_vs_bits", "accuracy_vs_latency", "pareto", "energy_per_token"):
        assert kind in paths, kind
    md = (tmp_path / "report.md").read_text()
    assert "| recipe |" in md and "w4a16" in md and "boom" in md
    assert json.loads((tmp_path / "report.json").read_text())["results"][1]["torch_metric"] == 2.01
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert [r["recipe"] for r in rows] == ["fp32", "w8a8", "w4a16", "w4a8"]
    assert rows[0]["cpu.p50_ms"] == "1.0"
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # plots embedded: one file is enough
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # each is smaller or better than the others (a trade-off front); the failed row has no place on it
    assert [r["pareto"] for r in rows] == ["front", "front", "front", ""]
    assert rows[3]["failed_stages"] == "boom" and "boom" in page
    assert (tmp_path / "accuracy_vs_bits.png").read_bytes()[:4] == b"\x89PNG"


def test_flat_rows_tolerate_missing_sections():
    rows = flat_rows([{"config": {"model": "m", "recipe": "fp32"}, "status": "error", "error": "x"}])
    assert rows[0]["torch"] is None and rows[0]["error"] == "x"


def test_pareto_plot_with_ties_in_size(tmp_path):
    # two recipes with the same deployed size (w4a8 and w4a16 of one model) are both drawn
    results = [_result("m", "w4a8", 4, 8, 2.10, 0.5), _result("m", "w4a16", 4, 16, 2.05, 0.6),
               _result("m", "fp32", 32, 32, 2.00, 1.0)]
    paths = write_report(results, tmp_path, title="t")
    assert (tmp_path / "pareto.png").is_file() and "pareto" in paths
    rows = flat_rows(results)
    assert [r["pareto"] for r in rows] == ["dominated by w4a16", "front", "front"]
