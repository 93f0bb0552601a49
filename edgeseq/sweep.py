"""Resumable sweeps: run one function over many configurations, storing each result as it finishes.

A sweep lives in a folder: ``results/<key>.json`` holds one finished configuration. A re-run
skips the keys already there, so a crash or Ctrl-C loses nothing that finished. Configurations run

* in this process, one after the other (``jobs=1``, the default),
* in local worker processes (``jobs=N``), or
* on a Ray cluster (``ray_address="auto"`` / ``"ray://host:port"`` / ``"local"``).

The function must be importable (``"module:function"``) so that workers can find it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterable

from edgeseq.errors import InputError

RESULTS_DIR = "results"


def config_key(config: dict[str, Any]) -> str:
    """A stable file-name-safe key for a configuration (its values in insertion order)."""
    raw = "__".join(str(v) for v in config.values())
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", raw).strip("-") or "config"


def _resolve(ref: str) -> Callable[..., dict]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
    os.replace(tmp, path)


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
) -> list[dict[str, Any]]:
    """Run ``fn_ref`` over ``configs``, skipping finished ones; returns every stored result.

    A configuration that failed is stored with ``status="error"`` and, with ``retry_errors``,
    tried again on the next run.
    """
    options = options or {}
    configs = list(configs)
    results_dir = Path(folder) / RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    keys = [config_key(c) for c in configs]
    if len(set(keys)) != len(keys):
        raise InputError("the sweep has duplicate configurations")

    def is_done(key: str) -> bool:
        path = results_dir / f"{key}.json"
        if not path.is_file():
            return False
        if not retry_errors:
            return True
        try:
            return json.loads(path.read_text()).get("status") == "ok"
        except json.JSONDecodeError:
            return False

    pending = [(k, c) for k, c in zip(keys, configs) if not is_done(k)]
    bar = _progress(len(configs), len(configs) - len(pending), progress)

    def store(key: str, result: dict[str, Any]) -> None:
        _write_json_atomic(results_dir / f"{key}.json", result)
        bar.update(1)
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
                store(key, _run_one(fn_ref, config, options))
    finally:
        bar.close()
    return [json.loads((results_dir / f"{k}.json").read_text()) for k in keys if (results_dir / f"{k}.json").is_file()]


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


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="sweep", unit="config", file=sys.stderr,
                disable=not sys.stderr.isatty() and os.environ.get("EDGESEQ_PROGRESS") != "1")


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
