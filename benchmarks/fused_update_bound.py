"""How much of a Mamba decode step a fused state-update op could save on this CPU: an upper bound.

    python benchmarks/fused_update_bound.py /tmp/edgeseq-decode-cpu/edgeseq-w8a8-block-L24 --out F.json

An exported Mamba step graph runs each layer's selective-state update — softplus of ``dt``, the
decay ``exp(dt ⊗ A)``, the drive ``(dt·x) ⊗ B``, ``h ← a ⊙ h + b``, ``y = C·h + D·x`` — as about 36
small ONNX kernels (130m: ~860 of the step's ~1750 nodes). One fused kernel per layer would do
the same arithmetic in one pass over the ``[d_inner, d_state]`` state. Before building one (an
ONNX Runtime custom-op library shipped with the artifact), this measures what it could win at
most: a copy of the graph in which each layer's update is replaced by what a fused op can not
avoid — one ``Add`` that reads ``dt_proj``'s output and ``x`` (so that ``x_proj``, ``dt_proj`` and
the conv stay in the graph) and an ``Identity`` that writes the state — timed beside the real step,
interleaved round by round, through ONNX Runtime's Python binding with edgeseq's session settings.
The bound graph computes a different function; it is for timing only and is written to a
temporary folder, never into the artifact.

Prints per thread count the real step's and the bound's p50 (median over rounds) and the
difference; ``--out`` writes them as JSON with the machine and load. CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def arguments(description: str) -> argparse.ArgumentParser:
    """The options of this script."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("artifact", help="a Mamba artifact folder (edgeseq export, ONNX)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--tokens", type=int, default=40, help="steps per graph per round (the first 5 are warm-up)")
    p.add_argument("--out", default=None, help="write the figures here (JSON)")
    return p


def parse_args(argv=None):
    return arguments(__doc__.splitlines()[0]).parse_args(argv)


def update_sites(graph) -> list[dict[str, str]]:
    """Per layer, the tensors around the selective-state update of an exported Mamba step graph:
    ``dt`` (``dt_proj``'s output, bias added, before softplus), ``x``, ``A`` (−exp(A_log)), ``B``,
    ``C``, ``D``, ``state`` / ``new_state`` and ``y`` (``C·h + D·x``, before the gate)."""
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def source(name: str) -> str:  # through an Unsqueeze
        n = producer.get(name)
        return n.input[0] if n is not None and n.op_type == "Unsqueeze" else name

    sites = []
    for new_state in sorted((o.name for o in graph.output if o.name.startswith("new_ssm_")),
                            key=lambda name: int(name.rsplit("_", 1)[1])):
        layer = new_state.rsplit("_", 1)[1]
        update = producer[new_state]  # Add(Mul(exp(dt ⊗ A), h), (dt·x) ⊗ B)
        decayed, drive = (producer[t] for t in update.input)
        if decayed.op_type != "Mul":
            decayed, drive = drive, decayed
        decay = producer[next(t for t in decayed.input if t != f"ssm_{layer}")]  # Exp
        a_mul = producer[decay.input[0]]
        a = next(t for t in a_mul.input if producer.get(t) is not None and producer[t].op_type == "Neg")
        b = source(drive.input[1])
        matmul = next(n for n in consumers[new_state] if n.op_type == "MatMul")  # C·h
        c = source(matmul.input[1])
        squeeze = consumers[matmul.output[0]][0]
        y_add = next(n for n in consumers[squeeze.output[0]] if n.op_type == "Add")
        d_x = producer[next(t for t in y_add.input if t != squeeze.output[0])]
        x = next(t for t in d_x.input if not t.endswith(".D"))
        d = next(t for t in d_x.input if t.endswith(".D"))
        dt_x = next(n for n in consumers[x] if n.op_type == "Mul" and n is not d_x)
        softplus = producer[next(t for t in dt_x.input if t != x)]
        dt = next(t for t in softplus.input if producer.get(t) is not None and producer[t].op_type == "Add")
        sites.append({"layer": layer, "dt": dt, "x": x, "A": a, "B": b, "C": c, "D": d, "state": f"ssm_{layer}",
                      "new_state": new_state, "y": y_add.output[0]})
    return sites


def rewrite(step_path: Path, out_path: Path, replacement, domains: tuple[str, ...] = ()) -> tuple[int, int]:
    """Write the step graph with each layer's state update replaced by ``replacement(site)``'s nodes
    (which must produce ``y_<layer>`` and the site's ``new_state``; ops of ``domains`` get an opset
    import, version 1); nodes no output needs any more are dropped. Returns the node counts before
    and after."""
    import onnx
    from onnx import helper

    model = onnx.load(str(step_path), load_external_data=False)
    graph = model.graph
    sites = update_sites(graph)
    if not sites:
        raise SystemExit(f"fused_update_bound: {step_path} has no new_ssm_* outputs (not a Mamba step graph)")
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    added, rename = [], {}
    for site in sites:
        producer[site["new_state"]].output[0] = f"replaced_state_{site['layer']}"
        added.extend(replacement(site))
        rename[site["y"]] = f"y_{site['layer']}"
    for n in nodes:
        for k, t in enumerate(n.input):
            if t in rename:
                n.input[k] = rename[t]
    every = nodes + added
    producer = {o: n for n in every for o in n.output}
    live, stack = set(), [o.name for o in graph.output]
    while stack:  # what the outputs still need
        n = producer.get(stack.pop())
        if n is not None and id(n) not in live:
            live.add(id(n))
            stack.extend(t for t in n.input if t)
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], [n for n in every if id(n) in live]
    while pending:  # topological order
        waiting = []
        for n in pending:
            if all(t in ready for t in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                waiting.append(n)
        if len(waiting) == len(pending):
            raise SystemExit("fused_update_bound: the rewritten graph has a cycle")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
    known = {o.domain for o in model.opset_import}
    model.opset_import.extend(helper.make_opsetid(d, 1) for d in domains if d not in known)
    onnx.save(model, str(out_path))
    return len(nodes), len(ordered)


def bound_graph(step_path: Path, out_path: Path) -> tuple[int, int]:
    """The step graph with each layer's update replaced by one ``Add`` (``dt`` + ``x``: keeps
    ``x_proj``, ``dt_proj`` and the conv in the graph) and an ``Identity`` writing the state."""
    from onnx import helper

    def replacement(site):
        return [helper.make_node("Add", [site["dt"], site["x"]], [f"y_{site['layer']}"], name=f"bound_y_{site['layer']}"),
                helper.make_node("Identity", [site["state"]], [site["new_state"]], name=f"bound_state_{site['layer']}")]

    return rewrite(step_path, out_path, replacement)


def open_sessions(paths: dict[str, Path], threads: int, library: Path | None = None) -> dict:
    """ONNX Runtime sessions with edgeseq's settings (and a custom-op library, if given)."""
    import onnxruntime as ort

    from targets.runtimes import ORT_SESSION_CONFIG

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        for key, value in ORT_SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        if library is not None:
            options.register_custom_ops_library(str(library))
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sessions


def zero_feeds(session) -> dict:
    import numpy as np

    return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.int64 if "int64" in i.type else np.float32)
            for i in session.get_inputs()}


def time_sessions(sessions: dict, rounds: int, tokens: int) -> dict[str, list[float]]:
    """p50 ms per step of each session per round, interleaved; each decodes its own greedy stream."""
    import numpy as np

    p50 = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            names = [i.name for i in session.get_inputs()]
            feeds, times = zero_feeds(session), []
            for _ in range(tokens):
                t0 = time.perf_counter()
                out = session.run(None, feeds)
                times.append(time.perf_counter() - t0)
                feeds = dict(zip(names, [np.full(feeds[names[0]].shape, int(np.argmax(out[0])), np.int64), *out[1:]]))
            p50[name].append(statistics.median(times[5:]) * 1e3)
    return p50


def stage_step(folder: Path, work: Path) -> Path:
    """A copy of the artifact's step graph in ``work`` with its external weights beside it (hard
    links where possible: ONNX Runtime refuses a symlink that leads out of the model's folder)."""
    step = folder / "step.onnx"
    if not step.is_file():
        raise SystemExit(f"{Path(sys.argv[0]).stem}: {folder} has no step.onnx (export an ONNX artifact first)")
    for data in folder.iterdir():
        if data.suffix in (".bin", ".data"):
            try:
                os.link(data, work / data.name)
            except OSError:  # another file system
                shutil.copyfile(data, work / data.name)
    shutil.copyfile(step, work / "step.onnx")
    return work / "step.onnx"


def record(report: dict, threads: int, p50: dict[str, list[float]], other: str) -> tuple[float, float, float]:
    """Store one thread count's rounds; returns the step's and the other graph's median p50 and the
    median over rounds of each round's saving (the figure a drifting machine leaves comparable)."""
    real, faster = statistics.median(p50["step"]), statistics.median(p50[other])
    saved = statistics.median(1 - f / r for r, f in zip(p50["step"], p50[other]))
    report["threads"][str(threads)] = {"step_p50_ms": p50["step"], f"{other}_p50_ms": p50[other],
                                       "saved_fraction_median_of_rounds": saved, "step_median_ms": real,
                                       f"{other}_median_ms": faster}
    return real, faster, saved


def compare(report: dict, paths: dict[str, Path], args, saves: str, library: Path | None = None) -> None:
    """Time the step and the other graph (``paths``' second) at each ``--threads`` count; print and record."""
    other = [name for name in paths if name != "step"][0]
    for threads in [int(t) for t in args.threads.split(",") if t]:
        p50 = time_sessions(open_sessions(paths, threads, library), args.rounds, args.tokens)
        real, faster, saved = record(report, threads, p50, other)
        print(f"{threads} thread(s): step {real:.2f} ms, {other} {faster:.2f} ms: {saves} {real - faster:.2f} ms "
              f"({(real - faster) / real:.0%}; median of the rounds' own {saved:.0%}) [{args.rounds} rounds × {args.tokens} steps]")


def write_report(report: dict, out: str | None) -> None:
    report["load_after"] = os.getloadavg()
    try:
        from decode_cpu import machine_record

        report["machine"] = machine_record()
    except Exception:  # noqa: BLE001 — informative only
        pass
    if out:
        Path(out).write_text(json.dumps(report, indent=1) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = Path(args.artifact)
    report = {"artifact": str(folder), "threads": {}, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        step = stage_step(folder, Path(tmp))
        bound = Path(tmp) / "step_bound.onnx"
        before, after = bound_graph(step, bound)
        report["nodes"] = {"step": before, "bound": after}
        print(f"{folder.name}: step graph {before} nodes, with the state update replaced {after}")
        compare(report, {"step": step, "bound": bound}, args, saves="a fused update saves at most")
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
