"""Continual-learning metrics from the accuracy matrix, and its heat map (PNG and HTML).

R[i, j] is the test accuracy on experience j of the model after experience i (Lopez-Paz and
Ranzato 2017; Chaudhry et al. 2018). After experience k (the last row):
- average accuracy: mean of R[k, j] over the experiences seen, j <= k;
- forgetting: mean over j < k of max_{j <= l < k} R[l, j] - R[k, j] (the drop from the best);
- backward transfer: mean over j < k of R[k, j] - R[j, j] (negative: forgetting).
A reference trained once on the whole stream (joint) has one row covering every experience: its
average accuracy is that row's mean; forgetting and backward transfer are None.
"""

from __future__ import annotations

import html
import io

import numpy as np


def average_accuracy(R: np.ndarray, k: int | None = None) -> float:
    k = len(R) - 1 if k is None else k
    return float(np.mean(R[k, : k + 1]))


def forgetting(R: np.ndarray) -> float | None:
    k = len(R) - 1
    if k == 0:
        return None
    return float(np.mean([np.max(R[j:k, j]) - R[k, j] for j in range(k)]))


def backward_transfer(R: np.ndarray) -> float | None:
    k = len(R) - 1
    if k == 0:
        return None
    return float(np.mean([R[k, j] - R[j, j] for j in range(k)]))


def summary(R: np.ndarray, joint: bool = False) -> dict:
    """The matrix and its figures (rows: experiences done so far; columns: every experience)."""
    R = np.asarray(R, dtype=np.float64)
    if joint:
        return {"accuracy_matrix": R.tolist(), "average_accuracy": float(R[-1].mean()), "forgetting": None,
                "backward_transfer": None, "average_accuracy_curve": [float(R[-1].mean())]}
    return {"accuracy_matrix": R.tolist(), "average_accuracy": average_accuracy(R), "forgetting": forgetting(R),
            "backward_transfer": backward_transfer(R),
            "average_accuracy_curve": [average_accuracy(R, i) for i in range(len(R))]}


def heatmap_png(R: np.ndarray, title: str, row_labels: list[str] | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R = np.asarray(R, dtype=np.float64)
    rows, cols = R.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * cols, 1.0 + 0.6 * rows), dpi=110)
    im = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(rows):
        for j in range(cols):
            ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if R[i, j] > 0.6 else "white")
    ax.set_xticks(range(cols), [f"exp {j + 1}" for j in range(cols)], fontsize=8)
    ax.set_yticks(range(rows), row_labels or [f"after {i + 1}" for i in range(rows)], fontsize=8)
    ax.set_xlabel("test set of experience")
    ax.set_ylabel("model")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def html_report(result: dict, png: bytes) -> str:
    import base64

    def fmt(v) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    R = result["accuracy_matrix"]
    head = "".join(f"<th>exp {j + 1}</th>" for j in range(len(R[0]) if R else 0))
    body = "".join(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{v:.3f}</td>" for v in row) + "</tr>"
                   for label, row in zip(result["row_labels"], R))
    exps = "".join(f"<li>{html.escape(e)}</li>" for e in result["experience_names"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Continual: {html.escape(result['run_name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:right}}</style></head>
<body><h1>Continual run {html.escape(result['run_name'])}</h1>
<p>Scenario <b>{html.escape(result['scenario'])}</b>, strategy <b>{html.escape(result['strategy'])}</b>.
Average accuracy {fmt(result['average_accuracy'])}, forgetting {fmt(result['forgetting'])},
backward transfer {fmt(result['backward_transfer'])}.</p>
<ol>{exps}</ol>
<h2>Accuracy matrix (row: model after experience i; column: test set of experience j)</h2>
<table><tr><th></th>{head}</tr>{body}</table>
<img alt="accuracy matrix heat map" src="data:image/png;base64,{base64.b64encode(png).decode()}">
</body></html>
"""
