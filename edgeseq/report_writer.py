"""Writing an accuracy-vs-bits report: ``report.md``, ``report.json``, ``report.csv``, PNG plots
and one self-contained ``report.html`` (plots embedded), from a list of sweep results.

A result (one model × one recipe, see ``edgeseq.report.run_unit``) carries::

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

COLUMNS = [
    ("model", lambda r: r["config"]["model"]),
    ("recipe", lambda r: r["config"]["recipe"]),
    ("status", lambda r: r.get("status")),
    ("weight_bits", lambda r: r.get("weight_bits")),
    ("act_bits", lambda r: r.get("act_bits")),
    ("metric", lambda r: r.get("metric")),
    ("torch", lambda r: r.get("torch_metric")),
    ("artifact", lambda r: r.get("artifact_metric")),
    ("artifact_format", lambda r: r.get("artifact_format")),
    ("artifact_max_error", lambda r: r.get("artifact_max_error")),
    ("model_bytes", lambda r: r.get("model_bytes")),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}"
    return str(value)


def target_names(results: list[dict]) -> list[str]:
    names: list[str] = []
    for r in results:
        for t in (r.get("targets") or {}):
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


def flat_rows(results: list[dict]) -> list[dict[str, Any]]:
    """One flat dict per result: the table/CSV view."""
    rows = []
    targets, devices = target_names(results), energy_devices(results)
    for r in results:
        row = {name: get(r) for name, get in COLUMNS}
        for t in targets:
            prof = (r.get("targets") or {}).get(t) or {}
            for key in ("p50_ms", "p99_ms", "tokens_per_s", "roofline_ratio"):
                row[f"{t}.{key}"] = prof.get(key)
        for d in devices:
            row[f"energy_per_token_j.{d}"] = ((r.get("spiking") or {}).get("energy_per_token_j") or {}).get(d)
        row["error"] = r.get("error")
        rows.append(row)
    return rows


def markdown_tables(results: list[dict]) -> str:
    out = []
    by_model: dict[str, list[dict]] = {}
    for r in results:
        by_model.setdefault(r["config"]["model"], []).append(r)
    for model, rows in by_model.items():
        flat = flat_rows(rows)
        first = rows[0]
        out.append(f"## {model}\n")
        meta = [f"family `{first.get('family', '?')}`", f"task `{first.get('task', '?')}`"]
        if first.get("params"):
            meta.append(f"{first['params']:,} parameters")
        if first.get("data"):
            meta.append(f"data: {first['data']}")
        out.append(", ".join(meta) + "\n")
        keys = [k for k in flat[0] if k not in ("model", "error") and any(f.get(k) is not None for f in flat)]
        out.append("| " + " | ".join(keys) + " |")
        out.append("|" + "---|" * len(keys))
        for f in flat:
            out.append("| " + " | ".join(_fmt(f.get(k)) for k in keys) + " |")
        errors = [f"- `{f['recipe']}`: {f['error']}" for f in flat if f.get("error")]
        if errors:
            out.append("\nErrors:\n" + "\n".join(errors))
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

    # 3. energy per token across devices (spiking models)
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
        ax.set_title("Energy per token across devices (spiking models, simulator counts)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        written.append(_save(fig, folder / "energy_per_token.png"))
        plt.close(fig)
    return written


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
    md = f"# {title}\n\n{preamble}\n\n{body}\n"
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
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(preamble)}</p>",
    ]
    by_model: dict[str, list[dict]] = {}
    for r in results:
        by_model.setdefault(r["config"]["model"], []).append(r)
    for model, rows in by_model.items():
        flat = flat_rows(rows)
        keys = [k for k in flat[0] if k not in ("model", "error") and any(f.get(k) is not None for f in flat)]
        parts.append(f"<h2>{html.escape(model)}</h2><table><tr>")
        parts += [f"<th>{html.escape(k)}</th>" for k in keys]
        parts.append("</tr>")
        for f in flat:
            parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(f.get(k)))}</td>" for k in keys) + "</tr>")
        parts.append("</table>")
        for f in flat:
            if f.get("error"):
                parts.append(f"<p><b>{html.escape(str(f['recipe']))}</b>: {html.escape(str(f['error']))}</p>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(p.stem.replace('_', ' '))}</h2><img src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)

