"""What a search leaves: the trials table (`trials.parquet`, `trials.csv`), `best/` (the best
trial's spec and model directory), and the one-object summary `--json` prints.

A trial's row: its values, the metric's last and best value, the epochs it ran, its status
(`finished`: its run ended and wrote a model directory; `stopped`: the scheduler or the time budget
ended it first; `error`; `unfinished`: the search was interrupted), its time, and its test metric
when it finished.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from raydl.paths import dir_swapped_in, write_atomic
from raydl.tune.spec import apply_config

CONFIG_PREFIX = "config/"


@dataclass(frozen=True)
class Outcome:
    table: pd.DataFrame
    best: dict | None  # {"trial_id", "values", "metric", "model_dir", "spec"} or None (no trial finished)
    run_dir: Path

    def summary(self, metric: str) -> dict:
        counts = self.table["status"].value_counts().to_dict() if len(self.table) else {}
        best = self.best or {}
        return {"metric": metric, "best_values": best.get("values"), "best_metric": best.get("metric"),
                "best_model_dir": best.get("model_dir"), "best_spec": best.get("spec"),
                "trials": {str(k): int(v) for k, v in counts.items()}, "n_trials": len(self.table),
                "table": str(self.run_dir / "trials.parquet")}


def _status(result, final: dict | None) -> str:
    if result.error is not None:
        return "error"
    if final is not None:
        return "finished"
    return "stopped"


def trial_rows(grid, metric: str, mode: str, space: list[str]) -> list[dict]:
    rows = []
    for result in grid:
        hist = result.metrics_dataframe
        last = result.metrics or {}
        attempt = last.get("attempt")
        final = None
        if attempt and (Path(attempt) / "result.json").is_file():
            final = json.loads((Path(attempt) / "result.json").read_text())
        values = hist[metric].dropna() if hist is not None and metric in hist else pd.Series(dtype=float)
        row = {"trial_id": last.get("trial_id"),
               **{k: (result.config or {}).get(k) for k in space},
               f"{metric}_last": last.get(metric),
               f"{metric}_best": (values.max() if mode == "max" else values.min()) if len(values) else None,
               "epochs": int(last.get("epoch", 0)),
               "status": _status(result, final),
               "time_s": float(last.get("time_total_s", math.nan)),
               "trial_dir": str(result.path),
               "model_dir": final["model_dir"] if final else None}
        test = metric.replace("val_", "test_", 1)
        row[test] = (final or {}).get("metrics", {}).get(test)
        rows.append(row)
    return rows


def write_table(rows: list[dict], run_dir: Path) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for col in table.columns:  # list values (e.g. model.hidden) as text: one type per column
        if table[col].map(lambda v: isinstance(v, list | dict)).any():
            table[col] = table[col].map(json.dumps)
    buf = table.to_parquet(index=False)
    write_atomic(run_dir / "trials.parquet", buf)
    write_atomic(run_dir / "trials.csv", table.to_csv(index=False))
    return table


def pick_best(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The finished trial with the best value of the metric over its epochs."""
    done = [r for r in rows if r["status"] == "finished" and r[f"{metric}_best"] is not None]
    if not done:
        return None
    key = (lambda r: r[f"{metric}_best"]) if mode == "max" else (lambda r: -r[f"{metric}_best"])
    return max(done, key=key)


def export_best(best_row: dict, grid, base: dict, spec_run: dict, run_dir: Path, space: list[str], metric: str) -> dict:
    """`best/spec.yaml` (the trial's spec, runnable with `raydl train`) and `best/model`."""
    result = next(r for r in grid if str(r.path) == best_row["trial_dir"])
    values = {k: (result.config or {}).get(k) for k in space}
    raw = apply_config(base, values)
    raw["run"] = {**spec_run, "name": f"{spec_run['name']}-best"}
    best_dir = run_dir / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(best_dir / "spec.yaml", yaml.safe_dump(raw, sort_keys=False))
    with dir_swapped_in(best_dir / "model") as tmp:
        shutil.copytree(best_row["model_dir"], tmp, dirs_exist_ok=True)
    return {"trial_id": best_row["trial_id"], "values": values, "metric": best_row[f"{metric}_best"],
            "model_dir": str(best_dir / "model"), "spec": str(best_dir / "spec.yaml")}


def collect(grid, search) -> Outcome:
    ts = search.tune
    space = list(ts.space)
    rows = trial_rows(grid, ts.metric, ts.mode, space)
    table = write_table(rows, search.run_dir)
    best_row = pick_best(rows, ts.metric, ts.mode)
    best = None
    if best_row is not None:
        best = export_best(best_row, grid, search.base, search.base["run"], search.run_dir, space, ts.metric)
    return Outcome(table, best, search.run_dir)


def format_table(table: pd.DataFrame, metric: str) -> str:
    shown = [c for c in table.columns if c not in ("trial_dir", "model_dir")]
    return table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}")
