"""``edgeseq models``: the zoo models shipped with edgeseq and the registered model families."""

from __future__ import annotations

HELP = "list the zoo models (and, with --families, the model families)"
DESCRIPTION = (
    "List the models in edgeseq's zoo with their family, task, parameter count, dataset and "
    "recorded metrics. Any name listed works wherever a MODEL is expected (info, eval, generate, "
    "quantize, export, profile). With --families, list the registered model families instead."
)


def add_arguments(p) -> None:
    p.add_argument("--families", action="store_true", help="list the registered model families instead of the zoo")


def run(args):
    from edgeseq.checkpoints import family_entries, zoo_entries

    rows = family_entries() if args.families else zoo_entries()
    if not args.json:
        _print_families(rows) if args.families else _print_zoo(rows, family_entries())
    return rows


def _fmt_params(n) -> str:
    if n is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _fmt_metrics(metrics) -> str:
    if not isinstance(metrics, dict):
        return ""
    parts = []
    for key, value in metrics.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def _print_zoo(rows, families) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if rows:
        table = Table(title="edgeseq zoo")
        for column in ("name", "family", "task", "params", "dataset", "metrics"):
            table.add_column(column, justify="right" if column == "params" else "left")
        for row in rows:
            table.add_row(row["name"], str(row["family"]), str(row["task"]), _fmt_params(row["params"]),
                          str(row.get("dataset") or ""), row.get("error") or _fmt_metrics(row.get("metrics")))
        console.print(table)
    else:
        console.print("The zoo is empty in this installation.")
    available = [f["name"] for f in families if f["available"]]
    console.print(f"Model families: {', '.join(available)} (edgeseq models --families for details)")


def _print_families(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="model families")
    for column in ("family", "task", "available", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], str(row["task"] or ""), "yes" if row["available"] else "no", row["doc"])
    Console().print(table)
