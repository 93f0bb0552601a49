"""A fused Mamba state-update kernel as an ONNX Runtime custom op: a prototype, measured.

    python benchmarks/fused_update_op.py /tmp/edgeseq-decode-cpu/edgeseq-w8a8-block-L24 --out F.json

``benchmarks/fused_update_bound.py`` bounds what fusing each layer's selective-state update could
save of a decode step. This builds one: ``fused_update_op.c`` (the op ``SelectiveStateUpdate`` —
softplus of ``dt``, ``h ← exp(dt·A) ⊙ h + (dt·x) ⊗ B``, ``y = C·h + D·x`` in one pass over the state),
compiled here with the system C compiler for this CPU and registered through ONNX Runtime's C API
by function-table index (the wheel ships no headers; none are needed). A copy of the artifact's
step graph with each layer's ~36 update kernels replaced by that op is run beside the real one:

* **agreement**: over a 64-step stream, teacher-forced (each step both graphs get the real graph's
  state and next token), the largest one-step differences in logits and state are reported —
  the op's ``exp`` is its own polynomial, not ONNX Runtime's, so the figures are ulp-level drift,
  not equality; an artifact built this way would carry the op and be verified as any other;
* **speed**: p50 per step of both, interleaved round by round, per thread count.

A prototype for timing and agreement only: written to a temporary folder, never into the
artifact, and not part of edgeseq's export. CI does not run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fused_update_bound import arguments, compare, open_sessions, rewrite, stage_step, write_report, zero_feeds  # noqa: E402

SOURCE = HERE / "fused_update_op.c"
DOMAIN = "edgeseq.proto"


def parse_args(argv=None):
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--cc", default=os.environ.get("CC", "cc"), help="the C compiler that builds the op")
    return p.parse_args(argv)


def build(out: Path, cc: str) -> Path:
    library = out / "libedgeseq_fused_update.so"
    command = [cc, "-O3", "-march=native", "-fPIC", "-shared", "-o", str(library), str(SOURCE), "-lm"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"fused_update_op: {' '.join(command)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return library


def fused_graph(step: Path, out: Path) -> tuple[int, int]:
    from onnx import helper

    def replacement(site):
        return [helper.make_node("SelectiveStateUpdate", [site[k] for k in ("dt", "x", "A", "B", "C", "D", "state")],
                                 [f"y_{site['layer']}", site["new_state"]], name=f"fused_update_{site['layer']}",
                                 domain=DOMAIN)]

    return rewrite(step, out, replacement, domains=(DOMAIN,))


def agreement(pair: dict, tokens: int) -> dict:
    """Teacher-forced, as export verification is: each step both graphs get the real graph's state
    and token (chosen by the real graph), so the differences are one step's, not a stream's drift
    (over a random-weight model's stream an ulp grows into a different trajectory)."""
    import numpy as np

    real, fused = pair["step"], pair["fused"]
    names = [i.name for i in real.get_inputs()]
    feeds = zero_feeds(real)
    worst_logit, worst_state, same_argmax = 0.0, 0.0, 0
    for _ in range(tokens):
        out_r, out_f = real.run(None, feeds), fused.run(None, feeds)
        scale = float(np.abs(out_r[0]).max()) or 1.0
        worst_logit = max(worst_logit, float(np.abs(out_r[0] - out_f[0]).max()) / scale)
        worst_state = max(worst_state, max(float(np.abs(a - b).max()) / (float(np.abs(a).max()) or 1.0)
                                           for a, b in zip(out_r[1:], out_f[1:])))
        same_argmax += int(np.argmax(out_r[0]) == np.argmax(out_f[0]))
        token = np.full(feeds[names[0]].shape, int(np.argmax(out_r[0])), np.int64)
        feeds = dict(zip(names, [token, *out_r[1:]]))
    return {"steps": tokens, "teacher_forced": True, "max_logit_diff_over_max_logit": worst_logit,
            "max_state_diff_over_max_state": worst_state, "same_argmax_fraction": same_argmax / tokens}


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = Path(args.artifact)
    report: dict = {"artifact": str(folder), "threads": {}, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        step = stage_step(folder, work)
        library = build(work, args.cc)
        before, after = fused_graph(step, work / "step_fused.onnx")
        report["nodes"] = {"step": before, "fused": after}
        print(f"{folder.name}: step graph {before} nodes, with the fused update {after}")
        paths = {"step": step, "fused": work / "step_fused.onnx"}
        report["agreement"] = a = agreement(open_sessions(paths, 1, library), 64)
        print(f"agreement over {a['steps']} steps: logits within {a['max_logit_diff_over_max_logit']:.1e} of the largest, "
              f"state within {a['max_state_diff_over_max_state']:.1e}; same next token {a['same_argmax_fraction']:.0%}")
        compare(report, paths, args, saves="the fused op saves", library=library)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
