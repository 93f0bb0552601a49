"""Run an ONNX artifact's step graph through this machine's ONNX Runtime and hold it to verification's rule.

Standalone: needs only numpy and onnxruntime; no torch, no edgeseq. Written for
``scripts/aarch64_qemu_run.sh`` (an x86-64 export run by the aarch64 ONNX Runtime wheel under
qemu-user, whose MLAS kernels — NEON, sdot, i8mm — are another code path than the x86 ones that
verified the artifact), and runs the same on an aarch64 board or on the export host.

    python aarch64_onnx_run.py ARTIFACT_DIR [STREAM.npz] [--steps N] [--threads N] [--json]
                               [--save OUT.npz] [--compare OTHER.npz]

It opens ``graphs.step.file`` with the session settings of ``targets.runtimes.ort_session`` (the
settings verification ran with; ``ORT_SESSION_CONFIG`` below must equal that module's, a test
checks it) and runs two checks:

* **shipped**: the artifact's own ``reference.npz`` (teacher-forced steps from the recorded PyTorch
  states) under ``manifest["reference"]``'s exactness rule — the on-device proof of
  ``targets.selfcheck``;
* **stream** (with STREAM.npz from ``scripts/aarch64_reference.py``, written on the host with
  PyTorch): every step teacher-forced from the reference's state (``init_<s>``, then
  ``state_<s>[t-1]``) and compared per sample-step with the reference's outputs and new state under
  export verification's rule derived on that stream (``rule_*``: exact tolerance from the float64
  reference's noise, allowed inexact fraction, sanity bound); then free-running (the artifact
  carries its own state) with max absolute/relative output and state errors, held to
  ``rule_drift_bound``; top-1 agreement for language models in both;
* **prefill** (when the stream holds a prefill chunk and the artifact a prefill graph): every
  (sample, position) output of one chunk from the initial state against PyTorch's prefill, under
  the stream's ``rule_prefill_*``.

Exit 0 when every check passes, 1 otherwise. ``--save`` writes the teacher-forced outputs and
states; ``--compare`` reports how far they are from another run's ``--save`` file (for example the
x86-64 host's ONNX Runtime on the same stream: 0.0 means this CPU computes bit-identical results).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np

# = targets.runtimes.ORT_SESSION_CONFIG (a test checks it): float activations where ONNX Runtime fuses
# QDQ into MatMulNBits; MLAS's own block kernels instead of KleidiAI's per-row ones on aarch64
ORT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "1", "mlas.disable_kleidiai": "1"}
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "int8": np.int8,
          "uint8": np.uint8}

# Linux arm64 hwcaps that select MLAS kernels (arch/arm64/include/uapi/asm/hwcap.h)
HWCAP = {"asimd": 1, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22, "asimdfhm": 23}
HWCAP2 = {"sve2": 1, "svei8mm": 9, "i8mm": 13, "bf16": 14, "sme": 23}
AT_HWCAP, AT_HWCAP2 = 16, 26


def cpu_features() -> dict:
    """The machine and, on Linux aarch64, the hwcaps ONNX Runtime's CPU detection reads (getauxval)."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    info = {"machine": machine}
    if machine == "aarch64" and sys.platform == "linux":
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        hw, hw2 = libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2)
        info["hwcaps"] = sorted([n for n, b in HWCAP.items() if hw >> b & 1] + [n for n, b in HWCAP2.items() if hw2 >> b & 1])
    return info


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_session(path: str, threads: int | None, extra_config: dict | None = None, mem_pattern: bool = True):
    """``targets.runtimes.ort_session`` without edgeseq: the settings verification ran with
    (``extra_config``: further session config entries, for diagnosis only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = mem_pattern
    for key, value in {**ORT_SESSION_CONFIG, **(extra_config or {})}.items():
        options.add_session_config_entry(key, value)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # as targets.runtimes.disabled_optimizers: graphs with static int8 activations without MatMulAddFusion
    with open(path, "rb") as f:
        graph = f.read()
    disabled = ["MatMulAddFusion"] if b"QuantizeLinear" in graph else []
    if b"edgeseq.ops" in graph:  # as targets.ort_capi.custom_ops_library: the fused kernels built for this CPU
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
        library = os.path.join(os.path.dirname(path), f"edgeseq_ops-{arch}.so")
        if not os.path.isfile(library):
            sys.exit(f"{path}: the graph runs edgeseq's fused kernels and the artifact has no {os.path.basename(library)}")
        options.register_custom_ops_library(library)
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    except Exception as exc:
        if "output_dtype" not in str(exc):
            sys.exit(f"{path}: ONNX Runtime cannot load this graph ({str(exc).strip().splitlines()[0][:300]})")
        # as ort_session: onnxruntime 1.2x-1.3x's QDQ propagation breaks on opset-21 graphs
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=disabled + ["QDQPropagationTransformer"])


def per_sample(ref, got) -> np.ndarray:
    """``[B]``: per sample, max |Δ| ÷ the tensor's peak |ref| (``targets.selfcheck.per_sample_errors``)."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        sys.exit(f"the artifact returned shape {got.shape}, the reference holds {ref.shape}")
    peak = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12)
    diff = np.abs(ref - got)
    return diff.reshape(diff.shape[0], -1).max(axis=1) / peak if diff.size else np.zeros(ref.shape[:1])


def step_errors(ref_y, ref_state, y, state) -> np.ndarray:
    """``[B]`` errors of one step, output and every new state tensor (``targets.selfcheck.step_errors``)."""
    errors = per_sample(ref_y, y)
    for ref, got in zip(ref_state, state):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.ndim and ref.shape[0] == errors.shape[0]:
            errors = np.maximum(errors, per_sample(ref, got))
        else:
            errors = np.maximum(errors, float(per_sample(ref.reshape(1, -1), got.reshape(1, -1))[0]))
    return errors


class Step:
    """``(x_t, [state]) -> (y_t, [new state])`` through the session, inputs in the manifest's dtypes."""

    def __init__(self, session, spec: dict):
        self.session = session
        self.names = [t["name"] for t in spec["inputs"]]
        self.dtypes = [DTYPES[t["dtype"]] for t in spec["inputs"]]
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, x, state):
        feeds = {n: np.ascontiguousarray(a, dtype=d) for n, a, d in zip(self.names, [x, *state], self.dtypes)}
        t0 = time.perf_counter()
        out = self.session.run(None, feeds)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        if not all(np.isfinite(np.asarray(o, np.float64)).all() for o in out):
            sys.exit(f"step {self.calls - 1}: the artifact produced NaN or Inf")
        return out[0], out[1:]


def shipped_check(folder: str, manifest: dict, step: Step) -> dict:
    """The artifact's ``reference.npz`` under ``manifest["reference"]`` (``targets.selfcheck.compare_reference``)."""
    entry = manifest.get("reference")
    if not isinstance(entry, dict):
        return {"passed": None, "detail": "this artifact ships no reference stream"}
    with np.load(os.path.join(folder, entry.get("file", "reference.npz")), allow_pickle=False) as data:
        ref = {name: data[name] for name in data.files}
    names = list(entry.get("state", []))
    errors = []
    for t in range(int(entry["steps"])):
        y, new = step(ref["x"][t], [ref[f"state.{n}"][t] for n in names])
        errors.append(step_errors(ref["y"][t], [ref[f"state.{n}"][t + 1] for n in names], y, new))
    errors = np.concatenate(errors)
    inexact = float((errors > entry["exact_tolerance"]).mean())
    passed = inexact <= entry["allowed_inexact_fraction"] and float(errors.max()) <= entry["sanity_bound"]
    return {"passed": bool(passed), "sample_steps": int(errors.size), "inexact_fraction": inexact,
            "allowed_inexact_fraction": entry["allowed_inexact_fraction"], "exact_tolerance": entry["exact_tolerance"],
            "max_rel_error": float(errors.max()), "sanity_bound": entry["sanity_bound"]}


def stream_rule(stream: dict, manifest: dict) -> dict:
    """The stream's own ``rule_*`` (aarch64_reference.py), else the manifest's verification figures."""
    if "rule_exact_tolerance" in stream:
        return {k[5:]: float(stream[k]) for k in stream if k.startswith("rule_")} | {"source": "stream"}
    v = manifest.get("verification") or {}
    return {"exact_tolerance": float(v["exact_tolerance"]), "allowed_inexact_fraction": float(v["allowed_inexact_fraction"]),
            "sanity_bound": float(v["tolerance"]), "drift_bound": float(v.get("drift_tolerance") or v["tolerance"]),
            "source": "manifest verification"}


def stream_check(stream: dict, manifest: dict, step: Step, steps: int, lm: bool) -> tuple[dict, dict]:
    """Teacher-forced then free-running steps over a host reference stream; the report and the saved arrays."""
    names = step.names[1:]
    inputs, outputs = stream["inputs"], stream["outputs"]
    init = [stream[f"init_{n}"] for n in names]
    rule = stream_rule(stream, manifest)

    errors, tf_agree, saved = [], [], {"y": [], **{f"state.{n}": [] for n in names}}
    for t in range(steps):
        before = init if t == 0 else [stream[f"state_{n}"][t - 1] for n in names]
        y, new = step(inputs[:, t], before)
        errors.append(step_errors(outputs[:, t], [stream[f"state_{n}"][t] for n in names], y, new))
        if lm:
            tf_agree.append(np.argmax(y, -1) == np.argmax(outputs[:, t], -1))
        saved["y"].append(np.asarray(y))
        for n, value in zip(names, new):
            saved[f"state.{n}"].append(np.asarray(value))
    errors = np.concatenate(errors)
    inexact = float((errors > rule["exact_tolerance"]).mean())

    state = [np.asarray(a) for a in init]
    out_err = out_peak = state_err = state_peak = 0.0
    free_agree = []
    for t in range(steps):
        y, state = step(inputs[:, t], state)
        ref = outputs[:, t].astype(np.float64)
        out_err = max(out_err, float(np.abs(np.asarray(y, np.float64) - ref).max()))
        out_peak = max(out_peak, float(np.abs(ref).max()))
        if lm:
            free_agree.append(np.argmax(y, -1) == np.argmax(ref, -1))
        for n, value in zip(names, state):
            r = stream[f"state_{n}"][t].astype(np.float64)
            state_err = max(state_err, float(np.abs(np.asarray(value, np.float64) - r).max()))
            state_peak = max(state_peak, float(np.abs(r).max()))
    rel, state_rel = out_err / max(out_peak, 1e-12), state_err / max(state_peak, 1e-12)
    passed = (inexact <= rule["allowed_inexact_fraction"] and float(errors.max()) <= rule["sanity_bound"]
              and max(rel, state_rel) <= rule["drift_bound"])
    report = {
        "passed": bool(passed), "steps": steps, "batch": int(inputs.shape[0]), "rule": rule,
        "teacher_forced": {"sample_steps": int(errors.size), "inexact_fraction": inexact, "max_rel_error": float(errors.max()),
                           "top1_agreement": float(np.mean(tf_agree)) if lm else None},
        "free_running": {"max_abs_error": out_err, "max_rel_error": rel, "max_abs_state_error": state_err,
                         "max_rel_state_error": state_rel, "top1_agreement": float(np.mean(free_agree)) if lm else None},
    }
    return report, {k: np.stack(v) for k, v in saved.items()}


def prefill_check(stream: dict, session, spec: dict, names: list) -> dict:
    """One prefill chunk from the initial state, every (sample, position) against PyTorch's prefill
    under the stream's ``rule_prefill_*`` (export verification's prefill rule)."""
    inputs = [t["name"] for t in spec["inputs"]]
    dtypes = [DTYPES[t["dtype"]] for t in spec["inputs"]]
    arrays = [stream["prefill_inputs"]] + [stream[f"init_{n}"] for n in names]
    feeds = {n: np.ascontiguousarray(a, dtype=d) for n, a, d in zip(inputs, arrays, dtypes)}
    y = np.asarray(session.run(None, feeds)[0], np.float64)  # without logits_from: every position
    ref = stream["prefill_outputs"].astype(np.float64)
    if y.shape != ref.shape:
        sys.exit(f"prefill: the artifact returned shape {y.shape}, the reference holds {ref.shape}")
    peak = max(float(np.abs(ref).max()), 1e-12)
    errors = (np.abs(y - ref).reshape(ref.shape[0], ref.shape[1], -1).max(-1) / peak).reshape(-1)
    tolerance = float(stream["rule_prefill_exact_tolerance"])
    inexact = float((errors > tolerance).mean())
    allowed, bound = float(stream["rule_prefill_allowed_inexact_fraction"]), float(stream["rule_prefill_bound"])
    top1 = float((y.argmax(-1) == ref.argmax(-1)).mean()) if y.ndim == 3 else None
    return {"passed": bool(inexact <= allowed and float(errors.max()) <= bound), "positions": int(errors.size),
            "inexact_fraction": inexact, "allowed_inexact_fraction": allowed, "exact_tolerance": tolerance,
            "max_rel_error": float(errors.max()), "bound": bound, "top1_agreement": top1}


def compare_saved(saved: dict, other_path: str) -> dict:
    """Max |Δ| of this run's teacher-forced outputs/states against another run's ``--save`` file."""
    with np.load(other_path, allow_pickle=False) as data:
        other = {k: data[k] for k in data.files}
    if any(k not in other or other[k].shape != v.shape for k, v in saved.items()):
        return {"against": other_path, "error": "another stream or --steps (arrays missing or of another shape)"}
    y, y_other = saved["y"].astype(np.float64), other["y"].astype(np.float64)
    state_diff = max((float(np.abs(v.astype(np.float64) - other[k].astype(np.float64)).max()) for k, v in saved.items()
                      if k != "y"), default=0.0)
    return {"against": other_path, "bit_identical": all(np.array_equal(v, other[k]) for k, v in saved.items()),
            "y_max_abs_diff": float(np.abs(y - y_other).max()),
            "y_max_rel_diff": float(np.abs(y - y_other).max()) / max(float(np.abs(y_other).max()), 1e-12),
            "y_elements_differing": float((y != y_other).mean()), "state_max_abs_diff": state_diff}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("stream", nargs="?", default=None, help="a host reference stream from aarch64_reference.py")
    parser.add_argument("--steps", type=int, default=None, help="stream steps to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", metavar="OUT.npz", default=None, help="write the teacher-forced outputs and states")
    parser.add_argument("--compare", metavar="OTHER.npz", default=None, help="another run's --save file to diff against")
    parser.add_argument("--no-verify-files", action="store_true", help="skip the sha256 check of the artifact's files")
    parser.add_argument("--no-prefill", action="store_true", help="skip the stream's prefill chunk")
    parser.add_argument("--session-config", metavar="KEY=VALUE", action="append", default=[],
                        help="another ONNX Runtime session config entry (diagnosis: e.g. mlas.disable_kleidiai=1); "
                             "not what verification ran, so the run is labelled with it")
    args = parser.parse_args()
    extra_config = {}
    for item in args.session_config:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"--session-config {item!r}: expected KEY=VALUE")
        extra_config[key] = value

    t_start = time.perf_counter()
    try:
        with open(os.path.join(args.artifact, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        sys.exit(f"{args.artifact}: no readable manifest.json ({exc})")
    if manifest.get("format") != "onnx":
        sys.exit(f"{args.artifact}: a {manifest.get('format')} artifact; this runner runs ONNX artifacts")
    if not args.no_verify_files:
        for entry in manifest["files"]:
            path = os.path.join(args.artifact, entry["path"])
            if os.path.getsize(path) != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                sys.exit(f"{path}: contents differ from manifest.json (sha256)")
    spec = manifest["graphs"]["step"]
    lm = manifest.get("model", {}).get("task") == "lm"

    import onnxruntime as ort

    t_load = time.perf_counter()
    session = open_session(os.path.join(args.artifact, spec["file"]), args.threads, extra_config)
    load_s = time.perf_counter() - t_load
    step = Step(session, spec)
    report = {"artifact": args.artifact, "recipe": manifest.get("recipe"), **cpu_features(),
              "onnxruntime": ort.__version__, "built_with": (manifest.get("versions") or {}).get("onnxruntime"),
              "numpy": np.__version__, "session_config": {**ORT_SESSION_CONFIG, **extra_config},
              "load_s": round(load_s, 3)}
    report["shipped"] = shipped_check(args.artifact, manifest, step)
    passed = report["shipped"]["passed"] is not False
    if args.stream:
        with np.load(args.stream, allow_pickle=False) as data:
            stream = {name: data[name] for name in data.files}
        total = stream["inputs"].shape[1]
        steps = total if args.steps is None else max(1, min(args.steps, total))
        report["stream"], saved = stream_check(stream, manifest, step, steps, lm)
        passed = passed and report["stream"]["passed"]
        prefill_spec = manifest["graphs"].get("prefill")
        if "prefill_inputs" in stream and prefill_spec and not args.no_prefill:
            # as OnnxRuntime.prefill_session: its own session, without the memory-pattern planner
            prefill = open_session(os.path.join(args.artifact, prefill_spec["file"]), args.threads, extra_config, mem_pattern=False)
            report["prefill"] = prefill_check(stream, prefill, prefill_spec, step.names[1:])
            passed = passed and report["prefill"]["passed"]
        if args.save:
            np.savez(args.save, **saved)
        if args.compare:
            report["compare"] = compare_saved(saved, args.compare)
    report["step_ms_mean"] = round(1e3 * step.seconds / max(step.calls, 1), 2)
    report["total_s"] = round(time.perf_counter() - t_start, 2)
    report["passed"] = bool(passed)
    if args.json:
        print(json.dumps(report))
        return 0 if passed else 1
    print(f"{report['recipe']} on {report['machine']} {' '.join(report.get('hwcaps', []))} "
          f"(onnxruntime {report['onnxruntime']}, built with {report['built_with']})"
          + (f", extra session config {extra_config}" if extra_config else ""))
    s = report["shipped"]
    if s["passed"] is not None:
        print(f"  shipped reference: {s['inexact_fraction']:.1%} of {s['sample_steps']} sample-steps beyond "
              f"{s['exact_tolerance']:.2g} (allowed {s['allowed_inexact_fraction']:.1%}), max rel error "
              f"{s['max_rel_error']:.3e}: {'PASS' if s['passed'] else 'FAIL'}")
    if args.stream:
        r, tf, fr = report["stream"]["rule"], report["stream"]["teacher_forced"], report["stream"]["free_running"]
        top1 = lambda v: f", top-1 {v:.3f}" if v is not None else ""  # noqa: E731
        print(f"  stream, {report['stream']['steps']} steps x batch {report['stream']['batch']} (rule from {r['source']}):")
        print(f"    teacher-forced: {tf['inexact_fraction']:.1%} of {tf['sample_steps']} sample-steps beyond "
              f"{r['exact_tolerance']:.2g} (allowed {r['allowed_inexact_fraction']:.1%}), max rel error "
              f"{tf['max_rel_error']:.3e}{top1(tf['top1_agreement'])}")
        print(f"    free-running:   outputs max abs {fr['max_abs_error']:.3e} / rel {fr['max_rel_error']:.3e}, state max abs "
              f"{fr['max_abs_state_error']:.3e} / rel {fr['max_rel_state_error']:.3e} (bound {r['drift_bound']:.3g})"
              f"{top1(fr['top1_agreement'])}")
        print(f"    {'PASS' if report['stream']['passed'] else 'FAIL'}")
        if "prefill" in report:
            p = report["prefill"]
            print(f"  prefill, {p['positions']} (sample, position) outputs: {p['inexact_fraction']:.1%} beyond "
                  f"{p['exact_tolerance']:.2g} (allowed {p['allowed_inexact_fraction']:.1%}), max rel error "
                  f"{p['max_rel_error']:.3e} (bound {p['bound']:.3g})"
                  + (f", top-1 {p['top1_agreement']:.3f}" if p["top1_agreement"] is not None else "")
                  + f": {'PASS' if p['passed'] else 'FAIL'}")
        if "compare" in report:
            c = report["compare"]
            print(f"  vs {c['against']}: " + (c["error"] if "error" in c else
                  f"{'bit-identical' if c['bit_identical'] else 'differs'}: outputs max abs {c['y_max_abs_diff']:.3e} "
                  f"(rel {c['y_max_rel_diff']:.3e}, {c['y_elements_differing']:.1%} of elements), state max abs "
                  f"{c['state_max_abs_diff']:.3e}"))
    print(f"  load {load_s:.2f} s, step mean {report['step_ms_mean']} ms, total {report['total_s']:.1f} s: "
          f"{'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
