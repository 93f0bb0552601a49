"""``edgeseq generate MODEL --prompt P``: stream text through the model's constant-cost ``step``."""

from __future__ import annotations

HELP = "generate text, streaming token by token through step"
DESCRIPTION = (
    "Continue a prompt with a language model: the prompt runs once through prefill, then every "
    "new token costs one constant-cost step (the recurrent state is the only memory). Text is "
    "printed as it streams; --temperature 0 is greedy; --seed makes sampling reproducible."
)


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="zoo name, checkpoint/quantized/artifact folder, or hub id")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--stop", default=None, help="stop once the continuation contains this text")
    p.add_argument("--format", default=None, help="checkpoint format when detection is not enough")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args):
    import sys

    import torch

    from edgeseq.checkpoints import load_model
    from edgeseq.generate import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, format=args.format)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if not args.json:
        show(args.prompt)
    result = generate(loaded.model, loaded.tokenizer, args.prompt, args.max_tokens, temperature=args.temperature,
                      top_k=args.top_k, seed=args.seed, stop=args.stop, on_text=None if args.json else show)
    if not args.json:
        sys.stdout.write("\n")
        rate = result["tokens_per_s"]
        sys.stderr.write(f"{result['tokens']} tokens" + (f", {rate:.1f} tokens/s" if rate else "") + "\n")
    return {"model": loaded.source, **result}
