"""One decode step of a mamba-130m-shaped model on a CUDA GPU, the PyTorch runtimes side by side.

    python benchmarks/decode_gpu.py [--out decode_gpu.json]

Model: Mamba-1, 24 x 768, d_state 16, vocab 50280, random weights (seed 0), batch 1. Rows, timed in
one run, interleaved round by round:

* ``transformers`` MambaForCausalLM eager fp32 with its cache (its pure-PyTorch path: the fused
  ``mamba_ssm`` kernels are not installed) — the baseline;
* edgeseq ``targets.runtimes.TorchRuntime``: eager and as one captured CUDA graph, in fp32 and
  bf16 (the CUDA graph removes the ~400 kernel launches' CPU overhead of a 24-layer step).

Each step is timed with a device synchronize around it (what a streaming caller sees). The roofline
is bytes per token ÷ the device-to-device copy bandwidth measured in the same run (bytes read +
written, as ``METHOD.md`` of the lent machines advises), and ÷ the datasheet bandwidth of the
registry entry when the device name matches one. The CUDA-graph output is checked against eager
(relative error) before timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--layers", type=int, default=CONFIG["n_layer"])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "decode_gpu.json"))
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        log("no CUDA device: nothing to measure")
        return 1
    from edgeseq.models.mamba import Mamba, MambaConfig
    from targets.runtimes import TorchRuntime

    device_name = torch.cuda.get_device_name(0)
    log(f"device {device_name}, torch {torch.__version__}")
    torch.manual_seed(0)
    base = Mamba(MambaConfig(**{**CONFIG, "n_layer": args.layers})).eval()
    n_params = base.num_parameters()
    state_numel = sum(torch.Size(s.shape).numel() for s in base.state_spec())
    rows = {}
    try:
        from transformers import MambaConfig as HFConfig, MambaForCausalLM

        torch.manual_seed(0)
        hf = MambaForCausalLM(HFConfig(vocab_size=CONFIG["vocab_size"], hidden_size=CONFIG["d_model"],
                                       num_hidden_layers=args.layers, state_size=CONFIG["d_state"],
                                       conv_kernel=CONFIG["d_conv"], expand=CONFIG["expand"])).eval().cuda()
        rows["transformers eager fp32"] = (HFStep(torch, hf, CONFIG["vocab_size"]), "fp32")
    except Exception as exc:  # transformers missing or its API moved: the other rows still run
        log(f"transformers row skipped: {type(exc).__name__}: {exc}")
    checks = {}
    for dtype, label in ((None, "fp32"), ("bfloat16", "bf16")):
        import copy

        model = copy.deepcopy(base)
        eager = TorchRuntime(model, device="cuda", dtype=dtype)
        graph = TorchRuntime(model, device="cuda", dtype=dtype, cuda_graph=True)
        x, state = eager.example_input(1), eager.init_state(1)
        y_eager, _ = eager.step(x, state)
        y_graph, _ = graph.step(x, state)
        y_graph, _ = graph.step(x, state)  # a replay, not only the capture run
        checks[label] = float((y_graph.float() - y_eager.float()).norm() / y_eager.float().norm())
        rows[f"edgeseq torch eager {label}"] = (RuntimeStep(eager), label)
        rows[f"edgeseq torch cuda-graph {label}"] = (RuntimeStep(graph), label)
    log(f"cuda-graph vs eager relative error: {checks}")

    copy_gbs = copy_bandwidth_gbs(torch)
    log(f"device-to-device copy bandwidth {copy_gbs:.0f} GB/s (read + write)")
    samples = {name: [] for name in rows}
    for name, (step, _) in rows.items():
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
    for r in range(args.rounds):
        for name, (step, _) in rows.items():
            for _ in range(args.tokens):
                start = time.perf_counter()
                step()
                torch.cuda.synchronize()
                samples[name].append((time.perf_counter() - start) * 1e3)
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {statistics.median(s):.3f} ms" for n, s in samples.items()))

    from targets.profile import percentile

    datasheet = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0}
    sheet_gbs = next((v for k, v in datasheet.items() if k in device_name), None)
    bytes_per = {"fp32": 4, "bf16": 2}
    hf_p50 = percentile(samples.get("transformers eager fp32", []), 50)
    results = []
    for name, values in samples.items():
        precision = rows[name][1]
        nbytes = bytes_per[precision] * n_params + 2 * 4 * state_numel
        p50 = percentile(values, 50)
        roof_measured = nbytes / (copy_gbs * 1e9) * 1e3
        roof_sheet = None if sheet_gbs is None else nbytes / (sheet_gbs * 1e9) * 1e3
        results.append({
            "row": name, "precision": precision, "p50_ms": p50, "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "tokens_per_s": 1e3 / statistics.fmean(values),
            "bytes_per_token": nbytes, "roofline_ms_measured_bw": roof_measured, "ratio_measured_bw": p50 / roof_measured,
            "roofline_ms_datasheet_bw": roof_sheet, "ratio_datasheet_bw": None if roof_sheet is None else p50 / roof_sheet,
            "speedup_vs_transformers": None if not hf_p50 else hf_p50 / p50,
        })
    report = {
        "benchmark": "decode_gpu", "device": device_name, "torch": torch.__version__,
        "model": {**CONFIG, "n_layer": args.layers, "params": n_params}, "tokens_per_round": args.tokens,
        "rounds": args.rounds, "copy_bandwidth_gbs": copy_gbs, "datasheet_bandwidth_gbs": sheet_gbs,
        "cuda_graph_vs_eager_rel_error": checks, "peak_mem_bytes": torch.cuda.max_memory_allocated(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    header = f"{'runtime':34s} {'p50 ms':>9s} {'p90 ms':>9s} {'tok/s':>9s} {'x roof(meas)':>12s} {'x roof(sheet)':>13s} {'vs HF':>8s}"
    print(f"decode step, mamba-130m shape ({args.layers}x768, {n_params / 1e6:.1f}M params), {device_name}, "
          f"copy bw {copy_gbs:.0f} GB/s")
    print(header)
    for row in results:
        sheet = "-" if row["ratio_datasheet_bw"] is None else f"{row['ratio_datasheet_bw']:.1f}"
        speed = "-" if row["speedup_vs_transformers"] is None else f"{row['speedup_vs_transformers']:.1f}x"
        print(f"{row['row']:34s} {row['p50_ms']:9.3f} {row['p90_ms']:9.3f} {row['tokens_per_s']:9.0f} "
              f"{row['ratio_measured_bw']:12.1f} {sheet:>13s} {speed:>8s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
