"""One decode step of a mamba-130m-shaped model on this CPU, every runtime side by side.

    python benchmarks/decode_cpu.py --threads 2            # table on stdout, JSON beside this file

Model: Mamba-1, 24 layers x d_model 768, d_state 16, expand 2, vocab 50280, random weights
(seed 0), batch 1. Rows, all timed in ONE run, interleaved round by round so that load from other
processes falls on every row alike:

* ``transformers`` MambaForCausalLM eager fp32, one token with its cache (the baseline);
* edgeseq PyTorch eager fp32 ``step``;
* ONNX Runtime fp32 and int8; TVM (Relax VM, llvm for this CPU) fp32 and int8 — the int8 graph is
  ONNX Runtime's ``quantize_dynamic`` (per-channel int8 weights, dynamic int8 activations) of the
  fp32 step graph, standing in for ``edgeseq export --recipe w8a8`` until that lands.

Roofline (memory-bound decode, see ``targets.roofline``): bytes per token = parameters x bytes per
weight (4 for fp32, 1 for the ideal int8 model) + the recurrent state read and written, divided by
this machine's read bandwidth measured in the same run. Artifacts are built once into
``--work-dir`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = dict(vocab_size=50280, d_model=768, n_layer=24, d_state=16, d_conv=4, expand=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=20, help="timed steps per row per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--layers", type=int, default=CONFIG["n_layer"], help="fewer layers for a quick smoke run")
    p.add_argument("--skip", default="", help="comma-separated rows to skip: hf,torch,ort-fp32,ort-int8,tvm-fp32,tvm-int8")
    p.add_argument("--work-dir", default="/tmp/edgeseq-decode-cpu")
    p.add_argument("--build-only", action="store_true", help="build (and cache) the artifacts, time nothing")
    p.add_argument("--out", default=str(HERE / "decode_cpu.json"))
    return p.parse_args(argv)


def log(message: str) -> None:
    sys.stderr.write(f"[decode_cpu {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# building the rows
# --------------------------------------------------------------------------------------------


def build_models(layers: int):
    import torch
    from transformers import MambaConfig as HFConfig, MambaForCausalLM

    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    ours = Mamba(MambaConfig(**{**CONFIG, "n_layer": layers})).eval()
    hf_config = HFConfig(vocab_size=CONFIG["vocab_size"], hidden_size=CONFIG["d_model"], num_hidden_layers=layers,
                         state_size=CONFIG["d_state"], conv_kernel=CONFIG["d_conv"], expand=CONFIG["expand"],
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    hf = MambaForCausalLM(hf_config).eval()
    return ours, hf


def build_artifacts(model, work: Path, skip: set[str]) -> dict[str, Path]:
    """fp32 ONNX (step only), its int8 dynamic quantization, and their TVM libraries (cached)."""
    from targets.testing import compile_onnx_to_tvm, host_llvm_target, write_onnx_artifact

    work.mkdir(parents=True, exist_ok=True)
    paths = {"onnx-fp32": work / "onnx-fp32", "onnx-int8": work / "onnx-int8", "tvm-fp32": work / "tvm-fp32", "tvm-int8": work / "tvm-int8"}
    if not (paths["onnx-fp32"] / "step.onnx").is_file():
        log("exporting the fp32 step graph to ONNX")
        write_onnx_artifact(model, paths["onnx-fp32"], prefill_length=None)
    manifest = json.loads((paths["onnx-fp32"] / "manifest.json").read_text())
    if not (paths["onnx-int8"] / "step.onnx").is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log("quantizing the step graph to int8 (onnxruntime quantize_dynamic, per-channel)")
        paths["onnx-int8"].mkdir(parents=True, exist_ok=True)
        quantize_dynamic(str(paths["onnx-fp32"] / "step.onnx"), str(paths["onnx-int8"] / "step.onnx"),
                         weight_type=QuantType.QInt8, per_channel=True)
        (paths["onnx-int8"] / "manifest.json").write_text(json.dumps({**manifest, "recipe": "ort-dynamic-int8"}, indent=2))
    for precision in ("fp32", "int8"):
        folder = paths[f"tvm-{precision}"]
        if f"tvm-{precision}" in skip or (folder / "step.so").is_file():
            continue
        log(f"compiling the {precision} step graph with TVM for {host_llvm_target()} (minutes)")
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        compile_onnx_to_tvm(paths[f"onnx-{precision}"] / "step.onnx", folder / "step.so", host_llvm_target())
        log(f"  compiled in {time.perf_counter() - start:.0f} s")
        (folder / "manifest.json").write_text(json.dumps({**manifest, "format": "tvm", "files": [{"path": "step.so"}]}, indent=2))
    return paths


class HFStep:
    """transformers' MambaForCausalLM decoding one token with its cache (eager, fp32)."""

    def __init__(self, hf, vocab: int):
        import torch

        self.torch, self.hf = torch, hf
        prompt = torch.randint(0, vocab, (1, 4), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            self.cache = hf(prompt, use_cache=True).cache_params
        self.position = prompt.shape[1]
        self.token = prompt[:, -1:]

    def __call__(self):
        with self.torch.inference_mode():
            out = self.hf(self.token, cache_params=self.cache, use_cache=True,
                          cache_position=self.torch.tensor([self.position]))
        self.cache = out.cache_params
        self.position += 1
        return out.logits


class RuntimeStep:
    """A targets.runtimes runtime stepping with its state fed back."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.x = runtime.example_input(1)
        self.state = runtime.init_state(1)

    def __call__(self):
        y, self.state = self.runtime.step(self.x, self.state)
        return y


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def time_rows(rows: dict, tokens: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    samples = {name: [] for name in rows}
    for name, step in rows.items():
        for _ in range(warmup):
            step()
    for r in range(rounds):
        for name, step in rows.items():
            for _ in range(tokens):
                start = time.perf_counter()
                step()
                samples[name].append((time.perf_counter() - start) * 1e3)
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {statistics.median(s):.1f} ms" for n, s in samples.items()))
    return samples


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from targets.bandwidth import measure_bandwidth
    from targets.profile import percentile
    from targets.registry import read_cpuinfo
    from targets.manifest import read_artifact
    from targets.runtimes import OnnxRuntime, TorchRuntime, TvmRuntime, peak_rss_bytes

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    ours, hf = build_models(args.layers)
    n_params = ours.num_parameters()
    state_bytes = sum(4 * torch.Size(s.shape).numel() for s in ours.state_spec())
    paths = build_artifacts(ours, Path(args.work_dir) / f"L{args.layers}", skip)
    if args.build_only:
        log(f"artifacts in {Path(args.work_dir) / f'L{args.layers}'}")
        return 0

    rows: dict = {}
    if "hf" not in skip:
        rows["transformers eager fp32"] = HFStep(hf, CONFIG["vocab_size"])
    if "torch" not in skip:
        rows["edgeseq torch fp32"] = RuntimeStep(TorchRuntime(ours))
    for precision in ("fp32", "int8"):
        if f"ort-{precision}" not in skip:
            rows[f"onnxruntime {precision}"] = RuntimeStep(OnnxRuntime(read_artifact(paths[f"onnx-{precision}"]), threads=args.threads))
        if f"tvm-{precision}" not in skip:
            rows[f"tvm {precision}"] = RuntimeStep(TvmRuntime(read_artifact(paths[f"tvm-{precision}"]), threads=args.threads))

    log(f"measuring read bandwidth with {args.threads} thread(s)")
    bandwidth = measure_bandwidth(threads=args.threads)
    log(f"timing {len(rows)} rows: {args.rounds} rounds x {args.tokens} steps, {args.threads} thread(s)")
    samples = time_rows(rows, args.tokens, args.rounds, args.warmup)
    bandwidth_after = measure_bandwidth(threads=args.threads)
    read_gbs = max(bandwidth["read_gbs"], bandwidth_after["read_gbs"])

    roof = {
        "fp32": (4 * n_params + 2 * state_bytes) / (read_gbs * 1e9) * 1e3,
        "int8": (1 * n_params + 2 * state_bytes) / (read_gbs * 1e9) * 1e3,
    }
    hf_p50 = percentile(samples.get("transformers eager fp32", []), 50)
    results = []
    for name, values in samples.items():
        p50 = percentile(values, 50)
        precision = "int8" if "int8" in name else "fp32"
        results.append({
            "row": name, "precision": precision, "p50_ms": p50, "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "samples": len(values), "roofline_ms": roof[precision],
            "ratio_to_roofline": p50 / roof[precision], "ratio_to_int8_roofline": p50 / roof["int8"],
            "speedup_vs_transformers": (hf_p50 / p50) if hf_p50 else None,
        })
    load = os.getloadavg()
    report = {
        "benchmark": "decode_cpu", "model": {**CONFIG, "n_layer": args.layers, "params": n_params, "state_bytes": state_bytes},
        "threads": args.threads, "tokens_per_round": args.tokens, "rounds": args.rounds, "warmup": args.warmup,
        "cpu": read_cpuinfo()["model"], "cores": read_cpuinfo()["cores"], "python": platform.python_version(),
        "torch": torch.__version__, "read_bandwidth_gbs": read_gbs, "bandwidth_before_after_gbs": [bandwidth["read_gbs"], bandwidth_after["read_gbs"]],
        "roofline_ms": roof, "load_average_after": load, "peak_rss_bytes": peak_rss_bytes(),
        "int8_source": "onnxruntime.quantization.quantize_dynamic (per-channel int8 weights, dynamic int8 activations)",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = report["model"]
    table = Table(title=f"decode step, mamba-130m shape ({m['n_layer']}x{m['d_model']}, vocab {m['vocab_size']}, "
                        f"{m['params'] / 1e6:.1f}M params), {report['threads']} thread(s)")
    for column in ("runtime", "p50 ms", "p90 ms", "x roofline (own precision)", "x int8 roofline", "speed-up vs transformers"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for row in report["rows"]:
        speedup = row["speedup_vs_transformers"]
        table.add_row(row["row"], f"{row['p50_ms']:.2f}", f"{row['p90_ms']:.2f}", f"{row['ratio_to_roofline']:.2f}",
                      f"{row['ratio_to_int8_roofline']:.2f}", "-" if speedup is None else f"{speedup:.2f}x")
    console = Console()
    console.print(table)
    console.print(f"read bandwidth {report['read_bandwidth_gbs']:.1f} GB/s (measured in this run); roofline fp32 "
                  f"{report['roofline_ms']['fp32']:.1f} ms, int8 {report['roofline_ms']['int8']:.1f} ms; load average "
                  f"after {', '.join(f'{x:.1f}' for x in report['load_average_after'])}; int8 = {report['int8_source']}")


if __name__ == "__main__":
    sys.exit(main())
