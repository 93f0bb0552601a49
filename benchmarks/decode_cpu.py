"""Decode and prefill of a mamba-130m-shaped model on this CPU: edgeseq's verified artifacts beside llama.cpp.

    python benchmarks/decode_cpu.py --out benchmarks/decode_cpu.json     # builds what it needs, times all
    python benchmarks/decode_cpu.py --summarize benchmarks/decode_cpu.json   # the tables of a saved run

Model: Mamba-1, 24 layers × d_model 768, d_state 16, expand 2, vocab 50280, random weights (seed
0), batch 1 — one ``transformers`` ``save_pretrained`` folder that both sides load: edgeseq
(``load_model`` → ``quantize_model`` → ``export_artifact``, each artifact verified against its
PyTorch model before it is written; ``benchmarks/cpu_artifacts.py``) and llama.cpp (its own
``convert_hf_to_gguf.py`` to F32, ``llama-quantize`` to Q8_0 / Q4_0; built from the source that
the ``llama-cpp-python`` sdist vendors; ``benchmarks/llama_cpp_peer.py``). Built once into
``--work-dir`` and reused.

Rows: ``edgeseq onnxruntime <recipe>`` per ``--recipes`` and ``llama.cpp Q8_0`` / ``Q4_0`` /
``F32``, each at every ``--threads`` count (2 and 1 by default: on a loaded 2-core machine the
2-thread figures collapse first). Every measurement runs in **its own process**, so its peak RSS
(``/usr/bin/time``) is that row's alone, with its CPU time per decoded token beside the wall time (with
one thread the CPU time is what a quiet machine's wall time would be: the figure that survives a
machine other processes load); rows are **interleaved round by round** (round r times every row
once, in a rotated order) and the load average is recorded before each measurement.

Per row and round: decode ms/token over ``--tokens`` single-token steps after ``--warmup``
(edgeseq: ONNX Runtime steps with the state fed back, from the state a 128-token prefill left;
llama.cpp: ``llama-bench -n 1`` repetitions), prefill tokens/s of a 128-token prompt, peak RSS.
The JSON holds ``rows`` (``row``, ``threads``, ``p50_ms``, ``p90_ms``, ``prefill_tok_s``,
``peak_rss_bytes``, ``artifact_bytes``, ``ratio_to_llama_q8_0`` ...) from the round with the lowest
load, and ``rounds`` with every round's figures and load. After the run (or from a saved JSON with
``--summarize``) it prints that round's table and the **medians over all rounds**: each row's p50,
and the median of its per-round ratios to llama.cpp Q8_0, Q4_0 and edgeseq fp32 of the same round
(with their range) — on a machine whose speed drifts, the ratios of one round are the comparable
figures, and their median over rounds the one to quote.

The edgeseq worker opens the artifact through edgeseq's runtime layer (``targets.runtimes``: the
engine ``edgeseq profile`` times and export verification ran), importing neither torch nor
edgeseq's model code, so its RSS is the runtime's and the artifact's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = dict(vocab_size=50280, d_model=768, n_layer=24, d_state=16, d_conv=4, expand=2)
DEFAULT_RECIPES = "fp32,w8a8,w4a16,w8a8-block,w4a8-block"
LLAMA_QUANTS = ("Q8_0", "Q4_0", "F32")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="2,1", help="comma-separated thread counts (each row at each)")
    p.add_argument("--tokens", type=int, default=32, help="timed decode steps per row per round")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--prefill", type=int, default=128, help="prompt length for prefill tokens/s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--recipes", default=DEFAULT_RECIPES, help="edgeseq recipes (verified artifacts)")
    p.add_argument("--llama", default=",".join(LLAMA_QUANTS), help="llama.cpp GGUF types ('' for none)")
    p.add_argument("--layers", type=int, default=CONFIG["n_layer"])
    p.add_argument("--prefill-length", type=int, default=32,
                   help="positions per prefill-graph call of the artifacts built (prompts run as chunks of it)")
    p.add_argument("--work-dir", default="/tmp/edgeseq-decode-cpu")
    p.add_argument("--out", default=str(HERE / "decode_cpu.json"))
    p.add_argument("--summarize", default=None, metavar="JSON", help="print the tables of a saved run and exit")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # an artifact folder: time it, print JSON
    return p.parse_args(argv)


def log(message: str) -> None:
    sys.stderr.write(f"[decode_cpu {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# the edgeseq worker (its own process: onnxruntime + numpy only)
# --------------------------------------------------------------------------------------------


def edgeseq_worker(folder: Path, threads: int, tokens: int, warmup: int, prompt: int) -> dict:
    """Time an artifact through edgeseq's own runtime layer (``targets.runtimes``: the engine that
    ``edgeseq profile`` times and export verification ran; it imports onnxruntime and numpy, not torch).
    A refused artifact (kept by the benchmark, labelled "not verified") opens without the checks."""
    import numpy as np

    from targets.manifest import read_manifest, verification_passed
    from targets.runtimes import open_artifact_runtime

    verified = verification_passed(read_manifest(folder))
    rt = open_artifact_runtime(folder, threads=threads, require_verified=verified)
    state = rt.init_state(1)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CONFIG["vocab_size"], size=(1, prompt), dtype=np.int64)
    prefill_tok_s = None
    if rt.has_prefill and prompt % (rt.io.prefill_length or prompt) == 0:
        rt.prefill(ids)  # warm-up
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            _, state = rt.prefill(ids)
            times.append(time.perf_counter() - t0)
        prefill_tok_s = prompt / min(times)
    token = ids[:, -1]
    samples, cpu = [], 0.0
    for i in range(warmup + tokens):
        c0, t0 = time.process_time(), time.perf_counter()
        y, state = rt.step(token, state)
        dt = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            cpu += time.process_time() - c0
        token = np.argmax(y, axis=-1).astype(np.int64)
        if i >= warmup:
            samples.append(dt)
    return {"decode_ms": samples, "cpu_ms_per_token": cpu * 1e3 / tokens, "prefill_tok_s": prefill_tok_s,
            "binding": getattr(rt, "binding", None), "prefill_length": rt.io.prefill_length}


def time_edgeseq(folder: Path, threads: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(folder), "--threads", str(threads), "--tokens", str(args.tokens),
           "--warmup", str(args.warmup), "--prefill", str(args.prefill)]
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as record:  # see llama_cpp_peer.run_measured
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", record.name, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        out = proc.stdout.read()
        _, status, _ = os.wait4(proc.pid, 0)
        rss_kib = int(record.read().strip().splitlines()[-1])
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"edgeseq worker for {folder} failed")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_bytes"] = rss_kib * 1024
    return result


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def artifact_bytes(folder: Path) -> int:
    """The graphs and their weights (``weights.bin``, the step and prefill graphs' one shared copy)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data", ".so", ".bin"))


def summarize(name: str, kind: str, threads: int, m: dict, size: int, load: tuple) -> dict:
    samples = sorted(m["decode_ms"])
    pct = lambda q: samples[min(len(samples) - 1, int(round(q / 100 * (len(samples) - 1))))]
    return {"row": name, "kind": kind, "threads": threads, "p50_ms": statistics.median(samples), "p90_ms": pct(90),
            "samples": len(samples), "cpu_ms_per_token": m.get("cpu_ms_per_token"),
            "prefill_tok_s": m.get("prefill_tok_s"), "peak_rss_bytes": m["peak_rss_bytes"],
            "artifact_bytes": size, "rss_over_artifact": m["peak_rss_bytes"] / size if size else None,
            "load_before": list(load), **({"ort_binding": m["binding"], "prefill_length": m.get("prefill_length")}
                                          if m.get("binding") else {})}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        try:
            report = json.loads(Path(args.summarize).read_text())
        except (OSError, ValueError) as exc:
            print(f"decode_cpu: cannot read {args.summarize}: {exc}", file=sys.stderr)
            return 2
        print_table(report)
        print_medians(report)
        return 0
    if args.worker:
        result = edgeseq_worker(Path(args.worker), int(args.threads), args.tokens, args.warmup, args.prefill)
        print(json.dumps(result))
        return 0
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    import cpu_artifacts
    import llama_cpp_peer

    work = Path(args.work_dir)
    threads = [int(t) for t in args.threads.split(",") if t]
    recipes = [r for r in args.recipes.split(",") if r]
    quants = [q for q in args.llama.split(",") if q]
    tools, ggufs = llama_cpp_peer.prepare(work / "llama.cpp", args.layers) if quants else ({}, {})
    artifacts = cpu_artifacts.build(work, recipes, args.layers, prefill_length=args.prefill_length)

    rows: list[tuple[str, str, object]] = [
        (f"edgeseq onnxruntime {r}" + ("" if cpu_artifacts.verified(artifacts[r]) else " (not verified)"), "edgeseq",
         artifacts[r]) for r in recipes]
    rows += [(f"llama.cpp {q}", "llama.cpp", ggufs[q]) for q in quants]
    sizes = {name: (artifact_bytes(path) if kind == "edgeseq" else path.stat().st_size) for name, kind, path in rows}
    rounds = []
    for r in range(args.rounds):
        order = rows[r % len(rows):] + rows[: r % len(rows)]  # rotate: no row always runs first
        results = []
        for t in threads:
            for name, kind, path in order:
                load = os.getloadavg()
                if kind == "edgeseq":
                    m = time_edgeseq(path, t, args)
                else:
                    m = llama_cpp_peer.measure(tools, path, t, tokens=args.tokens, prefill=args.prefill)
                results.append(summarize(name, kind, t, m, sizes[name], load))
                log(f"round {r + 1} {name} t{t}: p50 {results[-1]['p50_ms']:.2f} ms, prefill "
                    f"{results[-1]['prefill_tok_s'] or 0:.0f} tok/s, RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB, load {load[0]:.2f}")
        for t in threads:
            peer = next((x for x in results if x["row"] == "llama.cpp Q8_0" and x["threads"] == t), None)
            for x in results:
                if x["threads"] == t and peer:
                    x["ratio_to_llama_q8_0"] = x["p50_ms"] / peer["p50_ms"]
                    peer_cpu = peer.get("cpu_ms_per_token") or 0  # llama-bench may not report CPU time
                    mine = x.get("cpu_ms_per_token")
                    x["cpu_ratio_to_llama_q8_0"] = mine / peer_cpu if peer_cpu and mine is not None else None
        mean_load = statistics.mean(x["load_before"][0] for x in results)
        rounds.append({"round": r + 1, "mean_load_1min": mean_load, "rows": results})
    best = min(rounds, key=lambda x: x["mean_load_1min"])
    report = {
        "benchmark": "decode_cpu", "model": {**CONFIG, "n_layer": args.layers}, **machine_record(),
        "python": platform.python_version(), "threads": threads, "tokens_per_row": args.tokens, "warmup": args.warmup,
        "prefill_tokens": args.prefill, "rounds_run": args.rounds, "reported_round": best["round"],
        "reported_round_mean_load": best["mean_load_1min"], "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "llama_cpp": {"source": f"llama-cpp-python {llama_cpp_peer.LLAMA_CPP_PYTHON} sdist (vendor/llama.cpp)"},
        "rows": best["rows"], "rounds": rounds,
    }
    report["medians"] = round_medians(report)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print_medians(report)
    return 0


def machine_record() -> dict:
    """CPU model, cores and the SIMD flags (AVX*, FMA) a CPU figure is read with."""
    from targets.registry import read_cpuinfo

    cpu = read_cpuinfo()
    flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0]
    return {"cpu": cpu["model"], "cores": cpu["cores"],
            "isa": sorted({f for f in flags.split() if f.startswith(("avx", "fma"))})}


def print_table(report: dict) -> None:
    print(f"\nmamba-130m shape, batch 1, {report['cpu']} ({report['cores']} cores), round {report['reported_round']} of "
          f"{report['rounds_run']} (lowest mean load {report['reported_round_mean_load']:.2f})")
    print("| row | threads | decode p50 ms | p90 ms | × llama.cpp Q8_0 | CPU ms/token | × Q8_0 (CPU) | prefill tok/s (128) | peak RSS MiB | RSS / file size | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in sorted(report["rows"], key=lambda x: (x["threads"] != 2, x["row"])):
        ratio = x.get("ratio_to_llama_q8_0")
        cratio = x.get("cpu_ratio_to_llama_q8_0")
        print(f"| {x['row']} | {x['threads']} | {x['p50_ms']:.2f} | {x['p90_ms']:.2f} | {'-' if ratio is None else f'{ratio:.2f}'} | "
              f"{'-' if x.get('cpu_ms_per_token') is None else format(x['cpu_ms_per_token'], '.2f')} | "
              f"{'-' if cratio is None else f'{cratio:.2f}'} | "
              f"{x['prefill_tok_s'] or 0:.0f} | {x['peak_rss_bytes'] / 2**20:.0f} | {x['rss_over_artifact']:.2f} | "
              f"{x['load_before'][0]:.2f} |")



def round_medians(report: dict) -> list[dict]:
    """Per (row, threads): the median p50 and prefill over the rounds, and the median (and range) of
    each round's ratio to llama.cpp Q8_0 / Q4_0 and to edgeseq fp32 at the same thread count (decode
    time; ``prefill_ratio_to_*``: prefill tokens/s to llama.cpp's, higher is faster)."""
    peers = {"q8_0": "llama.cpp Q8_0", "q4_0": "llama.cpp Q4_0", "fp32": "edgeseq onnxruntime fp32"}
    out: dict[tuple[str, int], dict] = {}
    for rnd in report["rounds"]:
        by = {(x["row"], x["threads"]): x for x in rnd["rows"]}
        for (row, threads), x in by.items():
            entry = out.setdefault((row, threads), {"row": row, "threads": threads, "p50": [], "prefill": [],
                                                    **{k: [] for k in peers}, **{f"prefill_{k}": [] for k in peers}})
            entry["p50"].append(x["p50_ms"])
            entry["prefill"].append(x.get("prefill_tok_s") or 0.0)
            for key, peer in peers.items():
                if (peer, threads) in by:
                    entry[key].append(x["p50_ms"] / by[(peer, threads)]["p50_ms"])
                    if x.get("prefill_tok_s") and by[(peer, threads)].get("prefill_tok_s"):
                        entry[f"prefill_{key}"].append(x["prefill_tok_s"] / by[(peer, threads)]["prefill_tok_s"])
    rows = []
    for entry in out.values():
        row = {"row": entry["row"], "threads": entry["threads"], "rounds": len(entry["p50"]),
               "p50_ms": statistics.median(entry["p50"]), "prefill_tok_s": statistics.median(entry["prefill"])}
        for key in peers:
            for name, values in ((f"ratio_to_{key}", entry[key]), (f"prefill_ratio_to_{key}", entry[f"prefill_{key}"])):
                if values:
                    row[name] = (statistics.median(values), min(values), max(values))
        rows.append(row)
    return sorted(rows, key=lambda x: (x["threads"] != 2, x["row"]))


def print_medians(report: dict) -> None:
    def ratio(x, key):
        value = x.get(key if key.startswith("prefill") else f"ratio_to_{key}")
        return "" if value is None else f"{value[0]:.2f} [{value[1]:.2f}–{value[2]:.2f}]"

    print(f"\nmedians over {report['rounds_run']} rounds (ratios: the median of each round's ratio, its range)")
    print("| row | threads | decode p50 ms | × llama.cpp Q8_0 | × llama.cpp Q4_0 | × edgeseq fp32 | prefill tok/s "
          "| prefill × Q8_0 | prefill × Q4_0 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in round_medians(report):
        print(f"| {x['row']} | {x['threads']} | {x['p50_ms']:.2f} | {ratio(x, 'q8_0')} | {ratio(x, 'q4_0')} | "
              f"{ratio(x, 'fp32')} | {x['prefill_tok_s']:.0f} | {ratio(x, 'prefill_ratio_to_q8_0')} | "
              f"{ratio(x, 'prefill_ratio_to_q4_0')} |")


if __name__ == "__main__":
    sys.exit(main())
