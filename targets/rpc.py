"""Remote devices through TVM RPC: a device server, a tracker-managed fleet, remote profiling.

* ``edgeseq device-server`` runs :func:`serve`: a TVM RPC server bound to loopback unless told
  otherwise, optionally registered with a tracker under a key (the kind of board, e.g.
  ``orin-nano``).
* ``edgeseq profile DIR --rpc HOST:PORT`` opens a session to that server; ``--tracker HOST:PORT
  --key KEY`` asks a tracker for any free device with that key. The artifact's ``.so`` files are
  uploaded, loaded there (``load_module``) and run by a Relax VM over the remote device;
  :class:`RemoteTvmRuntime` times steps *on the device* with ``time_evaluator``.
* :func:`profile_many` profiles several artifacts in parallel, one tracker session each, so a
  fleet of boards is used at once.

A TVM RPC server executes whatever a client uploads: keep it on loopback or a trusted network.
Binding to anything but a loopback address needs ``allow_remote=True`` (``--allow-remote``).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeseq.errors import EdgeseqError, InputError, require
from targets.manifest import Artifact, read_artifact
from targets.runtimes import ArtifactRuntime, tvm_outputs

DEFAULT_PORT = 9090
DEFAULT_TRACKER_PORT = 9190


def parse_address(text: str, what: str = "--rpc", default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``) → (host, port); bad text is an InputError naming the option."""
    host, sep, port_text = str(text).rpartition(":")
    if not sep:
        host, port_text = str(text), str(default_port)
    host = host.strip("[]")
    if not host:
        raise InputError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:{default_port}")
    try:
        port = int(port_text)
    except ValueError:
        raise InputError(f"{what} {text!r}: the port must be a number (HOST:PORT)") from None
    if not 0 < port < 65536:
        raise InputError(f"{what} {text!r}: the port must be in 1..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    if not is_loopback(host) and not allow_remote:
        raise InputError(
            f"refusing to bind the RPC server to {host}: a TVM RPC server runs any code a client sends. "
            f"Use 127.0.0.1 (default), or pass --allow-remote on a trusted network"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (for tests and ad-hoc servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------
# servers and trackers
# --------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; TVM's own clean-up needs psutil, often missing)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def stop(process: Any, timeout: float = 5.0) -> None:
    """Stop a server/tracker started here and every process it forked (sessions), by pid."""
    import os
    import signal

    worker = getattr(process, "proc", None)
    popen = getattr(worker, "_proc", None)
    if popen is None:
        return
    pending, tree = [popen.pid], []
    while pending:  # the whole tree first, then kill it leaves-up
        pid = pending.pop()
        tree.append(pid)
        pending += _children(pid)
    for pid in reversed(tree[1:]):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for stream in (getattr(worker, "_writer", None), getattr(worker, "_reader", None)):
        try:
            stream and stream.close()
        except OSError:
            pass
    popen.kill()
    try:
        popen.wait(timeout=timeout)
    except Exception:
        pass
    worker._proc = None
    process.proc = None


def start_server(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, key: str = "", tracker: str | None = None,
    allow_remote: bool = False, port_end: int | None = None,
) -> Any:
    """Start a TVM RPC server in a child process; returns it (``.port``; ``.terminate()``)."""
    check_bind(host, allow_remote)
    rpc = require("tvm.rpc", "pip install apache-tvm")
    tracker_addr = parse_address(tracker, "--tracker", DEFAULT_TRACKER_PORT) if tracker else None
    if tracker_addr:
        _check_reachable(tracker_addr, "tracker")
    try:
        return rpc.Server(host=host, port=port, port_end=port_end or port + 1, key=key,
                          tracker_addr=tracker_addr, silent=True)
    except Exception as exc:
        raise EdgeseqError(f"could not start the RPC server on {host}:{port} ({_first_line(exc)}); is the port in use?") from None


def start_tracker(host: str = "127.0.0.1", port: int = DEFAULT_TRACKER_PORT, allow_remote: bool = False, port_end: int | None = None) -> Any:
    """Start a TVM RPC tracker in a child process (needs ``tornado``); returns it (``.port``)."""
    check_bind(host, allow_remote)
    require("tornado", "pip install tornado (the TVM RPC tracker needs it)")
    tracker = require("tvm.rpc.tracker", "pip install apache-tvm tornado")
    return tracker.Tracker(host=host, port=port, port_end=port_end or port + 1, silent=True)


def serve(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, key: str = "", tracker: str | None = None,
    allow_remote: bool = False, announce: Any = None, stop_after_s: float | None = None,
) -> dict[str, Any]:
    """Run a device server until interrupted (or for ``stop_after_s``); what ``edgeseq device-server`` does."""
    server = start_server(host, port, key, tracker, allow_remote)
    info = {"host": host, "port": server.port, "key": key, "tracker": tracker}
    if announce:
        announce(info)
    try:
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
            if server.proc is None:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop(server)
    return info


def _check_reachable(address: tuple[str, int], what: str, timeout: float = 3.0) -> None:
    try:
        with socket.create_connection(address, timeout=timeout):
            pass
    except OSError as exc:
        raise EdgeseqError(
            f"no {what} answers at {address[0]}:{address[1]} ({exc.strerror or exc}); start one with "
            f"`edgeseq device-server`{' --tracker' if what == 'tracker' else ''} or check the address"
        ) from None


def connect(rpc: str | None = None, tracker: str | None = None, key: str = "", session_timeout: float = 0, priority: int = 1) -> Any:
    """An RPC session: straight to a server (``rpc``) or any free ``key`` device of a tracker."""
    rpc_mod = require("tvm.rpc", "pip install apache-tvm")
    if bool(rpc) == bool(tracker):
        raise InputError("give exactly one of --rpc HOST:PORT or --tracker HOST:PORT (with --key)")
    if rpc:
        address = parse_address(rpc, "--rpc")
        _check_reachable(address, "RPC server")
        try:
            return rpc_mod.connect(address[0], address[1], key=key, session_timeout=session_timeout)
        except Exception as exc:
            hint = " (a server started with --key KEY takes sessions only with the same --key)" if "key" in str(exc) else ""
            raise EdgeseqError(f"the RPC server at {rpc} refused the session ({_first_line(exc)}){hint}") from None
    if not key:
        raise InputError("--tracker needs --key KEY: the kind of device to ask for (what the servers registered with)")
    address = parse_address(tracker, "--tracker", DEFAULT_TRACKER_PORT)
    _check_reachable(address, "tracker")
    try:
        client = rpc_mod.connect_tracker(address[0], address[1])
        return client.request(key, priority=priority, session_timeout=session_timeout, max_retry=3)
    except Exception as exc:
        raise EdgeseqError(
            f"the tracker at {tracker} gave no free device for key {key!r} ({_first_line(exc)}); "
            f"is a device server registered with it under that key?"
        ) from None


# --------------------------------------------------------------------------------------------
# the remote runtime
# --------------------------------------------------------------------------------------------


class RemoteTvmRuntime(ArtifactRuntime):
    """A TVM artifact run on a remote device: upload, ``load_module``, Relax VM over the session."""

    name = "tvm-rpc"

    def __init__(self, artifact: Artifact, session: Any, device: str = "cpu", address: str = ""):
        if artifact.format != "tvm":
            raise InputError(f"{artifact.folder}: remote profiling runs TVM artifacts (.so); this one is {artifact.format}")
        self.tvm = require("tvm", "pip install apache-tvm")
        super().__init__(artifact)
        self.session = session
        self.device = device
        self.device_name = f"{device} via rpc {address}".strip()
        self.dev = session.cuda(0) if device.startswith("cuda") else session.cpu(0)
        self.step_vm = self._load(artifact.step_file)
        self.prefill_vm = self._load(artifact.prefill_file) if artifact.prefill_file else None
        self.has_prefill = self.prefill_vm is not None

    def _load(self, path: Path) -> Any:
        from tvm import relax

        try:
            self.session.upload(str(path))
            module = self.session.load_module(path.name)
            return relax.VirtualMachine(module, self.dev)
        except Exception as exc:
            raise EdgeseqError(f"the remote device could not load {path.name} ({_first_line(exc)}); was it compiled for that device?") from None

    def _remote(self, arrays: Sequence[Any]) -> list[Any]:
        return [self.tvm.runtime.tensor(np.ascontiguousarray(a), self.dev) for a in arrays]

    def _call(self, vm: Any, args: Sequence[Any]) -> list[np.ndarray]:
        vm.set_input("main", *self._remote(args))
        vm.invoke_stateful("main")
        return tvm_outputs(vm.get_outputs("main"))

    def _step(self, x_t: Any, state: list[Any]) -> Sequence[Any]:
        return self._call(self.step_vm, [x_t, *state])

    def _prefill(self, x: Any, state: list[Any]) -> Sequence[Any]:
        return self._call(self.prefill_vm, [x, *state])

    def time_steps(self, x_t: Any, state: Sequence[Any], count: int) -> list[float]:
        """``count`` step latencies in ms, timed on the device (no network in the figures)."""
        timer = self.step_vm.time_evaluator("main", self.dev, number=1, repeat=count, min_repeat_ms=0)
        result = timer(*self._remote([x_t, *state]))
        return [float(t) * 1e3 for t in result.results]

    def peak_memory_bytes(self) -> int | None:
        return None  # the remote process's memory is not visible through RPC

    def close(self) -> None:
        """Drop every handle on the session so the server (and a tracker's queue) frees the device."""
        import gc

        self.step_vm = self.prefill_vm = None
        self.session = None
        gc.collect()


def artifact_device(target: Any) -> str:
    """``cuda`` or ``cpu``: where an artifact compiled for ``target`` (manifest entry) runs."""
    if isinstance(target, dict):
        tvm_target = target.get("tvm_target")
        kind = tvm_target.get("kind") if isinstance(tvm_target, dict) else str(tvm_target or "")
        return "cuda" if target.get("cuda_arch") or "cuda" in kind or "jetson" in kind else "cpu"
    text = str(target or "")
    return "cuda" if "cuda" in text or "jetson" in text else "cpu"


def open_remote(source: str | Path, rpc: str | None = None, tracker: str | None = None, key: str = "",
                device: str | None = None) -> RemoteTvmRuntime:
    artifact = read_artifact(source)
    if device is None:
        device = artifact_device(artifact.manifest.get("target"))
    session = connect(rpc, tracker, key)
    runtime = RemoteTvmRuntime(artifact, session, device, rpc or f"tracker {tracker} key {key}")
    from targets.selfcheck import check_on_device

    # proof on the remote device: its own kernels run the shipped reference stream (not cached:
    # the cache is keyed by this machine's CPU, not the device's)
    check_on_device(artifact.folder, artifact.manifest, f"tvm-rpc-{device}", lambda x, s: runtime.step(x, s), use_cache=False)
    return runtime


def profile_remote(
    source: str | Path, target: str = "host", rpc: str | None = None, tracker: str | None = None, key: str = "",
    prompt_len: int = 64, tokens: int = 64, warmup: int = 8, targets_file: str | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Profile an artifact on a remote device (``--rpc`` or ``--tracker``/``--key``)."""
    from targets.profile import profile_runtime
    from targets.registry import get_target

    spec = get_target(target, targets_file)
    runtime = open_remote(source, rpc, tracker, key, device=None if spec.name == "host" else spec.device)
    try:
        report = profile_runtime(runtime, spec, prompt_len, tokens, warmup, progress=progress)
    finally:
        runtime.close()
    report["rpc"] = rpc or {"tracker": tracker, "key": key}
    return report


def profile_many(
    sources: Sequence[str | Path], tracker: str | None = None, key: str = "", rpc: str | None = None,
    workers: int | None = None, **kwargs: Any,
) -> list[dict[str, Any]]:
    """Profile several artifacts in parallel, each on its own tracker session (its own board).

    A failure of one artifact becomes a report with ``partial: true`` and its ``error``; the
    others go on.
    """
    def one(source: str | Path) -> dict[str, Any]:
        try:
            return profile_remote(source, rpc=rpc, tracker=tracker, key=key, **kwargs)
        except EdgeseqError as exc:
            return {"source": str(source), "partial": True, "error": str(exc), "measured": []}

    with ThreadPoolExecutor(max_workers=workers or len(sources) or 1) as pool:
        return list(pool.map(one, sources))


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:240] if lines else type(exc).__name__


__all__ = [
    "RemoteTvmRuntime",
    "check_bind",
    "connect",
    "free_port",
    "is_loopback",
    "open_remote",
    "parse_address",
    "profile_many",
    "profile_remote",
    "serve",
    "start_server",
    "stop",
    "start_tracker",
]
