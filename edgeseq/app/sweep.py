"""Resumable sweeps: run one function over many configurations, storing each result as it finishes.

A sweep lives in a folder: ``results/<key>.json`` holds one finished configuration. A re-run
skips the keys already there, so a crash or Ctrl-C loses nothing that finished. A stored result is
reused only when its ``fingerprint`` (the options that change a result, e.g. the evaluation size)
equals this run's; otherwise it is redone. One sweep at a time per folder: a second run on the same
folder is refused while the first holds ``sweep.lock`` (see ``folder_lock``). Configurations run

* in this process, one after the other (``jobs=1``, the default),
* in local worker processes (``jobs=N``), or
* on a Ray cluster (``ray_address="auto"`` / ``"ray://host:port"`` / ``"local"``).

The function must be importable (``"module:function"``) so that workers can find it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterable

from edgeseq.errors import InputError

RESULTS_DIR = "results"
LOCK_FILE = "sweep.lock"
_HELD_LOCKS: set[str] = set()  # folders whose lock this process holds (a nested take is a no-op)


def config_key(config: dict[str, Any]) -> str:
    """A stable file-name-safe key for a configuration (its values in insertion order)."""
    raw = "__".join(str(v) for v in config.values())
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", raw).strip("-") or "config"


def fingerprint(options: dict[str, Any]) -> str:
    """A short stable hash of the options that change a result (JSON, keys sorted)."""
    raw = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@contextlib.contextmanager
def folder_lock(folder: str | Path):
    """Hold ``folder/sweep.lock`` (an exclusive ``flock``) for one sweep; a second run is refused.

    The lock dies with its process (no stale lock after a crash or kill -9). A nested take by the
    same process (``build_report`` → ``run_sweep``) is a no-op.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD_LOCKS:
        yield
        return
    path = folder / LOCK_FILE
    handle = open(path, "a+")
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(f"{folder} is in use by another edgeseq run ({holder}); wait for it to finish or "
                             f"choose another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _HELD_LOCKS.add(key)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(key)
    finally:
        handle.close()


def _resolve(ref: str) -> Callable[..., dict]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _run_one(fn_ref: str, config: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration; failures become a result with ``error`` set (the sweep goes on)."""
    started = time.perf_counter()
    try:
        result = _resolve(fn_ref)(config, **options)
        # a unit that finished with failed stages is kept but retried on the next run
        status, error = ("partial", None) if result.get("stage_errors") else ("ok", None)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded, reported, and retried on the next run
        result, status = {}, "error"
        error = f"{type(exc).__name__}: {exc}"
        if options.get("debug"):
            traceback.print_exc()
    return {"config": config, "status": status, "error": error, "seconds": time.perf_counter() - started, **result}


def load_results(folder: str | Path) -> list[dict[str, Any]]:
    folder = Path(folder) / RESULTS_DIR
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def run_sweep(
    fn_ref: str,
    configs: Iterable[dict[str, Any]],
    folder: str | Path,
    options: dict[str, Any] | None = None,
    jobs: int = 1,
    ray_address: str | None = None,
    retry_errors: bool = True,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    result_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run ``fn_ref`` over ``configs``, skipping finished ones; returns every stored result.

    A configuration that failed is stored with ``status="error"`` and, with ``retry_errors``,
    tried again on the next run. ``result_options`` are the options that change a result: their
    fingerprint is stored with each result, and a stored result with another fingerprint is redone.
    """
    options = options or {}
    configs = list(configs)
    results_dir = Path(folder) / RESULTS_DIR
    keys = [config_key(c) for c in configs]
    if len(set(keys)) != len(keys):
        raise InputError("the sweep has duplicate configurations")
    wanted = fingerprint(result_options) if result_options is not None else None

    def is_done(key: str) -> bool:
        path = results_dir / f"{key}.json"
        if not path.is_file():
            return False
        try:
            stored = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            return False
        if wanted is not None and stored.get("fingerprint") != wanted:
            return False  # made with other options: redo
        return not retry_errors or stored.get("status") == "ok"

    with folder_lock(folder):
        results_dir.mkdir(parents=True, exist_ok=True)
        pending = [(k, c) for k, c in zip(keys, configs) if not is_done(k)]
        bar = SweepProgress(len(configs), len(configs) - len(pending), progress, pending=[c for _, c in pending])

        def store(key: str, result: dict[str, Any]) -> None:
            if wanted is not None:
                result["fingerprint"] = wanted
                result["options"] = result_options
            _write_json_atomic(results_dir / f"{key}.json", result)
            bar.finished(result)
            if on_result:
                on_result(result)

        try:
            if ray_address:
                _run_ray(fn_ref, pending, options, ray_address, store)
            elif jobs > 1 and len(pending) > 1:
                import multiprocessing

                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                    futures = {pool.submit(_run_one, fn_ref, c, options): k for k, c in pending}
                    for future in as_completed(futures):
                        store(futures[future], future.result())
            else:
                for key, config in pending:
                    bar.started(config)
                    store(key, _run_one(fn_ref, config, options))
        finally:
            bar.close()
        return [json.loads((results_dir / f"{k}.json").read_text()) for k in keys
                if (results_dir / f"{k}.json").is_file()]


def _run_ray(fn_ref, pending, options, address, store) -> None:
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'edgeseq[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=max(1, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(_run_one)
        refs = {remote.remote(fn_ref, c, options): k for k, c in pending}
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            store(refs[done[0]], ray.get(done[0]))
    finally:
        if started_here:
            ray.shutdown()


_CURRENT: "SweepProgress | None" = None  # the sweep running in this process (for stage lines)


def stage(name: str) -> None:
    """Say which stage of the running configuration starts (a unit calls this; no-op outside a sweep)."""
    if _CURRENT is not None:
        _CURRENT.stage(name)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class SweepProgress:
    """Plain progress lines on stderr (terminal or not): which configuration and stage runs, and an
    ETA from the measured times of the configurations finished so far in this run: a configuration
    still to run counts the mean time of those finished with the same first value (the model),
    else the mean of all."""

    def __init__(self, total: int, done: int, enabled: bool, stream: Any = None,
                 pending: list[dict[str, Any]] | None = None):
        global _CURRENT
        self.total, self.done, self.enabled = total, done, enabled
        self.remaining = [self._group(c) for c in (pending or [])]
        self.by_group: dict[str, list[float]] = {}
        self.stream = stream or sys.stderr
        self.started_at = time.perf_counter()
        self.unit_started = self.started_at
        self.durations: list[float] = []
        self.label = ""
        if enabled:
            _CURRENT = self
            if done:
                self._line(f"sweep: {done}/{total} configurations already done (kept), {total - done} to run")

    def _line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    @staticmethod
    def _group(config: dict[str, Any]) -> str:
        return str(next(iter(config.values()), "")) if config else ""

    def eta(self) -> str:
        remaining = self.total - self.done
        if not self.durations:
            return "ETA after the first configuration"
        mean = statistics.fmean(self.durations)
        if len(self.remaining) == remaining:
            seconds = sum(statistics.fmean(self.by_group[g]) if g in self.by_group else mean for g in self.remaining)
        else:
            seconds = mean * remaining
        return f"ETA {_duration(seconds)} ({_duration(mean)} per configuration so far, measured)"

    def started(self, config: dict[str, Any]) -> None:
        self.unit_started = time.perf_counter()
        self.label = " ".join(str(v) for v in config.values())
        self._line(f"[{self.done + 1}/{self.total}] {self.label}: started; {self.eta()}")

    def stage(self, name: str) -> None:
        elapsed = time.perf_counter() - self.unit_started
        self._line(f"[{self.done + 1}/{self.total}] {self.label}: {name} (at {_duration(elapsed)})")

    def finished(self, result: dict[str, Any]) -> None:
        self.done += 1
        seconds = result.get("seconds")
        self.durations.append(float(seconds) if isinstance(seconds, (int, float)) else
                              time.perf_counter() - self.unit_started)
        config = result.get("config") or {}
        group = self._group(config)
        self.by_group.setdefault(group, []).append(self.durations[-1])
        if group in self.remaining:
            self.remaining.remove(group)
        label = " ".join(str(v) for v in (result.get("config") or {}).values()) or self.label
        status = result.get("status")
        why = ""
        if status == "error":
            why = f": {result.get('error')}"
        elif result.get("stage_errors"):
            why = ": failed stages " + ", ".join(result["stage_errors"])
        self._line(f"[{self.done}/{self.total}] {label}: {status} in {_duration(self.durations[-1])}{why}; {self.eta()}")

    def close(self) -> None:
        global _CURRENT
        if _CURRENT is self:
            _CURRENT = None
        if self.enabled and self.total:
            self._line(f"sweep: {self.done}/{self.total} done in {_duration(time.perf_counter() - self.started_at)}")


def demo_unit(config: dict[str, Any], log: str | None = None, interrupt_at: Any = None, fail_at: Any = None,
              **_: Any) -> dict[str, Any]:
    """A tiny sweep function (used by the tests and the docs): squares ``config['x']``.

    ``log`` gets one line per call (to see what re-ran); ``interrupt_at``/``fail_at`` simulate a
    Ctrl-C or a failure at that ``x``.
    """
    if log:
        with open(log, "a") as handle:
            handle.write(f"{config['x']}\n")
    if interrupt_at is not None and config["x"] == interrupt_at:
        raise KeyboardInterrupt
    if fail_at is not None and config["x"] == fail_at:
        raise RuntimeError("simulated failure")
    return {"y": config["x"] ** 2}
