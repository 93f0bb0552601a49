"""One decode step of a mamba-130m-shaped model on a CUDA GPU: the PyTorch runtimes, a compiler, the
cuBLAS floor and edgeseq's fused Triton runtime side by side.

    python benchmarks/decode_gpu.py [--out decode_gpu.json] [--sweep] [--tvm ARTIFACT,LIBDIR] [--tvm-whole FOLDER,LIBDIR] [--quick]
        [--d-model 768 --layers 24] [--designs both|pdl] [--fused bf16,int8,int4] [--recipes ...]

Model: Mamba-1, 24 x 768, d_state 16, vocab 50280, random weights (seed 0), batch 1 (``--d-model 2048
--layers 48``: the mamba-1.4b shape, where the weights, not the kernel chain, should decide). Rows,
timed in one run, interleaved round by round:

* ``transformers`` MambaForCausalLM eager fp32 with its cache (its pure-PyTorch path: the fused
  ``mamba_ssm`` kernels are not installed) — the baseline;
* edgeseq ``targets.runtimes.TorchRuntime``: eager and as one captured CUDA graph, fp32 and bf16;
* ``torch.compile`` (mode ``max-autotune-no-cudagraphs``) of the plain ``Mamba.step`` in bf16, its
  kernels captured into one CUDA graph with the state fed back in the graph — the free baseline;
* the cuBLAS GEMV-only floor: only the step's 97 bf16 weight GEMVs (``F.linear``), one CUDA graph;
* edgeseq's fused Triton runtime (``targets.gpu``): bf16 weights, int8 weights (W8A16, per-row
  scales) and int4 weights (W4A16, groups of 128), each one CUDA graph of 49 kernels;
* the fused runtime of recipe-quantized models (``targets.gpu.qmamba``): ``quantize_model`` under
  w4a16, w4a16 without its Hadamard rotation, w8a8 and w8a8-norotate (calibrated on random tokens),
  run with the recipe's own integers and scales; checked against the fake-quant model.

Every fused runtime appears twice: without programmatic dependent launch (the launch shapes of the
design measured before it, ``targets.gpu.mamba.NO_PDL``) and as it runs by default, with PDL (each
kernel launched while the one before it runs, loading its weights before it waits for that
kernel's outputs) at its own default shapes.

With ``--tvm-whole FOLDER,LIBDIR``: the whole model through TVM CUDA (sm_90, fp32, TVM's Relax VM, no
CUDA graph), its library built with the weights as inputs (``decode_gpu_tvm.py --build-whole``) so
that it fits in what a device call carries; the weights are rebuilt here from the seed, checked
against the build's sha256, and the row is checked against ``Mamba.step`` fp32 before timing.

Apart from the interleaved rows, in the same run: prompt prefill (tokens/s for 512 and 4096 tokens:
``Mamba.prefill`` fp32/bf16 against ``targets.gpu.prefill``), and with ``--tvm`` a TVM CUDA sm_90
artifact of one layer beside the fused step at that shape (``decode_gpu_tvm.py``).

Two timings per row: ``p50_ms``/``p90_ms``, each step followed by a device synchronize (what a
streaming caller sees, host round trip included), and for the graph rows ``device_ms``: the median
over 20 repeats of CUDA-event time around 50 back-to-back replays ÷ 50 (the GPU's own time per step).
The roofline is the bytes a step must read (each row's weights at its precision, the state read and
written) ÷ the device-to-device copy bandwidth measured in the same run (read + write). Before
timing, the fused rows are checked against ``Mamba.step`` in fp32 with the same (rounded or
dequantized) weights, and the graph rows against their eager form; the relative errors go in the JSON.

``--sweep`` first times the fused bf16 step under several launch shapes (device time), and the
fused step's three kernel kinds apart; the fastest shape is then used for the fused rows.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a plain checkout (the device machine has no install)

CONFIG = dict(vocab_size=50280, d_model=768, n_layer=24, d_state=16, d_conv=4, expand=2)


def log(message: str) -> None:
    sys.stderr.write(f"[decode_gpu {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def copy_bandwidth_gbs(torch, nbytes: int = 2 * 2**30, repeats: int = 10) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times) / 1e9


def device_ms(torch, fn, inner: int = 50, repeats: int = 20) -> float:
    """Median CUDA-event time of `inner` back-to-back calls of fn, per call."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


class HFStep:
    def __init__(self, torch, hf, vocab):
        self.torch, self.hf = torch, hf
        prompt = torch.randint(0, vocab, (1, 4), generator=torch.Generator().manual_seed(0)).cuda()
        with torch.inference_mode():
            self.cache = hf(prompt, use_cache=True).cache_params
        self.position, self.token = prompt.shape[1], prompt[:, -1:]

    def __call__(self):
        with self.torch.inference_mode():
            out = self.hf(self.token, cache_params=self.cache, use_cache=True,
                          cache_position=self.torch.tensor([self.position], device="cuda"))
        self.cache, self.position = out.cache_params, self.position + 1
        return out.logits


class RuntimeStep:
    def __init__(self, runtime):
        self.runtime, self.x, self.state = runtime, runtime.example_input(1), runtime.init_state(1)

    def __call__(self):
        y, self.state = self.runtime.step(self.x, self.state)
        return y


class CompiledGraphStep:
    """torch.compile of the plain Mamba.step (bf16), replayed as one CUDA graph that writes the new
    state back into the input state buffers."""

    def __init__(self, torch, model, mode: str):
        self.torch = torch
        names = model.state_names()
        step = lambda tok, *st: self._flat(model.step(tok, dict(zip(names, st))), names)  # noqa: E731
        self.compiled = torch.compile(step, mode=mode, dynamic=False)
        self.token = torch.tensor([1], device="cuda")
        init = model.init_state(1, device="cuda")
        self.state = [init[n].to(torch.bfloat16).contiguous() for n in names]
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    out = self.compiled(self.token, *self.state)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                out = self.compiled(self.token, *self.state)
                for s, n in zip(self.state, out[1:]):
                    s.copy_(n)
            self.logits = out[0]

    @staticmethod
    def _flat(result, names):
        y, state = result
        return (y, *[state[n] for n in names])

    def __call__(self):
        self.graph.replay()
        return self.logits


class GemvFloor:
    """Only the step's weight GEMVs (in_proj, x_proj, dt_proj, out_proj per layer; the LM head) in
    bf16 through F.linear (cuBLAS), as one CUDA graph: no norm, conv, scan or gating."""

    def __init__(self, torch, model):
        import torch.nn.functional as F

        self.torch = torch
        weights = []
        for block in model.layers:
            mx = block.mixer
            weights += [mx.in_proj.weight, mx.x_proj.weight, mx.dt_proj.weight, mx.out_proj.weight]
        weights.append(model.embedding.weight)
        self.weights = [w.detach().to("cuda", torch.bfloat16).contiguous() for w in weights]
        self.inputs = [torch.randn(1, w.shape[1], device="cuda", dtype=torch.bfloat16) for w in self.weights]
        for _ in range(2):
            outs = [F.linear(x, w) for x, w in zip(self.inputs, self.weights)]
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outs = [F.linear(x, w) for x, w in zip(self.inputs, self.weights)]
        del outs

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * 2 for w in self.weights)

    def __call__(self):
        self.graph.replay()
        return self.outs[-1]


class FusedStep:
    def __init__(self, rt):
        self.rt = rt
        rt.step(1)

    def __call__(self):
        self.rt.graph(False).replay()
        return self.rt.logits


def fused_error(torch, rt, base) -> float:
    """Relative logits error of the fused runtime vs Mamba.step (fp32, same weights) after 3 steps
    from a random state."""
    ref = rt.dequantized_model(base).cuda()
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen).cuda() for k, v in ref.init_state(1).items()}
    rt.load_state(state)
    worst = 0.0
    for tok in (3, 50279, 7):
        logits = rt.step(tok).clone()
        with torch.inference_mode():
            y, state = ref.step(torch.tensor([tok], device="cuda"), state)
        worst = max(worst, float((logits - y[0]).norm() / y[0].norm()))
    got = rt.state_dict()
    worst_state = max(float((got[k] - state[k]).norm() / state[k].norm()) for k in state)
    rt.reset()
    del ref
    torch.cuda.empty_cache()
    return max(worst, worst_state)


TVM_CUDA_NOTE = "not measured in this run (--tvm ARTIFACT,LIBDIR: see benchmarks/decode_gpu_tvm.py)"


def measure_prefill(torch, base, lengths: list, repeats: int = 5) -> dict:
    """Prompt prefill, tokens/s (median of `repeats` timed runs after 2 warm-ups, host clock around a
    synchronize): edgeseq's PyTorch prefill (``Mamba.prefill``, fp32 and bf16) and the GPU prefill
    (``targets.gpu.prefill``: bf16 GEMMs + the chunked Triton scan; direct launches and replayed as one
    CUDA graph), with the GPU prefill's error against ``Mamba.prefill`` in fp32 (last logits,
    relative) and the graph's difference from the direct launches."""
    from targets.gpu.prefill import MambaPrefill

    model32 = copy.deepcopy(base).cuda().eval()
    model16 = copy.deepcopy(base).cuda().to(torch.bfloat16).eval()
    gpu = MambaPrefill(base)
    out = {"repeats": repeats, "rows": []}
    gen = torch.Generator().manual_seed(3)
    for length in lengths:
        tokens = torch.randint(0, CONFIG["vocab_size"], (1, length), generator=gen).cuda()
        with torch.inference_mode():
            ref, _ = model32.prefill(tokens)
            got, _ = gpu.prefill(tokens[0])
            try:
                graphed, _ = gpu.prefill_graphed(tokens[0])
                graph_diff = float((graphed - got).norm() / got.norm())
            except Exception as exc:  # the other rows still run
                log(f"graphed prefill skipped: {type(exc).__name__}: {exc}")
                graph_diff = None
        err = float((got - ref[0, -1]).norm() / ref[0, -1].norm())
        runs = {"edgeseq torch prefill fp32": lambda: model32.prefill(tokens),
                "edgeseq torch prefill bf16": lambda: model16.prefill(tokens),
                "edgeseq gpu prefill (bf16 GEMMs + chunked Triton scan)": lambda: gpu.prefill(tokens[0]),
                "edgeseq gpu prefill, one CUDA graph per prompt length": lambda: gpu.prefill_graphed(tokens[0])}
        if graph_diff is None:
            runs.pop("edgeseq gpu prefill, one CUDA graph per prompt length")
        for name, fn in runs.items():
            times = []
            with torch.inference_mode():
                for i in range(2 + repeats):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    fn()
                    torch.cuda.synchronize()
                    if i >= 2:
                        times.append(time.perf_counter() - start)
            ms = statistics.median(times) * 1e3
            row = {"row": name, "prompt": length, "ms": ms, "tokens_per_s": length / ms * 1e3}
            if name.startswith("edgeseq gpu"):
                row["rel_error_vs_fp32_prefill"] = err
            if "CUDA graph" in name:
                row["rel_diff_vs_direct_launches"] = graph_diff
            out["rows"].append(row)
            log(f"prefill {length}: {name} {ms:.2f} ms, {row['tokens_per_s']:.0f} tok/s")
    del model32, model16, gpu
    torch.cuda.empty_cache()
    return out


def quant_step_errors(torch, rt, steps: int = 12) -> dict:
    """Int8-activation runtimes: relative logits error of single steps, each from the fake-quant
    model's state (teacher forcing), against that model in fp32 — and, as the noise floor, the same
    model run by PyTorch in fp32 against float64. A rounding flip (an fp32 input a last bit away
    from a rounding boundary) moves one activation a level and the rest of the step to the recipe's
    quantization noise; flip-free steps show the integer path agreeing to fp32 rounding."""
    ref = rt.dequantized_model().cuda()
    ref64 = rt.dequantized_model().double().cuda()
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen).cuda() for k, v in ref.init_state(1).items()}
    fused, torch32 = [], []
    for tok in range(3, 3 + 4001 * steps, 4001):
        rt.load_state(state)
        logits = rt.step(tok % rt.V).clone()
        t = torch.tensor([tok % rt.V], device="cuda")
        with torch.inference_mode():
            y, new_state = ref.step(t, state)
            y64, _ = ref64.step(t, {k: v.double() for k, v in state.items()})
        fused.append(float((logits.double() - y64[0]).norm() / y64[0].norm()))
        torch32.append(float((y[0].double() - y64[0]).norm() / y64[0].norm()))
        state = new_state
    rt.reset()
    del ref, ref64
    torch.cuda.empty_cache()
    return {"fused_vs_float64_median": statistics.median(fused), "fused_vs_float64_max": max(fused),
            "fused_steps_below_1e-5": sum(e < 1e-5 for e in fused),
            "torch_fp32_vs_float64_median": statistics.median(torch32), "torch_fp32_vs_float64_max": max(torch32),
            "torch_fp32_steps_below_1e-5": sum(e < 1e-5 for e in torch32), "steps": steps}


def quantized_model(torch, base, recipe: str):
    """``quantize_model`` of the benchmark model under a named recipe (a ``-norotate`` suffix: the
    same recipe without the Hadamard rotation, where no recipe has that name), calibrated on 4 random 64-token sequences (random
    weights: the scales only need to be the recipe's, not good), on the GPU."""
    from quantize.apply import quantize_model
    from quantize.recipes import RECIPES, get_recipe, with_overrides

    if recipe in RECIPES:
        r = RECIPES[recipe]
    else:
        r = with_overrides(get_recipe(recipe.removesuffix("-norotate")), rotate=False)
    gen = torch.Generator().manual_seed(2)
    calib = [torch.randint(0, CONFIG["vocab_size"], (1, 64), generator=gen).cuda() for _ in range(4)]
    qmodel, _ = quantize_model(copy.deepcopy(base).cuda(), r, calib, progress=False)
    return qmodel.eval()


def sweep(torch, rt) -> tuple[list, object, dict]:
    """Device time of the fused step under launch shapes, searched stage by stage (each stage keeps
    the best of the previous ones): PDL x L2 prefetch, then the in_proj kernel's shape, the SSM
    kernel's, the head's. The starting shape is timed again at the end: the spread is the noise."""
    import itertools

    from targets.gpu.mamba import Blocks

    results = []

    def timed(blocks):
        try:
            rt.set_blocks(blocks)
            ms = device_ms(torch, rt.graph(False).replay, inner=20, repeats=10)
        except Exception as exc:
            log(f"sweep {blocks.__dict__}: {type(exc).__name__}: {exc}")
            return float("inf")
        results.append({"blocks": dict(blocks.__dict__), "device_ms": ms})
        log(f"sweep {blocks.__dict__}: {ms * 1e3:.1f} us")
        return ms

    best = Blocks()
    best_ms = timed(best)
    # per-layer kernels (2 a layer) at the best shape of earlier sweeps, the persistent kernel's warps
    cands = [Blocks(ssm_cols=c, ssm_channels=e, warps_ssm=w) for c in (128, 256) for e in (16, 64) for w in (2, 4)]
    for cand in (Blocks(ssm_cols=0, ssm_channels=8, in_channels=16, warps_in=8, warps_ssm=4),
                 Blocks(persistent=True, in_channels=16),
                 Blocks(pdl=True), Blocks(prefetch_ahead=2), *cands):
        ms = timed(cand)
        if ms < best_ms:
            best, best_ms = cand, ms
    stages = [[("in_channels", "warps_in"), ((4, 8, 16), (4, 8))], [("head_rows", "warps_head"), ((8, 16), (4, 8))]]
    for fields, values in stages:
        for combo in itertools.product(*values):
            cand = Blocks(**{**best.__dict__, **dict(zip(fields, combo))})
            if cand == best:
                continue
            ms = timed(cand)
            if ms < best_ms:
                best, best_ms = cand, ms
    results.append({"blocks": dict(Blocks().__dict__), "device_ms": timed(Blocks()), "repeat_of_start": True})
    rt.set_blocks(best)
    results.append({"blocks": dict(best.__dict__), "device_ms": timed(best), "repeat_of_best": True})
    parts = {}
    for name, part in (("layers (persistent kernel, or 24 in_proj+conv kernels)", ("in",)),
                       ("layers (persistent kernel, or 24 ssm+out_proj kernels)", ("ssm",)), ("lm head kernel (1)", ("head",))):
        parts[name] = device_ms(torch, rt.graph(False, part).replay, inner=20, repeats=10)
    rt.reset()
    return results, best, parts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--layers", type=int, default=CONFIG["n_layer"])
    p.add_argument("--d-model", type=int, default=CONFIG["d_model"],
                   help="model width (d_inner = 2 x d_model; 2048 with --layers 48 is the mamba-1.4b shape)")
    p.add_argument("--designs", choices=("both", "pdl"), default="both",
                   help="both: each fused runtime without and with PDL; pdl: only the default (PDL) design")
    p.add_argument("--fused", default="bf16,int8,int4",
                   help="weight kinds of the fused runtime ('bf16', 'int8', 'int4' weight-only g128; '' for none)")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", help="'' skips the torch.compile row")
    p.add_argument("--sweep", action="store_true", help="time fused launch shapes first, use the fastest")
    p.add_argument("--skip-eager", action="store_true", help="leave out the slow eager rows")
    p.add_argument("--tvm", default="", help="ARTIFACT,LIBDIR: also time a TVM CUDA artifact (benchmarks/decode_gpu_tvm.py)")
    p.add_argument("--tvm-whole", default="",
                   help="FOLDER,LIBDIR: a row for the whole model as a TVM CUDA library with its weights as inputs "
                        "(decode_gpu_tvm.py --build-whole), timed in the interleaved rounds")
    p.add_argument("--prefill", default="512,4096", help="prompt lengths for the prefill rows ('' for none)")
    p.add_argument("--quick", action="store_true", help="only the fused rows and the cuBLAS floor (no eager, no compile)")
    p.add_argument("--recipes", default="w4a16,w4a16-norotate,w8a8,w8a8-norotate",
                   help="quantization recipes run through the fused quantized runtime ('' for none); "
                        "a '-norotate' suffix turns the recipe's Hadamard rotation off")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "decode_gpu.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.skip_eager, args.compile_mode = True, ""
    CONFIG["d_model"] = args.d_model

    import torch

    if not torch.cuda.is_available():
        log("no CUDA device: nothing to measure")
        return 1
    from edgeseq.models.mamba import Mamba, MambaConfig
    from targets.runtimes import TorchRuntime

    device_name = torch.cuda.get_device_name(0)
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception:
        pass
    try:
        versions["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        versions["driver"] = None
    log(f"device {device_name}, {versions}")
    torch.manual_seed(0)
    base = Mamba(MambaConfig(**{**CONFIG, "n_layer": args.layers})).eval()
    n_params = base.num_parameters()
    state_numel = sum(torch.Size(s.shape).numel() for s in base.state_spec())
    rows, nbytes_of, checks, extra = {}, {}, {}, {}
    if not args.skip_eager:
        try:
            from transformers import MambaConfig as HFConfig, MambaForCausalLM

            torch.manual_seed(0)
            hf = MambaForCausalLM(HFConfig(vocab_size=CONFIG["vocab_size"], hidden_size=CONFIG["d_model"],
                                           num_hidden_layers=args.layers, state_size=CONFIG["d_state"],
                                           conv_kernel=CONFIG["d_conv"], expand=CONFIG["expand"])).eval().cuda()
            rows["transformers eager fp32"] = (HFStep(torch, hf, CONFIG["vocab_size"]), "fp32", False)
        except Exception as exc:  # transformers missing or its API moved: the other rows still run
            log(f"transformers row skipped: {type(exc).__name__}: {exc}")
    for dtype, label in ((None, "fp32"), ("bfloat16", "bf16")):
        model = copy.deepcopy(base)
        eager = TorchRuntime(model, device="cuda", dtype=dtype)
        graph = TorchRuntime(model, device="cuda", dtype=dtype, cuda_graph=True)
        x, state = eager.example_input(1), eager.init_state(1)
        y_eager, _ = eager.step(x, state)
        y_graph, _ = graph.step(x, state)
        y_graph, _ = graph.step(x, state)  # a replay, not only the capture run
        checks[f"torch cuda-graph {label} vs eager"] = float((y_graph.float() - y_eager.float()).norm() / y_eager.float().norm())
        if not args.skip_eager:
            rows[f"edgeseq torch eager {label}"] = (RuntimeStep(eager), label, False)
        rows[f"edgeseq torch cuda-graph {label}"] = (RuntimeStep(graph), label, True)
    if args.compile_mode:
        try:
            t0 = time.time()
            model = copy.deepcopy(base).cuda().to(torch.bfloat16)
            row = CompiledGraphStep(torch, model, args.compile_mode)
            with torch.inference_mode():
                eager_y, _ = model.step(torch.tensor([1], device="cuda"), model.init_state(1, device="cuda"))
                for s in row.state:
                    s.zero_()
                row()  # one replay from the zero state, then back to it
                checks["torch.compile graph bf16 vs eager bf16 (first step)"] = float(
                    (row.logits.float() - eager_y.float()).norm() / eager_y.float().norm())
                for s in row.state:
                    s.zero_()
            rows[f"torch.compile ({args.compile_mode}) + cuda-graph bf16"] = (row, "bf16", True)
            extra["compile_seconds"] = time.time() - t0
            log(f"torch.compile row ready in {time.time() - t0:.0f} s")
        except Exception as exc:
            log(f"torch.compile row skipped: {type(exc).__name__}: {exc}")
    if args.tvm_whole:
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from decode_gpu_tvm import TvmWholeStep

            folder, libdir = args.tvm_whole.split(",")
            tvm_whole = TvmWholeStep(torch, folder, libdir, copy.deepcopy(base))
            checks["tvm cuda whole model vs Mamba.step fp32 (same weights)"] = tvm_whole.check()
            name = "tvm cuda sm_90 fp32 (TVM VM, weights as inputs)"
            rows[name] = (tvm_whole, "fp32", True)
            nbytes_of[name] = tvm_whole.nbytes + 2 * 4 * state_numel
        except Exception as exc:
            import traceback

            traceback.print_exc()
            log(f"TVM whole-model row skipped: {type(exc).__name__}: {exc}")
    floor = GemvFloor(torch, base)
    floor_name = f"cuBLAS GEMV-only floor bf16 ({len(floor.weights)} F.linear)"
    rows[floor_name] = (floor, "bf16", True)
    nbytes_of[floor_name] = floor.nbytes

    sweep_out = None
    try:
        from targets.gpu.mamba import NO_PDL, QUANT4_BLOCKS, QUANT4_ROT_BLOCKS, QUANT4_WIDE_BLOCKS, QUANT_BLOCKS, Blocks, FusedMambaStep, available

        if not available():
            raise RuntimeError("Triton is not importable")
        chosen = Blocks()
        # each fused runtime twice: the launch design without programmatic dependent launch (the
        # shapes measured before it) and the default one (PDL, its own fastest shapes)
        designs = ((NO_PDL, ""), (None, ", PDL")) if args.designs == "both" else ((None, ", PDL"),)
        kinds = [k for k in args.fused.split(",") if k]
        for weights, label in (("bf16", "bf16"), ("int8", "w8a16 (int8 weights)"), ("int4", "w4a16 (int4 weights, g128)")):
            if weights not in kinds:
                continue
            for blocks, suffix in designs:
                rt = FusedMambaStep(base, weights=weights, blocks=blocks)
                if weights == "bf16" and suffix and args.sweep:
                    results, chosen, parts = sweep(torch, rt)
                    sweep_out = {"variants": results, "chosen": dict(chosen.__dict__), "parts_device_ms": parts}
                    log(f"parts (device ms): {parts}")
                if suffix:
                    rt.set_blocks(chosen)
                checks[f"fused {weights}{suffix} vs Mamba.step fp32 (same weights)"] = fused_error(torch, rt, base)
                name = f"edgeseq fused triton {label}{suffix}"
                rows[name] = (FusedStep(rt), label, True)
                nbytes_of[name] = rt.bytes_per_step
        extra["fused_blocks"] = {"no PDL": dict(NO_PDL.__dict__), "PDL": dict(chosen.__dict__),
                                 "recipe, PDL": dict(QUANT_BLOCKS.__dict__), "4-bit recipe, PDL": dict(QUANT4_BLOCKS.__dict__),
                                 "4-bit rotated recipe, PDL": dict(QUANT4_ROT_BLOCKS.__dict__),
                                 "4-bit recipe, PDL, d_model > 1024": dict(QUANT4_WIDE_BLOCKS.__dict__)}
        for recipe in [r for r in args.recipes.split(",") if r]:
            t0 = time.time()
            qmodel = quantized_model(torch, base, recipe)
            from targets.gpu.qmamba import QuantFusedMambaStep

            for blocks, suffix in designs:
                rt = QuantFusedMambaStep(qmodel, blocks=blocks)
                if rt.aq["in"]:  # int8 activations: single steps from the reference state (see quant_step_errors)
                    checks[f"fused recipe {recipe}{suffix} vs fake-quant model float64, single steps"] = quant_step_errors(torch, rt)
                else:
                    checks[f"fused recipe {recipe}{suffix} vs fake-quant model fp32"] = fused_error(torch, rt, base)
                name = f"edgeseq fused triton recipe {recipe} ({3 if rt.rotate else 2} kernels/layer){suffix}"
                rows[name] = (FusedStep(rt), recipe, True)
                nbytes_of[name] = rt.bytes_per_step
            extra.setdefault("recipe_seconds", {})[recipe] = time.time() - t0
            del qmodel
    except Exception as exc:
        import traceback

        traceback.print_exc()
        log(f"fused rows skipped: {type(exc).__name__}: {exc}")
    log(f"checks: {json.dumps(checks)}")

    tvm_out = TVM_CUDA_NOTE
    if args.tvm:
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from decode_gpu_tvm import TVM_CONFIG, tvm_cuda_rows

            artifact, libdir = args.tvm.split(",")
            tvm_out = {"model": TVM_CONFIG, "note": "one layer at the 130m width, timed apart from the interleaved rows",
                       **tvm_cuda_rows(torch, artifact, libdir)}
            log(f"tvm: {json.dumps(tvm_out['rows'])}")
        except Exception as exc:
            import traceback

            traceback.print_exc()
            tvm_out = f"failed: {type(exc).__name__}: {exc}"[:500]
    prefill_out = measure_prefill(torch, base, [int(t) for t in args.prefill.split(",") if t]) if args.prefill else None

    copy_gbs = copy_bandwidth_gbs(torch)
    log(f"device-to-device copy bandwidth {copy_gbs:.0f} GB/s (read + write)")
    samples = {name: [] for name in rows}
    for name, (step, _, _) in rows.items():
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
    dev_samples = {name: [] for name, (_, _, g) in rows.items() if g}
    for r in range(args.rounds):
        for name, (step, _, is_graph) in rows.items():
            for _ in range(args.tokens):
                start = time.perf_counter()
                step()
                torch.cuda.synchronize()
                samples[name].append((time.perf_counter() - start) * 1e3)
            if is_graph:
                dev_samples[name].append(device_ms(torch, step, inner=50, repeats=4))
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {statistics.median(s):.3f}" for n, s in samples.items()))

    from targets.profile import percentile

    datasheet = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0}
    sheet_gbs = next((v for k, v in datasheet.items() if k in device_name), None)
    bytes_per = {"fp32": 4, "bf16": 2}
    hf_p50 = percentile(samples.get("transformers eager fp32", []), 50)
    results = []
    for name, values in samples.items():
        precision = rows[name][1]
        nbytes = nbytes_of.get(name) or bytes_per.get(precision, 2) * n_params + 2 * 4 * state_numel
        p50 = percentile(values, 50)
        dev = statistics.median(dev_samples[name]) if dev_samples.get(name) else None
        roof_measured = nbytes / (copy_gbs * 1e9) * 1e3
        roof_sheet = None if sheet_gbs is None else nbytes / (sheet_gbs * 1e9) * 1e3
        results.append({
            "row": name, "precision": precision, "p50_ms": p50, "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "tokens_per_s": 1e3 / statistics.fmean(values), "device_ms": dev,
            "bytes_per_token": nbytes, "roofline_ms_measured_bw": roof_measured, "ratio_measured_bw": p50 / roof_measured,
            "device_ratio_measured_bw": None if dev is None else dev / roof_measured,
            "roofline_ms_datasheet_bw": roof_sheet, "ratio_datasheet_bw": None if roof_sheet is None else p50 / roof_sheet,
            "speedup_vs_transformers": None if not hf_p50 else hf_p50 / p50,
        })
    report = {
        "benchmark": "decode_gpu", "device": device_name, **versions,
        "model": {**CONFIG, "n_layer": args.layers, "params": n_params}, "tokens_per_round": args.tokens,
        "rounds": args.rounds, "copy_bandwidth_gbs": copy_gbs, "datasheet_bandwidth_gbs": sheet_gbs,
        "checks_rel_error": checks, "sweep": sweep_out, **extra, "peak_mem_bytes": torch.cuda.max_memory_allocated(),
        "prefill": prefill_out, "tvm_cuda": tvm_out,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"decode step, Mamba-1 {args.layers}x{args.d_model} ({n_params / 1e6:.1f}M params), {device_name}, "
          f"{versions}, copy bw {copy_gbs:.0f} GB/s, {args.rounds}x{args.tokens} steps per row")
    print(f"{'runtime':62s} {'p50 ms':>8s} {'p90 ms':>8s} {'dev ms':>8s} {'MB':>6s} {'x roof':>7s} {'dev x roof':>10s} {'vs HF':>7s}")
    for row in results:
        dev = "-" if row["device_ms"] is None else f"{row['device_ms']:.3f}"
        dr = "-" if row["device_ratio_measured_bw"] is None else f"{row['device_ratio_measured_bw']:.1f}"
        speed = "-" if row["speedup_vs_transformers"] is None else f"{row['speedup_vs_transformers']:.1f}x"
        print(f"{row['row']:62s} {row['p50_ms']:8.3f} {row['p90_ms']:8.3f} {dev:>8s} {row['bytes_per_token'] / 1e6:6.0f} "
              f"{row['ratio_measured_bw']:7.1f} {dr:>10s} {speed:>7s}")
    if isinstance(tvm_out, dict):
        print(f"TVM CUDA vs edgeseq, {tvm_out['model']['n_layer']} layer x {tvm_out['model']['d_model']}, vocab "
              f"{tvm_out['model']['vocab_size']} (check vs PyTorch: {json.dumps(tvm_out['check_vs_pytorch_reference'])})")
        for name, row in tvm_out["rows"].items():
            print(f"  {name:50s} {row['p50_ms']:8.3f} {row['p90_ms']:8.3f} {row['device_ms']:8.3f}")
    if prefill_out:
        print(f"{'prefill':52s} {'prompt':>8s} {'ms':>8s} {'tok/s':>9s}")
        for row in prefill_out["rows"]:
            print(f"{row['row']:52s} {row['prompt']:8d} {row['ms']:8.2f} {row['tokens_per_s']:9.0f}"
                  + (f"  err {row['rel_error_vs_fp32_prefill']:.1e}" if "rel_error_vs_fp32_prefill" in row else ""))
    print("checks (relative error):", json.dumps(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
