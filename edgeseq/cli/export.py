"""``edgeseq export MODEL|QDIR --format onnx|tvm --target T -o DIR``: a verified artifact."""

from __future__ import annotations

import argparse
import sys

HELP = "export a model or quantized model to a verified ONNX/TVM artifact"
DESCRIPTION = (
    "Export the streaming step graph (and the prefill graph) of MODEL (a zoo name, checkpoint folder or "
    "quantized folder) to ONNX or a TVM shared library, run it against PyTorch for --steps consecutive "
    "steps, and write the folder with manifest.json only when it matches. --target takes the names of "
    "`edgeseq targets` (the same as `edgeseq profile --target`): host (aliases cpu, llvm), aarch64, "
    "jetson-orin-nano-8gb, jetson-agx-orin-32gb/-64gb, h100, h200, a100, l4, rtx-4090."
)


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL|QDIR", help="zoo name, checkpoint folder or quantized folder")
    p.add_argument("--format", choices=["onnx", "tvm"], default="onnx", help="artifact format (default onnx)")
    p.add_argument("--target", default="cpu", help="where it runs: a name from `edgeseq targets` (default host = this CPU)")
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (default: exports/<model>-<format>-<target>)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18; 21 for 4-bit weights)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="float dtype (ONNX only for float16)")
    p.add_argument("--steps", type=int, default=256, help="streaming steps checked against PyTorch (default 256)")
    p.add_argument("--prefill-length", type=int, default=64, help="positions per prefill-graph call (default 64)")
    p.add_argument("--no-prefill", action="store_true", help="export the step graph only")
    p.add_argument("--fused-ops", action=argparse.BooleanOptionalAction, default=None,
                   help="Mamba, ONNX: each layer's state update and prefill scan as one kernel of edgeseq's own, built "
                        "here with the C compiler into the artifact (default: wherever they apply; --fused-ops insists)")
    p.add_argument("--keep-failed", metavar="DIR", default=None,
                   help="when verification refuses the artifact, keep it in DIR for inspection (its manifest says it failed)")


def run(args):
    from pathlib import Path

    from edgeseq.checkpoints import load_model
    from export.artifact import progress_printer, export_loaded

    loaded = load_model(args.model)
    output = args.output or str(Path("exports") / f"{Path(str(args.model)).name}-{args.format}-{args.target}")
    log = progress_printer(sys.stderr)
    manifest = export_loaded(
        loaded, output, format=args.format, target=args.target, opset=args.opset, dtype=args.dtype,
        steps=args.steps, prefill=not args.no_prefill, prefill_length=args.prefill_length, force=args.force,
        log=log, keep_failed=args.keep_failed, fused_ops=args.fused_ops,
    )
    manifest["path"] = str(output)
    if args.json:
        return manifest
    _print_summary(manifest, output)
    return None


def _print_summary(manifest: dict, output: str) -> None:
    from rich.console import Console
    from rich.table import Table

    v = manifest["verification"]
    table = Table(title=f"{output}  ({manifest['format']}, {manifest['target']['name']}, {manifest['recipe']})")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("sha256")
    for f in manifest["files"]:
        table.add_row(f["path"], f"{f['bytes']:,}", f["sha256"][:16])
    console = Console()
    console.print(table)
    console.print(
        f"verified on {v['runtime']}: {v['steps']} steps, max rel. error outputs {v['max_rel_error']:.2e}, "
        f"state {v['max_rel_state_error']:.2e} (tolerance {v['tolerance']:g})"
        + (f", top-1 agreement {v['argmax_agreement']:.3f}" if v.get("argmax_agreement") is not None else "")
        + (f"; teacher-forced: {v['teacher_forced_exact_fraction']:.1%} of {v.get('sample_steps', 0)} sample-steps within "
           f"{v.get('exact_tolerance', 1e-4):.2g} (float64 PyTorch: {1 - v.get('reference_inexact_fraction', 0.0):.1%}), max "
           f"{v['teacher_forced_max_rel_error']:.2e}" if v.get("teacher_forced_exact_fraction") is not None else "")
    )
    if v.get("note"):
        console.print(v["note"])
