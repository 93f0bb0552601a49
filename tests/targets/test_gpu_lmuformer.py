"""The fused one-kernel LMUFormer / Spiking LMUFormer frame step (targets/gpu/lmuformer.py) against the
models' own ``step``.

Reference: the same model with the weights the kernel uses (bf16-rounded GEMV weights, or fp32) run
by ``step`` in float64, teacher-forced: before each frame the runtime gets the reference's state, so
every step is compared from identical inputs. The kernel computes in fp32 (sums in another order), so
scores and state agree to ~1e-7 relative; 1e-4 leaves margin while an indexing, window-shift or
wrong-BatchNorm bug gives O(1) errors. The float model has no thresholds, so every step must match.
In the spiking model a LIF membrane within fp32 rounding of its threshold can fire on one side only
(a boundary flip, which moves the rest of that frame): a step over tolerance is accepted only if the
reference had a membrane within 1e-4 of a threshold in that step, and such steps are counted and
bounded. The tests also require spikes on both sides (a rate between 0.5% and 99.5%).

GPU tests skip without CUDA + Triton (CI has neither); the interpreter tests run the same kernel on
CPU through ``TRITON_INTERPRET=1`` in a subprocess when Triton is importable (marked slow).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeseq.models.lmuformer import LMUFormer, LMUFormerConfig, SpikingLMUFormer, SpikingLMUFormerConfig

ROOT = Path(__file__).resolve().parents[2]
BOUNDARY = 1e-4
SHAPE = dict(input_dim=5, dim=48, depth=2, n_classes=7, memory_size=40, theta=16.0, embed_layers=3, embed_kernel=5)


sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_gpu_fused import _gpu_ready, gpu  # noqa: E402  (gpu: needs a CUDA GPU and Triton)


def _model(spiking: bool, seed: int = 0, **kw):
    """A random model in eval mode with BatchNorm statistics and affines off their defaults, so that a
    BatchNorm applied in the wrong place or with the wrong vector changes the result."""
    torch.manual_seed(seed)
    model = SpikingLMUFormer(SpikingLMUFormerConfig(**kw)) if spiking else LMUFormer(LMUFormerConfig(**kw))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(1.0, 3.0) if spiking else m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
    return model.eval()


def _rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def _record(model) -> list:
    """Wrap every LIF's ``step`` to record (spikes, membrane before reset) of each call."""
    from edgeseq.models.lif import LIF

    store: list = []
    for lif in [m for m in model.modules() if isinstance(m, LIF)]:
        orig = lif.step

        def step(current, membrane, _orig=orig, _lif=lif):
            v = membrane + (current - membrane) / _lif.cfg.tau
            s, m = _orig(current, membrane)
            store.append((s.clone(), (v - _lif.cfg.threshold).abs().min()))
            return s, m

        lif.step = step
    return store


def check_against_reference(model, device: str, frames: int = 6, tol: float = 1e-4, max_flip_steps: int = 0,
                            seed: int = 0, **kw) -> dict:
    from targets.gpu.lmuformer import FusedLMUFormerStep

    rt = FusedLMUFormerStep(model, device=device, **kw)
    ref = rt.dequantized_model(model).double()
    store = _record(ref)
    gen = torch.Generator().manual_seed(seed)
    state = ref.init_state(1, dtype=torch.float64)
    report = {"scores": 0.0, "state": 0.0, "flip_steps": 0, "steps": frames, "spike_rate": None}
    spikes = neurons = 0
    for _ in range(frames):
        x = torch.rand(1, model.config.input_dim, generator=gen, dtype=torch.float64) * 2
        rt.load_state(state)
        rt.out.fill_(float("nan"))  # poison: every score must be written
        y = rt.step(x[0]).clone()
        store.clear()
        with torch.no_grad():
            yr, state = ref.step(x, state)
        got = rt.state_dict()
        assert set(got) == set(state)
        err = max(_rel(y, yr[0]), max(_rel(got[k], state[k]) for k in state))
        for s, _ in store:
            spikes += int(s.sum())
            neurons += s.numel()
        if err > tol:
            margin = min((float(m) for _, m in store), default=float("inf"))
            assert margin < BOUNDARY, f"step off by {err:.2e} with no membrane near a threshold ({margin:.2e})"
            report["flip_steps"] += 1
            continue
        report["scores"] = max(report["scores"], _rel(y, yr[0]))
        report["state"] = max(report["state"], max(_rel(got[k], state[k]) for k in state))
    if neurons:
        report["spike_rate"] = spikes / neurons
        assert 0.005 < report["spike_rate"] < 0.995, report
    assert report["flip_steps"] <= max_flip_steps, report
    return report


def test_import_leaves_triton_alone():
    code = "import sys, targets.gpu.lmuformer, targets.gpu.runtime; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _interpret(code: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    prefix = "import sys; sys.path.insert(0, 'tests/targets'); sys.path.insert(0, '.')\n"
    out = subprocess.run([sys.executable, "-c", prefix + code], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("spiking,weights,fold", [(False, "bf16", False), (True, "fp32", False), (True, "fp32", True)])
def test_interpreted_kernel_matches_step(spiking, weights, fold):
    """Under Triton's CPU interpreter: 2 blocks, every width off a power of two (5 features, 48 wide,
    memory 40, hidden 192), embedding kernel 5 (4-frame windows, a 2-frame delayed skip); ``fold``:
    after ``fold_batchnorm`` (embedding convs with biases, identity BatchNorms with eps 0)."""
    pytest.importorskip("triton")
    model = "fold_batchnorm(_model(True, **SHAPE))" if fold else f"_model({spiking}, **SHAPE)"
    out = _interpret(
        "from test_gpu_lmuformer import _model, check_against_reference, SHAPE\n"
        "from edgeseq.models.lmuformer import fold_batchnorm\n"
        f"print(check_against_reference({model}, 'cpu', weights={weights!r}))\n")
    assert "scores" in out


@pytest.mark.slow
def test_interpreted_zoo_models_and_runtime():
    """The trained zoo models (float and spiking, 64 wide) under the interpreter, and the Runtime adapter
    that ``open_runtime`` returns: its verification, its steps against the model's, a state from
    elsewhere copied in."""
    pytest.importorskip("triton")
    out = _interpret(
        "import torch\n"
        "from test_gpu_lmuformer import check_against_reference, _rel\n"
        "from edgeseq.checkpoints import load_model\n"
        "from targets.gpu.runtime import TritonLMUFormerRuntime, verify_lmuformer\n"
        "for name in ('lmuformer-digits', 'spiking-lmuformer-digits'):\n"
        "    m = load_model(name).model.eval()\n"
        "    print(name, check_against_reference(m, 'cpu', frames=4))\n"
        "    rt = TritonLMUFormerRuntime(m, device='cpu', weights='fp32')\n"
        "    assert verify_lmuformer(rt, m) < 1e-5\n"
        "    st, rs = rt.init_state(1), m.init_state(1)\n"
        "    for t in range(3):\n"
        "        x = torch.rand(1, m.config.input_dim)\n"
        "        y, st = rt.step(x, st)\n"
        "        with torch.no_grad():\n"
        "            yr, rs = m.step(x, rs)\n"
        "        assert _rel(y, yr) < 1e-4 and max(_rel(s, rs[n]) for n, s in zip(rt.names, st)) < 1e-4\n"
        "    y, _ = rt.step(x, [rs[n] for n in rt.names])\n"
        "    with torch.no_grad():\n"
        "        yr, _ = m.step(x, rs)\n"
        "    assert _rel(y, yr) < 1e-4\n"
        "print('ok')\n")
    assert "ok" in out


def test_refuses_bad_input():
    pytest.importorskip("triton")
    from edgeseq.errors import EdgeseqError, InputError
    from targets.gpu.lmuformer import FusedLMUFormerStep

    model = _model(False, **SHAPE)
    if not _gpu_ready():
        with pytest.raises(EdgeseqError, match="CUDA device and Triton"):
            FusedLMUFormerStep(model, device="cpu")
        return
    with pytest.raises(InputError, match="eval mode"):
        FusedLMUFormerStep(_model(False, **SHAPE).train())
    rt = FusedLMUFormerStep(model)
    with pytest.raises(InputError, match="one frame of 5 features"):
        rt.step(torch.zeros(6))


@pytest.mark.slow
@pytest.mark.parametrize("spiking", [False, True])
def test_kernel_compiles_for_sm90(spiking, monkeypatch):
    """The kernel compiled ahead of time for sm_90 by Triton's own ptxas (no GPU needed), with the
    argument types and constexprs the runtime passes."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"this Triton has another compile API: {exc}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_gpu_fused import compile_launches_sm90, record_launches

    import targets.gpu.lmuformer as gl
    import targets.gpu.lmuformer_kernels as kl

    launches = record_launches(monkeypatch, kl, ("lmuformer_step_kernel",))
    monkeypatch.setattr(gl, "available", lambda: True)
    rt = gl.FusedLMUFormerStep(_model(spiking, **SHAPE), device="cpu", cuda_graph=False)
    rt._launch()
    assert compile_launches_sm90(triton, launches)


@gpu
@pytest.mark.parametrize("spiking,weights", [(False, "bf16"), (True, "bf16"), (True, "fp32")])
def test_fused_matches_step(spiking, weights):
    print(check_against_reference(_model(spiking, **SHAPE), "cuda", frames=12, max_flip_steps=1 if spiking else 0,
                                  weights=weights))


@gpu
@pytest.mark.parametrize("spiking", [False, True])
def test_fused_256_wide_matches_step(spiking):
    """The benchmark's shape (40 features, 256 wide, 4 blocks, hidden 1024; memory 256 / 512)."""
    print(check_against_reference(_model(spiking, input_dim=40, dim=256, depth=4, n_classes=35, theta=64.0), "cuda",
                                  frames=8, max_flip_steps=2 if spiking else 0))


@gpu
def test_graph_replay_and_open_runtime():
    """The CUDA graph replays the direct launch bit for bit; ``open_runtime`` picks the fused step for
    the zoo models and its scores follow the model's with the same (bf16-rounded) weights."""
    from edgeseq.checkpoints import load_model
    from targets.gpu.lmuformer import FusedLMUFormerStep
    from targets.runtimes import open_runtime

    model = _model(True, **SHAPE)
    a, b = FusedLMUFormerStep(model, cuda_graph=True), FusedLMUFormerStep(model, cuda_graph=False)
    for t in range(4):
        x = torch.rand(5, generator=torch.Generator().manual_seed(t))
        assert torch.equal(a.step(x).clone(), b.step(x).clone())
    assert torch.equal(a.s, b.s)
    for name in ("lmuformer-digits", "spiking-lmuformer-digits"):
        rt = open_runtime(name, device="cuda")
        assert rt.name == "triton-fused"
        ref = rt.fused.dequantized_model(load_model(name).model.eval())
        st, rs = rt.init_state(1), ref.init_state(1)
        off = 0
        for t in range(4):
            x = torch.rand(1, 8, generator=torch.Generator().manual_seed(t))
            y, st = rt.step(x, [rs[n] for n in rt.names])  # teacher-forced: the reference state copied in
            with torch.no_grad():
                yr, rs = ref.step(x, rs)
            off += _rel(y, yr) > 1e-4  # a spike boundary flip (fp32 sums in another order)
        assert off <= 1


def test_open_fused_takes_the_one_kernel_step_only_for_small_models(monkeypatch):
    """The default runtime choice follows the measurement (benchmarks/decode_gpu_lmuformer.json): the
    one-kernel step up to LMUFORMER_FUSED_MAX_BYTES of weights, the PyTorch runtime above it unless the
    triton runtime is asked for. (A stand-in runtime: no GPU needed.)"""
    import targets.gpu.mamba as gm
    import targets.gpu.runtime as gr

    class Fake:
        def __init__(self, model, device, source):
            self.fused = type("F", (), {"weight_bytes": model.weight_bytes})()

    monkeypatch.setattr(gm, "available", lambda: True)
    monkeypatch.setattr(gr, "TritonLMUFormerRuntime", Fake)
    monkeypatch.setattr(gr, "verify_lmuformer", lambda rt, model: 0.0)
    small, big = _model(False, **SHAPE), _model(True, **SHAPE)
    small.weight_bytes, big.weight_bytes = gr.LMUFORMER_FUSED_MAX_BYTES, gr.LMUFORMER_FUSED_MAX_BYTES + 1
    assert isinstance(gr.open_fused(small, "cuda"), Fake)
    assert gr.open_fused(big, "cuda") is None
    assert isinstance(gr.open_fused(big, "cuda", required=True), Fake)
