"""The fused Triton step of recipe-quantized Mamba (targets/gpu/qmamba) against the fake-quant model.

Oracle: the PyTorch model that ``quantize.quantize_model`` returns (``qmodel.step``, fp32), built
independently of the kernels from the same recipe: the kernels take its integers and scales, and
must compute its function. Weight-only recipes (W4A16): only the fp32 summation order differs
(the integer weights times their scales are exact in fp32), so the error is ~1e-6 like the bf16
kernels; 1e-4 leaves margin for 24 layers while a wrong scale index, nibble order or a Hadamard
sign gives errors of order 1. Int8-activation recipes (W8A8): the kernels round each quantized
input exactly as ``fake_quant`` (IEEE division, half to even) and then sum integers exactly, but
their fp32 input to the rounding (an RMSNorm, a conv) can differ from PyTorch's in the last bit.
Near a rounding boundary that moves one activation by one level, ~1e-3 of the layer's output, and
every later rounding sees that difference: one such flip takes the whole step to the recipe's own
quantization noise (~1e-2; the same happens between PyTorch's fp32 and float64 runs of the
fake-quant model). So W8A8 is checked step by step from the reference's state (teacher forcing)
on 2 layers at the 130m width, where a flip-free step is the common case: most steps must agree to
1e-5 (the integer path is right), none may exceed the quantization-noise scale (5e-2).

GPU tests skip without CUDA + Triton; the interpreter test runs the kernels on CPU.
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


def quantized(model, recipe: str, seed: int = 0, **overrides):
    from quantize.apply import quantize_model
    from quantize.recipes import get_recipe, with_overrides

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    calib = [torch.randint(0, vocab, (1, 32), generator=gen) for _ in range(2)]
    r = with_overrides(get_recipe(recipe), **overrides) if overrides else recipe
    qmodel, _ = quantize_model(model, r, calib, progress=False)
    return qmodel


def check_quant_runtime(qmodel, device: str, tokens, tol: float, **kw) -> dict:
    from targets.gpu.qmamba import QuantFusedMambaStep

    rt = QuantFusedMambaStep(qmodel, device=device, **kw)
    ref = rt.dequantized_model().to(device)
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen).to(device) for k, v in ref.init_state(1).items()}
    rt.load_state(state)
    worst = {"logits": 0.0, "state": 0.0}
    for tok in tokens:
        rt.logits.fill_(float("nan"))
        logits = rt.step(tok).clone()
        with torch.no_grad():
            y, state = ref.step(torch.tensor([tok], device=device), state)
        assert torch.isfinite(logits).all()
        worst["logits"] = max(worst["logits"], _rel(logits, y[0]))
        got = rt.state_dict()
        worst["state"] = max(worst["state"], max(_rel(got[k], state[k]) for k in state))
        top2 = y[0].topk(2).values
        if float(top2[0] - top2[1]) > 1e-4 * float(top2[0].abs()):
            assert int(rt.next_token()) == int(y[0].argmax())
    token = int(rt.next_token())
    rt.step_greedy()
    with torch.no_grad():
        y, state = ref.step(torch.tensor([token], device=device), state)
    worst["greedy"] = _rel(rt.logits, y[0])
    worst["kernels_per_layer"] = 3 if rt.rotate else 2
    assert worst["logits"] < tol and worst["state"] < tol and worst["greedy"] < tol, worst
    return worst


def test_int4_pairs_and_int8_embedding_are_exact():
    from targets.gpu.qmamba import int8_embedding, pack_int4_halves, unpack_int4_halves

    q = torch.randint(-8, 8, (5, 12))
    packed = pack_int4_halves(q, 8)  # blocks of 8 columns, the second zero-padded
    assert packed.dtype == torch.uint8 and packed.shape == (5, 8)
    assert int(packed[0, 0]) == (int(q[0, 0]) + 8) | ((int(q[0, 4]) + 8) << 4)
    assert bool(((packed[:, 4:] >> 4) == 8).all())  # padding columns 12..15: value 0 (+ 8) in the high nibbles
    assert torch.equal(unpack_int4_halves(packed, 8, 12), q.to(torch.int32))
    qmodel = quantized(_model(0, vocab_size=200, d_model=32, n_layer=1), "w4a16")
    table, scale = int8_embedding(qmodel.embedding.weight)
    assert table.dtype == torch.int8 and table.abs().max() == 127
    assert torch.equal(table.float() * scale[:, None], qmodel.embedding.weight.float())
    assert int8_embedding(torch.randn(10, 32)) is None  # a float table is not an int8 product


def test_unsupported_models_refused_cleanly():
    from edgeseq.errors import EdgeseqError, InputError
    from targets.gpu.qmamba import QuantFusedMambaStep

    model = _model(0, vocab_size=200, d_model=32, n_layer=1)
    with pytest.raises((InputError, EdgeseqError)):
        QuantFusedMambaStep(model, device="cpu")  # float layers (or no GPU/Triton here)


@pytest.mark.slow
def test_interpreted_quant_kernels_match_fake_quant():
    """Every kernel path under Triton's CPU interpreter, d_model 48 (d_inner 96 = 12 x 8: the
    Paley-12 x Sylvester-8 rotation), groups of 16 (3 per in_proj row: a padded chunk grid). The
    4-bit head also as a loop (5 programs of 4 blocks of 16 rows over a 300-row vocabulary: the last
    program's tail blocks lie past it), whose running arg-max must agree with the one-block programs';
    and at d_model 64 the looping in_proj and head kernels (``in_chunks``, ``head_chunks``: chunked
    rows, a flat loop over row blocks and groups) and the rows in_proj kernel (``in_rows``, with and
    without the in-place high nibble) against the same fake-quant model. The 4-bit defaults at d_model
    48 (``QUANT4_BLOCKS``) run the rows kernel over a padded chunk grid (3 chunks in 4 row slots);
    ``Blocks()`` runs the [channels, chunks, columns] kernel."""
    pytest.importorskip("triton")
    code = (
        "import sys; sys.path.insert(0, 'tests/targets'); sys.path.insert(0, '.');\n"
        "from test_gpu_quant import quantized, check_quant_runtime; from test_gpu_fused import _model\n"
        "m = _model(0, vocab_size=300, d_model=48, n_layer=2)\n"
        "g = dict(group_size=16, group_fallback='channel')\n"
        "for recipe, over, tol in [('w4a16', g, 1e-4), ('w4a16', {**g, 'rotate': False}, 1e-4), ('w8a8', {}, 1e-3),\n"
        "                          ('w8a8', {'rotate': False}, 1e-3), ('w8a8-minmax', {}, 1e-3)]:\n"
        "    print(recipe, over, check_quant_runtime(quantized(m, recipe, **over), 'cpu', [5, 299, 0], tol))\n"
        "from targets.gpu.mamba import Blocks\n"
        "print(check_quant_runtime(quantized(m, 'w4a16', **g, rotate=False), 'cpu', [5, 299, 0], 1e-4,\n"
        "                          blocks=Blocks(head_rows=16, head_loop=4)))\n"
        "m = _model(0, vocab_size=300, d_model=64, n_layer=2)\n"
        "for b in [Blocks(in_chunks=2, head_chunks=2, head_rows=16, head_loop=4, head_prefetch=True),\n"
        "          Blocks(in_chunks=1, in_channels=16, head_chunks=1, head_rows=32),\n"
        "          Blocks(in_rows=True, in_channels=16), Blocks(in_rows=True, in_nibh=True, in_channels=2, warps_ssm=1)]:\n"
        "    print(check_quant_runtime(quantized(m, 'w4a16', **g, rotate=False), 'cpu', [5, 299, 0], 1e-4, blocks=b))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("kernels_per_layer") == 10


def teacher_forced_errors(qmodel, device: str, tokens, **kw) -> list[float]:
    """Relative logits error of single fused steps, each from the reference's state."""
    from targets.gpu.qmamba import QuantFusedMambaStep

    rt = QuantFusedMambaStep(qmodel, device=device, **kw)
    ref = rt.dequantized_model().to(device)
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen).to(device) for k, v in ref.init_state(1).items()}
    errors = []
    for tok in tokens:
        rt.load_state(state)
        logits = rt.step(tok).clone()
        with torch.no_grad():
            y, state = ref.step(torch.tensor([tok], device=device), state)
        errors.append(_rel(logits, y[0]))
    return errors


LOOPING = dict(in_chunks=2, head_chunks=2, head_rows=64, head_loop=4, head_prefetch=True)


@gpu
@pytest.mark.parametrize("pdl", [False, True, None, "loop", "head_l2", "rows"])
@pytest.mark.parametrize("recipe,over", [("w4a16", {}), ("w4a16", {"rotate": False})])
def test_w4a16_130m_shape_matches_fake_quant(recipe, over, pdl):
    """The named recipe at the mamba-130m shape (groups of 128, the 12 x 128 rotation), with and
    without programmatic dependent launch (a kernel reading its predecessor's output before its
    ``gdc_wait`` would read stale values and miss 1e-4 by far; these run ``Blocks()``'s in_proj kernel,
    the [channels, chunks, columns] one); None: the 4-bit defaults (``QUANT4_BLOCKS`` / rotated
    ``QUANT4_ROT_BLOCKS``: PDL, the rows in_proj kernel with the in-place nibble, the looping head,
    1-warp SSM programs without rotation); "rows": the rows kernel with the nibble shifted; "loop": the looping in_proj and head kernels with
    their L2 prefetch before the wait; "head_l2": the head's table asked into L2 by the last 8
    layers' SSM kernels (a hint: the numbers must not move)."""
    from targets.gpu.mamba import QUANT4_BLOCKS, Blocks

    model = _model(0, vocab_size=50280, d_model=768, n_layer=24).cuda()
    if pdl == "loop":
        blocks = Blocks(**{**QUANT4_BLOCKS.__dict__, **LOOPING})
    elif pdl == "head_l2":
        blocks = Blocks(**{**QUANT4_BLOCKS.__dict__, "head_l2_layers": 8})
    elif pdl == "rows":  # the rows in_proj kernel with the nibble shifted down (the default reads it in place)
        blocks = Blocks(**{**QUANT4_BLOCKS.__dict__, "in_nibh": False, "warps_ssm": 2})
    else:
        blocks = None if pdl is None else Blocks(pdl=pdl)
    worst = check_quant_runtime(quantized(model, recipe, **over), "cuda", [3, 50279, 7], 1e-4, blocks=blocks)
    print(recipe, over, pdl, worst)


def test_quant_blocks_pick_the_wide_ssm_grid_for_wide_4bit_models():
    from targets.gpu.mamba import QUANT4_BLOCKS, QUANT4_WIDE_BLOCKS, QUANT_BLOCKS, quant_blocks

    assert quant_blocks(4, 768) is QUANT4_BLOCKS and quant_blocks(4, 2048) is QUANT4_WIDE_BLOCKS
    assert quant_blocks(4, 768, rotate=True).warps_ssm == 2 and quant_blocks(4, 768, rotate=True).in_rows
    assert quant_blocks(4, 2048, rotate=True) is QUANT4_WIDE_BLOCKS
    assert quant_blocks(8, 2048) is QUANT_BLOCKS
    assert QUANT4_WIDE_BLOCKS.ssm_channels == 2 * QUANT4_BLOCKS.ssm_channels


@gpu
def test_w4a16_wide_default_matches_fake_quant():
    """At d_model 2048 a 4-bit recipe runs with its wide defaults (64-channel SSM/out_proj blocks,
    ``QUANT4_WIDE_BLOCKS``) and computes the fake-quant model."""
    from targets.gpu.mamba import QUANT4_WIDE_BLOCKS, quant_blocks
    from targets.gpu.qmamba import QuantFusedMambaStep

    assert quant_blocks(4, 2048) is QUANT4_WIDE_BLOCKS and quant_blocks(4, 768) is not QUANT4_WIDE_BLOCKS
    qmodel = quantized(_model(0, vocab_size=1000, d_model=2048, n_layer=2).cuda(), "w4a16", rotate=False)
    assert QuantFusedMambaStep(qmodel).blocks is QUANT4_WIDE_BLOCKS
    print(check_quant_runtime(qmodel, "cuda", [3, 999, 7], 1e-4))


@gpu
@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("over", [{}, {"rotate": False}])
def test_w8a8_130m_width_matches_fake_quant_step_by_step(over, pdl):
    from targets.gpu.mamba import Blocks

    model = _model(0, vocab_size=50280, d_model=768, n_layer=2).cuda()
    errors = teacher_forced_errors(quantized(model, "w8a8", **over), "cuda", list(range(3, 50000, 3125)),
                                   blocks=Blocks(pdl=pdl))
    print("w8a8", over, pdl, errors)
    assert sum(e < 1e-5 for e in errors) >= 0.75 * len(errors), errors
    assert max(errors) < 5e-2, errors


@pytest.mark.parametrize("n", [1, 3, 4, 30])
def test_head_l2_prefetch_shares_cover_the_head_once(n, monkeypatch):
    """``Blocks.head_l2_layers`` = n: the last n layers' SSM kernels each ask L2 for one share of the
    head's table and scales. The shares must be 16-byte multiples at 256-byte aligned offsets (the
    bulk prefetch's rules), disjoint, in order, and cover each tensor but its last < 16 bytes; the
    other layers (and the interpreter) prefetch nothing."""
    import types

    import targets.gpu.qmamba as qm
    from targets.gpu.mamba import Blocks

    monkeypatch.setattr(qm, "interpreted", lambda: False)
    nl = 6
    fake = types.SimpleNamespace(torch=torch, blocks=Blocks(head_l2_layers=n), layers=[None] * nl,
                                 head_w=torch.zeros(1003, 33, dtype=torch.uint8), head_s=torch.zeros(1003, 3))
    for t, idx in ((fake.head_w, 0), (fake.head_s, 2)):
        base = t.reshape(-1).view(torch.uint8)
        covered = 0
        for i in range(nl):
            args = qm.QuantFusedMambaStep._head_prefetch_args(fake, i)
            ptr, nbytes = args[idx], args[idx + 1]
            if i < nl - min(n, nl):
                assert nbytes == 0
                continue
            assert nbytes % 16 == 0
            if nbytes:
                offset = ptr.data_ptr() - base.data_ptr()
                assert offset % 256 == 0 and offset == covered, (i, offset, covered)
                covered += nbytes
        assert base.numel() - 16 < covered <= base.numel()
    monkeypatch.setattr(qm, "interpreted", lambda: True)
    assert all(qm.QuantFusedMambaStep._head_prefetch_args(fake, i)[1] == 0 for i in range(nl))


@gpu
@pytest.mark.parametrize("pdl", [False, True])
def test_quant_graph_replay_equals_direct_launches(pdl):
    from targets.gpu.mamba import Blocks
    from targets.gpu.qmamba import QuantFusedMambaStep

    qmodel = quantized(_model(2, vocab_size=1000, d_model=128, n_layer=2), "w8a8")
    a = QuantFusedMambaStep(qmodel, cuda_graph=True, blocks=Blocks(pdl=pdl))
    b = QuantFusedMambaStep(qmodel, cuda_graph=False, blocks=Blocks(pdl=pdl))
    for tok in [1, 2, 3]:
        la, lb = a.step(tok).clone(), b.step(tok).clone()
        assert _rel(la, lb) < 1e-5
    assert torch.isfinite(la).all() and la.abs().max() > 0


def test_runtime_adapter_picks_the_quantized_step_for_recipe_models():
    from targets.gpu.runtime import is_recipe_quantized

    model = _model(0, vocab_size=200, d_model=32, n_layer=1)
    assert not is_recipe_quantized(model)
    assert is_recipe_quantized(quantized(model, "w4a16"))


@gpu
@pytest.mark.parametrize("recipe", ["w4a16", "w8a8"])
def test_profile_opens_the_verified_quantized_runtime(tmp_path, recipe):
    """A folder written by `edgeseq quantize` opens on CUDA as the fused quantized step, verified
    against its fake-quant model, and names its recipe's widths."""
    import edgeseq
    from quantize.io import save_quantized
    from targets.gpu.runtime import verify
    from targets.runtimes import open_runtime

    model = edgeseq.load("mamba-shakespeare").model.float().eval()
    qmodel = quantized(model, recipe)
    save_quantized(qmodel, tmp_path / "q", recipe)
    rt = open_runtime(str(tmp_path / "q"), device="cuda")
    assert rt.name == f"triton-fused-{recipe}"
    assert verify(rt, rt.fused.qmodel) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("recipe,over,shape", [("w4a16", {}, {}), ("w4a16", {"rotate": False}, {}),
                                               ("w8a8", {"rotate": False}, {}),
                                               ("w4a16", {"rotate": False}, {**LOOPING, "head_rows": 16}),
                                               ("w4a16", {"rotate": False}, {"in_rows": True, "in_nibh": True,
                                                                             "warps_ssm": 1})])
def test_quant_kernels_compile_for_sm90_with_pdl(recipe, over, shape, monkeypatch):
    """Every launch of a quantized step with programmatic dependent launch, compiled ahead of time for
    sm_90 (no GPU needed; the interpreter cannot run the grid-dependency instructions)."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"this Triton has another compile API: {exc}")
    import targets.gpu.mamba as gm
    import targets.gpu.qkernels as qk
    import targets.gpu.qmamba as qm
    from test_gpu_fused import compile_launches_sm90, record_launches

    launches = record_launches(monkeypatch, qk, ("q_in_kernel", "q_in4_kernel", "q_in4r_kernel", "q_ssm_kernel", "q_rot_out_kernel",
                                                 "q_head_kernel", "q_head4_kernel"))
    for mod in (gm, qm):
        monkeypatch.setattr(mod, "available", lambda: True)
        monkeypatch.setattr(mod, "interpreted", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    g = dict(group_size=16, group_fallback="channel")
    # d_model 64 for the looping kernels: rows of 32 bytes, so their L2 prefetches are compiled too
    qmodel = quantized(_model(0, vocab_size=300, d_model=64 if shape else 48, n_layer=2), recipe, **{**g, **over})
    rt = qm.QuantFusedMambaStep(qmodel, device="cpu", cuda_graph=False,
                                blocks=gm.Blocks(**{"pdl": True, "head_loop": 3, "head_l2_layers": 1, **shape}))
    assert rt.head4 == (recipe == "w4a16")  # w4a16's own 4-bit head is packed two values a byte
    rt._launch(False)
    assert all(kw.get("launch_pdl") for _, _, kw in launches)
    assert len(compile_launches_sm90(triton, launches)) >= 3
    if shape.get("in_chunks"):
        assert {jit.fn.__name__ for jit, _, _ in launches} >= {"q_in4_kernel", "q_head4_kernel"}
    if shape.get("in_rows"):
        assert "q_in4r_kernel" in {jit.fn.__name__ for jit, _, _ in launches}
