"""A tied float weight stored once: the transposed copy's ``MatMul`` reads the kept tensor through
``Gemm(transB=1)``. Oracle: numpy on the same arrays, and ONNX Runtime on the graph before the
rewrite (the same function, so within float32 rounding of the two matmul kernels)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

V, D = 40, 8


def _graph(x_shape, transposed_reader="MatMul"):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((V, D)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["rows"])]
    if transposed_reader == "MatMul":
        nodes.append(helper.make_node("MatMul", ["x", "ET"], ["logits"]))
        out_shape = [*x_shape[:-1], V]
    else:  # read as a plain tensor: must stay a Transpose of the kept one
        nodes.append(helper.make_node("Add", ["ET", "ET"], ["logits"]))
        out_shape = [D, V]
    graph = helper.make_graph(
        nodes, "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [3, D]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(np.ascontiguousarray(table.T), "ET")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), table


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("x_shape", [[2, D], [2, 3, D]])
def test_the_transposed_copy_goes_and_gemm_reads_the_table(x_shape):
    from export.qdq import dedupe_transposed

    model, table = _graph(x_shape)
    feeds = {"ids": np.array([0, 7, 39]), "x": np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)}
    before = _run(model, feeds)
    after_model = dedupe_transposed(model)
    onnx.checker.check_model(after_model)
    assert [i.name for i in after_model.graph.initializer if i.data_type == TensorProto.FLOAT] == ["E"]
    gemm = [n for n in after_model.graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 1 and gemm[0].input[1] == "E" and helper.get_attribute_value(gemm[0].attribute[0]) == 1
    assert not any(n.op_type == "Transpose" for n in after_model.graph.node)
    rows, logits = _run(after_model, feeds)
    assert np.array_equal(rows, before[0]) and logits.shape == before[1].shape
    np.testing.assert_allclose(logits, feeds["x"] @ table.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, before[1], rtol=1e-5, atol=1e-6)


def test_a_copy_read_otherwise_stays_a_transpose():
    from export.qdq import dedupe_transposed

    model, table = _graph([2, D], transposed_reader="Add")
    after_model = dedupe_transposed(model)
    assert len([i for i in after_model.graph.initializer if i.data_type == TensorProto.FLOAT]) == 1
    assert [n.op_type for n in after_model.graph.node][0] == "Transpose"
    _, doubled = _run(after_model, {"ids": np.array([1, 2, 3]), "x": np.zeros((2, D), np.float32)})
    np.testing.assert_array_equal(doubled, 2 * table.T)
