"""One LMUFormer / Spiking LMUFormer frame step on a CUDA GPU: the PyTorch runtimes, a compiler, the cuBLAS
floor and edgeseq's fused one-kernel step side by side (a sibling of decode_gpu.py).

    python benchmarks/decode_gpu_lmuformer.py [--out decode_gpu_lmuformer.json] [--shapes zoo,256x4]
        [--compile-shapes 256x4] [--rounds 3 --tokens 100]

Shapes: ``zoo`` — the zoo models' (8 features, 64 wide, 1 block, 10 classes, memory 64 / 128);
``256x4`` — 40 features, 256 wide, 4 blocks, hidden 1024, 35 classes, memory 256 (float) / 512 (spiking),
embedding kernel 3 (4 convolutions + the positional one). Random weights (seed 0) with BatchNorm
statistics moved off their defaults, eval mode, batch 1, a random frame each step. Rows per shape and
variant, interleaved round by round: ``TorchRuntime`` eager fp32 and as one CUDA graph (fp32, bf16);
``torch.compile`` (mode ``default``) of the plain ``step`` in fp32 captured into one CUDA graph with
the state fed back (for ``--compile-shapes``); the cuBLAS GEMV-only floor (every
Linear / Conv1d weight as one bf16 ``F.linear``, one CUDA graph); the fused step (one kernel a
frame, one CUDA graph) with bf16 weights at its default launch shape (8 warps and 8K-element weight
tiles up to 512-wide rows, 16 warps and 16K above), for ``--shape-sweep`` shapes also at the other one,
and with ``--fp32`` with fp32 weights. Timing and roofline as in decode_gpu.py (p50/p90
host clock with a synchronize per step; device time from CUDA events over 50 back-to-back replays;
roofline: the row's weight bytes ÷ the measured copy bandwidth — at these sizes a few µs, so the
ratio mostly shows launch and latency cost). Before timing, the fused steps are checked against the
model's ``step`` in fp32 with the same weights, 12 frames teacher-forced (float: every frame; spiking:
frames whose spikes flip at a threshold are counted apart).
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

from decode_gpu import copy_bandwidth_gbs, device_ms  # noqa: E402

SHAPES = {
    "zoo": dict(input_dim=8, dim=64, depth=1, n_classes=10, theta=8.0),
    "256x4": dict(input_dim=40, dim=256, depth=4, n_classes=35, theta=64.0),
}


def log(message: str) -> None:
    sys.stderr.write(f"[decode_gpu_lmuformer {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def build(torch, spiking: bool, shape: dict):
    from edgeseq.models.lmuformer import LMUFormer, LMUFormerConfig, SpikingLMUFormer, SpikingLMUFormerConfig

    torch.manual_seed(0)
    model = SpikingLMUFormer(SpikingLMUFormerConfig(**shape)) if spiking else LMUFormer(LMUFormerConfig(**shape))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(1.0, 3.0) if spiking else m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
    return model.eval()


class TorchStep:
    def __init__(self, torch, runtime, features, dtype=None, device="cuda"):
        self.runtime, self.state = runtime, runtime.init_state(1)
        self.x = torch.rand(1, features, device=device, dtype=getattr(torch, dtype) if dtype else torch.float32)

    def __call__(self):
        y, self.state = self.runtime.step(self.x, self.state)
        return y


class CompiledGraphStep:
    """torch.compile of the plain frame step, replayed as one CUDA graph writing the new state back."""

    def __init__(self, torch, model, mode: str, features: int):
        names = model.state_names()
        step = lambda x, *st: self._flat(model.step(x, dict(zip(names, st))), names)  # noqa: E731
        self.compiled = torch.compile(step, mode=mode, dynamic=False)
        self.x = torch.rand(1, features, device="cuda")
        init = model.init_state(1, device="cuda")
        self.state = [init[n].contiguous() for n in names]
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    out = self.compiled(self.x, *self.state)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                out = self.compiled(self.x, *self.state)
                for s, n in zip(self.state, out[1:]):
                    s.copy_(n)
            self.out = out[0]

    @staticmethod
    def _flat(result, names):
        y, state = result
        return (y, *[state[n] for n in names])

    def __call__(self):
        self.graph.replay()
        return self.out


class GemvFloor:
    def __init__(self, torch, model):
        import torch.nn.functional as F

        ws = [m.weight.detach().reshape(m.weight.shape[0], -1) for m in model.modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))]
        self.weights = [w.to("cuda", torch.bfloat16).contiguous() for w in ws]
        self.inputs = [torch.randn(1, w.shape[1], device="cuda", dtype=torch.bfloat16) for w in self.weights]
        for _ in range(2):
            [F.linear(x, w) for x, w in zip(self.inputs, self.weights)]
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outs = [F.linear(x, w) for x, w in zip(self.inputs, self.weights)]

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * 2 for w in self.weights)

    def __call__(self):
        self.graph.replay()
        return self.outs[-1]


class FusedStep:
    def __init__(self, torch, rt, features):
        self.rt = rt
        rt.x.copy_(torch.rand(features))
        rt.step(rt.x)

    def __call__(self):
        self.rt.graph().replay()
        return self.rt.out


def fused_check(torch, rt, model, frames: int = 12, device: str = "cuda") -> dict:
    """Teacher-forced frames against ``step`` in fp32 on the GPU with the same weights: the largest
    relative error of scores and state, and (spiking) the frames over 1e-4, each of which must have
    had a membrane within 1e-4 of its threshold in the reference (a boundary flip)."""
    from edgeseq.models.lif import LIF

    # a true fp32 reference: cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa), which
    # moves the float model by ~1e-4 and flips spikes (the committed run of 2026-12-01 22:57 had it on)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = rt.dequantized_model(model).to(device)
    margins: list = []
    for lif in [m for m in ref.modules() if isinstance(m, LIF)]:
        orig = lif.step

        def step(current, membrane, _orig=orig, _lif=lif):
            v = membrane + (current - membrane) / _lif.cfg.tau
            margins.append(float((v - _lif.cfg.threshold).abs().min()))
            return _orig(current, membrane)

        lif.step = step
    gen = torch.Generator().manual_seed(4)
    state = ref.init_state(1, device=device)
    out = {"frames": frames, "max_rel_error": 0.0, "flip_frames": 0, "flips_off_boundary": 0, "frame_errors": [],
           "frame_min_margins": []}
    for _ in range(frames):
        x = (torch.rand(1, rt.F, generator=gen) * 2).to(device)
        rt.load_state(state)
        y = rt.step(x).clone()
        margins.clear()
        with torch.inference_mode():
            yr, state = ref.step(x, state)
        got = rt.state_dict()
        err = max([float((y - yr[0]).norm() / yr[0].norm())]
                  + [float((got[k] - state[k]).norm() / max(float(state[k].norm()), 1e-30)) for k in state])
        out["frame_errors"].append(err)
        out["frame_min_margins"].append(min(margins, default=None))
        if err > 1e-4:
            out["flip_frames"] += 1
            out["flips_off_boundary"] += int(min(margins, default=1.0) >= 1e-4)
        else:
            out["max_rel_error"] = max(out["max_rel_error"], err)
    rt.reset()
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default again, for the timed torch rows
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100, help="frames per row and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--shapes", default="zoo,256x4")
    p.add_argument("--compile-shapes", default="256x4", help="shapes that get the torch.compile row ('' for none)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode (default: 'default'; max-autotune-no-cudagraphs compiles for much longer)")
    p.add_argument("--fp32", action="store_true", help="also the fused step with fp32 weights")
    p.add_argument("--shape-sweep", default="256x4", help="shapes that also get the fused step at its other launch shape")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "decode_gpu_lmuformer.json"))
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        log("no CUDA device: nothing to measure")
        return 1
    from targets.gpu.lmuformer import FusedLMUFormerStep
    from targets.profile import percentile
    from targets.runtimes import TorchRuntime

    device_name = torch.cuda.get_device_name(0)
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        versions["triton"] = triton.__version__
        versions["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        pass
    log(f"device {device_name}, {versions}")
    rows, nbytes_of, checks, models, extra = {}, {}, {}, {}, {"compile_seconds": {}}
    for shape_name in [s for s in args.shapes.split(",") if s]:
        shape = SHAPES[shape_name]
        for spiking in (False, True):
            tag = f"{'spiking ' if spiking else ''}lmuformer {shape_name}"
            base = build(torch, spiking, shape)
            F = shape["input_dim"]
            models[tag] = {"params": base.num_parameters(), "spiking": spiking, **shape, "order": base.config.order,
                           "hidden": base.config.hidden}
            weight_params = sum(m.weight.numel() for m in base.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)))
            for dtype, label in ((None, "fp32"), ("bfloat16", "bf16")):
                m = copy.deepcopy(base)
                if dtype is None:
                    rows[f"{tag}: edgeseq torch eager fp32"] = (TorchStep(torch, TorchRuntime(m, device="cuda"), F), False)
                    nbytes_of[f"{tag}: edgeseq torch eager fp32"] = 4 * weight_params
                name = f"{tag}: edgeseq torch cuda-graph {label}"
                rows[name] = (TorchStep(torch, TorchRuntime(m, device="cuda", dtype=dtype, cuda_graph=True), F, dtype), True)
                nbytes_of[name] = (4 if dtype is None else 2) * weight_params
            if shape_name in args.compile_shapes.split(","):
                try:
                    t0 = time.time()
                    row = CompiledGraphStep(torch, copy.deepcopy(base).cuda(), args.compile_mode, F)
                    name = f"{tag}: torch.compile ({args.compile_mode}) + cuda-graph fp32"
                    rows[name] = (row, True)
                    nbytes_of[name] = 4 * weight_params
                    extra["compile_seconds"][tag] = time.time() - t0
                    log(f"{tag}: torch.compile row ready in {time.time() - t0:.0f} s")
                except Exception as exc:
                    log(f"{tag}: torch.compile row skipped: {type(exc).__name__}: {exc}")
            floor = GemvFloor(torch, base)
            name = f"{tag}: cuBLAS GEMV-only floor bf16 ({len(floor.weights)} F.linear)"
            rows[name] = (floor, True)
            nbytes_of[name] = floor.nbytes
            default = FusedLMUFormerStep(base)
            other = (8, 8192) if default.num_warps == 16 else (16, 16384)
            variants = [("bf16", None, None)] + ([("fp32", None, None)] if args.fp32 else [])
            if shape_name in args.shape_sweep.split(","):
                variants.append(("bf16", *other))
            for weights, warps, tile in variants:
                rt = FusedLMUFormerStep(base, weights=weights, num_warps=warps, tile=tile)
                shape_label = f"{rt.num_warps} warps, {rt.tile // 1024}K-element tiles"
                checks[f"{tag}: fused {weights} ({shape_label}) vs step fp32 (same weights)"] = fused_check(torch, rt, base)
                name = f"{tag}: edgeseq fused triton (1 kernel), {weights} weights, {shape_label}"
                rows[name] = (FusedStep(torch, rt, F), True)
                nbytes_of[name] = rt.bytes_per_step
    log(f"checks: {json.dumps(checks)}")
    copy_gbs = copy_bandwidth_gbs(torch)
    for step, _ in rows.values():
        for _ in range(args.warmup):
            step()
    torch.cuda.synchronize()
    samples = {name: [] for name in rows}
    dev_samples = {name: [] for name, (_, g) in rows.items() if g}
    for r in range(args.rounds):
        for name, (step, is_graph) in rows.items():
            for _ in range(args.tokens):
                start = time.perf_counter()
                step()
                torch.cuda.synchronize()
                samples[name].append((time.perf_counter() - start) * 1e3)
            if is_graph:
                dev_samples[name].append(device_ms(torch, step, inner=50, repeats=4))
        log(f"round {r + 1}/{args.rounds}")
    results = []
    for name, values in samples.items():
        p50 = percentile(values, 50)
        dev = statistics.median(dev_samples[name]) if dev_samples.get(name) else None
        roof = nbytes_of[name] / (copy_gbs * 1e9) * 1e3
        results.append({"row": name, "p50_ms": p50, "p90_ms": percentile(values, 90), "device_ms": dev,
                        "bytes_per_frame": nbytes_of[name], "roofline_ms_measured_bw": roof,
                        "ratio_measured_bw": p50 / roof, "device_ratio_measured_bw": None if dev is None else dev / roof})
    report = {"benchmark": "decode_gpu_lmuformer", "device": device_name, **versions, "models": models,
              "frames_per_round": args.tokens, "rounds": args.rounds, "copy_bandwidth_gbs": copy_gbs, "checks": checks,
              **extra, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"LMUFormer frame step, {device_name}, {versions}, copy bw {copy_gbs:.0f} GB/s, {args.rounds}x{args.tokens} frames per row")
    print(f"{'runtime':80s} {'p50 ms':>8s} {'p90 ms':>8s} {'dev ms':>8s} {'MB':>7s} {'dev x roof':>10s}")
    for row in results:
        dev = "-" if row["device_ms"] is None else f"{row['device_ms']:.4f}"
        dr = "-" if row["device_ratio_measured_bw"] is None else f"{row['device_ratio_measured_bw']:.0f}"
        print(f"{row['row']:80s} {row['p50_ms']:8.4f} {row['p90_ms']:8.4f} {dev:>8s} {row['bytes_per_frame'] / 1e6:7.2f} {dr:>10s}")
    print("checks:", json.dumps(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
