"""``edgeseq models`` and ``edgeseq info``: JSON shapes, human output, one-line errors.

Runs the dispatcher in-process (``edgeseq.cli.main``) to stay fast; the subprocess path is
covered by ``test_checkpoints.py::test_cli_bad_checkpoints_exit_2_with_one_line``.
"""

from __future__ import annotations

import json

import pytest

import edgeseq.checkpoints as checkpoints
from edgeseq.checkpoints import save_model
from edgeseq.cli import main
from edgeseq.models.mamba import Mamba, MambaConfig


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A zoo folder holding one tiny Mamba written by ``save_model`` (as the zoo's trainer does)."""
    zoo = tmp_path / "zoo"
    model = Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=1, d_state=4))
    meta = {"task": "lm", "dataset": "tiny-shakespeare", "train_command": "edgeseq train mamba ...",
            "metrics": {"val_bits_per_byte": 2.5}}
    save_model(model, zoo / "mamba-tiny", meta=meta)
    (zoo / "not-a-model").mkdir()  # ignored: no edgeseq.json
    monkeypatch.setattr(checkpoints, "ZOO_DIR", zoo)
    return zoo, model


def test_models_json_lists_zoo_entries(capsys, tiny_zoo):
    _, model = tiny_zoo
    code, out, err = run_cli(capsys, "models", "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["mamba-tiny"]
    row = rows[0]
    assert (row["family"], row["task"], row["params"]) == ("mamba", "lm", model.num_parameters())
    assert row["dataset"] == "tiny-shakespeare" and row["metrics"] == {"val_bits_per_byte": 2.5}


def test_models_families_and_human_output(capsys, tiny_zoo):
    code, out, _ = run_cli(capsys, "models", "--families", "--json")
    families = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and families["mamba"]["available"] and families["mamba"]["task"] == "lm"
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "mamba-tiny" in out and "mamba" in out


def test_info_by_zoo_name_json(capsys, tiny_zoo):
    _, model = tiny_zoo
    code, out, err = run_cli(capsys, "info", "mamba-tiny", "--json")
    assert code == 0 and err == ""
    info = json.loads(out)
    assert out.count("\n") == 1  # exactly one JSON object on one line
    assert info["config"] == model.config.to_dict()
    assert info["family"] == "mamba" and info["format"] == "edgeseq"
    assert info["params"] == model.num_parameters()
    assert [s["name"] for s in info["state_spec"]] == ["conv_0", "ssm_0"]
    assert info["state_spec"][1]["shape"] == [32, 4]


def test_info_human_output(capsys, tiny_zoo):
    code, out, _ = run_cli(capsys, "info", "mamba-tiny")
    assert code == 0
    for text in ("parameters", "ssm_0", "d_model", "tiny-shakespeare"):
        assert text in out


def test_info_unknown_model_is_one_line_exit_2(capsys, tiny_zoo):
    code, out, err = run_cli(capsys, "info", "no-such-model")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "mamba-tiny" in err  # names what exists


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out, _ = capsys.readouterr()
    assert exit_info.value.code == 0
    assert "models" in out and "info" in out
