"""Benchmark: the metric-learning, few-shot, multi-task and transfer rows of the model zoo (issue #8).

Trains each shipped config (configs/metric_*, fewshot_*, multitask_*, transfer_*) with raydl's
`train` (2 CPU workers, DDP, tracking off) on one embedded Ray, then reads its model directory back:
- metric learning: kNN accuracy of the test embeddings against the train embeddings
  (`raydl.fewshot.knn_accuracy`, k = 5), bar 0.95;
- few-shot: 5-way 1-shot and 5-shot episodes on digits 5-9 (never trained on) with prototypes from
  the digits 0-4 embedding, 600 seeded episodes, 15 queries per class, mean and 95% interval
  (goals 0.70 / 0.85); beside it, the same episodes on raw standardised pixels (no training);
- multi-task: every head's test metric;
- transfer: pretrain on 0-4, then on 5-9 with 10 labelled images per class: fine-tune all (the
  shipped config), head only, surgical (first block frozen, second at 0.1x), and from scratch.

Usage: python bench/zoo_metric.py [--out bench/zoo_metric_results.json]
Nothing here asserts; the figures go to the JSON file and are copied into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def _train(name: str, storage: str, *overrides: str) -> tuple[dict, str, float]:
    from raydl.launch import train
    from raydl.spec import load_spec

    t0 = time.time()
    r = train(load_spec(CONFIGS / name, [f"run.storage_path={storage}", "tracking.backend=none", *overrides]))
    return r.metrics, str(r.model_dir), time.time() - t0


def raw_pixel_episodes(shot: int, episodes: int = 600) -> dict:
    from raydl.datasets import DATASETS
    from raydl.fewshot import episode_accuracy
    from raydl.spec import DataSpec

    t = DATASETS.get("digits_5to9").load(DataSpec(source="digits_5to9"))
    X = np.stack([t.column(f"pixel_{i}").to_numpy() for i in range(64)], 1)
    y = t.column("digit").to_numpy()
    z = (X - X.mean()) / X.std()
    rng = np.random.default_rng(0)
    acc = np.array([episode_accuracy(z, y, 5, shot, 15, rng) for _ in range(episodes)])
    return {"accuracy": float(acc.mean()), "ci95": float(1.96 * acc.std(ddof=1) / np.sqrt(episodes))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "zoo_metric_results.json"))
    args = ap.parse_args()
    import ray
    import torch

    from raydl.fewshot import fewshot, knn_accuracy

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    storage = tempfile.mkdtemp(prefix="zoo-metric-")
    rows: dict[str, dict] = {}
    for name in ("metric_triplet_digits.yaml", "metric_siamese_digits.yaml", "metric_simclr_digits.yaml"):
        m, mdir, wall = _train(name, storage)
        rows[name] = {"knn_accuracy": knn_accuracy(mdir), "test_knn_accuracy_in_batch": m["test_knn_accuracy"],
                      "epochs": m["epochs_run"], "wall_s": wall}
        print(name, rows[name], flush=True)
    m, mdir, wall = _train("fewshot_digits.yaml", storage)
    rows["fewshot_digits.yaml"] = {"knn_accuracy_0to4": knn_accuracy(mdir), "wall_s": wall, **{
        f"{shot}_shot": fewshot(mdir, way=5, shot=shot, queries=15, episodes=600, seed=0).__dict__ for shot in (1, 5)},
        **{f"raw_pixels_{shot}_shot": raw_pixel_episodes(shot) for shot in (1, 5)}}
    print("fewshot", rows["fewshot_digits.yaml"], flush=True)
    m, _, wall = _train("multitask_digits.yaml", storage)
    rows["multitask_digits.yaml"] = {**{k: v for k, v in m.items() if k.startswith("test_")}, "wall_s": wall}
    print("multitask", rows["multitask_digits.yaml"], flush=True)
    pre, pre_dir, wall = _train("transfer_pretrain_digits.yaml", storage)
    transfer = {"pretrain_test_accuracy": pre["test_accuracy"], "pretrain_wall_s": wall}
    source = f"finetune.from={pre_dir}"
    for label, extra in (("fine_tune_all", []), ("head_only", ["finetune.freeze=['1.*', '3.*']"]),
                         ("surgical", ["finetune.freeze=['1.*']", "finetune.lr_mult={'3.*': 0.1}"]),
                         ("from_scratch", ["finetune=null"])):
        m, _, wall = _train("transfer_finetune_digits.yaml", storage, source, f"run.name=transfer-{label.replace('_', '-')}", *extra)
        transfer[label] = {"test_accuracy": m["test_accuracy"], "wall_s": wall}
        print("transfer", label, transfer[label], flush=True)
    rows["transfer"] = transfer
    rows["machine"] = {"nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                       "ray": ray.__version__, "load1_at_end": os.getloadavg()[0],
                       "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    Path(args.out).write_text(json.dumps(rows, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
