"""``edgeseq train FAMILY --data D -o DIR``: train a small streaming model and save it."""

from __future__ import annotations

HELP = "train a small model (language model on text, classifier on a task)"
DESCRIPTION = (
    "Train a model of FAMILY (mamba, mamba2, spikegpt, lmuformer, spiking-lmuformer) with AdamW, a cosine "
    "learning rate, gradient clipping and periodic validation, and save it to DIR as an edgeseq "
    "checkpoint (model.safetensors + edgeseq.json with the exact command in its meta). Language "
    "models take --data shakespeare-style text: a text file (first 90% train, last 10% "
    "validation) or 'stdlib' (the built-in corpus); classifiers take a task (digits, "
    "speech-commands) or a .npz file. Set model config fields with --set key=value."
)


def add_arguments(p) -> None:
    p.add_argument("family", metavar="FAMILY", help="model family (see `edgeseq models`)")
    p.add_argument("--data", default=None,
                   help="text file, 'stdlib', or a classification task (digits, speech-commands, FILE.npz); "
                        "default: stdlib for language models")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to a classification task's loader (repeatable)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output checkpoint folder")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="model config field, JSON value (repeatable), e.g. --set d_model=192")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (LM) / 64 (classifier)")
    p.add_argument("--seq-len", type=int, default=None, help="LM training window in tokens (default 256)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up (default 5%% of steps, ≤ 200)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=None, help="validate (and save) every N steps (default steps/10)")
    p.add_argument("--eval-max-bytes", type=int, default=32768, help="LM: bytes used by periodic validations")
    p.add_argument("--classify-loss", choices=["mean", "frames"], default="mean",
                   help="classifiers: loss on the time-averaged scores (default) or on every frame")
    p.add_argument("--max-minutes", type=float, default=None, help="stop early (saving the model) after this wall time")
    p.add_argument("--keep", choices=["best", "last"], default="best",
                   help="save the weights of the best periodic validation (default) or the last step")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    _OPTIONS[:] = [a for a in p._actions if a.option_strings]


def _command_line(args) -> str:
    """The command as typed (from ``sys.argv``), or rebuilt from ``args`` when called in-process."""
    import shlex
    import sys

    if sys.argv[1:2] == ["train"]:
        return " ".join(["edgeseq", *map(shlex.quote, sys.argv[1:])])
    words = ["edgeseq", "train", args.family]
    for action in _OPTIONS:
        value = getattr(args, action.dest, None)
        if action.dest in ("family", "json", "debug", "help") or value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        elif value is True:
            words.append(flag)
        else:
            words += [flag, str(value)]
    return " ".join(map(shlex.quote, words))


_OPTIONS: list = []


def run(args):
    from edgeseq.tasks import data_kind
    from edgeseq.models import model_class
    from edgeseq.train import parse_overrides, train

    data = args.data
    if data is None:
        if getattr(model_class(args.family), "task", "lm") != "lm":
            from edgeseq.errors import InputError

            raise InputError(f"{args.family} is a classifier: pass --data TASK (digits, speech-commands or FILE.npz)")
        data = "stdlib"
    data_kind(data)
    result = train(
        args.family,
        data,
        args.out,
        args.steps,
        overrides=parse_overrides(args.overrides),
        data_options=parse_overrides(args.data_option),
        train_command=_command_line(args),
        quiet=args.quiet or args.json,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_max_bytes=args.eval_max_bytes,
        classify_loss=args.classify_loss,
        max_minutes=args.max_minutes,
        keep=args.keep,
        device=args.device,
        threads=args.threads,
    )
    if not args.json:
        _print(result)
    return result


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trained {result['family']} → {result['out_dir']}")
    for column in ("step", "train_loss", "val_loss", "val_bits_per_byte", "val_accuracy", "wall_s"):
        if any(column in r for r in result["history"]):
            table.add_column(column, justify="right")
    columns = [c.header for c in table.columns]
    for record in result["history"]:
        cells = [f"{record[c]:.4f}" if isinstance(record.get(c), float) and c != "wall_s" else str(record.get(c, ""))
                 for c in columns]
        if record.get("final"):
            cells[0] = f"kept {result['kept_step']}, whole split"
        table.add_row(*cells)
    Console().print(table)
