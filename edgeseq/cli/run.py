"""``edgeseq run ARTIFACT_DIR``: stream through an exported artifact alone (no PyTorch model)."""

from __future__ import annotations

HELP = "stream tokens or frames through an exported artifact (ONNX Runtime / TVM)"
DESCRIPTION = (
    "Run an artifact written by `edgeseq export` with its own runtime only. Language models: feed "
    "--prompt through the prefill/step graphs and generate --max-new-tokens tokens, with the same "
    "flags and defaults as `edgeseq generate` (--temperature 0 is greedy). Classifiers: classify "
    "the frames of --input (a .npy file [T, F] or [B, T, F]) by the running mean of the per-frame scores."
)


def add_arguments(p) -> None:
    from edgeseq.cli.generate import add_generation_arguments

    p.add_argument("artifact", metavar="ARTIFACT_DIR", help="folder written by edgeseq export")
    add_generation_arguments(p)
    p.add_argument("--input", metavar="FILE.npy", help="classifier frames [T, F] or [B, T, F]")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")


def run(args):
    from targets.runtimes import open_artifact
    from export.stream import classify_frames

    runner = open_artifact(args.artifact, threads=args.threads)
    if runner.task == "lm":
        from edgeseq.checkpoints import load_model
        from edgeseq.cli.generate import stream_generation

        tokenizer = load_model(args.artifact).tokenizer if runner.manifest.get("tokenizer", {}).get("kind") == "hf" else None
        result = {"model": str(args.artifact), **stream_generation(runner, tokenizer, args)}
        return result if args.json else None
    result = classify_frames(runner, args.input)
    if args.json:
        return result
    for i, (label, score) in enumerate(zip(result["predictions"], result["confidence"])):
        print(f"sequence {i}: class {label} (mean score {score:.3f})")
    return None
