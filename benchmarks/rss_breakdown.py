"""Where an artifact's resident memory goes, stage by stage, on this CPU.

    python benchmarks/rss_breakdown.py /tmp/edgeseq-decode-cpu/edgeseq-w8a8-block-L24 [...] --out F.json

``benchmarks/decode_cpu.py`` reports one number per row, the peak RSS, beside the artifact's size
(the target is ≤ 1.5×). This script says what that number is made of, so that work on it starts
from a measurement. Each artifact folder runs in **its own process** through edgeseq's runtime
layer (``targets.runtimes``, the engine ``decode_cpu.py`` times: on a CPU with the C API, one
shared copy of the weights for the step and prefill sessions), and at each stage —

* ``imports``: numpy and the runtime layer imported, nothing opened;
* ``step session``: the artifact opened (its step session);
* ``prefill session``: the prefill session opened (a runtime opens it on the first prompt);
* ``prefill``: a ``--prompt``-token prompt run through it, twice;
* ``decode``: ``--steps`` decode steps after it;

it records ``VmRSS`` and ``VmHWM`` (the peak so far), the resident pages by mapping (anonymous
memory, the ``malloc`` heap, ``libonnxruntime``, the Python and numpy libraries, the weights'
file mapping, the rest) from ``/proc/self/smaps``, and glibc's own account (``mallinfo2``: bytes
in use, bytes freed but kept, bytes in ``mmap``-ed blocks). It also counts each graph's nodes and
measures what ONNX Runtime keeps per node of a session: a chain of ``--node-cost`` ``Add`` nodes,
opened through the Python binding in a process of its own (session memory grows with a graph's
node count; the unrolled prefill graph has a few thousand).

It prints one table per artifact and, with ``--out``, writes the JSON (``artifacts``: per folder
its ``stages`` and ``graph_nodes``; ``node_cost_kib``; ``machine``). CI does not run it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MIB = 2**20
# smaps mappings grouped by what holds them
GROUPS = (("weights file", re.compile(r"\.(bin|data)$")), ("libonnxruntime", re.compile(r"libonnxruntime")),
          ("python + numpy", re.compile(r"libpython|numpy|_multiarray|openblas|gfortran|quadmath|lib-dynload|site-packages")),
          ("heap", re.compile(r"^\[heap\]$")), ("anonymous", re.compile(r"^$")))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="*", help="artifact folders (edgeseq export)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens run through the prefill graph")
    p.add_argument("--steps", type=int, default=50, help="decode steps after the prompt")
    p.add_argument("--node-cost", type=int, default=2000, help="nodes of the chain graph that prices a node (0: skip)")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--node-worker", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _mapping_group(path: str) -> str:
    for name, pattern in GROUPS:
        if pattern.search(path):
            return name
    return "other files"


def snapshot() -> dict:
    """VmRSS/VmHWM, resident MiB by mapping group, and glibc malloc's in-use / kept-free / mmap bytes."""
    groups: dict[str, int] = {}
    current = ""
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split(maxsplit=5)
                current = _mapping_group(parts[5].strip() if len(parts) > 5 else "")
            elif line.startswith("Rss:"):
                groups[current] = groups.get(current, 0) + int(line.split()[1]) * 1024
    status = {k: int(v.split()[0]) * 1024 for k, v in
              (line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))}
    out = {"rss": status["VmRSS"], "hwm": status["VmHWM"], "mappings": groups}
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        out["malloc"] = {"in_use": info.uordblks + info.hblkhd, "free_kept": info.fordblks, "mmapped": info.hblkhd}
    except (OSError, AttributeError):  # not glibc (or older than 2.33)
        pass
    return out


def worker(folder: str, threads: int, prompt: int, steps: int) -> dict:
    import numpy as np

    from targets.manifest import read_manifest, verification_passed
    from targets.runtimes import open_artifact_runtime

    stages = [("imports", snapshot())]
    rt = open_artifact_runtime(folder, threads=threads, require_verified=verification_passed(read_manifest(folder)))
    state = rt.init_state(1)
    stages.append(("step session", snapshot()))
    if not rt.io.vocab_size:
        raise SystemExit(f"{folder}: not a token model (this breakdown feeds token ids)")
    vocab = int(rt.io.vocab_size)
    ids = np.random.default_rng(0).integers(0, vocab, size=(1, prompt), dtype=np.int64)
    if rt.has_prefill:
        _ = rt.prefill_session
        stages.append(("prefill session", snapshot()))
        for _ in range(2):
            _, state = rt.prefill(ids)
        stages.append(("prefill", snapshot()))
    token = ids[:, -1]
    for _ in range(steps):
        y, state = rt.step(token, state)
        token = np.argmax(y, axis=-1).astype(np.int64)
    stages.append(("decode", snapshot()))
    return {"stages": [{"stage": name, **snap} for name, snap in stages], "binding": getattr(rt, "binding", None)}


def node_worker(count: int) -> dict:
    """Bytes ONNX Runtime keeps per node: a session over a chain of ``count`` Add nodes, and its first run."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes, previous = [], "x"
    for i in range(count):
        nodes.append(helper.make_node("Add", [previous, "one"], [f"y{i}"]))
        previous = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1536])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 1536])],
                              initializer=[helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # what ONNX Runtime 1.30 and later accept
    data = model.SerializeToString()
    del model, graph, nodes
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the count: no folding
    before = snapshot()["malloc"]["in_use"]
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    opened = snapshot()["malloc"]["in_use"]
    session.run(None, {"x": np.zeros((1, 1536), np.float32)})
    ran = snapshot()["malloc"]["in_use"]
    return {"nodes": count, "session_kib_per_node": (opened - before) / 1024 / count,
            "first_run_kib_per_node": (ran - opened) / 1024 / count}


def _run_worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"rss_breakdown: worker {' '.join(args)} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def graph_nodes(folder: Path) -> dict[str, int]:
    import onnx

    return {p.stem: len(onnx.load(str(p), load_external_data=False).graph.node) for p in sorted(folder.glob("*.onnx"))}


def print_report(name: str, record: dict) -> None:
    size = record["artifact_bytes"]
    print(f"\n{name}: artifact {size / MIB:.0f} MiB (1.5× = {1.5 * size / MIB:.0f} MiB), nodes {record['graph_nodes']}, "
          f"binding {record['binding']}")
    groups = [g for g, _ in GROUPS] + ["other files"]
    print("| stage | RSS MiB | peak so far | × artifact | " + " | ".join(groups) + " | malloc in use | malloc kept free |")
    print("|---|---|---|---|" + "---|" * len(groups) + "---|---|")
    for s in record["stages"]:
        m = s.get("malloc", {})
        print(f"| {s['stage']} | {s['rss'] / MIB:.0f} | {s['hwm'] / MIB:.0f} | {s['hwm'] / size:.2f} | "
              + " | ".join(f"{s['mappings'].get(g, 0) / MIB:.0f}" for g in groups)
              + f" | {m.get('in_use', 0) / MIB:.0f} | {m.get('free_kept', 0) / MIB:.0f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.prompt, args.steps)))
        return 0
    if args.node_worker:
        print(json.dumps(node_worker(args.node_worker)))
        return 0
    folders = [Path(a) for a in args.artifacts]
    for folder in folders:
        if not (folder / "manifest.json").is_file():
            raise SystemExit(f"rss_breakdown: {folder} is not an edgeseq artifact folder (no manifest.json)")
    from decode_cpu import artifact_bytes, machine_record  # the size decode_cpu.py divides the peak by

    report: dict = {"machine": machine_record(), "threads": args.threads, "prompt": args.prompt, "steps": args.steps,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load": os.getloadavg(), "artifacts": {}}
    for folder in folders:
        record = _run_worker(["--worker", str(folder), "--threads", str(args.threads), "--prompt", str(args.prompt),
                              "--steps", str(args.steps)])
        record.update(artifact_bytes=artifact_bytes(folder), graph_nodes=graph_nodes(folder))
        report["artifacts"][str(folder)] = record
        print_report(folder.name, record)
    if args.node_cost:
        report["node_cost_kib"] = _run_worker(["--node-worker", str(args.node_cost)])
        c = report["node_cost_kib"]
        print(f"\nONNX Runtime per node ({c['nodes']}-node Add chain): {c['session_kib_per_node']:.2f} KiB held by "
              f"the session, {c['first_run_kib_per_node']:.2f} KiB more after its first run")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
