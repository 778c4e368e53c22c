"""Write a drift result: JSON (every number), a self-contained HTML page (inline SVG), W&B."""

from __future__ import annotations

import html
import os
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from raydl.paths import write_atomic

REF_COLOR, CUR_COLOR = "#4a7bd0", "#e0703a"


def _probs(counts: list[int]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return c / c.sum() if c.sum() > 0 else c


def histogram_svg(
    labels: list[str], ref: list[int], cur: list[int], marker: float | None = None,
    width: int = 420, height: int = 140,
) -> str:
    """Side-by-side bars of reference vs current shares per bin; optional vertical marker
    at a fractional bin position (e.g. a threshold)."""
    p, q = _probs(ref), _probs(cur)
    n = len(p)
    top = max(float(p.max(initial=0)), float(q.max(initial=0)), 1e-12)
    pad, h = 4, height - 18
    bw = (width - 2 * pad) / max(n, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    for i in range(n):
        x0 = pad + i * bw
        for k, (v, color) in enumerate(((p[i], REF_COLOR), (q[i], CUR_COLOR))):
            bh = h * v / top
            title = html.escape(f"{labels[i]}: {'reference' if k == 0 else 'current'} {v:.4f}")
            parts.append(f'<rect class="{"ref" if k == 0 else "cur"}" x="{x0 + k * bw / 2:.2f}" '
                         f'y="{h - bh:.2f}" width="{max(bw / 2 - 0.5, 0.5):.2f}" '
                         f'height="{bh:.2f}" fill="{color}"><title>{title}</title></rect>')
    parts.append(f'<line x1="{pad}" y1="{h}" x2="{width - pad}" y2="{h}" stroke="#888"/>')
    if marker is not None:
        mx = pad + marker * bw
        parts.append(f'<line class="threshold" x1="{mx:.2f}" y1="0" x2="{mx:.2f}" y2="{h}" '
                     'stroke="#c00" stroke-dasharray="4 2"/>')
        parts.append(f'<text x="{mx + 3:.2f}" y="12" font-size="10" fill="#c00">threshold</text>')
    first, last = html.escape(labels[0]) if labels else "", html.escape(labels[-1]) if labels else ""
    parts.append(f'<text x="{pad}" y="{height - 4}" font-size="10">{first}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 4}" font-size="10" '
                 f'text-anchor="end">{last}</text></svg>')
    return "".join(parts)


def _edge_position(value: float, edges: list[float]) -> float:
    """Fractional bin position of ``value`` on under/interior/overflow bins."""
    e = np.asarray(edges, dtype=np.float64)
    if len(e) < 2:
        return 1.5
    return 1.0 + float(np.interp(value, e, np.arange(len(e))))


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def render_html(d: dict[str, Any], title: str = "raydl drift report") -> str:
    """The self-contained page for a ``DriftResult.to_dict()``."""
    body = []
    rows = ["<tr><th>feature</th><th>verdict</th><th>JS (bits)</th><th>JS threshold</th>"
            "<th>KL</th><th>PSI</th><th>missing ref/cur</th><th>unseen</th></tr>"]
    for f in d["features"]:
        st, th = f["stats"], f["thresholds"]
        verdict = "DRIFT" if f["drifted"] else "ok"
        if f["status"] != "ok":
            verdict += f" ({f['status']})"
        rows.append(
            f"<tr><td>{html.escape(f['name'])}</td><td>{verdict}</td><td>{_fmt(st['js'])}</td>"
            f"<td>{_fmt(th.get('js'))}</td><td>{_fmt(st['kl'])}</td><td>{_fmt(st['psi'])}</td>"
            f"<td>{_fmt(f['missing_share']['reference'])} / {_fmt(f['missing_share']['current'])}</td>"
            f"<td>{_fmt(f['unseen_share'])}</td></tr>")
    body.append("<h2>Features (most drifted first)</h2><table>" + "".join(rows) + "</table>")
    mv = d.get("multivariate")
    if mv:
        verdict = "DRIFT" if mv["drifted"] else "ok"
        labels = ["< min"] + [f"{e:.3g}" for e in mv["edges"][:-1]] + ["> max"]
        svg = histogram_svg(labels, mv["reference_counts"], mv["current_counts"],
                            marker=_edge_position(mv["threshold"], mv["edges"]))
        body.append(
            "<h2>Multivariate: PCA reconstruction error</h2>"
            f'<figure id="reconstruction" class="hist"><figcaption>{verdict}: mean error '
            f"{mv['current_mean']:.4g} (reference {mv['reference_mean']:.4g}), "
            f"{100 * mv['share_above']:.2f}% of rows above the {mv['percentile']:g}th-percentile "
            f"threshold {mv['threshold']:.4g} (expected {100 * mv['expected_share']:.2f}%); "
            f"{mv['n_components']} components</figcaption>{svg}</figure>")
    if d.get("output"):
        figs = []
        for o in d["output"]:
            labels = ["< min"] + [f"{e:.3g}" for e in o["edges"][:-1]] + ["> max"]
            svg = histogram_svg(labels, o["reference_counts"], o["current_counts"],
                                marker=_edge_position(o["threshold"], o["edges"]))
            figs.append(
                f'<figure class="hist output" data-score="{o["name"]}"><figcaption>'
                f"{o['name']}: {'DRIFT' if o['drifted'] else 'ok'}, flagged "
                f"{100 * o['share_flagged']:.2f}% (expected {100 * o['expected_share']:.2f}%)"
                f"</figcaption>{svg}</figure>")
        body.append("<h2>Model output (OOD scores)</h2><div class='grid'>" + "".join(figs) + "</div>")
    figs = []
    for f in d["features"]:
        js = f["stats"]["js"]
        cap = f"{html.escape(f['name'])}: {'DRIFT' if f['drifted'] else 'ok'}, JS {_fmt(js)}"
        svg = histogram_svg(f["bins"], f["reference_counts"], f["current_counts"])
        figs.append(f'<figure class="hist feature" data-feature="{html.escape(f["name"])}">'
                    f"<figcaption>{cap}</figcaption>{svg}</figure>")
    body.append("<h2>Reference vs current histograms</h2><div class='grid'>"
                + "".join(figs) + "</div>")
    tpl = Template(resources.files("raydl.drift").joinpath("report.html").read_text("utf-8"))
    return tpl.substitute(
        title=html.escape(title), verdict="DRIFT" if d["drifted"] else "no drift",
        verdict_class="drift" if d["drifted"] else "ok", n_rows=d["n_rows"],
        mode=html.escape(d["settings"]["threshold"]), n_tests=d["n_tests"], body="\n".join(body))


def write_report(d: dict[str, Any], out: str | os.PathLike, title: str = "raydl drift report") -> Path:
    """Render and write the HTML page atomically."""
    return write_atomic(out, render_html(d, title))


def summary_metrics(d: dict[str, Any]) -> dict[str, float]:
    """Flat metrics for trackers."""
    m: dict[str, float] = {
        "drift/drifted": float(d["drifted"]),
        "drift/n_drifted_features": float(len(d["drifted_features"])),
        "drift/n_rows": float(d["n_rows"]),
    }
    for f in d["features"]:
        for k, v in f["stats"].items():
            if v is not None:
                m[f"drift/{f['name']}/{k}"] = v
    if d.get("multivariate"):
        mv = d["multivariate"]
        m.update({"drift/reconstruction/mean": mv["current_mean"],
                  "drift/reconstruction/share_above": mv["share_above"],
                  "drift/reconstruction/drifted": float(mv["drifted"])})
    for o in d.get("output") or []:
        m[f"drift/output/{o['name']}/share_flagged"] = o["share_flagged"]
    return m


def log_wandb(d: dict[str, Any], report: Path | None, run_dir: str | os.PathLike,
              project: str = "raydl-drift") -> str:
    """Log metrics (and the HTML report) to an offline W&B run; returns the run's directory."""
    import wandb  # lazily: only when tracking is on

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, dir=str(run_dir), mode="offline", job_type="drift-check",
                     config={"drift": d["settings"]}, reinit="finish_previous")
    metrics = summary_metrics(d)
    if report is not None:
        metrics["drift/report"] = wandb.Html(Path(report).read_text(encoding="utf-8"))
    run.log(metrics)
    run.summary.update({k: v for k, v in metrics.items() if not k.endswith("/report")})
    out = run.dir
    run.finish()
    return str(Path(out).parent)
