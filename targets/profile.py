"""Latency profiling of a streaming model in one runtime on one target.

``profile_runtime(runtime, target)`` measures

* **decode**: after ``warmup`` steps, ``tokens`` timed steps, each feeding its new state back
  (the same input token/frame every step, so only the step is timed); p50/p90/p99 in ms and
  tokens/s = 1000 / mean;
* **time to first token**: the prompt of ``prompt_len`` tokens through the prefill graph (or step
  by step when the artifact has none) from the zero state, median of ``ttft_repeats`` runs after
  one warm-up run; the first token's distribution is the prefill's last output;
* **memory**: peak process RSS (CPU) or peak device memory (CUDA), model bytes, state bytes;
* **roofline**: bytes moved per token ÷ the target's memory bandwidth (measured for the host),
  and measured p50 ÷ that floor (see ``targets.roofline``).

Remote runtimes time on the device (TVM ``time_evaluator``) so the network is not in the figures.
When a step fails mid-run (a remote device that went away), the report keeps what was measured,
with ``partial: true`` and the ``error``.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable

from edgeseq.errors import EdgeseqError, InputError
from targets.registry import TargetSpec
from targets.roofline import roofline
from targets.runtime_base import Runtime

SCHEMA_VERSION = 1

# every key of the report, in order (docs/targets.md documents each)
REPORT_KEYS = (
    "schema", "source", "runtime", "target", "device", "threads", "kernels", "batch", "prompt_len", "tokens", "warmup",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "ttft_ms", "ttft_method", "tokens_per_s",
    "peak_mem_bytes", "model_bytes", "state_bytes", "bytes_per_token", "bandwidth_gbs", "bandwidth_source",
    "roofline_ms", "roofline_ratio", "timing", "partial", "error", "measured",
)


def percentile(samples: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method) of ``samples``; None when empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _progress(total: int, enabled: bool, description: str):
    """A rich progress bar on stderr (a no-op object when disabled)."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    progress.start()
    progress.add_task(description, total=total)
    return progress


def _time_local_steps(runtime: Runtime, count: int, x_t: Any, state: list[Any], tick: Callable[[], None]) -> tuple[list[float], list[Any]]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        _, state = runtime.step(x_t, state)
        runtime.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
        tick()
    return samples, state


def profile_runtime(
    runtime: Runtime,
    target: TargetSpec,
    prompt_len: int = 64,
    tokens: int = 64,
    warmup: int = 8,
    threads: int | None = None,
    ttft_repeats: int = 3,
    progress: bool = False,
    chunk: int = 16,
) -> dict[str, Any]:
    """Profile ``runtime`` on ``target``; returns the report dict (keys: ``REPORT_KEYS``)."""
    if tokens < 1:
        raise InputError(f"--tokens must be at least 1 (got {tokens})")
    if prompt_len < 0 or warmup < 0:
        raise InputError("--prompt-len and --warmup must be non-negative")
    if threads:
        runtime.set_threads(threads)
    report: dict[str, Any] = {key: None for key in REPORT_KEYS}
    report.update(
        schema=SCHEMA_VERSION, source=runtime.source, runtime=runtime.name, target=target.name,
        device=getattr(runtime, "device_name", runtime.device), threads=runtime.threads,
        kernels=getattr(runtime, "kernels", None), batch=1,
        prompt_len=prompt_len, tokens=tokens, warmup=warmup, model_bytes=runtime.model_bytes,
        state_bytes=runtime.io.state_bytes, partial=False, measured=[],
        timing="device (time_evaluator)" if hasattr(runtime, "time_steps") else "host wall clock",
        bandwidth_gbs=target.memory_bandwidth_gbs, bandwidth_source=target.sources.get("memory_bandwidth_gbs"),
    )
    samples: list[float] = []
    bar = _progress(warmup + tokens + (ttft_repeats + 1 if prompt_len else 0), progress, f"profiling {runtime.name} on {target.name}")
    tick = (lambda: bar.advance(bar.task_ids[0])) if bar else (lambda: None)
    try:
        x_t = runtime.example_input(1)
        state = runtime.init_state(1)
        for _ in range(warmup):
            _, state = runtime.step(x_t, state)
            tick()
        runtime.synchronize()
        report["measured"].append("warmup")
        if hasattr(runtime, "time_steps"):  # remote: timed on the device, in chunks
            while len(samples) < tokens:
                count = min(chunk, tokens - len(samples))
                samples += runtime.time_steps(x_t, state, count)
                for _ in range(count):
                    tick()
        else:
            while len(samples) < tokens:
                count = min(chunk, tokens - len(samples))
                chunk_samples, state = _time_local_steps(runtime, count, x_t, state, tick)
                samples += chunk_samples
        report["measured"].append("decode")
        if prompt_len:
            prompt = runtime.example_input(1, time=prompt_len)
            runtime.prefill(prompt)  # warm-up
            runtime.synchronize()
            tick()
            ttft = []
            for _ in range(ttft_repeats):
                start = time.perf_counter()
                runtime.prefill(prompt)
                runtime.synchronize()
                ttft.append((time.perf_counter() - start) * 1e3)
                tick()
            report["ttft_ms"] = statistics.median(ttft)
            chunk_len = runtime.io.prefill_length
            uses_graph = runtime.has_prefill and (not chunk_len or prompt_len >= chunk_len)
            report["ttft_method"] = ("prefill graph" + (" + steps" if chunk_len and prompt_len % chunk_len else "")) if uses_graph else "step by step"
            report["measured"].append("ttft")
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if not samples and not isinstance(exc, EdgeseqError):
            raise EdgeseqError(f"{runtime.name} failed before any step was timed: {_first_line(exc)}") from exc
        report["partial"] = True
        report["error"] = _first_line(exc)
    finally:
        if bar:
            bar.stop()
    _summarise(report, samples)
    try:
        report["peak_mem_bytes"] = runtime.peak_memory_bytes()
    except Exception:  # a remote that went away cannot say
        report["peak_mem_bytes"] = None
    return report


def _summarise(report: dict[str, Any], samples: list[float]) -> None:
    report["tokens"] = len(samples)
    if samples:
        report.update(
            p50_ms=percentile(samples, 50), p90_ms=percentile(samples, 90), p99_ms=percentile(samples, 99),
            mean_ms=statistics.fmean(samples), min_ms=min(samples), max_ms=max(samples),
        )
        report["tokens_per_s"] = 1e3 / report["mean_ms"] if report["mean_ms"] > 0 else None
    report.update(roofline(report["model_bytes"], report["state_bytes"], report["bandwidth_gbs"], report["p50_ms"]))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:240]}" if lines else type(exc).__name__


def profile(
    source: str,
    target: str = "host",
    prompt_len: int = 64,
    tokens: int = 64,
    warmup: int = 8,
    threads: int | None = None,
    runtime: str | None = None,
    targets_file: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Profile a model (zoo name / checkpoint) or an exported artifact folder locally on ``target``."""
    from targets.registry import get_target
    from targets.runtimes import open_runtime

    spec = get_target(target, targets_file, measure_host=True)
    if spec.kind == "neuromorphic":
        raise InputError(f"{spec.name} is a neuromorphic target: estimate its energy with `edgeseq simulate` instead")
    if spec.name != "host" and spec.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError(
                f"target {spec.name!r} is a CUDA device but none is visible here: profile on it through "
                f"`edgeseq device-server` + --rpc, or use --target host"
            )
    rt = open_runtime(source, device=spec.device or "cpu", threads=threads, runtime=runtime)
    try:
        return profile_runtime(rt, spec, prompt_len, tokens, warmup, threads, progress=progress)
    finally:
        rt.close()


def print_report(report: dict[str, Any], file: Any = None) -> None:
    """A rich table of one or more reports (columns = reports)."""
    from rich.console import Console
    from rich.table import Table

    reports = report if isinstance(report, list) else [report]
    console = Console(file=file or sys.stdout)
    table = Table(title="edgeseq profile")
    table.add_column("")
    for r in reports:
        table.add_column(f"{r.get('runtime')} @ {r.get('target')}", justify="right")
    rows = [
        ("p50 / p90 / p99 ms", lambda r: _fmt_ms(r.get("p50_ms"), r.get("p90_ms"), r.get("p99_ms"))),
        ("tokens/s", lambda r: _num(r.get("tokens_per_s"), 1)),
        ("time to first token ms", lambda r: f"{_num(r.get('ttft_ms'), 2)} (P={r.get('prompt_len')}, {r.get('ttft_method') or '-'})"),
        ("peak memory", lambda r: _bytes(r.get("peak_mem_bytes"))),
        ("model bytes", lambda r: _bytes(r.get("model_bytes"))),
        ("bytes / token", lambda r: _bytes(r.get("bytes_per_token"))),
        ("bandwidth GB/s", lambda r: _num(r.get("bandwidth_gbs"), 1)),
        ("roofline ms", lambda r: _num(r.get("roofline_ms"), 3)),
        ("latency / roofline", lambda r: _num(r.get("roofline_ratio"), 2) + ("x" if r.get("roofline_ratio") else "")),
        ("threads", lambda r: str(r.get("threads") or "default")),
        ("timing", lambda r: str(r.get("timing"))),
    ]
    for label, cell in rows:
        table.add_row(label, *[cell(r) for r in reports])
    console.print(table)
    for r in reports:
        if r.get("partial"):
            console.print(f"[yellow]partial report for {r.get('source')}: {r.get('error')} (measured: {', '.join(r.get('measured') or []) or 'nothing'})[/yellow]")


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_ms(*values: Any) -> str:
    return " / ".join(_num(v, 3) for v in values)


def _bytes(value: Any) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


__all__ = ["REPORT_KEYS", "SCHEMA_VERSION", "percentile", "print_report", "profile", "profile_runtime"]
