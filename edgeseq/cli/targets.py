"""``edgeseq targets``: the target registry (device specs with their sources)."""

from __future__ import annotations

HELP = "list the target devices (bandwidth, peak int8/fp16, power, runtimes, TVM target)"
DESCRIPTION = (
    "List the targets edgeseq knows: this machine ('host', detected, with its memory bandwidth "
    "measured once and cached), Jetson Orin modules, NVIDIA GPUs and neuromorphic chips, plus "
    "those of your own targets file (--targets-file or $EDGESEQ_TARGETS_FILE, JSON or TOML). "
    "Every figure carries its source: see --json or --name NAME."
)


def add_arguments(p) -> None:
    p.add_argument("--targets-file", metavar="FILE", help="a JSON/TOML file of extra targets ({\"targets\": [...]} / [[targets]])")
    p.add_argument("--name", metavar="NAME", help="show one target in full, with the source of each figure")
    p.add_argument("--no-measure", action="store_true", help="do not measure the host's memory bandwidth (when not cached)")


def run(args):
    from targets.registry import get_target, targets

    if args.name:
        spec = get_target(args.name, args.targets_file, measure_host=not args.no_measure)
        if not args.json:
            _print_one(spec)
        return spec.to_dict()
    registry = targets(args.targets_file, measure_host=not args.no_measure)
    rows = [spec.to_dict() for spec in registry.values()]
    if not args.json:
        _print_table(rows)
    return rows


def _num(value, digits=1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".rstrip("0").rstrip(".")


def _print_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgeseq targets")
    for column, justify in (("name", "left"), ("kind", "left"), ("bandwidth GB/s", "right"), ("int8 TOPS", "right"),
                            ("fp16 TFLOPS", "right"), ("power W", "right"), ("runtimes", "left"), ("export build", "left")):
        table.add_column(column, justify=justify)
    for row in rows:
        build = "-"
        if row.get("arch") and row.get("tvm_target"):
            build = row["arch"] + (f" + CUDA {row['cuda_arch']}" if row.get("cuda_arch") else "")
            build += " (cross)" if row.get("cross_compiler") else ""
        table.add_row(row["name"], row["kind"], _num(row["memory_bandwidth_gbs"]), _num(row["peak_int8_tops"], 2),
                      _num(row["peak_fp16_tflops"], 2), _num(row["typical_power_w"], 0), ", ".join(row["runtimes"]), build)
    console = Console()
    console.print(table)
    console.print("Dense peaks (no sparsity). Sources of every figure: edgeseq targets --name NAME (or --json). "
                  "Entries with an export build take the same name in `edgeseq export --target` and `edgeseq profile --target`.")


def _print_one(spec) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{spec.name}: {spec.description}")
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("source")
    for key, value in spec.to_dict().items():
        if key in ("sources", "name", "description") or value in (None, [], {}):
            continue
        table.add_row(key, str(value), spec.sources.get(key, ""))
    Console().print(table)
