"""edgeseq report: an accuracy-vs-bits report over recipes and targets (resumable sweep)."""

from __future__ import annotations

HELP = "accuracy-vs-bits report: quantize, evaluate (PyTorch and artifact), profile, simulate"
DESCRIPTION = (
    "For each recipe: quantize (calibrating once), evaluate in PyTorch and through the exported artifact, "
    "profile on each target, and for spiking models count operations and energy. Writes report.md, report.json, "
    "report.csv, PNG plots and report.html into -o DIR. Re-running the same command resumes: finished "
    "configurations are kept."
)


def split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def add_arguments(p) -> None:
    from edgeseq.app.report import DEFAULT_RECIPES

    p.add_argument("models", nargs="+", metavar="MODEL", help="zoo names or checkpoint folders")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated recipe names or files")
    p.add_argument("--targets", default="cpu", help="comma-separated targets to profile on ('' for none)")
    p.add_argument("--data", default=None, help="evaluation data (default: each model's own validation split)")
    p.add_argument("-o", "--output", required=True, help="report folder (re-use it to resume)")
    p.add_argument("--format", default="onnx", choices=["onnx", "tvm"], help="artifact format to export and evaluate")
    p.add_argument("--max-bytes", type=int, default=20_000, help="text evaluated per LM configuration")
    p.add_argument("--max-samples", type=int, default=200, help="samples evaluated per classifier configuration")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration sequences per recipe")
    p.add_argument("--tokens", type=int, default=64, help="decode steps of each configuration's own profile")
    p.add_argument("--latency-rounds", type=int, default=5,
                   help="after the sweep, rounds of per-token timing interleaved across all artifacts (0: none)")
    p.add_argument("--latency-tokens", type=int, default=64, help="decode steps per artifact per round")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run the sweep on a Ray cluster ('local' starts one)")


def run(args):
    from edgeseq.app.report import build_report

    summary = build_report(
        args.models, args.output, recipes=split_list(args.recipes), targets=split_list(args.targets), data=args.data,
        jobs=args.jobs, ray_address=args.ray, progress=True, export_format=args.format,
        max_bytes=args.max_bytes, max_samples=args.max_samples, calib_samples=args.calib_samples,
        profile_tokens=args.tokens, debug=args.debug, latency_rounds=args.latency_rounds,
        latency_tokens=args.latency_tokens,
    )
    return finish(args, summary)


def finish(args, summary: dict):
    """Print the summary; when configurations failed or stayed partial, say which and why on stderr
    and exit 1 (with ``--json`` the summary is still printed on stdout first)."""
    import sys

    from edgeseq.app.report import failure_lines

    lines = failure_lines(summary)
    if not lines:
        if not args.json:
            print_summary(summary)
        return summary
    if args.json:
        from edgeseq.cli import emit_json

        emit_json(summary)
    else:
        print_summary(summary, errors=False)
    sys.stderr.write(f"edgeseq {args.command}: {len(lines)} of {summary['configs']} configurations failed or are "
                     f"partial (report written: {summary['files'].get('html')}):\n")
    for line in lines:
        sys.stderr.write(f"  {line}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def print_summary(summary: dict, errors: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"report → {summary['output']}")
    for col in ("model", "recipe", "status", "metric", "PyTorch", "artifact"):
        table.add_column(col)
    for r in summary["results"]:
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        status = r["status"] if not r.get("stage_errors") else f"{r['status']} ({len(r['stage_errors'])} stage errors)"
        table.add_row(r["model"], r["recipe"], status, str(r["metric"]), fmt(r["torch"]), fmt(r["artifact"]))
    Console().print(table)
    for r in summary["results"] if errors else []:
        for stage, err in (r.get("stage_errors") or {}).items():
            print(f"  {r['model']} / {r['recipe']} / {stage}: {err}")
    print(f"report: {summary['files'].get('html')}")
