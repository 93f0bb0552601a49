"""A TVM CUDA (sm_90) artifact of a Mamba step beside edgeseq's fused Triton step, on a GPU machine
that has no TVM Python package.

    python benchmarks/decode_gpu_tvm.py --build ARTIFACT            # here: TVM 0.27 + nvcc
    python benchmarks/decode_gpu_tvm.py ARTIFACT LIBDIR [--out tvm.json]   # there

ARTIFACT: ``export.artifact.export_artifact(Mamba(MambaConfig(**TVM_CONFIG)) (seed 0), out,
format="tvm", target="cuda-sm90")`` (``--target h200`` on the CLI; its kernels compiled ahead of time
into ``step.cubin``); LIBDIR holds
``libtvm_runtime.so`` and ``libtvm_runtime_cuda.so`` from the apache-tvm wheel, and ``tvm_ffi`` is
importable. One layer at the 130m width (d_model 768, vocab 1024): the 130m model's 24 layers and
50280-word head do not fit in what a device call can carry (an fp32 TVM artifact of the whole model is
~520 MB), so this compares the runtimes at the same one-layer shape, per layer.

Rows (host clock around each step + synchronize, 250 steps after 50 warm-ups; device time: CUDA
events around 50 back-to-back steps, median of 10): the TVM VM's ``main`` (fp32 weights, the state
kept on the GPU), edgeseq's fused Triton step (bf16 weights, one CUDA graph), edgeseq's PyTorch
step as one CUDA graph (fp32). The TVM artifact is first checked against the PyTorch reference
stream the export wrote (``reference.npz``).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TVM_CONFIG = dict(vocab_size=1024, d_model=768, n_layer=1, d_state=16, d_conv=4, expand=2)


def _timed(torch, fn, warmup: int = 50, steps: int = 250) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dev = []
    for _ in range(10):
        start.record()
        for _ in range(50):
            fn()
        end.record()
        end.synchronize()
        dev.append(start.elapsed_time(end) / 50)
    times.sort()
    return {"p50_ms": statistics.median(times), "p90_ms": times[int(0.9 * len(times))], "device_ms": statistics.median(dev),
            "steps": steps}


def tvm_cuda_rows(torch, artifact: str, libdir: str) -> dict:
    import numpy as np
    import tvm_ffi

    for name in ("libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        ctypes.CDLL(os.path.join(libdir, name), mode=ctypes.RTLD_GLOBAL)
    manifest = json.load(open(os.path.join(artifact, "manifest.json")))
    step = manifest["graphs"]["step"]
    cubin = open(os.path.join(artifact, step["cubin"]), "rb").read()
    expected = step["cuda_source_sha256"]

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _serve_cubin(code):  # noqa: ANN001 - called by the TVM runtime when the module loads
        if hashlib.sha256(code.encode()).hexdigest() != expected:
            raise RuntimeError("kernel source does not match the shipped cubin")
        return tvm_ffi.convert(bytearray(cubin)) if hasattr(tvm_ffi, "convert") else bytes(cubin)

    library = tvm_ffi.load_module(os.path.join(artifact, step["file"]))
    vm = library["vm_load_executable"]()
    vm["vm_initialization"](2, 0, 2, 1, 0, 2)  # CUDA device 0 / CPU host, pooled allocators
    main_fn = vm["main"]
    names = [t["name"] for t in step["inputs"]][1:]
    # the export's reference stream (PyTorch, fp32)
    ref = np.load(os.path.join(artifact, manifest["reference"]["file"]))
    dl = lambda a: tvm_ffi.from_dlpack(torch.from_numpy(np.ascontiguousarray(a)).cuda())  # noqa: E731
    state = [dl(ref[f"state.{n}"][0]) for n in names]
    worst_y = worst_s = 0.0
    for t in range(ref["x"].shape[0]):
        outs = list(main_fn(dl(ref["x"][t]), *state))
        y = torch.from_dlpack(outs[0]).cpu().numpy()
        worst_y = max(worst_y, float(np.linalg.norm(y - ref["y"][t]) / np.linalg.norm(ref["y"][t])))
        state = outs[1:]
        for n, s in zip(names, state):
            want = ref[f"state.{n}"][t + 1]
            worst_s = max(worst_s, float(np.linalg.norm(torch.from_dlpack(s).cpu().numpy() - want) / max(np.linalg.norm(want), 1e-30)))
    token = dl(np.array([1], dtype=np.int64))
    holder = {"state": [dl(np.zeros([1, *s["shape"][1:]], dtype=s["dtype"])) for s in step["inputs"][1:]]}

    def tvm_step():
        outs = list(main_fn(token, *holder["state"]))
        holder["state"] = outs[1:]

    out = {"artifact": {"target": manifest["target"], "weights_bytes": os.path.getsize(os.path.join(artifact, step["file"]))},
           "check_vs_pytorch_reference": {"logits_rel": worst_y, "state_rel": worst_s, "steps": int(ref["x"].shape[0])},
           "rows": {}}
    out["rows"]["tvm cuda sm_90 (fp32, TVM VM)"] = _timed(torch, tvm_step)
    # edgeseq at the same shape and weights
    from edgeseq.models.mamba import Mamba, MambaConfig
    from targets.gpu.mamba import FusedMambaStep
    from targets.runtimes import TorchRuntime

    torch.manual_seed(0)
    model = Mamba(MambaConfig(**TVM_CONFIG)).eval()
    fused = FusedMambaStep(model)
    fused.step(1)
    out["rows"]["edgeseq fused triton bf16 (one CUDA graph)"] = _timed(torch, lambda: fused.graph(False).replay())
    graph = TorchRuntime(model, device="cuda", cuda_graph=True)
    x, st = graph.example_input(1), graph.init_state(1)
    holder2 = {"state": st}

    def torch_step():
        _, holder2["state"] = graph.step(x, holder2["state"])

    out["rows"]["edgeseq torch cuda-graph fp32"] = _timed(torch, torch_step)
    return out


def build(out: str, target: str = "h200") -> dict:
    """The one-layer artifact (seed 0), TVM CUDA sm_90, kernels compiled ahead of time with nvcc."""
    import torch

    from edgeseq.models.mamba import Mamba, MambaConfig
    from export.artifact import export_artifact

    torch.manual_seed(0)
    model = Mamba(MambaConfig(**TVM_CONFIG)).eval()
    return export_artifact(model, out, format="tvm", target=target, steps=16, batch=1, prefill=False, force=True,
                           log=print)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("libdir", nargs="?")
    p.add_argument("--build", action="store_true", help="build the artifact into ARTIFACT (no GPU needed)")
    p.add_argument("--out", default="decode_gpu_tvm.json")
    args = p.parse_args(argv)
    if args.build:
        build(args.artifact)
        return 0
    import torch

    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": TVM_CONFIG,
              **tvm_cuda_rows(torch, args.artifact, args.libdir)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
