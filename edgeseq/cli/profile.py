"""``edgeseq profile``: per-token latency, time to first token, memory and roofline on a target."""

from __future__ import annotations

HELP = "profile decode latency (p50/p90/p99), time to first token, memory and roofline ratio"
DESCRIPTION = (
    "Profile a model (zoo name or checkpoint: PyTorch eager) or exported artifact folders (ONNX "
    "Runtime or TVM, by their manifest) on a target: warm-up, then per-token decode latency "
    "p50/p90/p99, time to first token for a prompt of --prompt-len, tokens/s, peak memory, model "
    "bytes, bytes moved per token and measured latency / roofline latency (bytes per token / the "
    "target's memory bandwidth, measured for the host). --rpc HOST:PORT or --tracker HOST:PORT "
    "--key KEY runs TVM artifacts on a remote device (see `edgeseq device-server`); several "
    "artifacts are then profiled in parallel."
)


def add_arguments(p) -> None:
    p.add_argument("source", nargs="+", metavar="ARTIFACT|MODEL", help="artifact folder(s), a zoo name or a checkpoint")
    p.add_argument("--target", default="host", help="target name from `edgeseq targets` (default: host)")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt length for time to first token (0 skips it; default 64, "
                   "the default prefill length of `edgeseq export`)")
    p.add_argument("--tokens", type=int, default=64, help="timed decode steps (default 64)")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (default 8)")
    p.add_argument("--threads", type=int, help="CPU threads for the runtime (default: the runtime's own)")
    p.add_argument("--runtime", choices=["torch", "torch-cudagraph", "triton", "onnxruntime", "tvm"],
                   help="check that the source runs in this runtime (default: chosen by the source; a Mamba "
                        "model on a CUDA target gets the fused Triton step when Triton is there)")
    p.add_argument("--targets-file", metavar="FILE", help="extra targets (JSON/TOML), see `edgeseq targets`")
    p.add_argument("--rpc", metavar="HOST:PORT", help="run on the TVM RPC server there")
    p.add_argument("--tracker", metavar="HOST:PORT", help="ask this TVM RPC tracker for a free --key device")
    p.add_argument("--key", default="", help="device key for --tracker, or for --rpc the token `edgeseq device-server` printed")


def run(args):
    import sys

    from edgeseq.errors import InputError
    from targets.profile import print_report, profile
    from targets.rpc import profile_many, profile_remote

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1 (got {args.threads})")
    options = dict(prompt_len=args.prompt_len, tokens=args.tokens, warmup=args.warmup, targets_file=args.targets_file)
    show_progress = not args.json and sys.stderr.isatty()
    remote = bool(args.rpc or args.tracker)
    if remote and args.threads:
        raise InputError("--threads applies to local runs; set TVM_NUM_THREADS on the device server instead")
    if len(args.source) == 1:
        if remote:
            report = profile_remote(args.source[0], args.target, args.rpc, args.tracker, args.key, progress=show_progress, **options)
        else:
            report = profile(args.source[0], args.target, threads=args.threads, runtime=args.runtime, progress=show_progress, **options)
    elif remote:
        report = profile_many(args.source, tracker=args.tracker, key=args.key, rpc=args.rpc, target=args.target, **options)
    else:
        report = [profile(s, args.target, threads=args.threads, runtime=args.runtime, progress=show_progress, **options) for s in args.source]
    if not args.json:
        print_report(report)
    return report
