"""edgeseq pipeline: the main job — the whole flow on the embedded zoo models, no flags needed."""

from __future__ import annotations

HELP = "the main job: quantize, export, verify, profile and simulate the zoo models, then write the report"
DESCRIPTION = (
    "Runs the whole edgeseq flow on the zoo models shipped with the package (no downloads): for every model "
    "and recipe it quantizes, evaluates in PyTorch and through a verified ONNX artifact, profiles on this CPU, "
    "simulates the spiking models event by event, and writes one report (markdown, JSON, CSV, plots, HTML). "
    "Re-running resumes."
)


def add_arguments(p) -> None:
    from edgeseq.report import DEFAULT_RECIPES

    p.add_argument("-o", "--output", default="out/pipeline", help="output folder (default: out/pipeline)")
    p.add_argument("--models", default=None, help="comma-separated zoo models (default: all)")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated recipes")
    p.add_argument("--targets", default="cpu", help="comma-separated targets to profile on")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes")
    p.add_argument("--max-bytes", type=int, default=3000, help="text evaluated per language-model configuration")


def run(args):
    from edgeseq.checkpoints import zoo_names
    from edgeseq.cli.report import _csv, finish
    from edgeseq.errors import InputError
    from edgeseq.report import build_report

    models = _csv(args.models) or zoo_names()
    if not models:
        raise InputError("no zoo models are installed (edgeseq/zoo is empty); reinstall edgeseq")
    # sized to finish in minutes on 2 cores: short evaluation/verification/profiling per configuration
    summary = build_report(models, args.output, recipes=_csv(args.recipes), targets=_csv(args.targets),
                           jobs=args.jobs, progress=not args.json, debug=args.debug, max_bytes=args.max_bytes,
                           max_samples=200, calib_samples=16, profile_tokens=32, verify_steps=32)
    return finish(args, summary)
