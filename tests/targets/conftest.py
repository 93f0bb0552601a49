"""Fixtures of the targets tests: a tiny Mamba and its ONNX/TVM artifacts (written and verified by
``edgeseq export`` itself, so the runtimes are tested on real artifacts), built once per session."""

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    from targets.testing import tiny_mamba

    return tiny_mamba(seed=0)


@pytest.fixture(scope="session")
def onnx_artifact(tiny_model, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from export.artifact import export_artifact

    out = tmp_path_factory.mktemp("onnx_artifact") / "art"
    export_artifact(tiny_model, out, format="onnx", target="host", steps=8, prefill_length=4)
    return out


@pytest.fixture(scope="session")
def tvm_artifact(tiny_model, tmp_path_factory):
    pytest.importorskip("tvm")
    from export.artifact import export_artifact

    out = tmp_path_factory.mktemp("tvm_artifact") / "art"
    export_artifact(tiny_model, out, format="tvm", target="host", steps=8, prefill_length=4)
    return out


@pytest.fixture
def small_bandwidth(monkeypatch, tmp_path):
    """Host bandwidth measured on a small buffer into a private cache (fast, no ~/.cache writes)."""
    import targets.bandwidth as bandwidth

    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache"))
    real = bandwidth.measure_bandwidth
    monkeypatch.setattr(bandwidth, "measure_bandwidth", lambda nbytes=0, repeats=2, threads=None: real(4 * 2**20, 2, threads))
    return tmp_path / "cache"
