"""Writing an accuracy-vs-bits report: ``report.md``, ``report.json``, ``report.csv``, PNG plots
and one self-contained ``report.html`` (plots embedded), from a list of sweep results.

A result (one model × one recipe, see ``edgeseq.app.report.run_unit``) carries::

    config: {model, recipe}     status, error       family, task, params
    weight_bits, act_bits       metric ("bits_per_byte" | "accuracy"), higher_is_better
    torch_metric                artifact_metric, artifact_format, artifact_max_error
    model_bytes                 targets: {name: {p50_ms, p99_ms, tokens_per_s, roofline_ratio, ...}}
    spiking: {ops_per_token..., energy_per_token_j: {device: joules}}
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def target_names(results: list[dict]) -> list[str]:
    names: list[str] = []
    for r in results:
        for t in list(r.get("targets") or {}) + [k.split(":", 1)[1] for k in (r.get("stage_errors") or {})
                                                  if k.startswith("profile:")]:
            if t not in names:
                names.append(t)
    return names


def energy_devices(results: list[dict]) -> list[str]:
    names: list[str] = []
    for r in results:
        for d in ((r.get("spiking") or {}).get("energy_per_token_j") or {}):
            if d not in names:
                names.append(d)
    return names


def failed_stages(r: dict) -> str | None:
    """Why a row is partial or failed, in one line (every format shows it)."""
    parts = []
    if r.get("error"):
        parts.append(str(r["error"]))
    parts += [f"{stage}: {why}" for stage, why in (r.get("stage_errors") or {}).items()]
    return "; ".join(parts) or None


def _interval(values: Any) -> str | None:
    if not values or any(v is None for v in values):
        return None
    return f"[{_fmt(float(values[0]))}, {_fmt(float(values[1]))}]"


def deployed_bytes(r: dict) -> int | None:
    """Bytes a device holds: the artifact's (4-bit packed) when there is one, else the packed model."""
    return r.get("artifact_bytes") or r.get("model_bytes")


def reference(results: list[dict], model: str) -> dict | None:
    """The float reference of a model (``fp32``, else the first float recipe) with an evaluation."""
    rows = [r for r in results if r["config"]["model"] == model and (r.get("eval") or {}).get("task")]
    for r in rows:
        if r["config"]["recipe"] == "fp32":
            return r
    floats = [r for r in rows if (r.get("weight_bits") or 32) >= 16]
    return floats[0] if floats else None


def comparison(r: dict, results: list[dict]) -> dict | None:
    """The paired difference of ``r`` vs its model's float reference on the same data (or None)."""
    from edgeseq.evaluate import paired_difference

    ref = reference(results, r["config"]["model"])
    if ref is None or ref is r or not r.get("eval"):
        return None
    diff = paired_difference(r["eval"], ref["eval"])
    if diff is not None:
        diff["reference"] = ref["config"]["recipe"]
    return diff


def _comparison_text(diff: dict | None) -> str | None:
    if diff is None:
        return None
    text = f"{diff['difference']:+.4f} ± {1.96 * diff['stderr']:.4f}"
    return text + ("" if diff["measurable"] else " (no measurable difference)")


def pareto_flags(results: list[dict], cost=None) -> dict[int, str]:
    """For each result (by id): ``front`` or ``dominated by R`` on (cost, metric) within its model,
    the cost being deployed bytes unless given: a recipe is dominated when another costs no more and
    is no worse, and is better in one of the two."""
    cost = cost or deployed_bytes
    flags: dict[int, str] = {}
    usable = [r for r in results if r.get("torch_metric") is not None and cost(r)]
    for r in usable:
        sign = 1 if r.get("higher_is_better") else -1
        dominated_by = None
        for o in usable:
            if o is r or o["config"]["model"] != r["config"]["model"]:
                continue
            smaller_eq = cost(o) <= cost(r)
            better_eq = sign * o["torch_metric"] >= sign * r["torch_metric"]
            strict = cost(o) < cost(r) or sign * o["torch_metric"] > sign * r["torch_metric"]
            if smaller_eq and better_eq and strict:
                dominated_by = o["config"]["recipe"]
                break
        flags[id(r)] = f"dominated by {dominated_by}" if dominated_by else "front"
    return flags


TARGET_KEYS = ("p10_ms", "p50_ms", "p90_ms", "p99_ms", "round_p50_spread", "tokens", "load", "tokens_per_s",
               "roofline_ratio")


def _target_cells(r: dict, t: str) -> dict[str, Any]:
    prof = (r.get("targets") or {}).get(t)
    stage_err = (r.get("stage_errors") or {}).get(f"profile:{t}")
    cells: dict[str, Any] = {f"{t}.runtime": prof.get("runtime") if prof else ("failed" if stage_err else None)}
    for key in TARGET_KEYS:
        cells[f"{t}.{key}"] = None
    if prof:
        for key in ("p10_ms", "p50_ms", "p90_ms", "p99_ms", "tokens", "tokens_per_s", "roofline_ratio"):
            cells[f"{t}.{key}"] = prof.get(key)
        rounds = prof.get("round_p50_ms") or []
        if rounds:
            cells[f"{t}.round_p50_spread"] = f"{min(rounds):.3g}–{max(rounds):.3g} ms over {len(rounds)} rounds"
        lb, la = prof.get("load_before"), prof.get("load_after")
        cells[f"{t}.load"] = None if lb is None else f"{lb}→{la}"
    return cells


def flat_rows(results: list[dict]) -> list[dict[str, Any]]:
    """One flat dict per result: the table/CSV view (every figure with where it came from)."""
    rows = []
    targets, devices = target_names(results), energy_devices(results)
    front = pareto_flags(results)
    for r in results:
        run = r.get("run") or {}
        row: dict[str, Any] = {
            "model": r["config"]["model"],
            "recipe": r["config"]["recipe"],
            "status": r.get("status"),
            "failed_stages": failed_stages(r),
            "weight_bits": r.get("weight_bits"),
            "act_bits": r.get("act_bits"),
            "metric": r.get("metric"),
            "eval_size": r.get("eval_size"),
            "torch": r.get("torch_metric"),
            "torch_95ci": _interval(r.get("torch_interval")),
            "vs_float": _comparison_text(comparison(r, results)),
            "artifact": r.get("artifact_metric"),
            "artifact_95ci": _interval(r.get("artifact_interval")),
            "artifact_format": r.get("artifact_format") or ("failed" if "export" in (r.get("stage_errors") or {})
                                                            else None),
            "artifact_max_error": r.get("artifact_max_error"),
            "deployed_bytes": deployed_bytes(r),
            "stored_bytes": r.get("stored_bytes"),
            "pareto": front.get(id(r)),
        }
        for t in targets:
            row.update(_target_cells(r, t))
        for d in devices:
            row[f"energy_per_token_j.{d}"] = ((r.get("spiking") or {}).get("energy_per_token_j") or {}).get(d)
        row["run"] = run.get("id")
        row["error"] = failed_stages(r)
        rows.append(row)
    return rows


def _table_keys(flat: list[dict]) -> list[str]:
    """Columns of a model's md/html table: those with a value; ``metric``, ``eval_size`` and ``run``
    only when they differ between rows (else the text above the table states them once)."""
    always = {"status", "failed_stages"}
    stated = {"metric", "eval_size", "run"}
    return [k for k in flat[0] if k not in ("model", "error")
            and (k in always or any(f.get(k) is not None for f in flat))
            and not (k in stated and len({f.get(k) for f in flat}) <= 1)]


def provenance(results: list[dict]) -> list[str]:
    """Lines saying where the figures come from: runs, machines, load, evaluation sizes."""
    lines = []
    runs: dict[str, dict] = {}
    for r in results:
        run = r.get("run") or {}
        runs.setdefault(str(run.get("id")), {"machine": run.get("machine") or {}, "rows": 0, "started": run.get("started")})
        runs[str(run.get("id"))]["rows"] += 1
    for rid, info in runs.items():
        m = info["machine"]
        isa = ", ".join(m.get("isa") or []) or "?"
        lines.append(f"run `{rid}` (started {info['started'] or '?'}, {info['rows']} configuration(s)): "
                     f"{m.get('cpu') or '?'} ({m.get('arch') or '?'}; ISA {isa}), {m.get('cores') or '?'} cores, "
                     f"PyTorch threads {m.get('torch_threads') or '?'}, load average {m.get('load_avg_1m')} at start")
    latency_runs = {p.get("measured_in_run") for r in results for p in (r.get("targets") or {}).values()}
    if len(latency_runs) == 1 and None not in latency_runs:
        lines.append(f"latency of every row was measured together, in run `{latency_runs.pop()}`")
    elif len(runs) > 1:
        lines.append(f"rows come from {len(runs)} different runs (resumed); compare latency across runs with care")
    timings = sorted({str(p.get("timing")) for r in results for p in (r.get("targets") or {}).values() if p.get("timing")})
    lines.append("latency: measured on CPU targets through each configuration's exported artifact, on a CUDA GPU "
                 "through the model's fastest runtime verified there (the fused Triton step where it applies), in "
                 "the runtime named in the `<target>.runtime` column (" + ("; ".join(timings) or "no timing recorded")
                 + "); a CPU configuration whose export failed shows `failed` and no latency (never a PyTorch figure "
                 "in its place); "
                 "`<target>.load` is the 1-minute load average before→after, `round_p50_spread` the range of the "
                 "rounds' medians")
    lines.append("accuracy: 95 % confidence intervals (bits/byte: standard error over blocks of text; accuracy: "
                 "Wilson); `vs_float` is the paired difference to the float recipe on the same data, "
                 "± its 95 % half-width, marked \"no measurable difference\" when the interval contains 0")
    return lines


def markdown_tables(results: list[dict]) -> str:
    out = []
    by_model: dict[str, list[dict]] = {}
    for r in results:
        by_model.setdefault(r["config"]["model"], []).append(r)
    flat_all = flat_rows(results)
    flat_by_id = {id(r): f for r, f in zip(results, flat_all)}
    for model, rows in by_model.items():
        flat = [flat_by_id[id(r)] for r in rows]
        first = rows[0]
        out.append(f"## {model}\n")
        meta = [f"family `{first.get('family', '?')}`", f"task `{first.get('task', '?')}`"]
        if first.get("params"):
            meta.append(f"{first['params']:,} parameters")
        sizes = sorted({f["eval_size"] for f in flat if f.get("eval_size")})
        if sizes:
            meta.append(f"`{first.get('metric')}` evaluated on " + "; ".join(sizes))
        runs = sorted({str(f["run"]) for f in flat if f.get("run")})
        if len(runs) == 1:
            meta.append(f"run `{runs[0]}`")
        out.append(", ".join(meta) + "\n")
        keys = _table_keys(flat)
        out.append("| " + " | ".join(keys) + " |")
        out.append("|" + "---|" * len(keys))
        for f in flat:
            out.append("| " + " | ".join(_fmt(f.get(k)).replace("|", "\\|") for k in keys) + " |")
        errors = [f"- `{f['recipe']}` ({f['status']}): {f['error']}" for f in flat if f.get("error")]
        if errors:
            out.append("\nFailed stages:\n" + "\n".join(errors))
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


def _bits_label(r: dict) -> str:
    w, a = r.get("weight_bits"), r.get("act_bits")
    return f"W{w or 32}A{a or (w if w and w >= 16 else 32)}"


def make_plots(results: list[dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.get("status") in ("ok", "partial") and r.get("torch_metric") is not None]
    written: list[Path] = []
    if not ok:
        return written
    models = sorted({r["config"]["model"] for r in ok})

    # 1. accuracy vs bits: one panel per model (metrics differ between LMs and classifiers)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = sorted((r for r in ok if r["config"]["model"] == model),
                      key=lambda r: (-(r.get("weight_bits") or 32), -(r.get("act_bits") or 32)))
        labels = [f"{r['config']['recipe']}\n{_bits_label(r)}" for r in rows]
        xs = range(len(rows))
        ax.plot(xs, [r["torch_metric"] for r in rows], "o-", label="PyTorch")
        art = [(i, r["artifact_metric"]) for i, r in enumerate(rows) if r.get("artifact_metric") is not None]
        if art:
            ax.plot([i for i, _ in art], [v for _, v in art], "x", label="exported artifact", markersize=9,
                    markeredgewidth=2)
        ax.set_xticks(list(xs), labels, fontsize=8)
        metric = rows[0].get("metric", "metric")
        ax.set_ylabel(metric.replace("_", " ") + (" (lower is better)" if metric == "bits_per_byte" else ""))
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy vs bits")
    fig.tight_layout()
    written.append(_save(fig, folder / "accuracy_vs_bits.png"))
    plt.close(fig)

    # 2. accuracy vs latency (per target)
    targets = target_names(ok)
    points = [(r, t) for r in ok for t in targets if ((r.get("targets") or {}).get(t) or {}).get("p50_ms")]
    if points:
        fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0), squeeze=False)
        for ax, model in zip(axes[0], models):
            for t in targets:
                pts = [(r["targets"][t]["p50_ms"], r["torch_metric"], r["config"]["recipe"]) for r, tt in points
                       if tt == t and r["config"]["model"] == model]
                if not pts:
                    continue
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=t)
                for x, y, name in pts:
                    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("p50 latency per token (ms)")
            metric = next(r.get("metric", "metric") for r in ok if r["config"]["model"] == model)
            ax.set_ylabel(metric.replace("_", " ") + (" (lower is better)" if metric == "bits_per_byte" else ""))
            ax.set_title(model)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Accuracy vs latency")
        fig.tight_layout()
        written.append(_save(fig, folder / "accuracy_vs_latency.png"))
        plt.close(fig)

    # 3. Pareto view: the metric against deployed bytes and against latency per target, per model
    written += _pareto_plot(plt, ok, models, targets, folder)

    # 4. energy per token across devices (spiking models)
    devices = energy_devices(ok)
    spiking = [r for r in ok if (r.get("spiking") or {}).get("energy_per_token_j")]
    if devices and spiking:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(devices) * max(1, len(spiking)) / 2), 4.0))
        width = 0.8 / len(spiking)
        for i, r in enumerate(spiking):
            values = [r["spiking"]["energy_per_token_j"].get(d) or 0.0 for d in devices]
            ax.bar([j + i * width for j in range(len(devices))], [v * 1e6 for v in values], width,
                   label=f"{r['config']['model']} / {r['config']['recipe']}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(devices))], devices)
        ax.set_ylabel("energy per token/sample (µJ)")
        ax.set_yscale("log")
        missing = sorted({d for r in ok for d in ((r.get("spiking") or {}).get("energy_unsupported_ops_per_token") or {})})
        title = "Energy per token across devices (spiking models, simulator counts)"
        if missing:
            title += f"\nnot shown: {', '.join(missing)} (cannot run some of the model's operations)"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        written.append(_save(fig, folder / "energy_per_token.png"))
        plt.close(fig)
    return written


def _pareto_panel(ax, rows: list[dict], xs: list[float], xlabel: str, flags: dict[int, str]) -> None:
    front = sorted(((x, r) for x, r in zip(xs, rows) if flags.get(id(r)) == "front"), key=lambda p: p[0])
    for x, r in zip(xs, rows):
        y = r["torch_metric"]
        interval = r.get("torch_interval")
        err = None
        if interval and None not in interval:
            err = [[max(y - interval[0], 0)], [max(interval[1] - y, 0)]]
        dominated = flags.get(id(r)) != "front"
        ax.errorbar([x], [y], yerr=err, fmt="o", mfc="none" if dominated else None, color="0.55" if dominated else "C0",
                    ecolor="0.75", capsize=2)
        ax.annotate(r["config"]["recipe"] + (" (dominated)" if dominated else ""), (x, y), fontsize=7,
                    xytext=(4, 3), textcoords="offset points", color="0.45" if dominated else "black")
    if len(front) > 1:
        ax.plot([x for x, _ in front], [r["torch_metric"] for _, r in front], "-", color="C0", alpha=0.5)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def _pareto_plot(plt, ok: list[dict], models: list[str], targets: list[str], folder: Path) -> list[Path]:
    """One row per model: metric vs deployed bytes, and vs p50 latency on each target. Filled points
    are the Pareto front (per panel), hollow grey ones dominated; bars are 95 % intervals."""
    rows_by_model = {m: [r for r in ok if r["config"]["model"] == m] for m in models}
    if not any(deployed_bytes(r) for r in ok):
        return []
    cols = 1 + len(targets)
    fig, axes = plt.subplots(len(models), cols, figsize=(4.6 * cols, 3.6 * len(models)), squeeze=False)
    for row_axes, model in zip(axes, models):
        rows = [r for r in rows_by_model[model] if deployed_bytes(r)]
        metric = rows_by_model[model][0].get("metric", "metric") if rows_by_model[model] else "metric"
        label = metric.replace("_", " ") + (" (lower is better)" if metric == "bits_per_byte" else "")
        _pareto_panel(row_axes[0], rows, [deployed_bytes(r) / 1e6 for r in rows], "deployed size (MB)",
                      pareto_flags(rows))
        row_axes[0].set_ylabel(f"{model}\n{label}", fontsize=8)
        for ax, t in zip(row_axes[1:], targets):
            timed = [r for r in rows_by_model[model] if ((r.get("targets") or {}).get(t) or {}).get("p50_ms")]
            flags = pareto_flags(timed, cost=lambda r, t=t: r["targets"][t]["p50_ms"])
            _pareto_panel(ax, timed, [r["targets"][t]["p50_ms"] for r in timed],
                          f"p50 latency per token on {t} (ms)", flags)
            if not timed:
                ax.text(0.5, 0.5, "no artifact profiled", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Pareto view: filled = best trade-off, hollow = dominated (another recipe is no larger/slower "
                 "and no worse)\nbars: 95 % interval of each figure alone; the paired differences in the table "
                 "(vs_float) are tighter", fontsize=9)
    fig.tight_layout()
    path = _save(fig, folder / "pareto.png")
    plt.close(fig)
    return [path]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def write_report(results: list[dict], folder: str | Path, title: str = "edgeseq report",
                 preamble: str = "") -> dict[str, str]:
    """Write every report file into ``folder``; returns their paths by kind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    (folder / "report.json").write_text(json.dumps({"title": title, "results": results}, indent=2, default=str))
    paths["json"] = str(folder / "report.json")

    rows = flat_rows(results)
    with open(folder / "report.csv", "w", newline="") as handle:
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    paths["csv"] = str(folder / "report.csv")

    plots = make_plots(results, folder)
    for p in plots:
        paths[p.stem] = str(p)

    body = markdown_tables(results)
    prov = "\n".join(f"- {line}" for line in provenance(results))
    md = f"# {title}\n\n{preamble}\n\n## Where these figures come from\n\n{prov}\n\n{body}\n"
    md += "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    (folder / "report.md").write_text(md)
    paths["md"] = str(folder / "report.md")

    (folder / "report.html").write_text(_html(title, preamble, results, plots))
    paths["html"] = str(folder / "report.html")
    return paths


def _html(title: str, preamble: str, results: list[dict], plots: list[Path]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "tr.partial td{background:#fff6e0}tr.error td{background:#fde8e8}p.why{color:#a33}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(preamble)}</p>",
    ]
    parts.append("<h2>Where these figures come from</h2><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in provenance(results)]
    parts.append("</ul>")
    by_model: dict[str, list[dict]] = {}
    for r in results:
        by_model.setdefault(r["config"]["model"], []).append(r)
    flat_all = flat_rows(results)
    flat_by_id = {id(r): f for r, f in zip(results, flat_all)}
    for model, rows in by_model.items():
        flat = [flat_by_id[id(r)] for r in rows]
        keys = _table_keys(flat)
        sizes = sorted({f["eval_size"] for f in flat if f.get("eval_size")})
        parts.append(f"<h2>{html.escape(model)}</h2>")
        runs = sorted({str(f["run"]) for f in flat if f.get("run")})
        if sizes:
            parts.append(f"<p>{html.escape(str(rows[0].get('metric')))} evaluated on {html.escape('; '.join(sizes))}"
                         + (f"; run {html.escape(runs[0])}" if len(runs) == 1 else "") + ".</p>")
        parts.append("<table><tr>")
        parts += [f"<th>{html.escape(k)}</th>" for k in keys]
        parts.append("</tr>")
        for f in flat:
            cls = "" if f.get("status") == "ok" else f" class='{html.escape(str(f.get('status')))}'"
            parts.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(f.get(k)))}</td>" for k in keys) + "</tr>")
        parts.append("</table>")
        for f in flat:
            if f.get("error"):
                parts.append(f"<p class='why'><b>{html.escape(str(f['recipe']))}</b> ({html.escape(str(f['status']))}):"
                             f" {html.escape(str(f['error']))}</p>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(p.stem.replace('_', ' '))}</h2><img src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)

