"""Accuracy-vs-bits reports: for each recipe, quantize (calibrating once), evaluate in PyTorch and
through the exported artifact, profile on each target, and for spiking models count operations and
energy on neuromorphic devices. One sweep unit = one model × one recipe (see ``run_unit``); the
sweep (``edgeseq.app.sweep``) stores each unit's result as it finishes, so reports are resumable.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgeseq.errors import InputError

DEFAULT_RECIPES = ["fp32", "w8a8-minmax", "w8a8", "w4a8", "w4a16"]
SPIKING_FAMILIES = {"spikegpt", "spiking-lmuformer"}
DEFAULT_ENERGY_TABLES = ["45nm", "45nm-int8", "loihi", "spinnaker2"]
# what a report keeps of each profile: the figures and how they were measured
PROFILE_KEYS = ("p50_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "ttft_ms", "tokens_per_s", "peak_mem_bytes",
                "model_bytes", "state_bytes", "bytes_per_token", "roofline_ratio", "runtime", "device", "threads",
                "tokens", "warmup", "timing", "source")
# run_unit options that change a result: a stored unit made with other values is redone
RESULT_OPTIONS = ("data", "targets", "export_format", "max_bytes", "max_samples", "calib_samples", "profile_tokens",
                  "profile_prompt_len", "energy_tables", "simulate_samples", "verify_steps")


def _recipe_bits(recipe: str) -> tuple[int, int]:
    """(weight bits, activation bits) of a recipe; 32/16 for float."""
    from quantize.recipes import get_recipe

    spec = get_recipe(recipe)
    float_bits = 16 if spec.float_dtype == "float16" else 32
    return (spec.weight_bits or float_bits, spec.act_bits or float_bits)


def _stage(result: dict, name: str, fn, *args, **kwargs):
    """Run one stage; a failure is recorded in ``result['stage_errors']`` and the unit goes on."""
    from edgeseq.app.sweep import stage

    stage(name)
    started = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
        result.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - started, 3)
        return value
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        result.setdefault("stage_errors", {})[name] = f"{type(exc).__name__}: {exc}"
        return None


def _skip(result: dict, name: str, why: str) -> None:
    """A stage that could not run because an earlier one failed: shown as failed, with the reason."""
    result.setdefault("stage_errors", {})[name] = f"not run: {why}"


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: CPU model, ISA features, cores, threads, load."""
    import platform

    import torch

    from targets.registry import read_cpuinfo

    cpu = read_cpuinfo()
    info = {"host": platform.node(), "cpu": cpu.get("model"), "arch": cpu.get("machine"),
            "isa": cpu.get("features"), "cores": cpu.get("cores"), "torch_threads": torch.get_num_threads()}
    info["load_avg_1m"] = load_average()
    return info


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def run_unit(
    config: dict[str, Any],
    out_dir: str,
    data: str | None = None,
    targets: list[str] | None = None,
    export_format: str = "onnx",
    max_bytes: int = 20_000,
    max_samples: int = 200,
    calib_samples: int = 32,
    profile_tokens: int = 64,
    profile_prompt_len: int = 32,
    energy_tables: list[str] | None = None,
    simulate_samples: int = 2,
    verify_steps: int = 64,
    debug: bool = False,
    run_id: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """One model × one recipe: quantize, evaluate, export + evaluate the artifact, profile, simulate."""
    from edgeseq.checkpoints import load_model
    from edgeseq.evaluate import evaluate_with_interval
    from edgeseq.app.sweep import config_key

    model_name, recipe = config["model"], config["recipe"]
    unit_dir = Path(out_dir) / "units" / config_key(config)
    if unit_dir.exists():
        shutil.rmtree(unit_dir)  # a unit that did not finish last time starts over
    unit_dir.mkdir(parents=True)
    loaded = load_model(model_name)
    model = loaded.model
    weight_bits, act_bits = _recipe_bits(recipe)
    result: dict[str, Any] = {
        "family": model.config.family, "task": model.task, "params": model.num_parameters(),
        "weight_bits": weight_bits, "act_bits": act_bits,
        "metric": "bits_per_byte" if model.task == "lm" else "accuracy",
        "higher_is_better": model.task != "lm",
        "run": {"id": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info()},
    }
    eval_kwargs = {"max_bytes": max_bytes} if model.task == "lm" else {"max_samples": max_samples}

    # 1. quantize (calibrating once for this recipe) and save
    qdir = unit_dir / "quantized"
    if recipe == "fp32":
        source = model_name
        qmodel = model
    else:
        from quantize.apply import quantize_checkpoint

        summary = _stage(result, "quantize", quantize_checkpoint, model_name, recipe, str(qdir),
                         calib_samples=calib_samples, progress=False)
        if summary is None:
            raise RuntimeError(f"quantization failed: {result['stage_errors']['quantize']}")
        result["quantize_summary"] = summary.get("summary")
        source = str(qdir)
        qmodel = load_model(source).model

    # 2. accuracy in PyTorch
    torch_eval = _stage(result, "evaluate", evaluate_with_interval, qmodel, loaded.tokenizer, data,
                        meta=loaded.meta, **eval_kwargs)
    if torch_eval:
        result["torch_metric"] = torch_eval[result["metric"]]
        result["torch_interval"] = torch_eval["interval"]
        result["eval"] = torch_eval
        result["eval_size"] = _eval_size(torch_eval)
    sizes = _stage(result, "model_bytes", _model_sizes, qmodel)
    if sizes:
        result["stored_bytes"] = sizes["stored"]
        result["model_bytes"] = sizes["packed"]  # deployed: integer weights packed to their bits

    # 3. export, verify (inside export), evaluate through the artifact's own runtime
    artifact_dir = unit_dir / f"artifact-{export_format}"
    manifest = _stage(result, "export", _export, source, export_format, str(artifact_dir), verify_steps)
    if manifest:
        result["artifact_format"] = export_format
        result["artifact_dir"] = str(artifact_dir)
        result["artifact_max_error"] = _max_error(manifest)
        artifact = _stage(result, "artifact_load", load_model, str(artifact_dir))
        if artifact is not None:
            art_eval = _stage(result, "artifact_evaluate", evaluate_with_interval, artifact.model,
                              artifact.tokenizer, data, meta=loaded.meta, **eval_kwargs)
            if art_eval:
                result["artifact_metric"] = art_eval[result["metric"]]
                result["artifact_interval"] = art_eval["interval"]
                result["artifact_eval"] = art_eval
        else:
            _skip(result, "artifact_evaluate", "the artifact did not load")
        result["artifact_bytes"] = _stage(result, "artifact_bytes", _artifact_bytes, str(artifact_dir), export_format)
    else:
        _skip(result, "artifact_evaluate", "export failed")

    # 4. profile the artifact on each CPU target (never the PyTorch model in its place); on a CUDA
    # target the model itself, through the fastest runtime that verifies against it there (the fused
    # Triton step where it applies, `edgeseq profile --target h200`): the CPU artifact is not what a
    # GPU runs. Its report names the runtime.
    result["targets"] = {}
    for target in targets or []:
        on_gpu = _is_cuda_target(target)
        if not manifest and not on_gpu:
            _skip(result, f"profile:{target}", "export failed, no artifact to profile")
            continue
        prof = _stage(result, f"profile:{target}", _profile, source if on_gpu else str(artifact_dir), target,
                      profile_tokens, profile_prompt_len)
        if prof:
            result["targets"][target] = prof

    # 5. spiking models: operation counts and energy per token on neuromorphic devices
    if model.config.family in SPIKING_FAMILIES:
        spiking = _stage(result, "simulate", _simulate, qmodel, data, simulate_samples,
                         energy_tables or DEFAULT_ENERGY_TABLES)
        if spiking:
            result["spiking"] = spiking
    return result


def _eval_size(ev: dict) -> str:
    if ev.get("task") == "lm":
        return f"{ev['bytes']:,} bytes of {ev.get('dataset')} ({ev.get('split')})"
    return f"{ev['samples']:,} samples of {ev.get('dataset')} ({ev.get('split')})"


def _model_sizes(model) -> dict[str, int]:
    from quantize.io import model_bytes

    return {k: int(v) for k, v in model_bytes(model).items()}


def _artifact_bytes(artifact_dir: str, export_format: str) -> int:
    """Bytes a device holds for the artifact's step graph (ONNX: its initializers, 4-bit packed):
    the figure ``edgeseq profile`` reports as ``model_bytes``."""
    from targets.manifest import read_artifact

    return int(read_artifact(artifact_dir).model_bytes)


def _max_error(manifest: dict) -> float | None:
    verification = manifest.get("verification") or {}
    for key in ("max_rel_error", "max_abs_error", "max_error"):
        if verification.get(key) is not None:
            return verification[key]
    return None


def _export(source: str, export_format: str, out: str, steps: int) -> dict:
    from edgeseq.checkpoints import load_model
    from export.artifact import export_loaded  # the library function behind `edgeseq export`

    # the artifact stores the embedding as the recipe quantized it: it computes the quantized model's function
    return export_loaded(load_model(source), out, format=export_format, target="cpu", steps=steps, force=True)


def _is_cuda_target(target: str) -> bool:
    from targets.registry import get_target

    try:
        return get_target(target, measure_host=False).device == "cuda"
    except Exception:  # an unknown name fails in its own profile stage, with its message
        return False


def _profile(artifact_or_model: str, target: str, tokens: int, prompt_len: int) -> dict:
    from targets.profile import profile  # the library function behind `edgeseq profile`

    load_before = load_average()
    report = profile(artifact_or_model, target=target, tokens=tokens, prompt_len=prompt_len, progress=False)
    out = {k: report.get(k) for k in PROFILE_KEYS}
    out.update(load_before=load_before, load_after=load_average())
    return out


def _simulate(model, data: str | None, samples: int, tables: list[str]) -> dict:
    from edgeseq.spiking.energy import estimate_energy, table_names
    from edgeseq.spiking.engine import simulate
    from edgeseq.spiking.report import simulation_data

    sim_data = simulation_data(model, data, samples=samples)
    inputs = getattr(sim_data, "inputs", sim_data)
    sim = simulate(model, inputs, mode="event")
    totals = sim.counts.totals()
    steps = max(sim.counts.steps, 1)
    energy, unsupported = {}, {}
    for name in tables:
        if name in table_names():
            estimate = estimate_energy(sim.counts, name)
            if estimate.get("unsupported"):
                # the device cannot run some of the ops (e.g. MACs on Loihi): a total would undercount
                unsupported[name] = {k: v / steps for k, v in estimate["unsupported"].items()}
            else:
                energy[name] = estimate["per_step_pj"] * 1e-12
    return {
        "steps": steps,
        "energy_unsupported_ops_per_token": unsupported,
        "ops_per_token": {k: v / steps for k, v in totals.items()
                          if isinstance(v, (int, float)) and "rate" not in k},
        "spike_rate": totals.get("spike_rate"),
        "energy_per_token_j": energy,
    }


def _percentile(samples: list[float], q: float) -> float:
    from targets.profile import percentile

    return float(percentile(samples, q))


def measure_latency(results: list[dict], targets: list[str], rounds: int = 5, tokens: int = 64,
                    warmup: int = 8, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Per-token latency of every exported artifact, in ``rounds`` rounds interleaved across the
    configurations (round 1 of every artifact, then round 2, ...), so that all rows share the
    machine's conditions; one runtime per artifact stays open across rounds. Only targets that
    run on this machine's CPU are measured here. Returns ``{unit key: {target: figures}}``."""
    import sys

    from edgeseq.app.sweep import config_key
    from targets.registry import get_target
    from targets.runtimes import open_runtime

    local = []
    for t in targets:
        try:
            spec = get_target(t, measure_host=False)
        except Exception:
            continue
        if (spec.device or "cpu") == "cpu" and spec.kind == "cpu":
            local.append(t)
    units = [r for r in results if r.get("artifact_dir")]
    out: dict[str, dict[str, Any]] = {}
    for t in local:
        runtimes, samples, states, round_p50 = {}, {}, {}, {}
        try:
            for r in units:
                key = config_key(r["config"])
                try:
                    rt = open_runtime(r["artifact_dir"], device="cpu")
                    x, state = rt.example_input(1), rt.init_state(1)
                    for _ in range(warmup):
                        _, state = rt.step(x, state)
                except Exception:  # the unit's own profile stage reports what went wrong
                    continue
                runtimes[key], states[key], samples[key], round_p50[key] = (rt, x), state, [], []
            load_before = load_average()
            for i in range(rounds):
                if progress:
                    print(f"latency: round {i + 1}/{rounds} on {t}, {len(runtimes)} artifacts interleaved",
                          file=sys.stderr, flush=True)
                for key, (rt, x) in runtimes.items():
                    state, these = states[key], []
                    for _ in range(tokens):
                        started = time.perf_counter()
                        _, state = rt.step(x, state)
                        rt.synchronize()
                        these.append((time.perf_counter() - started) * 1e3)
                    states[key] = state
                    samples[key] += these
                    round_p50[key].append(round(_percentile(these, 50), 4))
            load_after = load_average()
        finally:
            for rt, _ in runtimes.values():
                rt.close()
        for key, values in samples.items():
            if values:
                out.setdefault(key, {})[t] = {
                    "p10_ms": _percentile(values, 10), "p50_ms": _percentile(values, 50),
                    "p90_ms": _percentile(values, 90), "p99_ms": _percentile(values, 99),
                    "tokens_per_s": 1e3 / (sum(values) / len(values)), "tokens": len(values), "rounds": rounds,
                    "round_p50_ms": round_p50[key], "load_before": load_before, "load_after": load_after,
                    "timing": f"host wall clock, {rounds} rounds × {tokens} steps interleaved across "
                              f"{len(samples)} artifacts",
                }
    return out


def build_report(
    models: list[str],
    out_dir: str | Path,
    recipes: list[str] | None = None,
    targets: list[str] | None = None,
    data: str | None = None,
    jobs: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    latency_rounds: int = 5,
    latency_tokens: int = 64,
    **options: Any,
) -> dict[str, Any]:
    """Run (or resume) the sweep for ``models`` × ``recipes`` and write the report files.

    After the sweep, every artifact's per-token latency on the local CPU targets is measured again
    in ``latency_rounds`` interleaved rounds of ``latency_tokens`` steps (0 rounds: keep each
    unit's own profile)."""
    from edgeseq.app.report_writer import write_report
    from edgeseq.app.sweep import config_key, folder_lock, run_sweep
    from quantize.recipes import get_recipe

    recipes = recipes or DEFAULT_RECIPES
    for recipe in recipes:
        get_recipe(recipe)  # unknown recipe: one clear error before any work
    if not models:
        raise InputError("no model to report on")
    if latency_rounds < 0 or latency_tokens < 1:
        raise InputError(f"--latency-rounds must be >= 0 and --latency-tokens >= 1 (got {latency_rounds}, {latency_tokens})")
    for name, low in (("max_bytes", 2), ("max_samples", 1), ("calib_samples", 1), ("profile_tokens", 1)):
        value = options.get(name)
        if value is not None and value < low:
            raise InputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    out_dir = Path(out_dir)
    configs = [{"model": m, "recipe": r} for m in models for r in recipes]
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    options = {"out_dir": str(out_dir), "data": data, "targets": targets or [], "run_id": run_id, **options}
    # every option that changes a result keys the stored units (defaults included, so that a
    # changed default also redoes them)
    defaults = {k: v.default for k, v in inspect.signature(run_unit).parameters.items()
                if v.default is not inspect.Parameter.empty}
    result_options = {k: options.get(k, defaults.get(k)) for k in RESULT_OPTIONS}
    with folder_lock(out_dir):
        results = run_sweep("edgeseq.app.report:run_unit", configs, out_dir, options, jobs=jobs,
                            ray_address=ray_address, progress=progress, result_options=result_options)
        if latency_rounds and targets:
            # measured anew on every run, all artifacts together: rows never mix machine conditions
            latency = measure_latency(results, targets, rounds=latency_rounds, tokens=latency_tokens,
                                      progress=progress)
            (out_dir / "latency.json").write_text(json.dumps({"run_id": run_id, "units": latency}, indent=2))
            for r in results:
                for t, figures in latency.get(config_key(r["config"]), {}).items():
                    prof = r.setdefault("targets", {}).setdefault(t, {})
                    prof.update({"single_run": {k: prof.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "tokens")}},
                                **figures, measured_in_run=run_id)
        preamble = (f"Models: {', '.join(models)}. Recipes: {', '.join(recipes)}. "
                    f"Targets: {', '.join(targets or []) or 'none'}. "
                    f"Data: {data or 'each model’s own validation split'}.")
        paths = write_report(results, out_dir, title="edgeseq accuracy-vs-bits report", preamble=preamble)
    failed = [r for r in results if r.get("status") == "error"]
    partial = [r for r in results if r.get("status") == "partial"]
    return {"output": str(out_dir), "files": paths, "configs": len(results), "failed": len(failed),
            "partial": len(partial), "run_id": run_id,
            "results": [{"model": r["config"]["model"], "recipe": r["config"]["recipe"], "status": r.get("status"),
                         "metric": r.get("metric"), "torch": r.get("torch_metric"),
                         "artifact": r.get("artifact_metric"), "error": r.get("error"),
                         "stage_errors": r.get("stage_errors")} for r in results]}


def failure_lines(summary: dict[str, Any]) -> list[str]:
    """One line per configuration that failed or stayed partial, and why (for stderr)."""
    lines = []
    for r in summary["results"]:
        if r.get("status") == "error":
            lines.append(f"{r['model']} / {r['recipe']}: failed: {r.get('error')}")
        elif r.get("status") != "ok":
            stages = "; ".join(f"{k}: {v}" for k, v in (r.get("stage_errors") or {}).items())
            lines.append(f"{r['model']} / {r['recipe']}: partial: {stages}")
    return lines
