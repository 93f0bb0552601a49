"""``edgeseq generate MODEL --prompt P``: stream text through the model's constant-cost ``step``.

:func:`add_generation_arguments` is shared with ``edgeseq run``: both commands drive the one
decode loop (:func:`edgeseq.generate.generate`) with the same flags and defaults.
"""

from __future__ import annotations

import argparse
import sys

HELP = "generate text, streaming token by token through step"
DESCRIPTION = (
    "Continue a prompt with a language model: the prompt runs once through prefill, then every "
    "new token costs one constant-cost step (the recurrent state is the only memory). Text is "
    "printed as it streams; --temperature 0 is greedy; --seed makes sampling reproducible."
)


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's ``dest`` and says so in
    one line on stderr."""

    def __init__(self, option_strings, dest, replacement: str = "", **kwargs):
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stderr.write(f"{parser.prog}: {option_string} is deprecated; use {self.replacement}\n")
        setattr(namespace, self.dest, values)


def add_generation_arguments(p) -> None:
    """The generation flags of ``edgeseq generate`` and ``edgeseq run`` (one set of defaults)."""
    from edgeseq.generate import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE

    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline; an empty prompt is refused)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"tokens to generate after the prompt (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--max-tokens", dest="max_new_tokens", type=int, action=DeprecatedAlias,
                   replacement="--max-new-tokens")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"softmax temperature; 0 = greedy (default {DEFAULT_TEMPERATURE})")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--stop", default=None, help="stop once the continuation contains this text")


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="zoo name, checkpoint/quantized/artifact folder, or hub id")
    add_generation_arguments(p)
    p.add_argument("--format", default=None, help="checkpoint format when detection is not enough")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def stream_generation(model, tokenizer, args) -> dict:
    """Run :func:`edgeseq.generate.generate` with the flags of :func:`add_generation_arguments`:
    text streams to stdout (prompt first) and a one-line summary goes to stderr, unless ``--json``."""
    from edgeseq.generate import generate

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if not args.json:
        show(args.prompt)
    result = generate(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, seed=args.seed, stop=args.stop, on_text=None if args.json else show)
    if not args.json:
        sys.stdout.write("\n")
        rate = result["tokens_per_s"]
        sys.stderr.write(f"{result['tokens']} tokens" + (f", {rate:.1f} tokens/s" if rate else "")
                         + f" through {result['runtime']}\n")
    return result


def run(args):
    import torch

    from edgeseq.checkpoints import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, format=args.format)
    return {"model": loaded.source, **stream_generation(loaded.model, loaded.tokenizer, args)}
