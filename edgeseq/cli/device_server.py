"""``edgeseq device-server``: a TVM RPC server on a device, for ``edgeseq profile --rpc/--tracker``."""

from __future__ import annotations

import sys

HELP = "run a TVM RPC server on this device (loopback by default) for remote profiling"
DESCRIPTION = (
    "Start a TVM RPC server that `edgeseq profile ARTIFACT --rpc HOST:PORT --key TOKEN` (or --tracker "
    "HOST:PORT --key KEY) uploads artifacts to and profiles them on. WHAT A CLIENT CAN DO: a TVM RPC "
    "client can upload and load any shared library and run any code in it, and write files anywhere "
    "this server's user can write, with this user's rights. So: the server binds to 127.0.0.1 unless "
    "--host says otherwise (any other address needs --allow-remote, trusted networks only); it refuses "
    "to run as root unless --allow-root says you mean it; and, without a tracker, it requires a secret: "
    "a random token printed at start (or --token), which the client passes as --key. With --tracker it "
    "registers with a TVM RPC tracker under --key (the kind of board) so a fleet is shared: the tracker "
    "hands sessions to any client that names the key, so the token cannot protect a tracker-managed "
    "server; keep tracker and servers on a trusted network. --start-tracker also runs a tracker here. "
    "Stops on Ctrl-C."
)


def add_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9090, help="TCP port (default 9090)")
    p.add_argument("--key", default="", help="device key to register with the tracker (e.g. orin-nano)")
    p.add_argument("--tracker", metavar="HOST:PORT", help="register with this TVM RPC tracker")
    p.add_argument("--start-tracker", metavar="PORT", type=int, help="also run a tracker on --host:PORT and register with it")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (trusted networks only: clients run any code as this user)")
    p.add_argument("--allow-root", action="store_true",
                   help="run even as root (clients could then run code and write files as root)")
    p.add_argument("--token", metavar="SECRET", default=None,
                   help="the secret clients must pass as --key (direct connections; default: a random token "
                        "printed at start)")
    p.add_argument("--no-token", action="store_true",
                   help="no secret: any client that reaches the port gets a session (loopback testing only)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def new_token() -> str:
    import secrets

    return "edgeseq-" + secrets.token_urlsafe(18)


def run(args):
    from targets import rpc

    from edgeseq.errors import InputError

    rpc.check_bind(args.host, args.allow_remote)
    if _running_as_root() and not args.allow_root:
        raise InputError("refusing to run the RPC server as root: a client can run any code and write any file "
                         "with the server's rights; run it as an unprivileged user, or pass --allow-root if you mean it")
    if args.token is not None and args.no_token:
        raise InputError("give --token SECRET or --no-token, not both")
    tracker_process = None
    tracker = args.tracker
    if args.start_tracker:
        if tracker:
            raise InputError("give --tracker HOST:PORT or --start-tracker PORT, not both")
        tracker_process = rpc.start_tracker(args.host, args.start_tracker, allow_remote=args.allow_remote)
        tracker = f"{args.host}:{tracker_process.port}"
        if not args.key:
            args.key = "edgeseq"

    token = None
    if not tracker and not args.no_token:
        token = args.token or new_token()
        if args.key:
            raise InputError("--key names a board for a tracker; a direct server's secret is --token "
                             "(or pass --no-token to use a plain --key)")
        args.key = token  # TVM RPC: a direct server accepts only clients that send this key
    elif tracker and args.token:
        raise InputError("--token protects direct connections only: a tracker hands sessions to any client naming "
                         "the key; drop --token (and keep the tracker on a trusted network)")

    def announce(info):
        where = f"{info['host']}:{info['port']}"
        via = f", registered with tracker {info['tracker']} as key {info['key']!r}" if info["tracker"] else ""
        sys.stderr.write(f"edgeseq device-server: TVM RPC server on {where}{via}; Ctrl-C stops it\n")
        if token:
            sys.stderr.write(f"edgeseq device-server: clients connect with: edgeseq profile ARTIFACT --rpc {where} "
                             f"--key {token}\n")
        sys.stderr.flush()
        if args.json:
            from edgeseq.cli import emit_json

            shown = {**info, "key": None if token else info["key"], "token": token}
            emit_json({"event": "listening", **shown})

    try:
        info = rpc.serve(args.host, args.port, args.key, tracker, args.allow_remote, announce=announce,
                         stop_after_s=args.duration)
    finally:
        if tracker_process is not None:
            rpc.stop(tracker_process)
    return None
