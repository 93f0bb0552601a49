"""``edgeseq train``, ``edgeseq eval`` and ``edgeseq generate``: JSON schemas and one-line errors.

The dispatcher runs in-process (``edgeseq.cli.main``) to stay fast; one subprocess test checks
the real exit code and the single stderr line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeseq.checkpoints import save_model
from edgeseq.cli import main
from edgeseq.models import build_model


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "corpus.txt"
    path.write_text("All the world's a stage, and all the men and women merely players. " * 20)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path, text_file):
    model = build_model("mamba", d_model=12, n_layer=1, d_state=4)
    return save_model(model, tmp_path / "tiny", meta={"task": "lm", "dataset": str(text_file)})


def test_train_json_gives_final_losses(capsys, tmp_path, text_file):
    code, out, err = run_cli(capsys, "train", "mamba", "--data", text_file, "-o", tmp_path / "m", "--steps", 3,
                             "--set", "d_model=12", "--set", "n_layer=1", "--set", "d_state=4",
                             "--seq-len", 16, "--batch-size", 2, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"train_loss", "val_loss", "val_bits_per_byte", "params", "steps", "out_dir"} <= set(result)
    assert result["steps"] == 3
    header = json.loads((tmp_path / "m" / "edgeseq.json").read_text())
    assert header["meta"]["train_command"].startswith("edgeseq train mamba --data")


def test_eval_json_on_its_own_dataset(capsys, tiny_checkpoint):
    code, out, err = run_cli(capsys, "eval", tiny_checkpoint, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"bits_per_byte", "tokens", "bytes", "loss_nats", "perplexity"} <= set(result)
    assert result["split"] == "validation" and result["tokens"] > 100


def test_eval_zoo_model_offline(capsys):
    code, out, err = run_cli(capsys, "eval", "mamba-shakespeare", "--max-bytes", 300, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["dataset"] == "shakespeare" and result["tokens"] == 299
    assert result["bits_per_byte"] < 3.0  # a trained model; uniform bytes would be 8 bits


def test_eval_human_output(capsys, tiny_checkpoint):
    code, out, _ = run_cli(capsys, "eval", tiny_checkpoint, "--max-bytes", 50)
    assert code == 0 and "bits per byte" in out


def test_generate_json(capsys, tiny_checkpoint):
    code, out, err = run_cli(capsys, "generate", tiny_checkpoint, "--prompt", "All", "--max-new-tokens", 5,
                             "--temperature", 0, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] == 5 and isinstance(result["text"], str)


def test_generate_streams_text(capsys, tiny_checkpoint):
    code, out, err = run_cli(capsys, "generate", tiny_checkpoint, "--prompt", "All", "--max-new-tokens", 4)
    assert code == 0 and out.startswith("All") and "4 tokens" in err


@pytest.mark.parametrize("argv, message", [
    (["eval", "{ckpt}", "--data", "{tmp}/missing.txt"], "nor an existing text file"),
    (["eval", "{ckpt}", "--data", "{tmp}/empty.txt"], "character"),
    (["train", "transformer", "-o", "{tmp}/x"], "unknown model family"),
    (["train", "mamba", "--data", "shakespeare", "-o", "{tmp}/x"], "not shipped"),
    (["generate", "{ckpt}", "--prompt", ""], "prompt is empty"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, tiny_checkpoint, argv, message):
    (tmp_path / "empty.txt").write_text("")
    argv = [a.format(ckpt=tiny_checkpoint, tmp=tmp_path) for a in argv]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


def test_subprocess_exit_code_and_single_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeseq", "eval", "mamba-shakespeare", "--data",
                           str(tmp_path / "nope.txt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope.txt" in proc.stderr


def test_generate_and_run_take_the_same_generation_flags_and_defaults(capsys):
    from edgeseq.cli import build_parser
    from edgeseq.generate import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE

    parser = build_parser()
    shared = ("prompt", "max_new_tokens", "temperature", "top_k", "seed", "stop")
    flags = ["--prompt", "x", "--max-new-tokens", "7", "--temperature", "0.5", "--top-k", "3", "--seed", "9",
             "--stop", "!"]
    for argv in ([], flags):
        gen = vars(parser.parse_args(["generate", "m", *argv]))
        run = vars(parser.parse_args(["run", "art", *argv]))
        assert {k: gen[k] for k in shared} == {k: run[k] for k in shared}
    defaults = vars(parser.parse_args(["run", "art"]))
    assert (defaults["max_new_tokens"], defaults["temperature"], defaults["prompt"]) == (
        DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, "\n")
    for command in ("generate", "run"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        shown = capsys.readouterr().out
        assert "--max-new-tokens" in shown and "--max-tokens" not in shown  # the old spelling is hidden


@pytest.mark.parametrize("command", ["generate", "run"])
def test_the_old_max_tokens_spelling_still_works_with_one_deprecation_line(capsys, command):
    from edgeseq.cli import build_parser

    args = build_parser().parse_args([command, "m", "--max-tokens", "5"])
    err = capsys.readouterr().err
    assert args.max_new_tokens == 5
    assert err.strip().splitlines() == [f"edgeseq {command}: --max-tokens is deprecated; use --max-new-tokens"]


def test_generate_with_the_old_flag_end_to_end(capsys, tiny_checkpoint):
    code, out, err = run_cli(capsys, "generate", tiny_checkpoint, "--prompt", "All", "--max-tokens", 3, "--json")
    assert code == 0 and json.loads(out)["tokens"] == 3
    assert "--max-tokens is deprecated" in err and len(err.strip().splitlines()) == 1
