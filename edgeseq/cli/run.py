"""``edgeseq run ARTIFACT_DIR``: stream through an exported artifact alone (no PyTorch model)."""

from __future__ import annotations

import sys

HELP = "stream tokens or frames through an exported artifact (ONNX Runtime / TVM)"
DESCRIPTION = (
    "Run an artifact written by `edgeseq export` with its own runtime only. Language models: feed "
    "--prompt through the prefill/step graphs and generate --max-new-tokens tokens greedily (or sample "
    "with --temperature). Classifiers: classify the frames of --input (a .npy file [T, F] or [B, T, F]) "
    "by the running mean of the per-frame scores."
)


def add_arguments(p) -> None:
    p.add_argument("artifact", metavar="ARTIFACT_DIR", help="folder written by edgeseq export")
    p.add_argument("--prompt", default="\n", help="LM prompt text (default: a newline, as `edgeseq generate`; an empty prompt is refused)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--input", metavar="FILE.npy", help="classifier frames [T, F] or [B, T, F]")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")


def run(args):
    from targets.runtimes import open_artifact
    from export.stream import classify_frames, generate

    runner = open_artifact(args.artifact, threads=args.threads)
    if runner.task == "lm":
        from edgeseq.checkpoints import load_model

        tokenizer = load_model(args.artifact).tokenizer if runner.manifest.get("tokenizer", {}).get("kind") == "hf" else None
        echo = None if args.json else _echo
        if echo is not None:
            echo(args.prompt)
        result = generate(runner, args.prompt, args.max_new_tokens, args.temperature, args.seed, tokenizer, on_text=echo)
        if not args.json:
            sys.stdout.write("\n")
            sys.stderr.write(
                f"[run] {result['new_tokens']} tokens in {result['seconds']:.2f} s "
                f"({result['tokens_per_s']:.1f} tokens/s) through {result['runtime']}\n"
            )
            return None
        return result
    result = classify_frames(runner, args.input)
    if args.json:
        return result
    for i, (label, score) in enumerate(zip(result["predictions"], result["confidence"])):
        print(f"sequence {i}: class {label} (mean score {score:.3f})")
    return None


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
