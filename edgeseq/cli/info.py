"""``edgeseq info MODEL``: config, parameter count, sizes and the recurrent state of a model."""

from __future__ import annotations

HELP = "show a model's config, size and recurrent state"
DESCRIPTION = (
    "Load MODEL (a zoo name, an edgeseq folder, a Hugging Face or state-spaces Mamba folder, or a "
    "hub id when online) and show its config, parameter count, bytes in memory, the state that "
    "`step` carries (names, shapes, bytes per sequence) and its tokenizer. Loading checks every "
    "tensor, so this also validates a checkpoint."
)


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="zoo name, checkpoint folder/file, or hub id")
    p.add_argument("--format", default=None,
                   help="checkpoint format when detection is not enough (edgeseq, hf-mamba, state-spaces-mamba, ...)")


def run(args):
    from edgeseq.checkpoints import load_model, model_info

    info = model_info(load_model(args.model, format=args.format))
    if not args.json:
        _print(info)
    return info


def _fmt_bytes(n) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _print(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"{info['source']}", show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value")
    summary.add_row("format", str(info["format"]))
    summary.add_row("family", str(info["family"]))
    summary.add_row("task", str(info["task"]))
    if "params" in info:
        summary.add_row("parameters", f"{info['params']:,}")
        summary.add_row("model bytes", f"{_fmt_bytes(info['model_bytes'])} ({info.get('dtype')})")
    summary.add_row("state bytes / sequence", _fmt_bytes(info["state_bytes"]))
    tokenizer = info.get("tokenizer") or {}
    summary.add_row("tokenizer", f"{tokenizer.get('kind')} (vocab {tokenizer.get('vocab_size')})")
    if "quant_points" in info:
        summary.add_row("quantization points", str(info["quant_points"]))
    console.print(summary)

    config = Table(title="config", show_header=False)
    config.add_column("field", style="bold")
    config.add_column("value")
    for key, value in info["config"].items():
        config.add_row(key, str(value))
    console.print(config)

    if info["state_spec"]:
        state = Table(title="recurrent state (per sequence)")
        for column in ("name", "shape", "dtype"):
            state.add_column(column)
        specs = info["state_spec"]
        shown = specs if len(specs) <= 12 else specs[:10]
        for spec in shown:
            state.add_row(spec["name"], "×".join(map(str, spec["shape"])), spec["dtype"])
        if len(shown) < len(specs):
            state.add_row(f"… {len(specs) - len(shown)} more", "", "")
        console.print(state)
    meta = info.get("meta") or {}
    for key in ("dataset", "train_command"):
        if meta.get(key):
            console.print(f"[bold]{key}[/bold]: {meta[key]}")
