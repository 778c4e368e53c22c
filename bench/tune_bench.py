"""raydl tune benchmarks (#10), side by side in one run.

1. ASHA vs exhaustive search on a fixed grid of 16 configurations of the digits MLP (learning rate
   x width x dropout): the exhaustive search runs every configuration to max_t epochs (FIFO, default
   27); ASHA (grace period 1, reduction factor 3, max_t the same: rungs at 1, 3 and 9 epochs) runs the
   same grid. Reported for both: trial-epochs (the epochs Tune saw each trial report, the usual
   count), the epochs the trials' Train runs completed (read from their checkpoints), wall time, the
   best trial (by val_accuracy) and its test accuracy. The bar: ASHA within 0.01 of the exhaustive
   search's test accuracy with at most 40% of its trial-epochs.
2. The shipped search `configs/tune_digits_asha.yaml` under `raydl tune`, then its exported
   `best/spec.yaml` retrained with `raydl train`: the two test accuracies (bar: within 0.01).

    python bench/tune_bench.py --storage /tmp/tune-bench [--cpus 4] [--epochs 27] [--part grid|shipped|both]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GRID = {
    "optimizer.lr": {"grid": [0.0003, 0.001, 0.003, 0.01]},
    "model.hidden": {"grid": [[32], [128]]},
    "model.dropout": {"grid": [0.0, 0.3]},
}
# Tune runs a grid in order. Ascending learning rates (the order above) are ASHA's worst case here:
# every trial beats the ones before it, so almost none is stopped. `--order shuffled` (default)
# runs the same 16 configurations with each key's values in a mixed order (no longer sorted by quality).
SHUFFLED = {
    "optimizer.lr": {"grid": [0.003, 0.0003, 0.01, 0.001]},
    "model.hidden": {"grid": [[128], [32]]},
    "model.dropout": {"grid": [0.3, 0.0]},
}


def grid_spec(storage: str, name: str, epochs: int, scheduler: dict, space: dict) -> dict:
    return {
        "run": {"name": name, "storage_path": storage},
        "data": {"source": "digits", "standardize": "global", "seed": 0},
        "model": {"name": "mlp", "hidden": [128], "dropout": 0.1},
        "loss": {"name": "cross_entropy", "label_smoothing": 0.05},
        "optimizer": {"name": "adam", "lr": 0.002},
        "training": {"epochs": epochs, "batch_size": 32, "seed": 0},
        "scaling": {"num_workers": 1},
        # a checkpoint every epoch: the last one's history is how many epochs the Train run completed
        "checkpoint": {"every_n_epochs": 1, "metric": "val_accuracy", "mode": "max"},
        "tracking": "none",
        "tune": {"metric": "val_accuracy", "mode": "max", "driver_cpus": 0.5, "space": space, "scheduler": scheduler},
    }


def train_epochs(trial_dir: str) -> int:
    """Epochs the trial's Train runs completed, read from their checkpoints (one every epoch). Tune
    counts the epochs it saw; a stopped trial's Train run may have gone on for a few more before the
    stop reached it (its workers do not wait for Tune's decision)."""
    done = 0
    for state in Path(trial_dir).glob("attempt-*/*/checkpoint_*/state.json"):
        done = max(done, len(json.loads(state.read_text())["history"]))
    return done


def run_search(raw: dict) -> dict:
    from raydl.spec import spec_from_dict
    from raydl.tune.run import tune

    t0 = time.time()
    out = tune(spec_from_dict(raw))
    wall = time.time() - t0
    table = out.table
    best = out.best or {}
    test = None
    if best:
        test = json.loads((Path(best["model_dir"]) / "metrics.json").read_text())["final"]["test_accuracy"]
    return {"trials": len(table), "trial_epochs": int(table["epochs"].sum()),
            "train_epochs": sum(train_epochs(d) for d in table["trial_dir"]), "wall_s": round(wall, 1),
            "best_values": best.get("values"), "best_val_accuracy": best.get("metric"), "best_test_accuracy": test,
            "status": table["status"].value_counts().to_dict()}


def part_grid(storage: str, epochs: int, space: dict) -> dict:
    exhaustive = run_search(grid_spec(storage, "bench-exhaustive", epochs, {"name": "fifo"}, space))
    asha = run_search(grid_spec(storage, "bench-asha", epochs,
                                {"name": "asha", "grace_period": 1, "reduction_factor": 3, "max_t": epochs}, space))
    ratio = asha["trial_epochs"] / exhaustive["trial_epochs"]
    train_ratio = asha["train_epochs"] / exhaustive["train_epochs"]
    gap = exhaustive["best_test_accuracy"] - asha["best_test_accuracy"]
    return {"exhaustive": exhaustive, "asha": asha, "epochs_ratio": round(ratio, 3),
            "train_epochs_ratio": round(train_ratio, 3), "test_accuracy_gap": round(gap, 4),
            "meets_bar": ratio <= 0.4 and gap <= 0.01}


def part_shipped(storage: str) -> dict:
    cfg = ROOT / "configs" / "tune_digits_asha.yaml"
    t0 = time.time()
    tuned = subprocess.run([sys.executable, "-m", "raydl.cli", "tune", str(cfg), f"run.storage_path={storage}",
                            "tracking.backend=none", "--json"], capture_output=True, text=True, check=True)
    summary = json.loads(tuned.stdout)
    tune_wall = time.time() - t0
    best_test = json.loads((Path(summary["best_model_dir"]) / "metrics.json").read_text())["final"]["test_accuracy"]
    t0 = time.time()
    trained = subprocess.run([sys.executable, "-m", "raydl.cli", "train", summary["best_spec"], "--json"],
                             capture_output=True, text=True, check=True)
    retrain = json.loads(trained.stdout)["metrics"]["test_accuracy"]
    return {"tune": {k: summary[k] for k in ("best_values", "best_metric", "trials", "n_trials")},
            "tune_wall_s": round(tune_wall, 1), "best_trial_test_accuracy": best_test,
            "retrained_test_accuracy": retrain, "train_wall_s": round(time.time() - t0, 1),
            "meets_bar": abs(best_test - retrain) <= 0.01}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", default="/tmp/raydl-tune-bench")
    ap.add_argument("--cpus", type=int, default=None, help="logical CPUs of the embedded Ray (default: the cores)")
    ap.add_argument("--epochs", type=int, default=27, help="max_t: every trial's epochs in the exhaustive search")
    ap.add_argument("--part", choices=["grid", "shipped", "both"], default="both")
    ap.add_argument("--order", choices=["shuffled", "ascending"], default="shuffled", help="the grid's order")
    ap.add_argument("--out", default=str(ROOT / "bench" / "tune_results.json"))
    args = ap.parse_args()
    results: dict = {"epochs": args.epochs, "order": args.order}
    if args.part in ("shipped", "both"):
        results["shipped"] = part_shipped(args.storage)
    if args.part in ("grid", "both"):
        import ray

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        try:
            results["grid"] = part_grid(args.storage, args.epochs, SHUFFLED if args.order == "shuffled" else GRID)
        finally:
            ray.shutdown()
    text = json.dumps(results, indent=2, default=str)
    Path(args.out).write_text(text + "\n")
    print(yaml.safe_dump(json.loads(text), sort_keys=False))  # plain floats (numpy's do not dump)


if __name__ == "__main__":
    main()
