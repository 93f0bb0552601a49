"""TVM CUDA (sm_90) step artifacts of every model family, checked on a GPU machine that has no TVM
Python package, teacher-forced against the reference stream each export wrote.

    python benchmarks/tvm_cuda_families.py build OUT             # here: TVM 0.27 + nvcc
    python benchmarks/tvm_cuda_families.py check OUT LIBDIR      # there: torch + tvm_ffi

``build`` exports a small model of each family (seed 0) with ``export_artifact(..., format="tvm",
target="h200")`` into ``OUT/<family>`` (kernels compiled ahead of time into ``step.cubin``; the
export verifies a host build of the same module). ``check`` loads each library with only the TVM
runtime libraries in LIBDIR (``libtvm_runtime.so``, ``libtvm_runtime_cuda.so``) and ``tvm_ffi``
(``decode_gpu_tvm.load_vm_main``), runs every recorded step from the recorded state on the GPU and
prints the worst relative error of the outputs and new states (max abs error ÷ max abs value),
the rule being the export's float tolerance (1e-4). Exit status 1 when a family misses it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FAMILIES = {
    "mamba": dict(vocab_size=256, d_model=64, n_layer=2, d_state=16),
    "mamba2": dict(vocab_size=256, d_model=64, n_layer=2),
    "spikegpt": dict(d_model=32, n_layer=2),
    "lmuformer": dict(dim=16, input_dim=4, n_classes=3),
    "spiking-lmuformer": dict(dim=16, input_dim=4, n_classes=3),
}
TOLERANCE = 1e-4


def build(out: str) -> None:
    import torch

    from edgeseq.models import build_model
    from export.artifact import export_artifact

    for family, config in FAMILIES.items():
        torch.manual_seed(0)
        model = build_model(family, **config).eval()
        export_artifact(model, Path(out) / family, format="tvm", target="h200", steps=16, batch=1, prefill=False, force=True)
        print(f"{family}: built", flush=True)


def _rel(got, want) -> float:
    import numpy as np

    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))


def check(out: str, libdir: str) -> int:
    import numpy as np
    import torch
    import tvm_ffi

    from decode_gpu_tvm import load_vm_main

    failed = 0
    for family in FAMILIES:
        folder = Path(out) / family
        manifest = json.loads((folder / "manifest.json").read_text())
        step = manifest["graphs"]["step"]
        main = load_vm_main(libdir, str(folder / step["file"]), str(folder / step["cubin"]), step["cuda_source_sha256"])
        ref = np.load(folder / manifest["reference"]["file"], allow_pickle=False)
        names = [t["name"] for t in step["inputs"]][1:]

        def gpu(a):
            return tvm_ffi.from_dlpack(torch.from_numpy(np.ascontiguousarray(a)).cuda())

        worst_y = worst_s = 0.0
        for t in range(ref["x"].shape[0]):  # each step from the recorded state
            outs = list(main(gpu(ref["x"][t]), *[gpu(ref[f"state.{n}"][t]) for n in names]))
            worst_y = max(worst_y, _rel(torch.from_dlpack(outs[0]).cpu().numpy(), ref["y"][t]))
            for name, value in zip(names, outs[1:]):
                worst_s = max(worst_s, _rel(torch.from_dlpack(value).cpu().numpy(), ref[f"state.{name}"][t + 1]))
        ok = max(worst_y, worst_s) <= TOLERANCE
        failed += not ok
        print(f"{family}: {ref['x'].shape[0]} teacher-forced steps on {torch.cuda.get_device_name(0)}: "
              f"outputs {worst_y:.2e}, state {worst_s:.2e} ({'ok' if ok else 'FAILED'})", flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "build":
        build(argv[1])
        return 0
    if len(argv) == 3 and argv[0] == "check":
        return check(argv[1], argv[2])
    print("usage: tvm_cuda_families.py build OUT | check OUT LIBDIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
