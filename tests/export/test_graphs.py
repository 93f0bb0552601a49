"""``export.graphs``: the step/prefill I/O comes from the model's ``io_spec()`` and ``state_spec()``,
and ``check_state_spec`` refuses a model whose declarations its own step contradicts."""

from pathlib import Path

import pytest
import torch

from edgeseq.errors import InputError
from edgeseq.models import build_model
from edgeseq.streaming import IOSpec
from export.graphs import check_state_spec, example_args, prefill_io, sample_inputs, step_io


def test_step_io_follows_io_spec_for_tokens_and_frames():
    lm = build_model("mamba", vocab_size=37, d_model=8, n_layer=1, d_state=4)
    io = step_io(lm)
    assert io.inputs[0] == {"name": "token", "shape": ["batch"], "dtype": "int64"}
    assert io.outputs[0] == {"name": "logits", "shape": ["batch", 37], "dtype": "float32"}
    clf = build_model("lmuformer", input_dim=5, dim=8, depth=1, n_classes=3)
    io = prefill_io(clf, 16, torch.float16)
    assert io.inputs[0] == {"name": "frame", "shape": ["batch", 16, 5], "dtype": "float16"}
    assert io.outputs[0] == {"name": "scores", "shape": ["batch", 16, 3], "dtype": "float16"}
    ids = sample_inputs(lm, 2, 50, seed=1)
    assert ids.dtype == torch.int64 and int(ids.max()) < 37
    frame, *state = example_args(clf, 2, None, torch.float32)
    assert frame.shape == (2, 5) and len(state) == len(clf.state_spec())


def test_check_state_spec_refuses_an_io_spec_the_step_contradicts():
    model = build_model("mamba", vocab_size=37, d_model=8, n_layer=1, d_state=4)
    assert len(check_state_spec(model)) == 2
    model.io_spec = lambda: IOSpec.tokens(37, output_size=40)  # claims 40 logits; step returns 37
    with pytest.raises(InputError, match=r"io_spec\(\) says \(2, 40\)"):
        check_state_spec(model)


def test_mamba_step_graph_has_no_short_span_broadcasts(tmp_path):
    """The exported Mamba step broadcasts nothing along a size-1 last axis: ONNX Runtime runs such
    a Mul as one short span per channel (1536 spans of 16 floats at 130m), several times slower per
    element than a product of inner size 1 (docs/targets.md). Shapes from ONNX shape inference.
    Nor does it hold a ``Softplus`` node (a scalar kernel in ONNX Runtime)."""
    onnx = pytest.importorskip("onnx")
    from export.onnx_export import export_graph

    model = build_model("mamba", vocab_size=37, d_model=16, n_layer=2, d_state=4).eval()
    path = tmp_path / "step.onnx"
    export_graph(model, path, kind="step")
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    shapes.update({t.name: list(t.dims) for t in proto.graph.initializer})
    muls = [n for n in proto.graph.node if n.op_type == "Mul"]
    assert muls
    short = []
    for node in muls:
        dims = [shapes.get(name) for name in node.input]
        if any(d is None or not d for d in dims):
            continue
        lasts = {d[-1] for d in dims}
        if 1 in lasts and len(lasts) > 1 and max(len(d) for d in dims) >= 3:
            short.append((node.name, dims))
    assert not short, f"Mul nodes broadcasting a size-1 last axis: {short}"
    # nor ONNX Runtime's scalar Softplus kernel (22 µs per 130m layer): the vectorized form instead
    ops = {n.op_type for n in proto.graph.node}
    assert "Softplus" not in ops and {"Exp", "Log", "Max"} <= ops
    # every shape is static but the batch: no shape arithmetic traced into the step
    dynamic = sorted({n.op_type for n in proto.graph.node} & {"Shape", "ConstantOfShape", "EyeLike", "Range"})
    assert not dynamic, f"shape computations in the step graph: {dynamic}"


def test_traced_mamba_step_makes_its_constants_on_the_state_device(monkeypatch):
    """The exported (traced) step's conv-window shift multiplies by rows of an identity: that matrix
    must be made on the window's device (a CPU identity broke torch.compile of the step on CUDA),
    and the traced form must give the eager numbers."""
    import edgeseq.models.mamba as mm

    model = build_model("mamba", vocab_size=37, d_model=8, n_layer=1, d_state=4).eval()
    state = model.init_state(1)
    for v in state.values():
        v.normal_()
    with torch.no_grad():
        y_eager, s_eager = model.step(torch.tensor([3]), dict(state))
    devices, real_eye = [], torch.eye

    def eye(*args, **kw):
        devices.append(kw.get("device"))
        return real_eye(*args, **kw)

    monkeypatch.setattr(mm, "_is_tracing", lambda: True)
    monkeypatch.setattr(mm.torch, "eye", eye)
    with torch.no_grad():
        y_traced, s_traced = model.step(torch.tensor([3]), dict(state))
    assert devices and all(d is not None and torch.device(d) == torch.device("cpu") for d in devices)
    # the products and the shift are exact; the traced softplus is within 3e-7 of it, relative
    torch.testing.assert_close(y_traced, y_eager, rtol=1e-5, atol=1e-6)
    for k in s_eager:
        torch.testing.assert_close(s_traced[k], s_eager[k], rtol=1e-5, atol=1e-6)


def test_traced_softplus_is_torch_softplus(monkeypatch):
    """The step graph's softplus (vectorized element-wise kernels, not ONNX Runtime's scalar
    Softplus) against float64 ``F.softplus``: within 3e-7 relative (float32 ``F.softplus``: 1.1e-7; 0 below 6e-8),
    the identity above the threshold, finite at ±1e30."""
    import torch.nn.functional as F

    import edgeseq.models.mamba as mm

    v = torch.cat([torch.linspace(-100, 100, 200001), 5 * torch.randn(20000, generator=torch.Generator().manual_seed(0)),
                   torch.tensor([1e30, -1e30, 20.0, 20.5])])
    ref = F.softplus(v.double())
    monkeypatch.setattr(mm, "_is_tracing", lambda: True)
    got = mm.softplus(v).double()
    # below e^v = 6e-8, 1 + e^v rounds to 1 and the step size to 0: off by under 6e-8, absolute
    assert bool(((got - ref).abs() <= 3e-7 * ref.abs() + 6e-8 * (ref < 6e-8)).all())
    assert bool((got[v > 20] == v[v > 20].double()).all())
    monkeypatch.setattr(mm, "_is_tracing", lambda: False)
    assert torch.equal(mm.softplus(v), F.softplus(v))


def test_torch_compile_gets_the_plain_step_and_export_the_graph_forms(monkeypatch):
    """The exported-graph forms (products of inner size 1, the identity shift) are for ONNX Runtime;
    torch.compile — the GPU benchmark's free baseline — must compile the plain step, also on torch
    versions whose Dynamo answers ``torch.jit.is_tracing()`` with True."""
    import edgeseq.models.mamba as mm

    seen = []

    def probe(x):
        seen.append(mm._is_tracing())
        return x + 1

    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    torch.compile(probe, backend="eager", fullgraph=True)(torch.zeros(1))
    assert seen == [False]
    assert mm._is_tracing()  # outside Dynamo, a tracer answering True means an ONNX export


def test_torch_compile_traces_the_plain_step_even_when_dynamo_says_exporting(monkeypatch):
    """torch 2.11's Dynamo answers ``torch.compiler.is_exporting()`` with True inside
    ``torch.compile`` (later versions read the real flag): the compiled step must still be the plain
    form — one matrix product a layer (the SSM readout), no identity (the exported form has four
    and one) — and the flag that ``torch.export`` sets must still select the exported-graph forms."""
    from collections import Counter

    import edgeseq.models.mamba as mm

    model = build_model("mamba", vocab_size=37, d_model=8, n_layer=2, d_state=4).eval()
    names = model.state_names()
    state = model.init_state(1)

    def traced_ops():
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        step = torch.compile(lambda tok, *st: model.step(tok, dict(zip(names, st))), backend=backend,
                             fullgraph=True, dynamic=False)
        with torch.no_grad():
            step(torch.tensor([1]), *[state[n] for n in names])
        return Counter(getattr(n.target, "__name__", str(n.target)) for g in graphs for n in g.graph.nodes
                       if n.op in ("call_function", "call_method"))

    import types

    real = torch.compiler
    answers = dict(is_exporting=lambda: True, is_compiling=real.is_compiling)  # torch 2.11's Dynamo, inside compile
    if hasattr(real, "_is_exporting_flag"):
        answers["_is_exporting_flag"] = False
    stand_in = types.SimpleNamespace(**answers)
    monkeypatch.setattr(mm, "_compiler", lambda: stand_in)
    ops = traced_ops()
    assert ops["matmul"] == 2 and ops["eye"] == 0 and ops["log"] == 0, ops
    assert not mm._is_tracing()
    if "_is_exporting_flag" in answers:  # the flag torch.export sets selects the exported softplus,
        stand_in._is_exporting_flag = True  # and the plain broadcasts (the products are ONNX's alone)
        assert mm._is_tracing()
        ops = traced_ops()
        assert ops["matmul"] == 2 and ops["eye"] == 0 and ops["log"] == 2, ops


def test_torch_export_gets_the_plain_broadcasts_and_onnx_the_products(monkeypatch):
    """The step's products of inner size 1 and its identity shift are ONNX Runtime's forms (the
    TorchScript tracer): ``torch.export`` — the TVM path — captures the plain broadcasts, since
    TVM 0.27's CUDA build of the first product fused with the state update drops the decayed
    old state (found on an H200). Counted in the real exported program and ONNX graph."""
    import onnx

    from export.onnx_export import export_graph
    from export.tvm_build import export_program

    model = build_model("mamba", vocab_size=37, d_model=8, n_layer=2, d_state=4).eval()
    program = export_program(model, "step", 8)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("matmul" in t or "bmm" in t for t in targets) == 2, targets  # the readout, one per layer
    assert not any("eye" in t for t in targets)
    import tempfile

    import edgeseq.models.mamba as mm

    def matmuls() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "step.onnx"
            export_graph(model, path, kind="step")
            return sum(n.op_type == "MatMul" for n in onnx.load(str(path)).graph.node)

    onnx_form = matmuls()
    monkeypatch.setattr(mm, "_is_exporting", lambda: True)  # the ONNX trace as torch.export would see it
    assert onnx_form - matmuls() == 2 * 3  # per layer: the two products and the shift
