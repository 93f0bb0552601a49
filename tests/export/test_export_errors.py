"""Bad input and failed verification: one-line errors, no partial artifacts left behind."""

import pytest
import torch

from edgeseq.errors import EdgeseqError, InputError, MissingDependencyError
from edgeseq.streaming import StateSpec
from export import verify
from export.artifact import export_artifact
from export.onnx_export import check_opset


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_unknown_target_names_the_known_ones(tiny_mamba, tmp_path):
    with pytest.raises(InputError, match="unknown target 'tpu-v9'.*jetson-orin-nano-8gb"):
        export_artifact(tiny_mamba, tmp_path / "a", target="tpu-v9")
    assert _leftovers(tmp_path) == []


def test_unknown_format(tiny_mamba, tmp_path):
    with pytest.raises(InputError, match="unknown format 'tflite'"):
        export_artifact(tiny_mamba, tmp_path / "a", format="tflite")


def test_opset_too_old():
    with pytest.raises(InputError, match="opset 13 is too old"):
        check_opset(13, needs_int4=False)
    with pytest.raises(InputError, match="int4 DequantizeLinear needs opset 21"):
        check_opset(18, needs_int4=True)
    check_opset(21, needs_int4=True)


def test_existing_output_is_refused_unless_force(tiny_mamba, tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists; pass --force"):
        export_artifact(tiny_mamba, out, steps=2, prefill=False)
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only an earlier artifact or an empty folder, never a user's files (issue 17)
    with pytest.raises(InputError, match="not an edgeseq artifact"):
        export_artifact(tiny_mamba, out, steps=2, prefill=False, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    export_artifact(tiny_mamba, out, steps=2, prefill=False, force=True)  # empty folder
    export_artifact(tiny_mamba, out, steps=2, prefill=False, force=True)  # an earlier artifact
    kernels = [p.name for p in out.glob("edgeseq_ops-*.so")]  # the fused kernels (export.fused_ops), one per arch
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", "reference.npz", "step.onnx", "weights.bin", *kernels])
    assert _leftovers(tmp_path) == ["art"]


def test_wrong_state_spec_is_refused(tiny_mamba, tmp_path, monkeypatch):
    specs = tiny_mamba.state_spec()
    wide = [StateSpec(s.name, (s.shape[0], s.shape[1] + 1)) if s.name == "ssm_1" else s for s in specs]
    monkeypatch.setattr(tiny_mamba, "state_spec", lambda: wide)
    with pytest.raises(InputError, match=r"step\(\) fails on the zero state its state_spec\(\) describes"):
        export_artifact(tiny_mamba, tmp_path / "a", steps=2)
    # a spec that forgets a state the step returns
    monkeypatch.setattr(tiny_mamba, "state_spec", lambda: specs[:-1])
    monkeypatch.setattr(tiny_mamba, "init_state", lambda b, **k: {s.name: torch.zeros(b, *s.shape) for s in specs})
    with pytest.raises(InputError, match=r"init_state\(\) gives .* but state_spec\(\) lists"):
        export_artifact(tiny_mamba, tmp_path / "a", steps=2)
    assert _leftovers(tmp_path) == []


def test_failed_verification_leaves_nothing(tiny_mamba, tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "allowed_inexact", lambda *args: -1.0)  # no artifact can pass
    with pytest.raises(EdgeseqError, match="verification failed on onnxruntime: .*sample-steps differ.*nothing was written"):
        export_artifact(tiny_mamba, tmp_path / "a", steps=8, prefill=False)
    assert _leftovers(tmp_path) == []


def test_missing_cross_compiler_says_what_to_install(tiny_mamba, tmp_path, monkeypatch):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if "aarch64" in name else real_which(name))
    with pytest.raises(MissingDependencyError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        export_artifact(tiny_mamba, tmp_path / "a", format="tvm", target="jetson-orin-nano-8gb", steps=2)
    assert _leftovers(tmp_path) == []


def test_deprecated_export_names_resolve_with_a_notice(capsys):
    from export.tvm_build import get_target
    from targets import registry

    registry._WARNED.discard("cuda-sm90")
    assert get_target("cuda-sm90").name == "h100"
    assert "now called 'h100'" in capsys.readouterr().err
    assert get_target("jetson-orin-nano").cuda_arch == "sm_87"


def test_a_target_without_a_build_is_refused_in_one_line():
    from export.tvm_build import get_target

    with pytest.raises(InputError, match="'loihi2'.*nothing to compile.*export targets: host, .*aarch64"):
        get_target("loihi2")
