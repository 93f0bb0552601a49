"""One decode step of a SpikeGPT-216M-shaped model on a CUDA GPU: the PyTorch runtimes, a compiler, the
cuBLAS floor and edgeseq's fused Triton SpikeGPT runtime side by side (the sibling of decode_gpu.py).

    python benchmarks/decode_gpu_spikegpt.py [--out decode_gpu_spikegpt.json] [--quick] [--sweep]
        [--d-model 768 --layers 18] [--tests]

Model: SpikeGPT (spiking RWKV-4), 18 x 768, d_ffn 3072, vocab 50277 — the published 216M model's
shape — with edgeseq's own initialisation (seed 0; LayerNorms moved off 1/0), batch 1. Rows, timed in
one run, interleaved round by round:

* edgeseq ``targets.runtimes.TorchRuntime``: ``SpikeGPT.step`` eager and as one captured CUDA graph,
  fp32 and bf16;
* ``torch.compile`` (mode ``max-autotune-no-cudagraphs``) of the plain ``SpikeGPT.step`` in bf16, its
  kernels captured into one CUDA graph with the state fed back in the graph (as in decode_gpu.py);
* the cuBLAS GEMV-only floor: only the step's 7 weight GEMVs per layer and the head (127 ``F.linear``
  at 18 layers) in bf16, one CUDA graph: no norm, WKV, LIF or gating;
* edgeseq's fused Triton runtime (``targets.gpu.spikegpt``, 4 kernels per layer + the head, one CUDA
  graph), bf16 weights without and with programmatic dependent launch; with ``--fp32`` also fp32
  weights (the trained model's own function, twice the bytes).

Timings as in decode_gpu.py: ``p50_ms`` / ``p90_ms`` with a synchronize after every step (host clock);
``device_ms`` for graph rows: CUDA events around 50 back-to-back replays (median of 4 per round).
Roofline: the bytes a step must read (every GEMV weight at the row's precision — the embedding is one
row, not the table — plus the state read and written) ÷ the device-to-device copy bandwidth measured
in the same run. Before timing the fused runtime is checked against ``SpikeGPT.step`` in fp32 with
the same bf16-rounded weights, step by step from the reference state (teacher forcing): spike
trains compared exactly, float outputs relatively; steps where a membrane lies within rounding of
its threshold (a boundary flip) are counted apart. ``--sweep`` times a few launch shapes first and
uses the fastest for the PDL row. ``--tests`` runs the GPU tests of tests/targets/test_gpu_spikegpt.py
first (in this process's interpreter, as a subprocess).
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_gpu import CompiledGraphStep, RuntimeStep, copy_bandwidth_gbs, device_ms  # noqa: E402

CONFIG = dict(vocab_size=50277, d_model=768, n_layer=18)


def log(message: str) -> None:
    sys.stderr.write(f"[decode_gpu_spikegpt {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def build_model(torch, cfg: dict):
    from edgeseq.models.spikegpt import SpikeGPT, SpikeGPTConfig

    torch.manual_seed(0)
    model = SpikeGPT(SpikeGPTConfig(**cfg)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    return model


class GemvFloor:
    """Only the step's weight GEMVs in bf16 through F.linear (cuBLAS), as one CUDA graph."""

    def __init__(self, torch, model):
        import torch.nn.functional as F

        weights = []
        for blk in model.blocks:
            weights += [blk.att.key.weight, blk.att.value.weight, blk.att.receptance.weight, blk.att.output.weight,
                        blk.ffn.key.weight, blk.ffn.receptance.weight, blk.ffn.value.weight]
        weights.append(model.head.weight)
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


def fused_check(torch, rt, base, steps: int = 12, device: str = "cuda") -> dict:
    """The fused step against ``SpikeGPT.step`` in fp32 on the GPU with the same weights, each step from
    the reference's state (teacher forcing, from the initial state): spike trains of all 2·L LIF
    layers compared exactly; on steps with identical spikes, logits and state relatively. A step whose
    spikes differ is a boundary flip when every differing neuron's membrane lies within 1e-4 of the
    threshold in the reference (checked; counted)."""
    ref = rt.dequantized_model(base).to(device)
    rec: list = []
    for blk in ref.blocks:
        for lif in (blk.lif1, blk.lif2):
            orig = lif.step

            def step(current, membrane, _orig=orig, _lif=lif):
                v = membrane + (current - membrane) / _lif.cfg.tau
                s, m = _orig(current, membrane)
                rec.append((s[0], v[0]))
                return s, m

            lif.step = step
    thr = ref.config.lif_threshold
    state = ref.init_state(1, device=device)
    out = {"steps": steps, "flip_steps": 0, "flips_off_boundary": 0, "logits_max": 0.0, "state_max": 0.0,
           "spike_rate": 0.0}
    spikes = neurons = 0
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        tok = int(torch.randint(0, rt.V, (1,), generator=gen))
        rt.load_state(state)
        logits = rt.step(tok).clone()
        got_spikes = rt.spikes.clone()
        rec.clear()
        with torch.inference_mode():
            y, new_state = ref.step(torch.tensor([tok], device=device), state)
        diff_at = None
        for j, (s, v) in enumerate(rec):
            spikes += int(s.sum())
            neurons += s.numel()
            g = got_spikes[j // 2, j % 2].float()
            if diff_at is None and not torch.equal(g, s):
                diff_at = j
                bad = (g != s).nonzero().flatten()
                if float((v[bad] - thr).abs().max()) >= 1e-4:
                    out["flips_off_boundary"] += 1
        if diff_at is None:
            out["logits_max"] = max(out["logits_max"], float((logits - y[0]).norm() / y[0].norm()))
            got = rt.state_dict()
            out["state_max"] = max(out["state_max"], max(
                float((got[k] - new_state[k]).norm() / max(float(new_state[k].norm()), 1e-30)) for k in new_state))
        else:
            out["flip_steps"] += 1
        state = new_state
    out["spike_rate"] = spikes / max(1, neurons)
    rt.reset()
    del ref
    return out


def sweep(torch, base, pdl: bool = True) -> tuple[list, object]:
    from targets.gpu.spikegpt import FusedSpikeGPTStep, SpikeBlocks

    rt = FusedSpikeGPTStep(base, blocks=SpikeBlocks(pdl=pdl))
    results = []
    best, best_ms = None, float("inf")
    cands = [SpikeBlocks(pdl=pdl), SpikeBlocks(att_rows=8, ffn_rows=32, pdl=pdl), SpikeBlocks(out_rows=8, pdl=pdl),
             SpikeBlocks(out_rows=2, warps_out=2, pdl=pdl), SpikeBlocks(att_rows=2, ffn_rows=8, warps=4, pdl=pdl),
             SpikeBlocks(pdl=pdl)]  # the default again last: the spread of the two is the noise
    for cand in cands:
        try:
            rt.set_blocks(cand)
            ms = device_ms(torch, rt.graph(False).replay, inner=20, repeats=10)
        except Exception as exc:
            log(f"sweep {cand.__dict__}: {type(exc).__name__}: {exc}")
            continue
        results.append({"blocks": dict(cand.__dict__), "device_ms": ms})
        log(f"sweep {cand.__dict__}: {ms * 1e3:.1f} us")
        if ms < best_ms:
            best, best_ms = cand, ms
    del rt
    torch.cuda.empty_cache()
    return results, best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--layers", type=int, default=CONFIG["n_layer"])
    p.add_argument("--d-model", type=int, default=CONFIG["d_model"])
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", help="'' skips the torch.compile row")
    p.add_argument("--skip-eager", action="store_true")
    p.add_argument("--quick", action="store_true", help="no eager and no torch.compile rows")
    p.add_argument("--sweep", action="store_true", help="time a few fused launch shapes, use the fastest")
    p.add_argument("--tests", action="store_true", help="run the GPU tests of test_gpu_spikegpt.py first")
    p.add_argument("--fp32", action="store_true", help="also the fused step with fp32 weights (as trained)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "decode_gpu_spikegpt.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.skip_eager, args.compile_mode = True, ""

    import torch

    if not torch.cuda.is_available():
        log("no CUDA device: nothing to measure")
        return 1
    tests_out = None
    if args.tests:
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                              "tests/targets/test_gpu_spikegpt.py", "-m", "not slow", "-s"],
                             cwd=ROOT, capture_output=True, text=True, timeout=150)
        tail = (res.stdout + res.stderr)[-3000:]
        tests_out = {"returncode": res.returncode, "seconds": time.time() - t0, "tail": tail}
        print(tail)
    from targets.gpu.spikegpt import FusedSpikeGPTStep, SpikeBlocks
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
    cfg = {**CONFIG, "n_layer": args.layers, "d_model": args.d_model}
    base = build_model(torch, cfg)
    n_params = base.num_parameters()
    gemv_params = n_params - base.emb.weight.numel()  # a step reads one embedding row, not the table
    state_numel = sum(torch.Size(s.shape).numel() for s in base.state_spec())
    rows, nbytes_of, checks, extra = {}, {}, {}, {"tests": tests_out}
    for dtype, label in ((None, "fp32"), ("bfloat16", "bf16")):
        model = copy.deepcopy(base)
        eager = TorchRuntime(model, device="cuda", dtype=dtype)
        graph = TorchRuntime(model, device="cuda", dtype=dtype, cuda_graph=True)
        x, state = eager.example_input(1), eager.init_state(1)
        y_eager, _ = eager.step(x, state)
        y_graph, _ = graph.step(x, graph.init_state(1))
        y_graph, _ = graph.step(x, graph.init_state(1))
        checks[f"torch cuda-graph {label} vs eager"] = float((y_graph.float() - y_eager.float()).norm() / y_eager.float().norm())
        if not args.skip_eager:
            rows[f"edgeseq torch eager {label}"] = (RuntimeStep(eager), label, False)
        rows[f"edgeseq torch cuda-graph {label}"] = (RuntimeStep(graph), label, True)
    if args.compile_mode:
        try:
            t0 = time.time()
            model = copy.deepcopy(base).cuda().to(torch.bfloat16)
            row = CompiledGraphStep(torch, model, args.compile_mode)
            init = model.init_state(1, device="cuda")
            with torch.inference_mode():
                eager_y, _ = model.step(torch.tensor([1], device="cuda"), init)
                for s, n in zip(row.state, model.state_names()):
                    s.copy_(init[n])
                row()
                checks["torch.compile graph bf16 vs eager bf16 (first step)"] = float(
                    (row.logits.float() - eager_y.float()).norm() / eager_y.float().norm())
                for s, n in zip(row.state, model.state_names()):
                    s.copy_(init[n])
            rows[f"torch.compile ({args.compile_mode}) + cuda-graph bf16"] = (row, "bf16", True)
            extra["compile_seconds"] = time.time() - t0
            log(f"torch.compile row ready in {time.time() - t0:.0f} s")
        except Exception as exc:
            log(f"torch.compile row skipped: {type(exc).__name__}: {exc}")
    floor = GemvFloor(torch, base)
    floor_name = f"cuBLAS GEMV-only floor bf16 ({len(floor.weights)} F.linear)"
    rows[floor_name] = (floor, "bf16", True)
    nbytes_of[floor_name] = floor.nbytes
    chosen = SpikeBlocks()
    try:
        if args.sweep:
            results, best = sweep(torch, base)
            extra["sweep"] = results
            chosen = best or chosen
        variants = [("bf16", SpikeBlocks(pdl=False), ", no PDL"), ("bf16", chosen, ", PDL")]
        if args.fp32:
            variants.append(("fp32", chosen, ", PDL"))
        for weights, blocks, suffix in variants:
            rt = FusedSpikeGPTStep(base, blocks=blocks, weights=weights)
            checks[f"fused {weights}{suffix} vs SpikeGPT.step fp32 (same weights)"] = fused_check(torch, rt, base)
            name = f"edgeseq fused triton {weights} weights ({4 * len(rt.layers) + 1} kernels){suffix}"
            rows[name] = (FusedStep(rt), weights, True)
            nbytes_of[name] = rt.bytes_per_step
        extra["fused_blocks"] = dict(chosen.__dict__)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        log(f"fused rows skipped: {type(exc).__name__}: {exc}")
    log(f"checks: {json.dumps(checks)}")

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

    bytes_per = {"fp32": 4, "bf16": 2}
    results = []
    for name, values in samples.items():
        precision = rows[name][1]
        nbytes = nbytes_of.get(name) or bytes_per[precision] * gemv_params + 2 * 4 * state_numel
        p50 = percentile(values, 50)
        dev = statistics.median(dev_samples[name]) if dev_samples.get(name) else None
        roof = nbytes / (copy_gbs * 1e9) * 1e3
        results.append({
            "row": name, "precision": precision, "p50_ms": p50, "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "tokens_per_s": 1e3 / statistics.fmean(values), "device_ms": dev,
            "bytes_per_token": nbytes, "roofline_ms_measured_bw": roof, "ratio_measured_bw": p50 / roof,
            "device_ratio_measured_bw": None if dev is None else dev / roof,
        })
    report = {
        "benchmark": "decode_gpu_spikegpt", "device": device_name, **versions,
        "model": {"family": "spikegpt", **cfg, "d_ffn": 4 * cfg["d_model"], "params": n_params},
        "tokens_per_round": args.tokens, "rounds": args.rounds, "copy_bandwidth_gbs": copy_gbs,
        "checks": checks, **extra, "peak_mem_bytes": torch.cuda.max_memory_allocated(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"decode step, SpikeGPT {args.layers}x{args.d_model} ({n_params / 1e6:.1f}M params), {device_name}, "
          f"{versions}, copy bw {copy_gbs:.0f} GB/s, {args.rounds}x{args.tokens} steps per row")
    print(f"{'runtime':62s} {'p50 ms':>8s} {'p90 ms':>8s} {'dev ms':>8s} {'MB':>6s} {'x roof':>7s} {'dev x roof':>10s}")
    for row in results:
        dev = "-" if row["device_ms"] is None else f"{row['device_ms']:.3f}"
        dr = "-" if row["device_ratio_measured_bw"] is None else f"{row['device_ratio_measured_bw']:.1f}"
        print(f"{row['row']:62s} {row['p50_ms']:8.3f} {row['p90_ms']:8.3f} {dev:>8s} {row['bytes_per_token'] / 1e6:6.0f} "
              f"{row['ratio_measured_bw']:7.1f} {dr:>10s}")
    print("checks:", json.dumps(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
