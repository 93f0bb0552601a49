"""Runtimes behind one interface and the profiler's report (schema only: no timing assertions).

Parity oracle for the ONNX Runtime and TVM runtimes: the PyTorch model's own ``step``/``prefill``
on the same tiny Mamba in float32. Tolerance 1e-4 absolute: different kernels sum the same
float32 products in different orders (errors ~1e-7 relative on logits of size ~0.1-1).
"""

import json

import numpy as np
import pytest
import torch

from edgeseq.errors import EdgeseqError, InputError
from targets.profile import REPORT_KEYS, percentile, profile_runtime
from targets.registry import TargetSpec
from targets.roofline import bytes_per_token, roofline
from targets.manifest import read_artifact
from targets.runtimes import TorchRuntime, module_bytes, open_runtime

TARGET = TargetSpec(name="test-cpu", kind="cpu", memory_bandwidth_gbs=10.0, sources={"memory_bandwidth_gbs": "test"})


def _check_report(report, runtime_name):
    assert list(report) == list(REPORT_KEYS)
    assert report["runtime"] == runtime_name and report["target"] == "test-cpu"
    assert report["partial"] is False and report["error"] is None
    assert report["measured"] == ["warmup", "decode", "ttft"]
    assert 0 < report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["tokens"] == 6 and report["ttft_ms"] > 0 and report["tokens_per_s"] > 0
    assert report["model_bytes"] > 0 and report["state_bytes"] > 0
    assert report["bytes_per_token"] == report["model_bytes"] + 2 * report["state_bytes"]
    assert report["roofline_ms"] == pytest.approx(report["bytes_per_token"] / 10e9 * 1e3)
    assert report["roofline_ratio"] == pytest.approx(report["p50_ms"] / report["roofline_ms"])
    assert report["peak_mem_bytes"] > 0
    json.dumps(report)  # JSON-able as is


def test_percentile_and_roofline_math():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(np.percentile([1, 2, 3, 4], 90))
    assert bytes_per_token(1000, 10) == 1020
    r = roofline(1000, 0, 1.0, 0.002)  # 1000 B at 1 GB/s = 1 us
    assert r["roofline_ms"] == pytest.approx(1e-3) and r["roofline_ratio"] == pytest.approx(2.0)
    assert roofline(1000, 0, None, 1.0)["roofline_ratio"] is None


def test_torch_runtime_profile_schema(tiny_model):
    rt = TorchRuntime(tiny_model)
    assert rt.model_bytes == module_bytes(tiny_model)
    report = profile_runtime(rt, TARGET, prompt_len=5, tokens=6, warmup=1, threads=1)
    _check_report(report, "torch")
    assert report["ttft_method"] == "prefill graph" and report["threads"] == 1


@pytest.mark.parametrize("fixture, name", [("onnx_artifact", "onnxruntime"), ("tvm_artifact", "tvm")])
def test_artifact_runtimes_match_torch_and_profile(request, tiny_model, fixture, name):
    folder = request.getfixturevalue(fixture)
    rt = open_runtime(folder, threads=1)
    assert rt.name == name and rt.has_prefill and rt.io.state_names == tiny_model.state_names()
    reference = TorchRuntime(tiny_model)
    x_t, state = rt.example_input(1), rt.init_state(1)
    ref_x, ref_state = reference.example_input(1), reference.init_state(1)
    for _ in range(3):  # the state fed back stays equal
        y, state = rt.step(x_t, state)
        ref_y, ref_state = reference.step(ref_x, ref_state)
        np.testing.assert_allclose(y, ref_y.numpy(), atol=1e-4)
    prompt = rt.example_input(1, time=6)  # one prefill chunk of 4 + 2 steps
    y, state = rt.prefill(prompt)
    ref_y, ref_state = reference.prefill(torch.from_numpy(prompt))
    np.testing.assert_allclose(y, ref_y.numpy(), atol=1e-4)
    for got, want in zip(state, ref_state):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    report = profile_runtime(rt, TARGET, prompt_len=6, tokens=6, warmup=1)
    _check_report(report, name)
    fused = (folder / f"edgeseq_ops-{__import__('platform').machine()}.so").is_file()
    if name == "tvm" or not fused:
        assert report["kernels"] is None
    else:  # the fused kernels and which of their ISA passes this CPU runs
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
        isa = "avx2" if "avx2" in flags and __import__("platform").machine() == "x86_64" else "baseline"
        assert report["kernels"] == f"edgeseq.ops, {isa} loops"


def test_partial_report_when_a_step_fails(tiny_model):
    class Flaky(TorchRuntime):
        calls = 0

        def _step(self, x_t, state):
            Flaky.calls += 1
            if Flaky.calls > 5:
                raise RuntimeError("device went away")
            return super()._step(x_t, state)

    report = profile_runtime(Flaky(tiny_model), TARGET, prompt_len=3, tokens=20, warmup=1, chunk=2)
    assert report["partial"] is True and "device went away" in report["error"]
    assert report["tokens"] == 4 and report["p50_ms"] > 0 and report["measured"] == ["warmup"]
    Flaky.calls = 10
    with pytest.raises(EdgeseqError, match="failed before any step was timed"):
        profile_runtime(Flaky(tiny_model), TARGET, tokens=3, warmup=0)


def test_bad_artifacts_and_options(tmp_path, tiny_model):
    with pytest.raises(InputError, match="not an exported artifact"):
        read_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "tflite"}))
    with pytest.raises(InputError, match="'format' must be"):
        read_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "onnx", "files": []}))
    with pytest.raises(InputError, match="no step graph"):
        read_artifact(tmp_path)
    with pytest.raises(InputError, match="--tokens"):
        profile_runtime(TorchRuntime(tiny_model), TARGET, tokens=0)


def test_cli_profile_artifact_json(capsys, onnx_artifact, small_bandwidth):
    from edgeseq.cli import main

    code = main(["profile", str(onnx_artifact), "--json", "--tokens", "4", "--warmup", "1", "--prompt-len", "4", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    for key in ("p50_ms", "p90_ms", "p99_ms", "ttft_ms", "tokens_per_s", "peak_mem_bytes", "model_bytes",
                "bytes_per_token", "roofline_ms", "roofline_ratio", "runtime", "target"):
        assert key in report
    assert report["runtime"] == "onnxruntime" and report["target"] == "host" and report["bandwidth_gbs"] > 0
    assert main(["profile", str(onnx_artifact), "--target", "loihi2"]) == 2
    assert "neuromorphic" in capsys.readouterr().err
    assert main(["profile", str(onnx_artifact), "--runtime", "tvm"]) == 2
