"""Run a TVM CPU artifact's step graph over a reference stream and compare it with PyTorch.

Standalone: needs only numpy, ``tvm_ffi`` (apache-tvm-ffi) and ``libtvm_runtime.so`` (from the
apache-tvm wheel of the same version that built the artifact); no torch, no edgeseq, no TVM
compiler. Written for ``scripts/aarch64_qemu_run.sh`` (aarch64 artifacts under qemu-user), and
works the same on an aarch64 board or, for an x86-64 ``--target cpu`` artifact, on this machine.

    python aarch64_artifact_run.py ARTIFACT_DIR REFERENCE.npz [--steps N] [--tvm-lib-dir DIR] [--json]
    python aarch64_artifact_run.py ARTIFACT_DIR            # the artifact's own reference stream

Without REFERENCE.npz it runs the stream every artifact ships (``reference.npz``, teacher-forced
from the recorded states) under the exactness rule of ``manifest["reference"]`` — the same
on-device proof as ``targets.selfcheck`` — and exits 1 when this device computes another function.

It mirrors ``targets.runtimes.open_artifact``: reads ``manifest.json``, checks every file's sha256,
loads ``graphs.step.file`` into the Relax VM (``vm_load_executable`` → ``vm_initialization`` on
the CPU with the pooled allocator → ``main``), and calls ``main(x_t, *state)`` whose outputs are
``(y_t, *new_state)`` with the state in ``graphs.step.inputs[1:]`` order. The state is carried
from step to step from the reference's ``init_<name>`` arrays.

REFERENCE.npz (``scripts/aarch64_reference.py``): ``inputs`` [B, T] or [B, T, F], ``outputs``
[B, T, ...] (PyTorch step outputs), ``init_<state>`` and, optionally, ``state_<name>`` [T, B, ...]
(PyTorch state after every step). Errors are reported as verification reports them: max absolute
error, and max absolute error relative to the largest reference magnitude, for outputs and state.
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

DLPACK_CPU = 1  # kDLCPU
POOLED_ALLOCATOR = 2  # tvm.relax.VirtualMachine.POOLED_ALLOCATOR
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def aligned(array: np.ndarray, dtype, alignment: int = 64) -> np.ndarray:
    """A C-contiguous copy whose data starts on an ``alignment``-byte boundary.

    TVM's generated kernels assume 64-byte aligned buffers (its allocator's alignment); numpy only
    guarantees 16, and on x86-64 an aligned vector load of a misaligned input crashes.
    """
    array = np.asarray(array, dtype=dtype)
    raw = np.empty(array.nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start : start + array.nbytes].view(dtype).reshape(array.shape)
    out[...] = array
    return out


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_runtime(lib_dir: str | None) -> str:
    """``libtvm_runtime.so``: in ``lib_dir``, ``$TVM_LIBRARY_PATH``, or a ``tvm/lib`` on sys.path."""
    candidates = [d for d in (lib_dir, os.environ.get("TVM_LIBRARY_PATH")) if d]
    candidates += [os.path.join(p, "tvm", "lib") for p in sys.path if p]
    for folder in candidates:
        path = os.path.join(folder, "libtvm_runtime.so")
        if os.path.isfile(path):
            return path
    sys.exit("libtvm_runtime.so not found: pass --tvm-lib-dir (the tvm/lib folder of an apache-tvm wheel)")


def tvm_runtime_version() -> str | None:
    """The apache-tvm version whose dist-info sits on sys.path (None when there is none)."""
    from importlib import metadata

    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        return None


def load_step(artifact: str, manifest: dict, runtime_lib: str):
    """The step graph's VM ``main`` function (TVM runtime only, as ``relax.VirtualMachine`` sets it up)."""
    import tvm_ffi  # loads libtvm_ffi.so; libtvm_runtime.so resolves its symbols against it

    ctypes.CDLL(runtime_lib, mode=ctypes.RTLD_GLOBAL)  # registers the Relax VM's global functions
    library = tvm_ffi.load_module(os.path.join(artifact, manifest["graphs"]["step"]["file"]))
    vm = library["vm_load_executable"]()
    vm["vm_initialization"](DLPACK_CPU, 0, POOLED_ALLOCATOR)
    return tvm_ffi, vm["main"]


def shipped_reference_check(args, manifest: dict, names: list, dtypes: list) -> int:
    """Teacher-forced steps of the shipped ``reference.npz`` under the manifest's exactness rule."""
    entry = manifest.get("reference")
    if not isinstance(entry, dict):
        sys.exit(f"{args.artifact}: this artifact ships no reference stream; pass REFERENCE.npz")
    tvm_ffi, step = load_step(args.artifact, manifest, find_runtime(args.tvm_lib_dir))
    with np.load(os.path.join(args.artifact, entry["file"]), allow_pickle=False) as data:
        ref = {name: data[name] for name in data.files}

    def per_sample(r, g):
        r, g = r.astype(np.float64), g.astype(np.float64)
        peak = max(float(np.abs(r).max()) if r.size else 0.0, 1e-12)
        return np.abs(r - g).reshape(r.shape[0], -1).max(axis=1) / peak

    errors = []
    for t in range(int(entry["steps"])):
        args_t = [aligned(ref["x"][t], dtypes[0])] + [aligned(ref[f"state.{n}"][t], d) for n, d in zip(names[1:], dtypes[1:])]
        got = [np.from_dlpack(o) for o in step(*[tvm_ffi.from_dlpack(a, require_alignment=64, require_contiguous=True) for a in args_t])]
        e = per_sample(ref["y"][t], got[0])
        for n, value in zip(names[1:], got[1:]):
            e = np.maximum(e, per_sample(ref[f"state.{n}"][t + 1], value))
        errors.append(e)
    errors = np.concatenate(errors)
    inexact = float((errors > entry["exact_tolerance"]).mean())
    passed = inexact <= entry["allowed_inexact_fraction"] and float(errors.max()) <= entry["sanity_bound"]
    report = {"artifact": args.artifact, "reference": "shipped", "sample_steps": int(errors.size), "inexact_fraction": inexact,
              "allowed_inexact_fraction": entry["allowed_inexact_fraction"], "max_rel_error": float(errors.max()),
              "passed": bool(passed)}
    print(json.dumps(report) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0 if passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("reference", nargs="?", default=None,
                        help="a stream from aarch64_reference.py (default: the artifact's shipped reference.npz)")
    parser.add_argument("--steps", type=int, default=None, help="steps to run (default: all in the reference)")
    parser.add_argument("--tvm-lib-dir", default=None, help="folder holding libtvm_runtime.so")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", metavar="OUT.npz", default=None, help="also write the artifact's step outputs [B, T, ...]")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max relative error allowed (default: the manifest's verification tolerance, else 1e-4)")
    parser.add_argument("--no-verify-files", action="store_true", help="skip the sha256 check of the artifact's files")
    args = parser.parse_args()

    t_start = time.perf_counter()
    with open(os.path.join(args.artifact, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("format") != "tvm":
        sys.exit(f"{args.artifact}: a {manifest.get('format')} artifact; this runner runs TVM artifacts")
    target = manifest.get("target", {})
    if target.get("cuda_arch"):
        sys.exit(f"{args.artifact}: built for {target.get('name')} with CUDA kernels; this runner runs CPU builds")
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    if target.get("arch") and target["arch"] != machine:
        sys.exit(f"{args.artifact}: built for {target['arch']}, this process runs on {machine}")
    if not args.no_verify_files:
        for entry in manifest["files"]:
            path = os.path.join(args.artifact, entry["path"])
            if os.path.getsize(path) != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                sys.exit(f"{path}: contents differ from manifest.json (sha256)")

    spec = manifest["graphs"]["step"]
    names = [t["name"] for t in spec["inputs"]]
    dtypes = [DTYPES[t["dtype"]] for t in spec["inputs"]]
    if args.reference is None:
        return shipped_reference_check(args, manifest, names, dtypes)
    with np.load(args.reference, allow_pickle=False) as data:
        reference = {name: data[name] for name in data.files}  # an NpzFile re-reads on every access
    inputs, outputs = reference["inputs"], reference["outputs"]
    total = inputs.shape[1]
    steps = total if args.steps is None else min(args.steps, total)
    init = [aligned(reference[f"init_{n}"], d) for n, d in zip(names[1:], dtypes[1:])]
    has_states = all(f"state_{n}" in reference for n in names[1:])

    built_with = (manifest.get("versions") or {}).get("tvm")
    runtime_version = tvm_runtime_version()
    if built_with and runtime_version and built_with != runtime_version:
        print(f"warning: the artifact was built with TVM {built_with}, the runtime here is {runtime_version}", file=sys.stderr)

    t_load = time.perf_counter()
    tvm_ffi, step = load_step(args.artifact, manifest, find_runtime(args.tvm_lib_dir))
    load_s = time.perf_counter() - t_load

    out_err = out_peak = state_err = state_peak = 0.0
    agree = 0
    lm = manifest.get("model", {}).get("task") == "lm"
    step_times, ys = [], []
    # the state stays in the tensors the VM returned (TVM-allocated) from step to step
    state_dev = [tvm_ffi.from_dlpack(a, require_alignment=64, require_contiguous=True) for a in init]
    for t in range(steps):
        x = tvm_ffi.from_dlpack(aligned(inputs[:, t], dtypes[0]), require_alignment=64, require_contiguous=True)
        t0 = time.perf_counter()
        result = list(step(x, *state_dev))
        step_times.append(time.perf_counter() - t0)
        state_dev = result[1:]
        got = [np.from_dlpack(o) for o in result]  # views of the VM's outputs, no copy
        y, state = got[0], got[1:]
        if args.save:
            ys.append(y.copy())
        if not all(np.isfinite(a).all() for a in got):
            sys.exit(f"step {t}: the artifact produced NaN or Inf")
        ref = outputs[:, t].astype(np.float32)
        out_err = max(out_err, float(np.abs(y.astype(np.float32) - ref).max()))
        out_peak = max(out_peak, float(np.abs(ref).max()))
        if lm:
            agree += int((y.argmax(-1) == ref.argmax(-1)).all())
        if has_states:
            for name, value in zip(names[1:], state):
                r = reference[f"state_{name}"][t].astype(np.float32)
                state_err = max(state_err, float(np.abs(value.astype(np.float32) - r).max()))
                state_peak = max(state_peak, float(np.abs(r).max()))

    if args.save:
        np.savez(args.save, outputs=np.stack(ys, 1))
    ordered = sorted(step_times)
    tolerance = args.tolerance
    if tolerance is None:
        tolerance = float((manifest.get("verification") or {}).get("tolerance") or 1e-4)
    worst = max(out_err / max(out_peak, 1e-12), state_err / max(state_peak, 1e-12) if has_states else 0.0)
    report = {
        "artifact": args.artifact,
        "model": manifest.get("model", {}).get("family"),
        "target": target.get("name"),
        "machine": machine,
        "steps": steps,
        "batch": int(inputs.shape[0]),
        "max_abs_error": out_err,
        "max_rel_error": out_err / max(out_peak, 1e-12),
        "max_abs_state_error": state_err if has_states else None,
        "max_rel_state_error": state_err / max(state_peak, 1e-12) if has_states else None,
        "argmax_agreement": agree / steps if lm and steps else None,
        "tolerance": tolerance,
        "passed": bool(steps and worst <= tolerance),
        "load_s": round(load_s, 3),
        "step_ms_median": round(1e3 * ordered[len(ordered) // 2], 2) if ordered else None,
        "step_ms_max": round(1e3 * ordered[-1], 2) if ordered else None,
        "total_s": round(time.perf_counter() - t_start, 3),
        "library_bytes": os.path.getsize(os.path.join(args.artifact, spec["file"])),
        "numpy": np.__version__,
        "tvm_ffi": getattr(tvm_ffi, "__version__", "?"),
        "tvm_runtime": runtime_version,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['model']} ({report['target']}) on {machine}: {steps} steps, batch {report['batch']}")
        print(f"  outputs: max abs error {out_err:.3e}, max rel error {report['max_rel_error']:.3e}"
              + (f", top-1 agreement {report['argmax_agreement']:.3f}" if lm else ""))
        if has_states:
            print(f"  state:   max abs error {state_err:.3e}, max rel error {report['max_rel_state_error']:.3e}")
        print(f"  load {load_s:.2f} s, step median {report['step_ms_median']} ms (max {report['step_ms_max']} ms), "
              f"total {report['total_s']:.1f} s")
        print(f"  {'PASS' if report['passed'] else 'FAIL'}: worst relative error {worst:.3e} (tolerance {tolerance:g})")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
