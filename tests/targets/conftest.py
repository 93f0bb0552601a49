"""Fixtures of the targets tests: a tiny Mamba and its ONNX/TVM artifacts, built once per session."""

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    from targets.testing import tiny_mamba

    return tiny_mamba(seed=0)


@pytest.fixture(scope="session")
def onnx_artifact(tiny_model, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from targets.testing import write_onnx_artifact

    return write_onnx_artifact(tiny_model, tmp_path_factory.mktemp("onnx_artifact"), prefill_length=4)


@pytest.fixture(scope="session")
def tvm_artifact(onnx_artifact, tmp_path_factory):
    pytest.importorskip("tvm")
    from targets.testing import write_tvm_artifact

    return write_tvm_artifact(onnx_artifact, tmp_path_factory.mktemp("tvm_artifact"), target="llvm")


@pytest.fixture
def small_bandwidth(monkeypatch, tmp_path):
    """Host bandwidth measured on a small buffer into a private cache (fast, no ~/.cache writes)."""
    import targets.bandwidth as bandwidth

    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache"))
    real = bandwidth.measure_bandwidth
    monkeypatch.setattr(bandwidth, "measure_bandwidth", lambda nbytes=0, repeats=2, threads=None: real(4 * 2**20, 2, threads))
    return tmp_path / "cache"
