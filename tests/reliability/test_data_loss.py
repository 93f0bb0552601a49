"""Issue 17, data loss and half-written output: nothing of the user's is deleted or overwritten, an
interrupted export leaves nothing, and no reader accepts an artifact without a passed verification."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_helpers import ROOT, assert_one_line_error, leftovers, run_cli, snapshot

pytest.importorskip("onnxruntime")


def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("\\documentclass{article} my thesis")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


@pytest.mark.parametrize("force", [False, True])
def test_export_never_deletes_a_users_folder(capsys, tmp_path, tiny_ckpt, force):
    out = _user_folder(tmp_path / "mine")
    before = snapshot(out)
    code, stdout, err = run_cli(capsys, "export", tiny_ckpt, "-o", out, "--steps", 2, "--no-prefill",
                                *(["--force"] if force else []), "--json")
    needle = "not an edgeseq artifact" if force else "already exists"
    assert_one_line_error(code, stdout, err, 2, needle, json_mode=True)
    assert snapshot(out) == before  # files, contents and modes untouched
    assert leftovers(tmp_path) == []


def test_export_force_replaces_an_earlier_artifact_and_an_empty_folder(capsys, tmp_path, tiny_ckpt):
    out = tmp_path / "art"
    out.mkdir()  # empty: allowed with --force
    code, _, err = run_cli(capsys, "export", tiny_ckpt, "-o", out, "--steps", 2, "--no-prefill", "--force", "--json")
    assert code == 0, err
    first = json.loads((out / "manifest.json").read_text())["created"]
    code, _, err = run_cli(capsys, "export", tiny_ckpt, "-o", out, "--steps", 2, "--no-prefill", "--force", "--json")
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["verification"]["passed"] is True
    assert first  # replaced in place
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not left 0700 by mkdtemp
    assert leftovers(tmp_path) == []
    # a file the user added to the artifact folder makes it theirs: --force refuses
    (out / "notes.txt").write_text("mine")
    code, stdout, err = run_cli(capsys, "export", tiny_ckpt, "-o", out, "--steps", 2, "--no-prefill", "--force")
    assert_one_line_error(code, stdout, err, 2, "not an edgeseq artifact")
    assert (out / "notes.txt").read_text() == "mine"


def test_quantize_does_not_overwrite_without_force(capsys, tmp_path, tiny_ckpt):
    out = tmp_path / "q"
    code, _, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", "fp16", "-o", out, "--json")
    assert code == 0, err
    before = snapshot(out)
    code, stdout, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", "fp16", "-o", out, "--json")
    assert_one_line_error(code, stdout, err, 2, "already exists; pass --force", json_mode=True)
    assert snapshot(out) == before
    code, _, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", "fp16", "-o", out, "--force", "--json")
    assert code == 0, err
    user = _user_folder(tmp_path / "mine")
    before = snapshot(user)
    code, stdout, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", "fp16", "-o", user, "--force")
    assert_one_line_error(code, stdout, err, 2, "not an `edgeseq quantize` folder")
    assert snapshot(user) == before


def _unverified_copy(artifact: Path, folder: Path, edit) -> Path:
    shutil.copytree(artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


PARTIAL_CASES = {
    "no verification record (killed export)": lambda m: m.pop("verification"),
    "failed verification": lambda m: m["verification"].update(passed=False),
    "verification null": lambda m: m.update(verification=None),
}


@pytest.mark.parametrize("case", sorted(PARTIAL_CASES))
@pytest.mark.parametrize("command", ["run", "eval", "profile"])
def test_readers_require_a_passed_verification(capsys, tmp_path, artifact, case, command):
    folder = _unverified_copy(artifact, tmp_path / ".art.partial-123-abc", PARTIAL_CASES[case])
    argv = {"run": ["run", folder, "--max-new-tokens", 2], "eval": ["eval", folder, "--max-bytes", 64],
            "profile": ["profile", folder, "--tokens", 2]}[command]
    code, out, err = run_cli(capsys, *argv, "--json")
    assert_one_line_error(code, out, err, 2, "no passed verification record", json_mode=True)


def test_python_readers_require_verification_too(tmp_path, artifact):
    from edgeseq.checkpoints import load_model
    from edgeseq.errors import InputError
    from targets.runtimes import open_artifact
    from targets.runtimes import open_runtime

    folder = _unverified_copy(artifact, tmp_path / "a", PARTIAL_CASES["no verification record (killed export)"])
    for reader in (open_artifact, load_model, open_runtime):
        with pytest.raises(InputError, match="no passed verification record"):
            reader(folder)


def test_stale_partials_of_dead_exports_are_removed(capsys, tmp_path, tiny_ckpt):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f".art.partial-{pid}-xyz"
    stale.mkdir()
    (stale / "step.onnx").write_bytes(b"half")
    alive = tmp_path / f".art.partial-{os.getpid()}-xyz"  # a running export's: left alone
    alive.mkdir()
    code, _, err = run_cli(capsys, "export", tiny_ckpt, "-o", tmp_path / "art", "--steps", 2, "--no-prefill", "--json")
    assert code == 0, err
    assert not stale.exists() and alive.exists()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_killed_export_leaves_nothing(tmp_path, tiny_ckpt, sig, code):
    """SIGTERM runs the same clean-up as Ctrl-C: no staging folder, no scratch folder, one line."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "art"
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "edgeseq", "export", str(tiny_ckpt), "-o", str(out),
                             "--steps", "100000", "--no-prefill"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".art.partial-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".art.partial-*")), "the export never started writing"
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("edgeseq export: ")
    assert not out.exists() and leftovers(tmp_path) == []
    assert list(scratch.iterdir()) == []


def test_interrupted_quantize_overwrite_never_mixes_old_and_new(capsys, tmp_path, tiny_ckpt, monkeypatch):
    """A --force overwrite that fails between the weights and the header (no space) leaves an
    incomplete folder that no reader takes for a quantized model, never the new weights described
    by the old quantization.json."""
    import errno

    import quantize.io as qio
    from edgeseq.checkpoints import load_model
    from edgeseq.errors import InputError

    out = tmp_path / "q"
    code, _, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", "fp16", "-o", out, "--json")
    assert code == 0, err
    real = qio.atomic_write

    def full_disk_at_the_header(path, write):
        if path.name == qio.QUANT_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(qio, "atomic_write", full_disk_at_the_header)
    code, stdout, err = run_cli(capsys, "quantize", tiny_ckpt, "--recipe", "fp32", "-o", out, "--force", "--json")
    assert_one_line_error(code, stdout, err, 1, "no space left", json_mode=True)
    assert "(from --output)" in err
    with pytest.raises(InputError):
        load_model(out)


@pytest.mark.parametrize("command", ["run", "profile"])
def test_a_graph_altered_after_export_is_refused(capsys, tmp_path, artifact, command):
    """What `profile` times is what verification checked: a graph changed afterwards (one byte
    appended) no longer matches its sha256 and every reader refuses it in one line."""
    folder = tmp_path / "altered"
    shutil.copytree(artifact, folder)
    with open(folder / "step.onnx", "ab") as f:
        f.write(b"\0")
    argv = {"run": ["run", folder, "--max-new-tokens", 2], "profile": ["profile", folder, "--tokens", 2]}[command]
    code, out, err = run_cli(capsys, *argv, "--json")
    assert_one_line_error(code, out, err, 2, "contents differ from manifest.json", json_mode=True)
