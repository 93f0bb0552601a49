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


@pytest.fixture(scope="module", params=["fp32", "w8a8", "w8a8-block"])
def artifact(request, tmp_path_factory):
    return _export(tmp_path_factory, request.param)


@pytest.fixture
def capi(monkeypatch):
    from targets import ort_capi

    if not ort_capi.available():
        pytest.skip("ONNX Runtime's C API library is not in this onnxruntime wheel")
    monkeypatch.setattr(ort_capi.SharedWeights, "MIN_BYTES", 0)  # the tiny model's tensors are all small
    monkeypatch.setattr(ort_capi.SharedWeights, "ROWS_MIN_BYTES", 0)
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


def test_an_embedding_table_holds_only_the_rows_looked_up(tmp_path_factory, capi, monkeypatch):
    """A block recipe's embedding is an int8 table read only by ``Gather`` on the token input: it
    lives in an anonymous buffer holding the rows looked up so far (read from the file before
    each run), one buffer for both sessions; the outputs stay bitwise the Python binding's."""
    artifact = _export(tmp_path_factory, "w8a8-block")
    lookups = capi.row_lookups(artifact / "step.onnx")
    tables = [n for n, ids in lookups.items() if ids]
    assert tables and all(lookups[n] == {"token"} for n in tables)
    assert all(ids is None for n, ids in lookups.items() if n not in tables)  # weights the matmuls read
    shared = _runtime(artifact, monkeypatch, True)
    plain = _runtime(artifact, monkeypatch, False)
    weights = shared.weights
    assert weights.tables and set(weights.tables) == {n for n in tables if n in weights.values}  # (external ones)
    seen = [5, 7, 7, 11, 95, 0]
    y, state = shared.prefill(np.array([seen[:4]]), all_outputs=True)
    ref_y, ref_state = plain.prefill(np.array([seen[:4]]), all_outputs=True)
    assert np.array_equal(y, ref_y)
    for token in seen[4:] * 3:  # plain steps, then bound ones reading the token from the bound buffer
        y, state = shared.step(np.array([token]), state)
        ref_y, ref_state = plain.step(np.array([token]), ref_state)
        assert np.array_equal(y, ref_y)
    assert any(b is not None for b in shared._bound.values())
    for name, table in weights.tables.items():
        assert sorted(np.flatnonzero(table.filled)) == sorted(set(seen))
        rows = np.frombuffer(table.buffer, dtype=np.uint8).reshape(table.rows, table.row_bytes)
        assert not rows[~table.filled].any()  # never read
        t = table.tensor
        stored = np.fromfile(artifact / t.location, dtype=np.uint8, count=t.length, offset=t.offset)
        assert np.array_equal(rows[table.filled], stored.reshape(rows.shape)[table.filled])


def test_row_lookups_refuse_a_table_read_any_other_way(tmp_path):
    """A table some other node reads (or one indexed by a computed tensor) is not a row table."""
    import onnx
    from onnx import TensorProto, helper

    from targets import ort_capi

    table = helper.make_tensor("E", TensorProto.FLOAT, [4, 2], [0.0] * 8)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["a"], axis=0),
             helper.make_node("Gather", ["F", "ids"], ["b"], axis=0),
             helper.make_node("Identity", ["F"], ["f"]),
             helper.make_node("Gather", ["G", "ids"], ["c"], axis=1),
             helper.make_node("Add", ["ids", "ids"], ["ids2"]),
             helper.make_node("Gather", ["H", "ids2"], ["d"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abcdf"],
        [table] + [helper.make_tensor(n, TensorProto.FLOAT, [4, 2], [0.0] * 8) for n in "FGH"])
    onnx.save(helper.make_model(graph), tmp_path / "g.onnx")
    lookups = ort_capi.row_lookups(tmp_path / "g.onnx")
    assert lookups["E"] == {"ids"}
    assert lookups["F"] is None and lookups["G"] is None and lookups["H"] is None


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
    for t, value in weights.values.values():  # every shared OrtValue points into that mapping or a row table
        address = ctypes_address(capi, value)
        if t.name in weights.tables:
            assert address == weights.tables[t.name].address
        else:
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


def test_a_table_another_graph_reads_whole_is_read_whole(capi, tmp_path):
    """Graph A only gathers rows of ``E``; graph B (sharing the file) reads all of it: opening B reads
    the whole table into the shared buffer, and both graphs see the file's values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    from targets.runtimes import ORT_SESSION_CONFIG

    table = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    graphs = {"a.onnx": helper.make_node("Gather", ["E", "ids"], ["y"], axis=0),
              "b.onnx": helper.make_node("ReduceSum", ["E"], ["y"], keepdims=0)}
    (tmp_path / "weights.bin").write_bytes(table.tobytes())
    for name, node in graphs.items():
        tensor = numpy_helper.from_array(table, "E")
        set_external_data(tensor, location="weights.bin", offset=0, length=table.nbytes)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [tensor])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10), tmp_path / name)
    weights = capi.SharedWeights(tmp_path)
    a = capi.CapiSession(tmp_path / "a.onnx", weights, 1, ORT_SESSION_CONFIG)
    assert set(weights.tables) == {"E"} and not weights.tables["E"].filled.any()
    assert np.array_equal(a.run(None, {"ids": np.array([3, -1])})[0], table[[3, -1]])
    assert weights.tables["E"].filled.sum() == 2
    b = capi.CapiSession(tmp_path / "b.onnx", weights, 1, ORT_SESSION_CONFIG)
    assert weights.tables["E"].filled.all()
    assert b.run(None, {"ids": np.array([0])})[0] == table.sum()
    del a, b
