"""ONNX Runtime's CPU decode step: the plain ``session.run`` against the bound path (issue 15).

    python benchmarks/iobinding_cpu.py [ARTIFACT ...] [--threads 1 2] [--rounds 9] [--steps 64] [--pairs 300]

For each artifact and thread count one :class:`targets.runtimes.OnnxRuntime` (one session) runs
two greedy decode streams from the same initial state: ``plain`` with the bound path switched
off (``session.run`` with numpy feeds, 49 fresh outputs per 130m step) and ``bound`` (two fixed
IoBindings ping-ponging between preallocated output sets, what ``OnnxRuntime.step`` does on the
CPU provider). Every round times ``--steps`` calls of ``OnnxRuntime.step`` of each stream after
``--warmup`` untimed ones, the order of the two alternating round by round, so the machine's
drift falls on both; the per-round ratio is bound / plain of the round medians. Then
``--pairs`` single steps of each alternate (order swapped every pair) and the median of the
per-pair ratios is the finer figure (drift over one step is small). The streams stay in
lockstep, and each round checks their logits and states are bitwise equal. Load
(``os.getloadavg``) is recorded before and after every round, the CPU model and ISA flags once.
Prints a table and writes the JSON next to this script (``--out``).

Measured on the 2-core AMD EPYC VM (AVX-512 VNNI), 2026-12-02, three runs, 300 paired steps each:
bound / plain 0.96-0.98x for w4a8-block and w8a8-block, 0.98-1.00x for fp32, at one thread and
two (0.2-0.5 ms a step: the outputs' allocation and copy); docs/targets.md has the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeseq.errors import EdgeseqError  # noqa: E402
from targets.hostinfo import read_cpuinfo  # noqa: E402
from targets.manifest import read_artifact  # noqa: E402
from targets.runtimes import OnnxRuntime  # noqa: E402

DEFAULT = [f"/tmp/bench2/edgeseq-{r}-L24" for r in ("w4a8-block", "w8a8-block", "fp32")]


def _timed(rt: OnnxRuntime, stream: dict, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        y, stream["state"] = rt.step(stream["token"], stream["state"])
        times.append(round((time.perf_counter() - started) * 1e3, 4))
        stream["token"], stream["y"] = y.argmax(-1), y
    return times


def measure(folder: str, threads: int, rounds: int, steps: int, warmup: int, pairs: int) -> dict:
    artifact = read_artifact(folder)
    rt = OnnxRuntime(artifact, threads=threads)
    bound_table = rt._bound  # the bound path's sets; None switches it off
    if bound_table is None:
        raise EdgeseqError(f"{folder}: the step session is not on the CPU provider alone, nothing to compare")
    streams = {m: {"token": np.zeros(1, np.int64), "state": rt.init_state(1), "y": None} for m in ("plain", "bound")}

    def run(mode: str, n: int) -> list[float]:
        rt._bound = bound_table if mode == "bound" else None
        return _timed(rt, streams[mode], n)

    for mode in ("plain", "bound"):
        run(mode, warmup)
    out = {"artifact": Path(folder).name, "recipe": artifact.manifest.get("recipe"), "threads": threads, "rounds": []}
    for r in range(rounds):
        order = ("plain", "bound") if r % 2 == 0 else ("bound", "plain")
        load_before = os.getloadavg()[0]
        times = {mode: run(mode, steps) for mode in order}
        p, b = streams["plain"], streams["bound"]
        same = bool(np.array_equal(p["y"], b["y"]) and all(np.array_equal(x, z) for x, z in zip(p["state"], b["state"])))
        med = {m: statistics.median(t) for m, t in times.items()}
        out["rounds"].append({"order": list(order), "plain_ms": times["plain"], "bound_ms": times["bound"],
                              "plain_median_ms": round(med["plain"], 4), "bound_median_ms": round(med["bound"], 4),
                              "ratio": round(med["bound"] / med["plain"], 4), "bitwise_equal": same,
                              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)})
    rows = out["rounds"]
    out["plain_median_ms"] = round(statistics.median(t for row in rows for t in row["plain_ms"]), 3)
    out["bound_median_ms"] = round(statistics.median(t for row in rows for t in row["bound_ms"]), 3)
    out["median_ratio"] = round(statistics.median(row["ratio"] for row in rows), 4)
    # then single steps alternately (paired): drift over a step is small, so the pairs' ratio is the finer figure
    load_before, ratios, plain, bound = os.getloadavg()[0], [], [], []
    for i in range(pairs):
        order = ("plain", "bound") if i % 2 == 0 else ("bound", "plain")
        t = {mode: run(mode, 1)[0] for mode in order}
        plain.append(t["plain"])
        bound.append(t["bound"])
        ratios.append(t["bound"] / t["plain"])
    p, b = streams["plain"], streams["bound"]
    out["bitwise_equal"] = all(row["bitwise_equal"] for row in rows) and bool(
        np.array_equal(p["y"], b["y"]) and all(np.array_equal(x, z) for x, z in zip(p["state"], b["state"])))
    out["paired"] = {"pairs": pairs, "plain_median_ms": round(statistics.median(plain), 3),
                     "bound_median_ms": round(statistics.median(bound), 3), "median_pair_ratio": round(statistics.median(ratios), 4),
                     "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", default=DEFAULT)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)
    import onnxruntime

    cpu = read_cpuinfo()
    result = {"benchmark": "iobinding_cpu", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpu": cpu["model"], "cores": cpu["cores"], "isa": cpu["features"], "python": platform.python_version(),
                          "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
              "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup, "pairs": args.pairs, "load_start": os.getloadavg(),
              "runs": []}
    print(f"{cpu['model']} ({cpu['cores']} cores; {' '.join(cpu['features'])}), onnxruntime {onnxruntime.__version__}, "
          f"load {os.getloadavg()[0]:.2f}; {args.rounds} rounds x {args.steps} steps per stream, then {args.pairs} paired steps")
    try:
        for folder in args.artifacts:
            for threads in args.threads:
                run = measure(folder, threads, args.rounds, args.steps, args.warmup, args.pairs)
                result["runs"].append(run)
                loads = [row[k] for row in run["rounds"] for k in ("load_before", "load_after")]
                ratios = " ".join(f"{row['ratio']:.3f}" for row in run["rounds"])
                paired = run["paired"]
                print(f"{run['artifact']:24s} {threads}t  plain {run['plain_median_ms']:6.2f} ms  bound {run['bound_median_ms']:6.2f} ms  "
                      f"ratio {run['median_ratio']:.3f}  rounds [{ratios}]  paired x{paired['pairs']} {paired['median_pair_ratio']:.3f}  "
                      f"bitwise {'yes' if run['bitwise_equal'] else 'NO'}  load {min(loads):.2f}-{max(loads):.2f}", flush=True)
    except EdgeseqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["load_end"] = os.getloadavg()
    text = json.dumps(result, indent=1)  # lists of numbers (the per-step times) on one line each
    text = re.sub(r"\[\s+([-0-9.,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    Path(args.out).write_text(text + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
