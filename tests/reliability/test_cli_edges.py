"""Issue 17, unclear errors and edges of the CLI: Ctrl-C, --debug, --json errors, OSError and
UnicodeError mapping, recipe field types, the listed raw errors, prompts, decoding, eval splits."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time

import pytest
import torch
from reliability_helpers import ROOT, assert_one_line_error, leftovers, run_cli, strict_json


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_ctrl_c_in_the_first_seconds_is_one_line(delay):
    import os

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "edgeseq", "info", "mamba-shakespeare"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    if proc.poll() is not None:  # finished before the signal: nothing to check
        proc.communicate()
        pytest.skip("the command finished before Ctrl-C")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("interrupted")


@pytest.mark.parametrize("argv", [["--debug", "info", "no-such-model"], ["info", "no-such-model", "--debug"]])
def test_debug_prints_the_traceback_and_keeps_the_exit_code(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2  # as without --debug
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("edgeseq info: error:")


def test_json_usage_error_is_a_json_object(capsys):
    from edgeseq.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--json"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert strict_json(out)["kind"] == "usage" and "MODEL" in strict_json(out)["error"]
    assert len(err.strip().splitlines()) == 1


def test_os_error_under_a_file_names_the_option(capsys, tmp_path, tiny_ckpt):
    (tmp_path / "file.txt").write_text("x")
    code, out, err = run_cli(capsys, "export", tiny_ckpt, "-o", tmp_path / "file.txt" / "art", "--steps", 2, "--json")
    assert_one_line_error(code, out, err, 2, "--output", json_mode=True)
    assert "is a file" in err and strict_json(out)["kind"] == "os"


@pytest.mark.parametrize("number, code, needle", [
    (errno.ENOSPC, 1, "no space left"),
    (errno.EROFS, 2, "read-only"),
    (errno.EACCES, 2, "permission denied"),
])
def test_os_errors_while_writing_are_one_line_and_leave_nothing(capsys, tmp_path, tiny_ckpt, monkeypatch, number, code, needle):
    import export.artifact as artifact

    def fail(model, path, *args, **kwargs):
        raise OSError(number, "simulated", str(path))

    monkeypatch.setattr(artifact, "export_graph", fail)
    out_dir = tmp_path / "art"
    code_, out, err = run_cli(capsys, "export", tiny_ckpt, "-o", out_dir, "--steps", 2, "--json")
    assert_one_line_error(code_, out, err, code, needle, json_mode=True)
    assert "(from --output)" in err
    assert not out_dir.exists() and leftovers(tmp_path) == []


def test_invalid_utf8_prompt_names_the_option(capsys, tiny_ckpt):
    code, out, err = run_cli(capsys, "generate", tiny_ckpt, "--prompt", "abc\udcff", "--json")
    assert_one_line_error(code, out, err, 2, "--prompt is not valid UTF-8", json_mode=True)


def test_invalid_utf8_prompt_through_a_real_process(tiny_ckpt):
    proc = subprocess.run([sys.executable, "-m", "edgeseq", "generate", str(tiny_ckpt), "--prompt", b"\xff\xfe"],
                          cwd=ROOT, capture_output=True, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err and "--prompt is not valid UTF-8" in err


RECIPES = {
    'weight_bits = "8"': "recipe field 'weight_bits' must be an integer",
    "weight_bits = 8.0": "recipe field 'weight_bits' must be an integer",
    'percentile = "high"': "recipe field 'percentile' must be a number",
    "gptq = 1": "recipe field 'gptq' must be true or false",
    'weight_granularity = 4': "recipe field 'weight_granularity' must be a string",
}


@pytest.mark.parametrize("line", sorted(RECIPES))
def test_recipe_field_types_are_checked_before_any_work(capsys, tmp_path, line):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'base = "w8a8"\n{line}\n')
    # the model does not exist: the recipe is refused first, before anything is loaded
    code, out, err = run_cli(capsys, "quantize", tmp_path / "no-model", "--recipe", recipe, "-o", tmp_path / "q")
    assert_one_line_error(code, out, err, 2, RECIPES[line])
    assert not (tmp_path / "q").exists()


def test_binary_recipe_file(capsys, tmp_path, tiny_ckpt):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    code, out, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", recipe, "-o", tmp_path / "q")
    assert_one_line_error(code, out, err, 2, "not a text recipe file")


def test_empty_calibration_file_is_blamed_on_the_file(capsys, tmp_path, tiny_ckpt):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, out, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", "w8a8", "--calib", empty, "-o", tmp_path / "q")
    assert_one_line_error(code, out, err, 2, "the calibration text")
    assert "--seq-len" not in err and str(empty) in err


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_unsafe_pt_without_format_says_it_was_refused(capsys, tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": _Payload()}, path)
    code, out, err = run_cli(capsys, "info", path)
    assert_one_line_error(code, out, err, 2, "refused to load")
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    code, out, err = run_cli(capsys, "info", plain)
    assert_one_line_error(code, out, err, 2, "pass --format")


@pytest.mark.parametrize("option, value", [("--batch-size", 0), ("--chunk", 0)])
def test_eval_nonpositive_sizes(capsys, tiny_ckpt, option, value):
    code, out, err = run_cli(capsys, "eval", tiny_ckpt, option, value, "--max-bytes", 64)
    assert_one_line_error(code, out, err, 2, f"{option} must be positive")


@pytest.mark.parametrize("method", ["forward", "prefill"])
def test_zero_time_steps_is_an_input_error(tiny_model, method):
    from edgeseq.errors import InputError

    with pytest.raises(InputError, match="needs at least one time step"):
        getattr(tiny_model, method)(torch.zeros(1, 0, dtype=torch.int64))
    with pytest.raises(InputError, match="shape \\[batch, time"):
        getattr(tiny_model, method)(torch.zeros(3, dtype=torch.int64))


def test_run_and_generate_treat_an_empty_prompt_alike(capsys, tiny_ckpt, artifact):
    for argv in (["generate", tiny_ckpt], ["run", artifact]):
        code, out, err = run_cli(capsys, *argv, "--prompt", "", "--json")
        assert_one_line_error(code, out, err, 2, "the prompt is empty", json_mode=True)
    code, out, err = run_cli(capsys, "run", artifact, "--max-new-tokens", 2, "--json")  # default: a newline
    assert code == 0 and strict_json(out)["prompt"] == "\n"


class _CountingTokenizer:
    """A non-byte tokenizer (one token per UTF-8 byte) that records how many ids each decode sees."""

    kind = "hf"

    def __init__(self):
        self.calls: list[int] = []

    def decode(self, ids):
        self.calls.append(len(ids))
        return bytes(ids).decode("utf-8", errors="replace")


def test_streamed_text_is_decoded_incrementally():
    from edgeseq.generate import TextStream

    text = "héllo wörld ✓ " * 40
    tokenizer = _CountingTokenizer()
    stream = TextStream(tokenizer)
    pieces = [stream.push(b) for b in text.encode()]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert max(tokenizer.calls) <= 4  # a window, never the whole output (that was quadratic)


def test_eval_scores_a_whole_user_file_by_default(capsys, tiny_ckpt, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("abcdefghij" * 30)
    code, out, err = run_cli(capsys, "eval", tiny_ckpt, "--data", path, "--json")
    result = strict_json(out)
    assert code == 0, err
    assert result["split"] == "all" and result["bytes"] == 299  # every byte but the first is predicted
    code, out, _ = run_cli(capsys, "eval", tiny_ckpt, "--data", path, "--split", "validation", "--json")
    assert strict_json(out)["bytes"] < 40
    code, out, err = run_cli(capsys, "eval", tiny_ckpt, "--data", "shakespeare", "--split", "all")
    assert_one_line_error(code, out, err, 2, "named dataset")


def test_eval_json_keeps_the_progress_bar_on_stderr(capsys, tiny_ckpt, monkeypatch):
    import edgeseq.evaluate as evaluate

    seen = {}
    real = evaluate.evaluate_loaded

    def spy(loaded, data=None, **kwargs):
        seen.update(kwargs)
        return real(loaded, data, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_loaded", spy)
    code, out, _ = run_cli(capsys, "eval", tiny_ckpt, "--max-bytes", 64, "--json")
    assert code == 0 and seen["quiet"] is False and strict_json(out)["task"] == "lm"


def test_a_missing_path_in_an_existing_folder_is_not_a_hub_id(tmp_path):
    """``out/missing`` where ``out/`` exists locally: "no such file or folder", never a hub download."""
    from edgeseq.checkpoints import load_model
    from edgeseq.errors import InputError

    (tmp_path / "out").mkdir()
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(InputError, match="out/missing: no such file or folder"):
            load_model("out/missing")
    finally:
        os.chdir(cwd)
