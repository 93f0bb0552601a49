"""Run a TVM CUDA artifact on a GPU machine that has no TVM Python package.

Needs only: ``tvm_ffi`` (the small FFI package of apache-tvm-ffi), ``libtvm_runtime.so``,
``libtvm_runtime_cuda.so`` (+ ``libcudart``), numpy, and torch with CUDA for DLPack tensors and
timing. The artifact's kernels were compiled ahead of time by ``edgeseq export`` (``step.cubin``):
this script answers TVM's load-time ``tvm_callback_cuda_compile`` with that binary, checked by the
sha256 of the kernel source, so no CUDA compiler is needed on the device.

    python scripts/tvm_cuda_device_run.py ARTIFACT_DIR LIB_DIR [REFERENCE.npz] [--steps N]

REFERENCE.npz (written by ``export.verify.write_reference_npz``) holds inputs and PyTorch outputs
for a stream of steps; the script reports the max relative error against them and the p50/p90
per-step latency. Prints one JSON object.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import statistics
import sys
import time


def main() -> None:
    artifact, libdir = sys.argv[1], sys.argv[2]
    reference = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3].endswith(".npz") else None
    import numpy as np
    import torch
    import tvm_ffi

    for name in ("libcudart.so.13", "libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        path = os.path.join(libdir, name)
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    manifest = json.load(open(os.path.join(artifact, "manifest.json")))
    step = manifest["graphs"]["step"]
    cubin = open(os.path.join(artifact, step["cubin"]), "rb").read()
    expected_sha = step["cuda_source_sha256"]

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _serve_cubin(code):  # noqa: ANN001 - called by the TVM runtime when the module loads
        if hashlib.sha256(code.encode()).hexdigest() != expected_sha:
            raise RuntimeError("kernel source does not match the shipped cubin")
        return tvm_ffi.convert(bytearray(cubin)) if hasattr(tvm_ffi, "convert") else bytes(cubin)

    library = tvm_ffi.load_module(os.path.join(artifact, step["file"]))
    vm = library["vm_load_executable"]()
    cuda_type, cpu_type, pooled = 2, 1, 2  # DLPack device types; TVM's pooled allocator
    vm["vm_initialization"](cuda_type, 0, pooled, cpu_type, 0, pooled)
    main_fn = vm["main"]

    def call(arrays):
        inputs = [tvm_ffi.from_dlpack(torch.from_numpy(np.ascontiguousarray(a)).cuda()) for a in arrays]
        outputs = main_fn(*inputs)
        return [torch.from_dlpack(o) for o in outputs]

    result = {"device": torch.cuda.get_device_name(0), "cuda_arch": manifest["target"].get("cuda_arch")}
    names = [t["name"] for t in step["inputs"]]
    if reference:
        data = np.load(reference)
        xs, n = data["inputs"], data["inputs"].shape[1]
        state = [data[f"init_{name}"] for name in names[1:]]
        worst = 0.0
        for t in range(n):
            outs = call([xs[:, t], *state])
            y = outs[0].cpu().numpy()
            ref = data["outputs"][:, t]
            worst = max(worst, float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-12)))
            state = [o.cpu().numpy() for o in outs[1:]]
        result.update(steps_checked=n, max_rel_error_vs_pytorch=worst)
    # latency: state stays on the GPU between steps (as a deployed loop would keep it)
    batch = 1
    x_spec = step["inputs"][0]
    x = np.zeros([batch, *x_spec["shape"][1:]], dtype=x_spec["dtype"])
    state = [np.zeros([batch, *s["shape"][1:]], dtype=s["dtype"]) for s in step["inputs"][1:]]
    x_dev = tvm_ffi.from_dlpack(torch.from_numpy(x).cuda())
    state_dev = [tvm_ffi.from_dlpack(torch.from_numpy(s).cuda()) for s in state]
    times = []
    for i in range(300):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = main_fn(x_dev, *state_dev)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        state_dev = list(outs)[1:]
    times = sorted(times[50:])
    result.update(p50_ms=statistics.median(times) * 1e3, p90_ms=times[int(0.9 * len(times))] * 1e3,
                  steps_timed=len(times), batch=batch)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
