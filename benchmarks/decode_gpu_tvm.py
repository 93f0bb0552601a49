"""A TVM CUDA (sm_90) artifact of a Mamba step beside edgeseq's fused Triton step, on a GPU machine
that has no TVM Python package.

    python benchmarks/decode_gpu_tvm.py --build ARTIFACT            # here: TVM 0.27 + nvcc
    python benchmarks/decode_gpu_tvm.py ARTIFACT LIBDIR [--out tvm.json]   # there
    python benchmarks/decode_gpu_tvm.py FOLDER --build-whole [--build-whole-prefill]   # the whole model, weights as inputs
    python benchmarks/decode_gpu_tvm.py FOLDER LIBDIR --prefill-whole                  # its prefill, there
    (decode_gpu.py --tvm-whole FOLDER,LIBDIR times the whole model's step in the interleaved rounds)

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


def load_vm_main(libdir: str, library: str, cubin_path: str, source_sha256: str):
    """The Relax VM's ``main`` of a TVM CUDA library, loaded with only the TVM runtime libraries
    (from ``libdir``) and ``tvm_ffi``: TVM's load-time CUDA-compile callback is answered with the
    cubin compiled at build time, matched by the kernel source's sha256."""
    import tvm_ffi

    for name in ("libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        ctypes.CDLL(os.path.join(libdir, name), mode=ctypes.RTLD_GLOBAL)
    cubin = open(cubin_path, "rb").read()

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _serve_cubin(code):  # noqa: ANN001 - called by the TVM runtime when the module loads
        if hashlib.sha256(code.encode()).hexdigest() != source_sha256:
            raise RuntimeError("kernel source does not match the shipped cubin")
        return tvm_ffi.convert(bytearray(cubin)) if hasattr(tvm_ffi, "convert") else bytes(cubin)

    vm = tvm_ffi.load_module(library)["vm_load_executable"]()
    vm["vm_initialization"](2, 0, 2, 1, 0, 2)  # CUDA device 0 / CPU host, pooled allocators
    return vm["main"]


def tvm_cuda_rows(torch, artifact: str, libdir: str) -> dict:
    import numpy as np
    import tvm_ffi

    manifest = json.load(open(os.path.join(artifact, "manifest.json")))
    step = manifest["graphs"]["step"]
    main_fn = load_vm_main(libdir, os.path.join(artifact, step["file"]), os.path.join(artifact, step["cubin"]),
                           step["cuda_source_sha256"])
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


def weights_in_order(model, names: list) -> list:
    """The model's parameters in the order a ``params_as_input`` library takes them (names as
    the step-graph wrapper sees them: ``model.<parameter>``)."""
    own = dict(model.named_parameters())
    return [own[n.split(".", 1)[1] if n.startswith("model.") else n] for n in names]


def weights_sha256(tensors: list) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_whole_prefill(out: str, target: str = "h200", length: int = 64) -> dict:
    """The prefill graph (chunks of ``length`` positions, every position's logits) of the same
    model, weights as inputs, into ``out/prefill``: ``prefill.so``, ``prefill.cubin``, ``build.json``."""
    import torch

    from decode_gpu import CONFIG
    from edgeseq.models.mamba import Mamba, MambaConfig
    from export.tvm_build import build_library, get_target

    torch.manual_seed(0)
    model = Mamba(MambaConfig(**CONFIG)).eval()
    folder = Path(out) / "prefill"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    facts = build_library(model, folder / "prefill.so", get_target(target), kind="prefill", prefill_length=length,
                          params_as_input=True)
    facts.update(config=CONFIG, seed=0, length=length, build_seconds=time.time() - t0,
                 weights_sha256=weights_sha256(weights_in_order(model, [p["name"] for p in facts["params"]])))
    (folder / "build.json").write_text(json.dumps(facts, indent=1) + "\n")
    print(f"{folder}: prefill.so {(folder / 'prefill.so').stat().st_size / 1e6:.1f} MB, built in {facts['build_seconds']:.0f} s")
    return facts


def tvm_prefill_rows(torch, folder: str, libdir: str, model, lengths=(512, 4096), repeats: int = 5) -> dict:
    """Prompt prefill through the ``build_whole_prefill`` library on the GPU: whole chunks in a row,
    the state fed back on the device; tokens/s (median of ``repeats`` after 2 warm-ups, host clock
    around a synchronize) and the last position's logits against ``Mamba.prefill`` fp32 (same weights)."""
    import tvm_ffi

    folder = Path(folder) / "prefill"
    facts = json.loads((folder / "build.json").read_text())
    weights = weights_in_order(model, [p["name"] for p in facts["params"]])
    main = load_vm_main(libdir, str(folder / "prefill.so"), str(folder / facts["cubin"]), facts["cuda_source_sha256"])
    keep = [w.detach().float().cuda().contiguous() for w in weights]
    params = [tvm_ffi.from_dlpack(w) for w in keep]
    chunk = facts["length"]
    ref = model.cuda().float()

    def run(tokens):
        state = [tvm_ffi.from_dlpack(s) for s in ref.init_state(1, device="cuda").values()]
        out = None
        for start in range(0, tokens.shape[1], chunk):
            outs = list(main(tvm_ffi.from_dlpack(tokens[:, start:start + chunk].contiguous()), *state, *params))
            out, state = outs[0], outs[1:]
        return torch.from_dlpack(out)[:, -1]

    gen = torch.Generator().manual_seed(3)
    result = {"same_weights_as_build": weights_sha256(weights) == facts["weights_sha256"], "chunk": chunk, "rows": []}
    for length in lengths:
        tokens = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).cuda()
        got = run(tokens).clone()
        with torch.inference_mode():
            want = ref.prefill(tokens)[0][:, -1].float()
        err = float((got - want).norm() / want.norm())
        for _ in range(2):
            run(tokens)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(tokens)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        result["rows"].append({"row": "tvm cuda sm_90 fp32 prefill (TVM VM, weights as inputs)", "prompt": length,
                               "ms": ms, "tokens_per_s": length / ms * 1e3, "rel_error_vs_fp32_prefill": err})
    return result


def build_whole(out: str, target: str = "h200", config: dict | None = None) -> dict:
    """The whole 130m-shape model (``decode_gpu.CONFIG``, seed 0, as ``decode_gpu.py`` builds it)
    as a TVM CUDA library of code only (``build_library(..., params_as_input=True)``): the
    ~520 MB of fp32 weights stay out, the GPU machine rebuilds them from the seed and passes them
    to ``main``. Writes ``step.so``, ``step.cubin`` and ``build.json`` (the weights' order,
    shapes and sha256, so the run can tell whether it rebuilt the same weights)."""
    import torch

    from decode_gpu import CONFIG
    from edgeseq.models.mamba import Mamba, MambaConfig
    from export.tvm_build import build_library, get_target

    config = {**CONFIG, **(config or {})}
    torch.manual_seed(0)
    model = Mamba(MambaConfig(**config)).eval()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    facts = build_library(model, folder / "step.so", get_target(target), params_as_input=True)
    facts.update(config=config, seed=0, build_seconds=time.time() - t0,
                 weights_sha256=weights_sha256(weights_in_order(model, [p["name"] for p in facts["params"]])),
                 library_bytes=(folder / "step.so").stat().st_size)
    (folder / "build.json").write_text(json.dumps(facts, indent=1) + "\n")
    print(f"{folder}: step.so {facts['library_bytes'] / 1e6:.1f} MB, {len(facts['params'])} weight inputs, "
          f"built in {facts['build_seconds']:.0f} s")
    return facts


class TvmWholeStep:
    """One decode step of the whole model through the ``build_whole`` library on the GPU: the
    TVM VM's ``main(token, *state, *weights)``, the weights uploaded once (fp32, from ``model``),
    the state fed back on the device."""

    def __init__(self, torch, folder: str, libdir: str, model):
        import tvm_ffi

        self.torch, self.tvm_ffi = torch, tvm_ffi
        facts = json.loads((Path(folder) / "build.json").read_text())
        weights = weights_in_order(model, [p["name"] for p in facts["params"]])
        self.same_weights_as_build = weights_sha256(weights) == facts["weights_sha256"]
        self.main = load_vm_main(libdir, os.path.join(folder, "step.so"), os.path.join(folder, facts["cubin"]),
                                 facts["cuda_source_sha256"])
        self._keep = [w.detach().float().cuda().contiguous() for w in weights]  # the tensors TVM reads
        self.weights = [tvm_ffi.from_dlpack(w) for w in self._keep]
        self.nbytes = sum(w.numel() * 4 for w in self._keep)
        self.model = model
        self.token = tvm_ffi.from_dlpack(torch.tensor([1], device="cuda"))
        self.reset()

    def reset(self, state: dict | None = None) -> None:
        state = state or self.model.init_state(1, device="cuda")
        self.state = [self.tvm_ffi.from_dlpack(state[n].float().contiguous()) for n in self.model.state_names()]

    def step(self, token: int):
        outs = list(self.main(self.tvm_ffi.from_dlpack(self.torch.tensor([token], device="cuda")), *self.state, *self.weights))
        self.state = outs[1:]
        return self.torch.from_dlpack(outs[0])

    def __call__(self):
        outs = list(self.main(self.token, *self.state, *self.weights))
        self.state = outs[1:]
        return outs[0]

    def check(self) -> dict:
        """Relative error against ``Mamba.step`` fp32 on the GPU (same weights), over 8 tokens from a
        random state: the worst logits error and the worst state error."""
        torch = self.torch
        ref = self.model.cuda().float()
        gen = torch.Generator().manual_seed(1)
        state = {k: torch.randn(v.shape, generator=gen).cuda() for k, v in ref.init_state(1).items()}
        self.reset(state)
        worst = 0.0
        for tok in (3, 50279, 7, 11, 1000, 2, 40000, 5):
            tok %= self.model.config.vocab_size
            logits = self.step(tok).clone()
            with torch.inference_mode():
                y, state = ref.step(torch.tensor([tok], device="cuda"), state)
            worst = max(worst, float((logits - y).norm() / y.norm()))
        got = dict(zip(self.model.state_names(), (torch.from_dlpack(s) for s in self.state)))
        worst_state = max(float((got[k] - state[k]).norm() / state[k].norm()) for k in state)
        self.reset()
        return {"logits_rel": worst, "state_rel": worst_state, "steps": 8, "same_weights_as_build": self.same_weights_as_build}


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
    p.add_argument("--build-whole", action="store_true",
                   help="build the whole 130m-shape step, weights as inputs, into ARTIFACT (no GPU needed; "
                        "decode_gpu.py --tvm-whole ARTIFACT,LIBDIR times it)")
    p.add_argument("--build-whole-prefill", action="store_true",
                   help="build the whole model's prefill graph (chunks of 64), weights as inputs, into ARTIFACT/prefill")
    p.add_argument("--prefill-whole", action="store_true",
                   help="time ARTIFACT/prefill here (a GPU machine): tokens/s at 512 and 4096 tokens, checked")
    p.add_argument("--out", default="decode_gpu_tvm.json")
    args = p.parse_args(argv)
    if args.build or args.build_whole or args.build_whole_prefill:
        for wanted, builder in ((args.build, build), (args.build_whole, build_whole), (args.build_whole_prefill, build_whole_prefill)):
            if wanted:
                builder(args.artifact)
        return 0
    import torch

    if args.prefill_whole:
        from decode_gpu import CONFIG
        from edgeseq.models.mamba import Mamba, MambaConfig

        torch.manual_seed(0)
        model = Mamba(MambaConfig(**CONFIG)).eval()
        result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": CONFIG,
                  "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **tvm_prefill_rows(torch, args.artifact, args.libdir, model)}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=1))
        return 0

    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": TVM_CONFIG,
              **tvm_cuda_rows(torch, args.artifact, args.libdir)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
