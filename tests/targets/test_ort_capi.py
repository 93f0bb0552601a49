"""ONNX Runtime through its C API with one copy of the weights (``targets.ort_capi``).

Oracles: the ``onnx`` package for the external-initializer table read from the wire format, and
ONNX Runtime's own Python binding for every output: the C-API sessions are the same library's
kernels with the same options, so a prefill and a decode stream must match bitwise, for a float
artifact and for a static-int8 (QDQ, integer matmul kernels) one.
"""

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")


def _export(tmp_path_factory, recipe):
    from export.artifact import export_artifact
    from targets.testing import tiny_mamba

    model = tiny_mamba(seed=3, n_layer=2, d_model=32, vocab_size=96)
    if recipe != "fp32":
        import torch

        from quantize.apply import quantize_model

        batches = list(torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(0)).split(2))
        model, _ = quantize_model(model, recipe, batches, progress=False)
    out = tmp_path_factory.mktemp(f"capi_{recipe}") / "art"
    export_artifact(model, out, format="onnx", target="host", steps=8, prefill_length=4, recipe=recipe)
    return out


@pytest.fixture(scope="module", params=["fp32", "w8a8"])
def artifact(request, tmp_path_factory):
    return _export(tmp_path_factory, request.param)


@pytest.fixture
def capi(monkeypatch):
    from targets import ort_capi

    if not ort_capi.available():
        pytest.skip("ONNX Runtime's C API library is not in this onnxruntime wheel")
    monkeypatch.setattr(ort_capi.SharedWeights, "MIN_BYTES", 0)  # the tiny model's tensors are all small
    return ort_capi


def _runtime(artifact, monkeypatch, capi_on):
    from targets import ort_capi
    from targets.manifest import read_artifact
    from targets.runtimes import OnnxRuntime

    monkeypatch.setenv("EDGESEQ_ORT_CAPI", "1" if capi_on else "0")
    monkeypatch.setattr(ort_capi, "_API", [])
    rt = OnnxRuntime(read_artifact(artifact), threads=1)
    monkeypatch.setattr(ort_capi, "_API", [])
    return rt


def test_external_tensor_table_matches_onnx(artifact, capi):
    import onnx
    from onnx.external_data_helper import uses_external_data

    for graph in ("step.onnx", "prefill.onnx"):
        model = onnx.load(artifact / graph, load_external_data=False)
        expected = []
        for t in model.graph.initializer:
            if uses_external_data(t):
                info = {e.key: e.value for e in t.external_data}
                expected.append((t.name, t.data_type, tuple(t.dims), info["location"], int(info.get("offset", 0)),
                                 int(info.get("length", -1))))
        got = [(t.name, t.data_type, t.dims, t.location, t.offset, t.length) for t in capi.external_tensors(artifact / graph)]
        assert got == expected and len(got) > 4


def test_c_api_runtime_is_bitwise_the_python_binding(artifact, capi, monkeypatch):
    shared = _runtime(artifact, monkeypatch, True)
    plain = _runtime(artifact, monkeypatch, False)
    assert (shared.binding, plain.binding) == ("c-api", "python")
    prompt = np.random.default_rng(0).integers(0, 96, size=(2, 9))  # two prefill calls of 4, one step
    y, state = shared.prefill(prompt, all_outputs=True)
    ref_y, ref_state = plain.prefill(prompt, all_outputs=True)
    assert np.array_equal(y, ref_y) and all(np.array_equal(a, b) for a, b in zip(state, ref_state, strict=True))
    token = prompt[:, -1]
    for _ in range(10):  # plain steps, then the bound (IoBinding) path
        y, state = shared.step(token, state)
        ref_y, ref_state = plain.step(token, ref_state)
        assert np.array_equal(y, ref_y) and all(np.array_equal(a, b) for a, b in zip(state, ref_state, strict=True))
        token = np.argmax(y, axis=-1)
    assert shared._bound and any(b is not None for b in shared._bound.values())


def test_both_sessions_read_one_mapping_and_survive_dropped_pages(artifact, capi, monkeypatch):
    from targets.runtimes import ORT_SESSION_CONFIG

    weights = capi.SharedWeights(artifact)
    step = capi.CapiSession(artifact / "step.onnx", weights, 1, ORT_SESSION_CONFIG)
    names = {t.name for t in capi.external_tensors(artifact / "step.onnx")}
    assert names and names <= set(weights.values)
    prefill = capi.CapiSession(artifact / "prefill.onnx", weights, 1, ORT_SESSION_CONFIG, mem_pattern=False)
    assert list(weights.maps) == ["weights.bin"]  # one mapping for both graphs
    view = weights.maps["weights.bin"][1]
    lo, hi = view.ctypes.data, view.ctypes.data + view.size
    for t, value in weights.values.values():  # every shared OrtValue points into that mapping
        address = ctypes_address(capi, value)
        assert lo + t.offset == address < hi
    feeds = {n: np.zeros((1, 4) if n == "token" else (1, *s), np.float32 if n != "token" else np.int64)
             for n, s in _state_shapes(artifact, prefill.input_names).items()}
    first = prefill.run(None, feeds)
    weights.drop_pages()
    again = prefill.run(None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    del step, prefill


def ctypes_address(capi, value):
    import ctypes

    data = ctypes.c_void_p()
    capi.api().GetTensorMutableData(value, ctypes.byref(data))
    return data.value


def _state_shapes(artifact, names):
    import json

    manifest = json.loads((artifact / "manifest.json").read_text())
    shapes = {i["name"]: i["shape"][1:] for i in manifest["graphs"]["prefill"]["inputs"]}
    return {n: shapes[n] for n in names if n in shapes}


def test_a_broken_graph_is_a_one_line_error(artifact, capi, tmp_path):
    import shutil

    from edgeseq.errors import EdgeseqError
    from targets.runtimes import ORT_SESSION_CONFIG

    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    (copy / "step.onnx").write_bytes(b"\x0a\x05garbage" * 10)
    weights = capi.SharedWeights(copy)
    with pytest.raises(EdgeseqError, match="cannot load this graph") as info:
        capi.CapiSession(copy / "step.onnx", weights, 1, ORT_SESSION_CONFIG)
    assert "\n" not in str(info.value)


def test_switched_off_by_the_environment(artifact, monkeypatch):
    assert _runtime(artifact, monkeypatch, False).binding == "python"


def test_two_disabled_optimizers_reach_the_session(capi, tmp_path):
    """A static-int8 Mamba-2 graph loads only with ONNX Runtime's QDQ propagation switched off as
    well as MatMulAddFusion (``targets.runtimes.OnnxRuntime._session``'s retry): the C API takes
    the list ';'-separated (with ',' ONNX Runtime read one unknown name and the graph failed to load,
    as the main job's Mamba-2 w8a8 did). Export verification opens the graph through this runtime."""
    import torch

    from edgeseq.models.mamba2 import Mamba2, Mamba2Config
    from export.artifact import export_artifact
    from quantize.apply import quantize_model
    from targets.manifest import read_artifact
    from targets.runtimes import OnnxRuntime

    torch.manual_seed(0)
    model = Mamba2(Mamba2Config(vocab_size=64, d_model=48, n_layer=1, d_state=8, headdim=12, ngroups=2)).eval()
    batches = list(torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0)).split(2))
    qmodel, _ = quantize_model(model, "w8a8", batches, progress=False)
    export_artifact(qmodel, tmp_path / "art", format="onnx", target="host", steps=8, prefill_length=4, recipe="w8a8")
    assert OnnxRuntime(read_artifact(tmp_path / "art"), threads=1).binding == "c-api"
