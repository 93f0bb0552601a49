"""Proof on the device: the reference stream every artifact ships is checked on first load.

Oracle: the PyTorch reference's teacher-forced steps stored at export; a device whose kernels
compute another function is simulated by a runtime whose step is perturbed.
"""

import pytest
import torch

from edgeseq.errors import EdgeseqError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from edgeseq.models.mamba import Mamba, MambaConfig
    from export.artifact import export_artifact
    from export.graphs import sample_inputs
    from quantize.apply import quantize_model

    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=256, d_model=16, n_layer=2, d_state=8)).eval()
    qmodel, _ = quantize_model(model, "w8a8", [sample_inputs(model, 2, 16, seed=i) for i in range(2)], progress=False)
    out = tmp_path_factory.mktemp("selfcheck") / "a"
    manifest = export_artifact(qmodel.eval(), out, steps=16, prefill=False, recipe="w8a8")
    assert manifest["reference"]["file"] == "reference.npz" and (out / "reference.npz").is_file()
    assert manifest["export_host"]["features"] and "kernels" in manifest["export_host"]["onnxruntime"]
    assert manifest["arithmetic"]["integer_kernels"] and manifest["arithmetic"]["int8_overflow"]["passed"]
    return out


def _perturb(monkeypatch, cls, factor, calls):
    original = cls.step

    def step(self, x, state):
        calls.append(1)
        y, new = original(self, x, state)
        return y * factor, new

    monkeypatch.setattr(cls, "step", step)


def test_a_device_computing_another_function_is_refused_on_first_load(artifact, tmp_path, monkeypatch):
    from targets.runtimes import OnnxRuntime, open_artifact

    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    _perturb(monkeypatch, OnnxRuntime, 1.05, calls)
    with pytest.raises(EdgeseqError, match="computes another function.*reference sample-steps differ"):
        open_artifact(artifact)
    assert calls  # the check ran the device's own step


def test_an_arm_cpu_without_dot_product_is_told_which_recipes_it_computes(artifact, tmp_path, monkeypatch):
    """No sdot: ONNX Runtime's level-4 MatMulNBits runs with float activations (measured under qemu,
    tests/export/test_aarch64_onnx_qemu_run.py); the refusal names the cause and what to export."""
    import targets.selfcheck as selfcheck
    from targets.runtimes import OnnxRuntime, open_artifact

    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(selfcheck, "cpu_features", lambda: {"cpu": "Cortex-A72", "machine": "aarch64",
                                                            "features": ["asimd"], "int8_accumulation": "32-bit"})
    _perturb(monkeypatch, OnnxRuntime, 1.05, [])
    with pytest.raises(EdgeseqError, match=r"no dot-product instructions.*float activations.*w4a16"):
        open_artifact(artifact)


def test_a_passing_device_is_remembered(artifact, tmp_path, monkeypatch):
    from targets.runtimes import OnnxRuntime, open_artifact

    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    _perturb(monkeypatch, OnnxRuntime, 1.0, calls)
    open_artifact(artifact)
    first = len(calls)
    assert first > 0
    open_artifact(artifact)
    assert len(calls) == first  # cached per artifact × device × runtime: no second run
    assert list((tmp_path / "cache" / "selfcheck").glob("*.json"))


def test_the_profiling_runtime_checks_the_same_stream(artifact, tmp_path, monkeypatch):
    from targets.runtimes import OnnxRuntime, open_runtime

    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache2"))
    calls = []
    _perturb(monkeypatch, OnnxRuntime, 0.9, calls)
    with pytest.raises(EdgeseqError, match="computes another function"):
        open_runtime(artifact)


def test_the_arm_hint_names_only_onnx_runtime_on_arm_without_dot_product():
    from export.artifact import _failure_hint
    from targets.selfcheck import arm_without_dot_product

    plain = {"machine": "aarch64", "features": ["asimd"], "cpu": "Cortex-A57", "int8_accumulation": "32-bit"}
    assert "no dot-product" in arm_without_dot_product(plain)
    assert arm_without_dot_product({**plain, "features": ["asimd", "asimddp"]}) is None
    assert arm_without_dot_product({**plain, "machine": "x86_64"}) is None
    assert arm_without_dot_product(plain, "tvm") is None
    # an export on such a board fails verification with the same cause, not "saturates"
    assert "no dot-product" in _failure_hint("onnx", True, {"export_host": plain})
    assert "saturates" in _failure_hint("onnx", True, {"export_host": {**plain, "features": ["asimd", "asimddp"]}})
