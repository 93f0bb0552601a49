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
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if rows:
        table = Table(title="edgeseq zoo", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column("name", no_wrap=True)
        table.add_column("family", no_wrap=True)
        table.add_column("task", no_wrap=True)
        table.add_column("params", justify="right", no_wrap=True)
        table.add_column("dataset", no_wrap=True)
        for row in rows:
            table.add_row(row["name"], str(row["family"]), str(row["task"]), _fmt_params(row["params"]),
                          str(row.get("dataset") or ""))
        console.print(table)
        console.print()
        for row in rows:  # metrics below the table: readable at any terminal width
            detail = row.get("error") or _fmt_metrics(row.get("metrics"))
            if detail:
                console.print(f"  [bold]{row['name']}[/bold]: {detail}")
    else:
        console.print("The zoo is empty in this installation.")
    available = [f["name"] for f in families if f["available"]]
    console.print(f"\nModel families: {', '.join(available)} (details: edgeseq models --families)")


def _print_families(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="model families")
    for column in ("family", "task", "available", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], str(row["task"] or ""), "yes" if row["available"] else "no", row["doc"])
    Console().print(table)
