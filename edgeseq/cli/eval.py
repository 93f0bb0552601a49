"""``edgeseq eval MODEL|QDIR|ARTIFACT_DIR``: bits per byte of a language model, accuracy of a classifier."""

from __future__ import annotations

HELP = "evaluate a model, quantized model or exported artifact (bits per byte or accuracy)"
DESCRIPTION = (
    "Evaluate MODEL (a zoo name, a checkpoint folder, a quantized folder from `edgeseq quantize` or "
    "an artifact folder from `edgeseq export`, which runs in its own runtime). Language models: "
    "bits per byte over the text, streamed in chunks through prefill with the recurrent state "
    "carried (exact for long text, bounded memory). Classifiers: accuracy of the streaming "
    "prediction (running mean of per-frame scores at the last frame). Default data: the model's "
    "own task, validation split."
)


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="zoo name, checkpoint/quantized/artifact folder, or hub id")
    p.add_argument("--data", default=None,
                   help="LM: shakespeare, stdlib or a text file; classifier: a task name or FILE.npz "
                        "(default: the model's own task)")
    p.add_argument("--split", default=None,
                   help="split to evaluate: validation, train, or all (a whole text file). Default: all for "
                        "--data FILE of a language model (every byte is scored), validation otherwise")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to a classification task's loader (repeatable)")
    p.add_argument("--max-bytes", type=int, default=None, help="LM: evaluate only the first N bytes of the text")
    p.add_argument("--max-samples", type=int, default=None, help="classifier: evaluate only the first N samples")
    p.add_argument("--chunk", type=int, default=512, help="LM: tokens per prefill chunk (memory bound; default 512)")
    p.add_argument("--batch-size", type=int, default=64, help="classifier: samples per batch (default 64)")
    p.add_argument("--format", default=None, help="checkpoint format when detection is not enough")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (PyTorch models only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    import torch

    from edgeseq.checkpoints import load_model
    from edgeseq.errors import InputError
    from edgeseq.evaluate import evaluate_loaded
    from edgeseq.train import parse_overrides

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, format=args.format)
    if args.device != "cpu":
        if not isinstance(loaded.model, torch.nn.Module):
            raise InputError(f"--device {args.device} applies to PyTorch models only; {args.model} runs in its own runtime")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: no CUDA GPU is visible to PyTorch; use --device cpu")
        loaded.model.to(args.device)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    if args.chunk < 1:
        raise InputError(f"--chunk must be positive, got {args.chunk}")
    split = args.split or default_split(loaded.model, args.data)
    result = evaluate_loaded(
        loaded,
        args.data,
        split=split,
        max_bytes=args.max_bytes,
        max_samples=args.max_samples,
        chunk_len=args.chunk,
        batch_size=args.batch_size,
        data_options=parse_overrides(args.data_option) or None,
        quiet=args.quiet,  # progress goes to stderr: fine with --json too
    )
    if not args.json:
        _print(result)
    return result


def default_split(model, data) -> str:
    """``all`` for a language model's own text file (the user expects every byte scored),
    ``validation`` for named datasets and classifiers."""
    from pathlib import Path

    from edgeseq.corpus import NAMED_DATASETS

    if data and getattr(model, "task", None) == "lm" and str(data) not in NAMED_DATASETS and Path(str(data)).expanduser().is_file():
        return "all"
    return "validation"


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['model']} on {result['dataset']} ({result['split']})", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    if result["task"] == "lm":
        rows = [("bits per byte", f"{result['bits_per_byte']:.4f}"), ("loss (nats/token)", f"{result['loss_nats']:.4f}"),
                ("perplexity (per token)", f"{result['perplexity']:.3f}"), ("tokens", f"{result['tokens']:,}"),
                ("bytes", f"{result['bytes']:,}")]
    else:
        rows = [("accuracy", f"{100 * result['accuracy']:.2f}%"), ("samples", f"{result['samples']:,}"),
                ("correct", f"{result['correct']:,}")]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
