"""TVM (Relax) builds of the step and prefill graphs: this CPU, Jetson (cross), CUDA GPUs.

Flow: ``torch.export`` of the graph wrapper (symbolic batch) →
``tvm.relax.frontend.torch.from_exported_program`` → ``tvm.compile(mod, target)`` →
``export_library`` to a ``.so`` that needs only the TVM runtime on the device.

Why ``torch.export`` and not the ONNX file: TVM 0.27's ONNX importer stops on the ``Shape``/
``Gather`` chains the TorchScript exporter emits for a symbolic batch, and on ``Einsum`` fed by an
un-normalised expression; the exported program carries symbolic shapes natively and imports
cleanly. Quantized models are compiled with their fake-quant arithmetic (the same function the
ONNX QDQ graph computes).

Targets are entries of the one registry (``targets.registry``): an entry with ``arch`` and
``tvm_target`` can be built for (``host`` = this CPU with its features, ``aarch64``, the Jetson
modules, the NVIDIA GPUs); ``edgeseq profile`` takes the same names.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import torch

from edgeseq.errors import EdgeseqError, MissingDependencyError, require
from edgeseq.streaming import StreamingModel
from export.graphs import PrefillGraph, StepGraph, example_args
from export.tvm_frontend import convert_map
from targets.registry import HOST, TargetSpec, export_target


def get_target(name: str) -> TargetSpec:
    """The registry entry ``name`` (``targets.registry``), checked to have a build recipe."""
    return export_target(name)


def host_target() -> TargetSpec:
    """This machine's CPU as a build target (no bandwidth measurement: export needs none)."""
    return get_target(HOST)


def tvm_target(target: TargetSpec):
    """The ``tvm.target.Target`` of a registry entry (``host``: LLVM with this CPU's features)."""
    tvm = require("tvm", "pip install 'edgeseq[tvm]' (apache-tvm)")
    if target.name == HOST:
        from tvm.target import codegen

        return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    spec = target.tvm_target
    if isinstance(spec, dict) and spec.get("kind") == "cuda" and "host" not in spec:
        spec = {**spec, "host": {"kind": "llvm"}}
    return tvm.target.Target(spec)


def check_toolchain(target: TargetSpec) -> None:
    """Missing cross compiler or CUDA compiler → one line saying what to install."""
    if target.cross_compiler and shutil.which(target.cross_compiler) is None:
        raise MissingDependencyError(
            f"the cross compiler {target.cross_compiler} (needed for {target.name})",
            f"sudo apt-get install {target.cross_compiler_package or target.cross_compiler}",
        )
    if target.cuda_arch and shutil.which("nvcc") is None:
        raise MissingDependencyError(
            f"nvcc (needed to compile CUDA kernels for {target.name})",
            "install the CUDA toolkit (Debian: apt-get install nvidia-cuda-toolkit) and put nvcc on PATH",
        )


def export_program(model: StreamingModel, kind: str, prefill_length: int, dtype: torch.dtype = torch.float32):
    """``torch.export`` of the step or prefill graph with a symbolic batch dimension."""
    wrapper = (StepGraph(model) if kind == "step" else PrefillGraph(model)).eval()
    args = example_args(model, 2, None if kind == "step" else prefill_length, dtype)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    shapes = {"x_t" if kind == "step" else "x": {0: batch}, "state": tuple({0: batch} for _ in args[1:])}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.export.export(wrapper, args, dynamic_shapes=shapes)
    except Exception as exc:
        raise EdgeseqError(f"torch.export of the {kind} graph failed: {type(exc).__name__}: {_first_line(exc)}") from exc


def build_library(
    model: StreamingModel, path: str | Path, target: TargetSpec, kind: str = "step", prefill_length: int = 64,
    dtype: torch.dtype = torch.float32, params_as_input: bool = False, embed_below: int = 1 << 16,
) -> dict[str, Any]:
    """Compile one graph for ``target`` and write the shared library at ``path``.

    Returns build facts for the manifest (TVM target, ELF architecture, CUDA arch when any).
    ``params_as_input``: the weights stay out of the library and ``main`` takes them after the
    graph's own inputs, ``main(x, *state, *params)``, in the order of the facts' ``params``
    (name, shape, dtype): a library of code only, for a host that holds the weights itself (a
    model too large to ship as one file, weights shared by several graphs). Parameters of fewer
    than ``embed_below`` elements stay in the library (norm scales, biases, ``A_log``, ``D``, conv
    taps: 3.5 MB of the 130m model's 517 MB), so that a call passes the weight matrices alone (97
    inputs instead of 242 for the 130m step). ``embed_below=0`` passes them all.
    """
    tvm = require("tvm", "pip install 'edgeseq[tvm]' (apache-tvm)")
    from tvm.relax.frontend.torch import from_exported_program

    check_toolchain(target)
    program = export_program(model, kind, prefill_length, dtype)
    tvm_tgt = tvm_target(target)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            mod = from_exported_program(program, keep_params_as_input=params_as_input, custom_convert_map=convert_map())
            mod = _without_batch_upper_bound(mod)
            if params_as_input:
                mod, _ = tvm.relax.frontend.detach_params(mod)
                mod, kept = _embed_small_params(mod, program, embed_below)
            executable = tvm.compile(mod, target=tvm_tgt)
    except Exception as exc:
        raise EdgeseqError(f"TVM could not compile the {kind} graph for {target.name}: {_first_line(exc)}") from exc
    facts: dict[str, Any] = {}
    if params_as_input:
        facts["params"] = kept
    if target.cuda_arch:
        facts.update(write_cubin(executable, Path(path).with_suffix(".cubin"), target.cuda_arch))
    try:
        if target.cross_compiler:
            from tvm.support import cc

            executable.export_library(str(path), fcompile=cc.cross_compiler(target.cross_compiler))
        else:
            executable.export_library(str(path))
    except Exception as exc:
        raise EdgeseqError(f"linking the {kind} library for {target.name} failed: {_first_line(exc)}") from exc
    arch = elf_machine(path)
    if arch != target.arch:
        raise EdgeseqError(f"{Path(path).name} is a {arch} library, {target.name} needs {target.arch}")
    return {"tvm_target": str(tvm_tgt), "elf_machine": arch, **facts}


def _embed_small_params(mod, program, embed_below: int):
    """Bind the parameters of fewer than ``embed_below`` elements into ``main`` as constants; the
    rest stay inputs. Returns the module and the inputs' descriptions (name, shape, dtype) in the
    order ``main`` takes them after the graph's own inputs."""
    import tvm
    from tvm import relax

    weights = dict(program.named_parameters())
    names = [spec.target for spec in program.graph_signature.input_specs
             if spec.kind is torch.export.graph_signature.InputKind.PARAMETER]  # the importer's order
    func = mod["main"]
    variables = list(func.params)[int(func.attrs["num_input"]):]
    if len(names) != len(variables):
        raise EdgeseqError(f"TVM's importer kept {len(variables)} weight inputs for {len(names)} parameters")
    bind, kept = {}, []
    for name, var in zip(names, variables):
        if weights[name].numel() < embed_below:
            bind[var] = tvm.runtime.tensor(weights[name].detach().cpu().contiguous().numpy())
        else:
            kept.append({"name": name, "shape": list(weights[name].shape), "dtype": str(weights[name].dtype).replace("torch.", "")})
    if bind:
        mod = relax.transform.BindParams("main", bind)(mod)
    return mod, kept


def _without_batch_upper_bound(mod):
    """Drop the importer's ``tir_var_upper_bound`` (torch.export's ``Dim`` max, 65536 for the batch).

    Relax's static memory planner sizes every intermediate for that upper bound when it is set:
    a Mamba prefill (64 positions, 128 channels, state 16) then asks for 65536 × 64 × 128 × 16
    floats (34 GB) at the first call and fails with ``std::bad_alloc``. Without the bound, buffers
    whose size depends on the batch are allocated for the batch actually run.
    """
    from tvm import relax

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and func.attrs is not None and "tir_var_upper_bound" in func.attrs:
            mod[gvar] = func.without_attr("tir_var_upper_bound")
    return mod


_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0xF3: "riscv", 0xBE: "cuda"}


def elf_machine(path: str | Path) -> str:
    """The architecture in an ELF file's header (``e_machine``)."""
    with open(path, "rb") as f:
        header = f.read(20)
    if header[:4] != b"\x7fELF":
        raise EdgeseqError(f"{path}: not an ELF file")
    little = header[5] == 1
    machine = struct.unpack_from("<H" if little else ">H", header, 18)[0]
    return _ELF_MACHINES.get(machine, f"machine-{machine:#x}")


def cuda_source(executable) -> str:
    """The CUDA C source of the kernels TVM generated for an executable ("" when none)."""

    def walk(module):
        yield module
        for child in getattr(module, "imports", []):
            yield from walk(child)

    sources = [m.inspect_source("") for m in walk(executable.mod) if getattr(m, "kind", "") == "cuda"]
    if len(sources) > 1:
        raise EdgeseqError("the executable holds several CUDA modules; edgeseq ships one kernel binary per graph")
    return sources[0] if sources else ""


def write_cubin(executable, path: Path, cuda_arch: str) -> dict[str, Any]:
    """Compile the executable's CUDA kernels ahead of time with nvcc into ``path`` (a cubin).

    TVM 0.27 stores CUDA *source* in the library (format ``cuda``) and compiles it when the
    library is loaded, through a ``tvm_callback_cuda_compile`` function that only the full TVM
    Python package registers. edgeseq compiles the kernels here instead and ships the cubin
    next to the ``.so``; :func:`targets.runtimes.register_cubins` answers that callback on the
    device with the shipped binary (matched by the source's sha256), so the device needs only
    the TVM runtime and the CUDA driver. Returns the facts checked and recorded in the manifest.
    """
    import hashlib
    import subprocess
    import tempfile

    source = cuda_source(executable)
    if not source:
        raise EdgeseqError("TVM generated no CUDA kernels for a CUDA target")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise MissingDependencyError("nvcc (needed to compile CUDA kernels ahead of time)", "install the CUDA toolkit")
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / "kernels.cu"
        cu.write_text(source)
        command = [nvcc, "-cubin", f"-arch={cuda_arch}", "-O3", "-o", str(path), str(cu)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise EdgeseqError(f"nvcc could not compile the kernels for {cuda_arch}: {done.stderr.strip()[:300]}")
    found = cubin_arch(path)
    if found != cuda_arch:
        raise EdgeseqError(f"{path.name} holds code for {found}, the target needs {cuda_arch}")
    return {"cuda_arch": found, "cubin": path.name, "cuda_source_sha256": hashlib.sha256(source.encode()).hexdigest()}


def cubin_arch(path: str | Path) -> str:
    """The SM of a cubin from its ELF header (``e_machine`` 190 = CUDA; SM in ``e_flags``)."""
    data = Path(path).read_bytes()[:64]
    if data[:4] != b"\x7fELF" or struct.unpack_from("<H", data, 18)[0] != 0xBE:
        raise EdgeseqError(f"{path}: not a CUDA ELF (cubin)")
    flags = struct.unpack_from("<I", data, 48)[0]
    # CUDA 12.8+ (ELF ABI version 8) keeps the SM in bits 8..15, older toolkits in bits 0..7
    sm = (flags >> 8) & 0xFF if data[8] >= 8 or not 20 <= flags & 0xFF <= 130 else flags & 0xFF
    return f"sm_{sm}"


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    for line in lines:  # TVM errors start with a traceback: prefer the message line
        if "Error" in line and ("Check failed" in line or ":" in line) and not line.startswith("  File"):
            return line.strip()[:300]
    return lines[-1][:300] if lines else type(exc).__name__


__all__ = ["build_library", "check_toolchain", "cubin_arch", "cuda_source", "elf_machine", "export_program", "get_target", "host_target", "tvm_target"]
