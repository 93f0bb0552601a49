"""``edgeseq device-server``: a TVM RPC server on a device, for ``edgeseq profile --rpc/--tracker``."""

from __future__ import annotations

import sys

HELP = "run a TVM RPC server on this device (loopback by default) for remote profiling"
DESCRIPTION = (
    "Start a TVM RPC server that `edgeseq profile ARTIFACT --rpc HOST:PORT` (or --tracker HOST:PORT "
    "--key KEY) uploads artifacts to and profiles them on. It binds to 127.0.0.1 unless --host says "
    "otherwise, and any other address needs --allow-remote: the server runs whatever code a client "
    "sends, so expose it only on a trusted network. With --tracker it registers with a TVM RPC "
    "tracker under --key (the kind of board), so a fleet is shared. --start-tracker also runs a "
    "tracker here. Stops on Ctrl-C."
)


def add_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9090, help="TCP port (default 9090)")
    p.add_argument("--key", default="", help="device key to register with the tracker (e.g. orin-nano)")
    p.add_argument("--tracker", metavar="HOST:PORT", help="register with this TVM RPC tracker")
    p.add_argument("--start-tracker", metavar="PORT", type=int, help="also run a tracker on --host:PORT and register with it")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (trusted networks only)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")


def run(args):
    from targets import rpc

    tracker_process = None
    tracker = args.tracker
    if args.start_tracker:
        if tracker:
            from edgeseq.errors import InputError

            raise InputError("give --tracker HOST:PORT or --start-tracker PORT, not both")
        tracker_process = rpc.start_tracker(args.host, args.start_tracker, allow_remote=args.allow_remote)
        tracker = f"{args.host}:{tracker_process.port}"
        if not args.key:
            args.key = "edgeseq"

    def announce(info):
        where = f"{info['host']}:{info['port']}"
        via = f", registered with tracker {info['tracker']} as key {info['key']!r}" if info["tracker"] else ""
        sys.stderr.write(f"edgeseq device-server: TVM RPC server on {where}{via}; Ctrl-C stops it\n")
        sys.stderr.flush()
        if args.json:
            from edgeseq.cli import emit_json

            emit_json({"event": "listening", **info})

    try:
        info = rpc.serve(args.host, args.port, args.key, tracker, args.allow_remote, announce=announce,
                         stop_after_s=args.duration)
    finally:
        if tracker_process is not None:
            rpc.stop(tracker_process)
    return None
