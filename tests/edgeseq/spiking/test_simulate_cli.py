"""``edgeseq simulate``: JSON output, the dense comparison, and one-line errors."""

import json

import pytest

from edgeseq.cli import main

pytest.importorskip("edgeseq.models.spikegpt")


def _run(capsys, *argv):
    code = main(["simulate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_with_dense_comparison(capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 4)
    report_file = tmp_path / "report.json"
    code, out, err = _run(capsys, "random:spikegpt", "--set", "d_model=32", "--set", "n_layer=2", "--data", str(text),
                          "--samples", "2", "--length", "6",
                          "--compare-dense", "--device-table", "45nm-int8", "-o", str(report_file), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report == json.loads(report_file.read_text())
    assert report["data"]["samples"] == 2 and report["data"]["steps"] == 6
    total = report["total"]
    assert total["dense_macs"] > 0 and total["neuron_updates"] > 0
    assert report["energy"]["table"] == "45nm-int8" and report["energy"]["total_pj"] > 0
    cmp = report["comparison"]
    assert cmp["spikes_identical"] is True
    assert cmp["ops_ratio"] == pytest.approx(cmp["dense_ops"] / cmp["spiking_ops"])
    names = [layer["name"] for layer in report["layers"]]
    assert "blocks.0.lif1" in names and "blocks.0.att" in names  # WKV arithmetic is attributed to TimeMix


def test_human_output(capsys):
    code, out, err = _run(capsys, "random:spikegpt", "--set", "d_model=16", "--set", "n_layer=1", "--data", "random",
                          "--samples", "1", "--length", "3")
    assert code == 0, err
    assert "per step:" in out and "total" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["random:spikegpt", "--device-table", "nope"], "unknown energy table"),
        (["random:spikegpt", "--samples", "0"], "--samples"),
        (["random:spikegpt", "--set", "n_layer=1", "--data", "/no/such/file.txt"], "file"),
        (["random:spikegpt", "--set", "nope"], "KEY=VALUE"),
        (["random:spikegpt", "--set", "n_layers=1"], "n_layers"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_nir_export_from_the_cli(capsys, tmp_path):
    pytest.importorskip("nir")
    pytest.importorskip("edgeseq.models.lmuformer")
    path = tmp_path / "model.nir"
    code, out, err = _run(capsys, "random:spiking-lmuformer", "--set", "dim=16", "--set", "embed_layers=2",
                          "--data", "random", "--samples", "2", "--length", "6",
                          "--nir", str(path), "--json")
    assert code == 0, err
    nir_report = json.loads(out)["nir"]
    assert path.is_file() and nir_report["spikes_identical"] is True
    assert {"I", "Delay", "LIF"} <= set(nir_report["node_types"])


def test_spikegpt_nir_is_refused_before_simulating(capsys, tmp_path):
    code, out, err = _run(capsys, "random:spikegpt", "--nir", str(tmp_path / "x.nir"))
    assert code == 1 and "LayerNorm" in err and err.count("\n") == 1
    assert not (tmp_path / "x.nir").exists()


def test_simulation_data_sources(tmp_path):
    import torch

    from edgeseq.errors import InputError
    from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig
    from edgeseq.spiking.report import simulation_data

    class TinyLM(torch.nn.Module):
        task = "lm"

    text = tmp_path / "t.txt"
    text.write_text("abcdefghij" * 3)
    data = simulation_data(TinyLM(), str(text), samples=3, length=5)
    assert data.kind == "tokens" and data.inputs.shape == (3, 5)
    assert data.inputs[0].tolist() == list(b"abcde")  # evenly spaced windows from the start
    with pytest.raises(InputError, match="--length"):
        simulation_data(TinyLM(), str(text), samples=1, length=1000)
    frames = simulation_data(SpikingMLP(SpikingMLPConfig(in_features=7)), None, samples=2, length=4)
    assert frames.kind == "frames" and frames.inputs.shape == (2, 4, 7) and "random" in frames.source
