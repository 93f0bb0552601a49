"""``edgeseq quantize MODEL --recipe R [--calib DATA] -o DIR``: post-training quantization."""

from __future__ import annotations

HELP = "post-training quantization (Quamba-style recipes: w8a8, w4a8, w4a16, ...)"
DESCRIPTION = (
    "Quantize MODEL with a recipe and write DIR (model.safetensors with integer weights and "
    "scales + quantization.json with the recipe and per-layer scales, clipping and calibration "
    "error). Calibration data defaults to the model's own task (its train split where available). "
    "`edgeseq eval DIR` evaluates the result; `edgeseq export DIR` exports it."
)


def add_arguments(p) -> None:
    from quantize.recipes import RECIPES

    p.add_argument("model", metavar="MODEL", help="zoo name, checkpoint folder/file, or hub id")
    p.add_argument("--recipe", default="w8a8",
                   help=f"a recipe name ({', '.join(RECIPES)}) or a .toml/.json recipe file (default: w8a8)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="replace an earlier quantized folder at DIR")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="calibration data: shakespeare, stdlib, a text file, a task name or .npz (default: the model's task)")
    p.add_argument("--calib-split", default="train", help="split of the calibration data (default: train)")
    p.add_argument("--calib-samples", type=int, default=64, metavar="N", help="calibration sequences (default: 64)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sequence for LMs (default: 256)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default: 8)")
    p.add_argument("--group-size", type=int, default=None, help="override the recipe's 4-bit group size (must divide every layer)")
    p.add_argument("--percentile", type=float, default=None, help="override the clipping percentile (e.g. 99.99)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    from quantize.apply import quantize_checkpoint
    from quantize.io import check_output
    from quantize.recipes import get_recipe

    check_output(args.output, args.force)  # before any work: nothing is overwritten without --force
    get_recipe(args.recipe)  # a bad recipe (name, file, field types) fails before loading the model
    result = quantize_checkpoint(
        args.model, args.recipe, args.output, calib=args.calib, calib_split=args.calib_split,
        calib_samples=args.calib_samples, seq_len=args.seq_len, batch_size=args.batch_size,
        group_size=args.group_size, percentile=args.percentile, seed=args.seed,
        progress=not (args.quiet or args.json),
    )
    if not args.json:
        _print(result)
    return result


def _fmt(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{result['source']} → {result['output']} ({result['recipe']})")
    table.add_column("layer", no_wrap=True)
    for column in ("weights", "w err", "act scale", "clip / max", "act err"):
        table.add_column(column, justify="right")
    for layer in result["layers"]:
        weights = "-"
        if "weight_bits" in layer:
            weights = f"int{layer['weight_bits']} {layer['granularity']}"
            weights += f" g{layer['group_size']}" if layer.get("group_size") else ""
            weights += " +H" if layer.get("rotate") else ""
        clip = f"{layer['clip']:.3g} / {layer['amax']:.3g}" if "clip" in layer else "-"
        table.add_row(layer["path"], weights, _fmt(layer.get("weight_error"), ".2e"), _fmt(layer.get("input_scale")),
                      clip, _fmt(layer.get("calib_error"), ".2e"))
    console.print(table)
    calib = result["calibration"]
    sizes = result["bytes"]
    if calib.get("batches"):
        console.print(f"calibration: {calib.get('samples')} × {calib.get('seq_len')} from {calib.get('data')} "
                      f"({calib.get('split')}), {calib['seconds']:.1f} s")
    emb = result.get("embeddings") or {}
    if emb.get("tables"):
        console.print(f"embeddings: {', '.join(emb['tables'])} rounded to int{emb['bits']} per row (recipe embedding_bits)")
    elif result["recipe_spec"].get("weight_bits"):
        console.print("embeddings: kept float (recipe embedding_bits = 0, or the model's embedding feeds a spiking threshold)")
    console.print(f"size: {sizes['float'] / 2**20:.2f} MiB float → {sizes['quantized_packed'] / 2**20:.2f} MiB deployed "
                  f"({sizes['quantized_stored'] / 2**20:.2f} MiB as stored); wrote {result['output']}")
