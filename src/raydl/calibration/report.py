"""A reliability diagram (PNG, matplotlib's Agg backend, imported only here) and a small
self-contained HTML report of a calibration: metrics before and after, per split, and the diagram."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from raydl.calibration.metrics import bins

BEFORE, AFTER = "#e0703a", "#4a7bd0"


def reliability_png(before: np.ndarray, after: np.ndarray, title: str) -> bytes:
    """Accuracy against mean confidence per equal-width bin, before and after calibration, from
    the additive statistics of `raydl.calibration.metrics.calibration_stats`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 4.0), dpi=100)
    for i, (s, name, color) in enumerate(((before, "before", BEFORE), (after, "after", AFTER))):
        ax = fig.add_subplot(1, 2, i + 1)
        count, conf, acc = bins(s)
        n_bins = len(count)
        width = 1.0 / n_bins
        left = np.arange(n_bins) * width
        full = count > 0
        ax.bar(left[full], acc[full], width=width, align="edge", color=color, edgecolor="#333",
               linewidth=0.5, label="accuracy")
        ax.bar(left[full], conf[full] - acc[full], bottom=acc[full], width=width, align="edge",
               color="none", edgecolor="#c00", hatch="//", linewidth=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="#666", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name} calibration")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def html_report(result: dict, png: bytes) -> str:
    """The before/after metrics of every split and the reliability diagram, in one HTML file."""
    rows = []
    for split, m in result["metrics"].items():
        for name in m["before"]:
            b, a = m["before"][name], m["after"][name]
            rows.append(f"<tr><td>{html.escape(split)}</td><td>{html.escape(name)}</td>"
                        f"<td>{b:.4f}</td><td>{a:.4f}</td><td>{a - b:+.4f}</td></tr>")
    params = ", ".join(f"{k}={v:.4g}" for k, v in result["params"].items() if isinstance(v, float)) or "curves"
    fitted = result["fitted_on"]
    img = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Calibration: {html.escape(str(result['model_dir']))}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: .9em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: right; }}
td:nth-child(-n+2), th:nth-child(-n+2) {{ text-align: left; }}</style></head>
<body><h1>Calibration of {html.escape(str(result['model_dir']))}</h1>
<p>Method: <b>{html.escape(result['method'])}</b> ({html.escape(params)}), fitted on
{html.escape(str(fitted.get('source')))} ({fitted.get('rows')} rows). Equal-width bins: 15; ECE and MCE
over them, adaptive ECE over equal-mass bins; Brier: squared error summed over classes, mean over rows.</p>
<table><tr><th>split</th><th>metric</th><th>before</th><th>after</th><th>change</th></tr>
{''.join(rows)}
</table>
<h2>Reliability diagram ({html.escape(result['diagram_split'])})</h2>
<img alt="reliability diagram" src="data:image/png;base64,{img}">
</body></html>
"""
