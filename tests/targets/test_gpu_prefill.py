"""The GPU prefill (targets/gpu/prefill: chunked Triton scan + GEMMs) against edgeseq's own scan
and ``Mamba.prefill``.

Oracles: ``selective_scan_loop`` (the step-by-step reference scan, float64) for the scan kernels;
``Mamba.prefill`` for the whole prompt. In fp32 only the summation order and the chunk split
differ (the carried state is re-multiplied by whole-chunk decays), ~1e-7 relative seen, 1e-5
allowed; a wrong chunk boundary or a missed carry gives O(1). With bf16 GEMM inputs (what the
benchmark runs) the prompt's logits carry bf16 rounding: 2^-9 per input element, ~1e-2 after 24
layers; 5e-2 allowed. Runs under Triton's interpreter on CPU; the GPU tests skip without CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_gpu_fused import _model, _rel, gpu  # noqa: E402


def check_scan(device: str, T: int, E: int, N: int, chunk: int, block: int) -> tuple[float, float]:
    from edgeseq.models.mamba import selective_scan_loop
    from targets.gpu.prefill import chunked_scan

    g = torch.Generator().manual_seed(T)
    x, z = torch.randn(T, E, generator=g), torch.randn(T, E, generator=g)
    dt = torch.rand(T, E, generator=g) * 0.5
    A = -torch.rand(E, N, generator=g) * 2
    B, C = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    D, h0 = torch.randn(E, generator=g), torch.randn(E, N, generator=g)
    dev = lambda t: t.to(device)  # noqa: E731
    y, hT = chunked_scan(dev(x), dev(dt), dev(A), dev(B), dev(C), dev(D), h0=dev(h0), z=dev(z), chunk=chunk, block=block)
    yr, hr = selective_scan_loop(x[None].double(), dt[None].double(), A.double(), B[None].double(), C[None].double(),
                                 D.double(), h0[None].double())
    yr = yr[0] * torch.nn.functional.silu(z.double())
    return _rel(y, yr), _rel(hT, hr[0])


@pytest.mark.slow
def test_interpreted_prefill_matches_reference():
    """T = 37 over chunks of 8 (a partial last chunk), 24 channels in blocks of 8; then a 2-layer
    model's prompt against Mamba.prefill (fp32 GEMMs)."""
    pytest.importorskip("triton")
    code = (
        "import sys; sys.path.insert(0, 'tests/targets'); sys.path.insert(0, '.'); import torch\n"
        "from test_gpu_prefill import check_scan; from test_gpu_fused import _model, _rel\n"
        "from targets.gpu.prefill import MambaPrefill\n"
        "ey, eh = check_scan('cpu', 37, 24, 5, 8, 8); assert ey < 1e-5 and eh < 1e-5, (ey, eh)\n"
        "m = _model(0, vocab_size=300, d_model=48, n_layer=2); tok = torch.randint(0, 300, (21,))\n"
        "lg, st = MambaPrefill(m, device='cpu', dtype='float32', chunk=8).prefill(tok)\n"
        "ref, rst = m.prefill(tok[None])\n"
        "e = _rel(lg, ref[0, -1].detach()); es = max(_rel(st[k], rst[k].detach()) for k in rst)\n"
        "assert e < 1e-5 and es < 1e-5, (e, es); print('ok', ey, eh, e, es)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@gpu
@pytest.mark.parametrize("T,chunk", [(512, 64), (1000, 64), (77, 16)])
def test_scan_matches_loop_on_gpu(T, chunk):
    ey, eh = check_scan("cuda", T, 1536, 16, chunk, 32)
    assert ey < 1e-5 and eh < 1e-5, (ey, eh)


@gpu
def test_prefill_130m_shape_matches_model_and_hands_over_to_decode():
    from targets.gpu.mamba import FusedMambaStep
    from targets.gpu.prefill import MambaPrefill

    model = _model(0, vocab_size=50280, d_model=768, n_layer=24).cuda()
    tokens = torch.randint(0, 50280, (300,), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ref, rst = model.prefill(tokens[None])
        lg32, st32 = MambaPrefill(model, dtype="float32").prefill(tokens)
        lg16, _ = MambaPrefill(model).prefill(tokens)
    assert _rel(lg32, ref[0, -1]) < 1e-4 and max(_rel(st32[k], rst[k]) for k in rst) < 1e-4
    assert _rel(lg16, ref[0, -1]) < 5e-2
    rt = FusedMambaStep(model)  # the prompt's state continues in the fused decode step
    rt.load_state(st32)
    nxt = int(ref[0, -1].argmax())
    with torch.no_grad():
        y, _ = model.step(torch.tensor([nxt], device="cuda"), rst)
    assert _rel(rt.step(nxt), y[0]) < 3e-2  # bf16 decode weights


@gpu
def test_prefill_graph_replays_the_direct_prefill():
    """The same kernels in the same order (no atomics in the prefill): replay == direct launches."""
    from targets.gpu.prefill import MambaPrefill

    pf = MambaPrefill(_model(1, vocab_size=1000, d_model=256, n_layer=3).cuda())
    for seed in (0, 1):  # the second call of a length replays the captured graph with new tokens
        tokens = torch.randint(0, 1000, (200,), generator=torch.Generator().manual_seed(seed)).cuda()
        want, wstate = pf.prefill(tokens)
        got, gstate = pf.prefill_graphed(tokens)
        assert torch.equal(got, want) and all(torch.equal(gstate[k], wstate[k]) for k in wstate)
