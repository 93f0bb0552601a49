"""Build edgeseq's fused CPU kernels (``edgeseq.ops``) into ONNX artifacts of Mamba models (the default).

A Mamba step graph spends ~36 small ONNX Runtime kernels per layer on the selective-state update
(softplus, decay, drive, ``h ← a ⊙ h + b``, ``C·h + D·x``) and the prefill graph ~80 per layer on its
unrolled scan. With the fused kernels (``ExportOptions.fused_ops``: None, the default, wherever they
apply; True insists; False never, ``--no-fused-ops``) each becomes one node of edgeseq's own
(:mod:`edgeseq.models.fused_ops`), run by the C library ``export/kernels/edgeseq_ops.c`` that this
module compiles with the system C compiler into the artifact folder (``edgeseq_ops-<arch>.so``,
beside the graphs; the runtime registers the one for its CPU before a session opens,
:func:`targets.ort_capi.custom_ops_library`).
The artifact is then verified against PyTorch like any other: what is written is what ran.

The library is built for this machine's architecture — ``x86_64`` with one AVX2 and one baseline
version of each loop chosen when it loads (the same bits on every x86-64 CPU), ``aarch64`` with NEON —
and verified with the artifact; where the cross compiler for the other one is installed
(``aarch64-linux-gnu-gcc`` on an x86-64 host), for that one too, so that the ONNX artifact still
runs on both (that build is checked on the device against the shipped reference stream, as every
artifact is on its first load there). Targets whose code cannot run here do not take them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from edgeseq.errors import InputError, MissingDependencyError
from edgeseq.models import fused_ops
from edgeseq.streaming import StreamingModel
from targets.hostinfo import host_arch
from targets.ort_capi import fused_ops_library

SOURCE = Path(__file__).resolve().parent / "kernels" / "edgeseq_ops.c"
# no -march: the library must run on any CPU of its architecture (x86-64 picks its AVX2 loops at load);
# no fused multiply-add contraction, so every ISA path rounds the same
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi"]


def supports(model: StreamingModel) -> bool:
    """Whether ``model`` has updates the fused kernels replace (Mamba's selective SSM)."""
    from edgeseq.models.mamba import MambaMixer

    return any(isinstance(m, MambaMixer) for m in model.modules())


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    for name in [os.environ.get("CC"), "cc", "gcc", "clang"]:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def choose(model: StreamingModel, wanted: bool | None, format: str, dtype: str, runs_here: bool,
           target: str) -> tuple[str | None, str]:
    """``(compiler, why)``: the C compiler that will build the kernels, or None and the reason they are
    left out. ``wanted`` True insists (a reason to leave them out is a one-line error), None takes them
    wherever they apply (the default), False never."""
    if wanted is False:
        return None, "not asked for (--no-fused-ops)"
    if format != "onnx":
        why = "they are ONNX Runtime kernels (--format onnx); TVM fuses the update itself"
    elif not supports(model):
        why = f"{type(model).__name__} has no selective-state update to fuse (Mamba only)"
    elif dtype != "float32":
        why = "the kernels are float32 (not --dtype float16)"
    elif not runs_here:
        why = f"they are built for this CPU and verified here; {target} code cannot run here"
    elif compiler() is None:
        if wanted:
            raise MissingDependencyError("a C compiler (cc, gcc or clang) to build the fused kernels",
                                         "sudo apt-get install gcc   (or export with --no-fused-ops)")
        why = "no C compiler (cc, gcc or clang) here"
    else:
        return compiler(), ""
    if wanted:
        raise InputError(f"--fused-ops cannot apply: {why}")
    return None, why


# cross compilers for the other architecture's build (Debian's gcc-<triple> packages)
CROSS_COMPILERS = {"aarch64": "aarch64-linux-gnu-gcc", "x86_64": "x86_64-linux-gnu-gcc"}


def _compile(cc: str, library: Path) -> dict[str, Any]:
    """Run the compiler with its temporary files in a folder beside ``library`` (inside the export's
    staging folder, which an interrupted export removes) and, if the export is interrupted while it
    runs (Ctrl-C, SIGTERM), kill its whole process group before the clean-up: no ``cc*.s`` or ``cc*.o``
    is left in the user's temporary folder."""
    command = [cc, *FLAGS, "-o", str(library), str(SOURCE), "-lm"]
    scratch = library.parent / f".cc-{library.stem}"
    scratch.mkdir()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)}, start_new_session=True)
    try:
        _, stderr = proc.communicate()
    except BaseException:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode:
        last = (stderr.strip().splitlines() or ["no message"])[-1]
        raise InputError(f"the C compiler could not build the fused kernels ({Path(cc).name}: {last[:200]}); "
                         f"export with --no-fused-ops")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return {"file": library.name, "compiler": version[0] if version else Path(cc).name}


def build(folder: Path, cc: str) -> dict[str, Any]:
    """Compile the kernels into ``folder``: for this CPU's architecture (the build verification runs)
    and, where its cross compiler is installed, for the other one (checked on the device: the
    artifact's reference stream on first load, :mod:`targets.selfcheck`). Returns the manifest's
    record of them."""
    arch = host_arch()
    libraries = {arch: {**_compile(cc, folder / fused_ops_library(arch)), "verified_at_export": True}}
    for other, cross in CROSS_COMPILERS.items():
        if other != arch and shutil.which(cross):
            libraries[other] = {**_compile(shutil.which(cross), folder / fused_ops_library(other)),
                                "verified_at_export": False}
    return {"used": True, "domain": fused_ops.DOMAIN, "ops": list(fused_ops.OPS), "graphs": ["step", "prefill"],
            "libraries": libraries,
            "source_sha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(), "flags": FLAGS}


def choose_graphs(record: dict[str, Any], step_graph: bytes, with_prefill: bool) -> None:
    """Which graphs take the kernels, from the step graph just written: the prefill graph keeps its
    plain scan when the model quantizes activations statically (``QuantizeLinear`` nodes). Over a
    whole prefill chunk such a model is chaotic: the last-bit differences of the kernels' own ``exp``
    move int8 levels early enough in the chunk that verification's whole-chunk test refuses a correct
    graph (the zoo model's w8a8: 37.5% of positions inexact against an allowance of 37.5%, one run,
    and refused in another). The step, verified one step at a time, takes them."""
    if not with_prefill:
        record["graphs"] = ["step"]
    elif b"QuantizeLinear" in step_graph:
        record["graphs"] = ["step"]
        record["prefill_plain"] = "static int8 activations: the prefill chunk keeps ONNX Runtime's own scan kernels"


__all__ = ["choose_graphs", "FLAGS", "SOURCE", "build", "choose", "compiler", "supports"]
