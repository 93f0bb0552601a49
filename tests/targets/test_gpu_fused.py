"""The fused Triton decode step of Mamba (targets/gpu) against the plain PyTorch ``Mamba.step``.

Reference: the same model with the weights the kernels use (bf16-rounded, or the dequantized
int8 / int4 values) run by ``Mamba.step`` in float64. The kernels compute in fp32 (fp32 activations,
state and accumulation; only the summation order differs, and out_proj's residual add uses atomics),
so the relative error of logits and state after several steps is ~1e-6 (seen: <= 1e-6 under the
interpreter); 1e-4 leaves margin for 24 layers and exp/log ulps while any indexing, masking or
race bug gives errors of order 1. Integer weight paths are exact against their dequantized model
up to that same fp32 rounding.

GPU tests skip without CUDA + Triton (CI has neither); the interpreter test runs the same kernels
on CPU through ``TRITON_INTERPRET=1`` in a subprocess when Triton is importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeseq.models.mamba import Mamba, MambaConfig

ROOT = Path(__file__).resolve().parents[2]


def _gpu_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


gpu = pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU and Triton")


def _model(seed: int, **kw) -> Mamba:
    torch.manual_seed(seed)
    model = Mamba(MambaConfig(**kw)).eval()
    with torch.no_grad():  # move the parameters off their trivial init so each term matters
        for block in model.layers:
            block.mixer.D.uniform_(0.5, 1.5)
            block.mixer.conv1d.bias.normal_()
            block.norm.weight.uniform_(0.5, 1.5)
        model.norm_f.weight.uniform_(0.5, 1.5)
    return model


def _rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def check_against_reference(model: Mamba, weights: str, device: str, tokens, tol: float = 1e-4, **kw) -> dict:
    from targets.gpu.mamba import FusedMambaStep

    rt = FusedMambaStep(model, device=device, weights=weights, **kw)
    ref = rt.dequantized_model(model).double()
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in ref.init_state(1).items()}
    rt.load_state(state)
    worst = {"logits": 0.0, "state": 0.0}
    for tok in tokens:
        rt.logits.fill_(float("nan"))  # poison: every logit must be written
        logits = rt.step(tok).clone()
        with torch.no_grad():
            y, state = ref.step(torch.tensor([tok]), state)
        assert torch.isfinite(logits).all()
        worst["logits"] = max(worst["logits"], _rel(logits, y[0]))
        got = rt.state_dict()
        worst["state"] = max(worst["state"], max(_rel(got[k], state[k]) for k in state))
        top2 = y[0].topk(2).values
        if float(top2[0] - top2[1]) > 1e-6 * float(top2[0].abs()):  # no near-tie
            assert int(rt.next_token()) == int(y[0].argmax())
    # one step fed by the device-side arg-max
    token = int(rt.next_token())
    rt.step_greedy()
    with torch.no_grad():
        y, state = ref.step(torch.tensor([token]), state)
    worst["greedy"] = _rel(rt.logits, y[0])
    assert worst["logits"] < tol and worst["state"] < tol and worst["greedy"] < tol, worst
    return worst


def test_int_packing_round_trip():
    from targets.gpu.mamba import dequantize_int4, quantize_groups_int4, quantize_rows_int8

    w = torch.randn(24, 64)
    q, s = quantize_rows_int8(w)
    assert q.dtype == torch.int8 and (q.float() * s[:, None] - w).abs().le(s[:, None] / 2 + 1e-6).all()
    packed, s4 = quantize_groups_int4(w, 16)
    assert packed.dtype == torch.uint8 and packed.shape == (24, 32) and s4.shape == (24, 4)
    back = dequantize_int4(packed, s4, 16)
    assert (back - w).abs().le(s4.repeat_interleave(16, dim=1) / 2 + 1e-6).all()
    assert not torch.equal(back, torch.zeros_like(back))


def test_import_edgeseq_and_targets_leave_triton_alone():
    code = "import sys, edgeseq, targets, targets.gpu, targets.gpu.mamba; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.parametrize("weights,ssm_cols", [("bf16", 0), ("int4", 32), ("int8", 0)])
def test_interpreted_kernels_match_step(weights, ssm_cols):
    """The kernels under Triton's CPU interpreter (no GPU needed), a non-power-of-two shape; with
    ssm_cols 32 the 2-D SSM kernel splits d_model 96 over 3 column programs, which all read the old
    state (the interpreter runs programs one after another, so an in-place state write would show)."""
    pytest.importorskip("triton")
    code = (
        "import sys; sys.path.insert(0, 'tests/targets'); sys.path.insert(0, '.');"
        "from test_gpu_fused import _model, check_against_reference;"
        f"m = _model(0, vocab_size=300, d_model=96, n_layer=2);"
        f"from targets.gpu.mamba import Blocks;"
        f"print(check_against_reference(m, {weights!r}, 'cpu', [5, 299, 0], group=32,"
        f" blocks=Blocks(in_channels=16, ssm_channels=32, head_rows=64, ssm_cols={ssm_cols})))"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


@gpu
@pytest.mark.parametrize("weights", ["bf16", "int8", "int4"])
def test_fused_small_matches_step(weights):
    model = _model(0, vocab_size=300, d_model=96, n_layer=3)
    check_against_reference(model, weights, "cuda", [5, 17, 299, 0, 42], group=32)


@gpu
@pytest.mark.parametrize("weights,shape", [("bf16", {}), ("int4", {}), ("bf16", {"persistent": True}),
                                           ("int8", {"persistent": True}), ("bf16", {"ssm_cols": 128}),
                                           ("int4", {"ssm_cols": 128}), ("bf16", {"ssm_cols": 0, "ssm_channels": 8}),
                                           ("bf16", {"pdl": True}), ("bf16", {"pdl": False}), ("int4", {"pdl": True}),
                                           ("int8", {"pdl": True}), ("bf16", {"pdl": True, "ssm_cols": 0})])
def test_fused_130m_shape_matches_step(weights, shape):
    """The mamba-130m shape under each kernel layout; `persistent` runs all layers in one launch
    (grid barriers): a barrier that let a phase start early would read stale x_proj partials or
    residuals and miss 1e-4 by far. `pdl` (programmatic dependent launch) lets each kernel start
    while the one before it runs: a read of that kernel's output before ``gdc_wait`` would be stale."""
    from targets.gpu.mamba import Blocks

    model = _model(0, vocab_size=50280, d_model=768, n_layer=24)
    check_against_reference(model, weights, "cuda", [3, 50279, 7], blocks=Blocks(**shape))


@gpu
@pytest.mark.parametrize("pdl", [False, True])
def test_graph_replay_equals_direct_launches(pdl):
    """Also with PDL: its launches captured into the graph keep their programmatic edges."""
    from targets.gpu.mamba import Blocks, FusedMambaStep

    model = _model(2, vocab_size=1000, d_model=128, n_layer=2)
    a = FusedMambaStep(model, cuda_graph=True, blocks=Blocks(pdl=pdl))
    b = FusedMambaStep(model, cuda_graph=False, blocks=Blocks(pdl=pdl))
    for tok in [1, 2, 3]:
        la, lb = a.step(tok).clone(), b.step(tok).clone()
        assert _rel(la, lb) < 1e-5  # atomics may reorder the residual sums: not bit-equal
    assert torch.isfinite(la).all() and la.abs().max() > 0


@gpu
def test_bf16_runtime_close_to_float_model():
    """bf16 weights vs the untouched fp32 model: bounded by bf16 rounding (2^-8 relative per weight)."""
    from targets.gpu.mamba import FusedMambaStep

    model = _model(3, vocab_size=2000, d_model=256, n_layer=4)
    rt = FusedMambaStep(model)
    state = model.init_state(1)
    for tok in [10, 20, 30]:
        logits = rt.step(tok).clone()
        with torch.no_grad():
            y, state = model.step(torch.tensor([tok]), state)
    assert _rel(logits, y[0]) < 3e-2


def test_triton_runtime_refused_without_cuda():
    from edgeseq.errors import InputError
    from targets.runtimes import open_runtime

    if _gpu_ready():
        pytest.skip("a CUDA GPU is here: the refusal path is for machines without one")
    with pytest.raises(InputError, match="CUDA device and Triton"):
        open_runtime("mamba-shakespeare", device="cpu", runtime="triton")


@pytest.mark.slow
def test_interpreted_runtime_adapter_matches_torch_runtime():
    """The Runtime adapter (what `edgeseq profile` runs) under the interpreter: token in, logits and
    state out, the state fed back without copies, a foreign state copied in."""
    pytest.importorskip("triton")
    code = """
import sys; sys.path.insert(0, '.')
import numpy as np, torch
import edgeseq
from targets.gpu.runtime import TritonMambaRuntime
from targets.gpu.mamba import Blocks
from targets.runtimes import TorchRuntime
model = edgeseq.load('mamba-shakespeare').model.float().eval()
rt = TritonMambaRuntime(model, device='cpu', blocks=Blocks(in_channels=64, ssm_channels=64, ssm_cols=256, head_rows=256))
ref = TorchRuntime(rt.fused.dequantized_model(model))
x, s1, s2 = rt.example_input(1), rt.init_state(1), ref.init_state(1)
worst = 0.0
for t in range(3):
    y1, s1 = rt.step(x, s1)
    y2, s2 = ref.step(x, s2)
    worst = max(worst, float((y1 - y2).norm() / y2.norm()))
assert all(a is b for a, b in zip(s1, rt._views))  # fed back: its own buffers, no copy
y1, _ = rt.step(x, [s.clone() for s in s2])  # a foreign state is copied in
y2, _ = ref.step(x, s2)
worst = max(worst, float((y1 - y2).norm() / y2.norm()))
assert worst < 1e-4, worst
print('ok', worst, rt.name, rt.model_bytes)
"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@gpu
def test_profile_opens_the_verified_fused_runtime_on_cuda():
    from targets.gpu.runtime import verify
    from targets.runtimes import open_runtime

    rt = open_runtime("mamba-shakespeare", device="cuda")
    assert rt.name == "triton-fused"
    import edgeseq

    assert verify(rt, edgeseq.load("mamba-shakespeare").model.float()) < 1e-4
    torch_rt = open_runtime("mamba-shakespeare", device="cuda", runtime="torch")
    assert torch_rt.name == "torch"


_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32",
                 torch.int8: "i8", torch.uint8: "u8"}


@pytest.mark.slow
@pytest.mark.parametrize("weights,shape", [("bf16", {}), ("int4", {}), ("int8", {"ssm_cols": 0}),
                                           ("bf16", {"ssm_cols": 0, "prefetch_ahead": 2, "pdl": True}),
                                           ("bf16", {"pdl": True}), ("int4", {"pdl": True}),
                                           ("int8", {"persistent": True, "in_channels": 16})])
def test_kernels_compile_for_sm90(weights, shape, monkeypatch):
    """Every launch of a step, compiled ahead of time for sm_90 by Triton's own ptxas (no GPU needed):
    the paths the interpreter cannot run (L2 prefetch, PDL, the persistent kernel's barriers) at
    least compile here, with the exact argument types and constexprs the runtime passes."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:
        pytest.skip(f"this Triton has another compile API: {exc}")
    import targets.gpu.kernels as kernels
    import targets.gpu.mamba as gm

    launches = record_launches(monkeypatch, kernels, ("mamba_in_kernel", "mamba_ssm_out_kernel", "mamba_ssm_out2_kernel",
                                                      "lm_head_kernel", "mamba_layers_kernel"))
    monkeypatch.setattr(gm, "available", lambda: True)
    monkeypatch.setattr(gm, "interpreted", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    model = _model(0, vocab_size=300, d_model=256, n_layer=2)
    rt = gm.FusedMambaStep(model, device="cpu", weights=weights, cuda_graph=False, group=64, blocks=gm.Blocks(**shape))
    if shape.get("persistent"):
        monkeypatch.setattr(rt, "_persistent", lambda: True)
    rt._launch(False)
    compiled = compile_launches_sm90(triton, launches)
    assert len(compiled) >= 2  # the persistent path: the layers kernel and the head


def record_launches(monkeypatch, module, names) -> list:
    """Replace the named jit kernels of ``module`` by recorders: each ``kernel[grid](*args, **kw)``
    appends ``(jit, args, kw)`` to the returned list instead of launching."""
    launches = []

    class Recorder:
        def __init__(self, jit):
            self.jit = jit

        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((self.jit, args, kw))

    for name in names:
        monkeypatch.setattr(module, name, Recorder(getattr(module, name)))
    return launches


def compile_launches_sm90(triton, launches) -> set:
    """Compile recorded (jit, args, kwargs) launches for sm_90 (no GPU needed); the compiled keys."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    assert launches
    compiled = set()
    for jit, args, kw in launches:
        if not all(hasattr(jit, a) for a in ("arg_names", "params", "fn")):
            pytest.skip("this Triton's JITFunction has other attributes")
        values = {**dict(zip(jit.arg_names, args)), **kw}
        options = {"num_warps": values.pop("num_warps", 4)}
        if values.pop("launch_pdl", False):
            options["launch_pdl"] = True
        constexprs = {p.name: values[p.name] for p in jit.params if p.is_constexpr and p.name in values}
        signature = {}
        for p in jit.params:
            if p.is_constexpr:
                signature[p.name] = "constexpr"
            else:
                v = values[p.name]
                signature[p.name] = "*" + _TRITON_TYPES[v.dtype] if isinstance(v, torch.Tensor) else (
                    "fp32" if isinstance(v, float) else "i32")
        key = (jit.fn.__name__, tuple(sorted(constexprs.items())), tuple(sorted(options.items())), tuple(signature.values()))
        if key in compiled:
            continue
        try:
            src = ASTSource(fn=jit, signature=signature, constexprs=constexprs)
        except TypeError as exc:
            pytest.skip(f"this Triton has another compile API: {exc}")
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        assert kernel.asm["cubin"], jit.fn.__name__
        if options.get("launch_pdl"):  # the grid-dependency instructions made it into the machine code
            assert "griddepcontrol.wait" in kernel.asm["ptx"], jit.fn.__name__
        compiled.add(key)
    return compiled
