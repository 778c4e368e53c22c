"""Continual-learning strategies side by side on the shipped streams, over several seeds.

Each stream trains its experiences as ordinary 2-worker raydl runs (`raydl.continual.run_stream`)
in one embedded Ray session; the figures are the average accuracy, forgetting and backward
transfer after the last experience, and the accuracy matrix of seed 0. Results go to
bench/continual_results.json after every stream, merged with what is there then (a partial run
keeps what it finished; two processes with disjoint --only sets can share the file; run again with
the same --storage and an unfinished stream continues from its last experience), and
`--table` prints the Markdown table for bench/RESULTS.md.

    python bench/continual_bench.py [--seeds 0 1 2] [--only split_digits:replay ...] [--table]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "continual_results.json"
CONFIGS = {s: f"configs/continual_{s}.yaml" for s in ("split_digits", "permuted_digits", "rotated_digits", "split_digits_tasks")}
# (scenario, strategy, overrides), in the order they run (the bars first)
RUNS = [
    ("split_digits", "replay", ["continual.size=500"]),
    ("split_digits", "naive", []),
    ("permuted_digits", "replay", ["continual.size=500"]),
    ("split_digits", "joint", []),
    ("split_digits", "cumulative", []),
    ("split_digits", "ewc", ["continual.weight=1000.0", "continual.fisher_samples=500"]),
    ("split_digits", "lwf", ["continual.alpha=1.0", "continual.temperature=2.0"]),
    ("permuted_digits", "naive", []),
    ("rotated_digits", "replay", ["continual.size=500", "continual.policy=class_balanced"]),
    ("split_digits_tasks", "ewc", ["continual.weight=100.0", "continual.fisher_samples=500"]),
    ("split_digits_tasks", "naive", []),
    ("rotated_digits", "naive", []),
    ("split_digits", "agem", ["continual.size=500", "continual.batch_size=256"]),
    ("permuted_digits", "agem", ["continual.size=500", "continual.batch_size=256"]),
]


def _read() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def run(seeds: list[int], only: set[str], storage: str) -> None:
    import ray

    from raydl.continual.run import run_stream
    from raydl.paths import write_atomic
    from raydl.spec import load_spec

    results = _read()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        for scenario, strategy, extra in RUNS:  # every seed of a row before the next row (the bars first)
            for seed in seeds:
                key = f"{scenario}:{strategy}:{seed}"
                if (only and f"{scenario}:{strategy}" not in only) or key in results:
                    continue
                overrides = [f"run.name={scenario}-{strategy}-s{seed}", f"run.storage_path={storage}", "tracking.backend=none",
                             f"training.seed={seed}", f"data.seed={seed}", f"continual={{strategy: {strategy}}}", *extra]
                spec = load_spec(HERE.parent / CONFIGS[scenario], overrides)
                t0 = time.time()
                try:
                    out = run_stream(spec).summary
                except Exception as e:  # noqa: BLE001 (e.g. Ray's OOM killer on a shared machine): the next stream
                    print(f"{key}: failed after {time.time() - t0:.0f} s: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                row = {k: out[k] for k in ("accuracy_matrix", "average_accuracy", "forgetting", "backward_transfer",
                                           "average_accuracy_curve", "train_rows", "seconds")}
                row["wall_s"] = time.time() - t0
                results = {**_read(), key: row}  # what another bench process wrote meanwhile is kept
                write_atomic(RESULTS, json.dumps(results, indent=1))
                print(f"{key}: average accuracy {out['average_accuracy']:.4f} ({time.time() - t0:.0f} s)", flush=True)
    finally:
        ray.shutdown()


def _fmt(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def table() -> str:
    results = json.loads(RESULTS.read_text())
    lines = ["| scenario | strategy | seeds | average accuracy | forgetting | backward transfer | s per stream |",
             "|---|---|---|---|---|---|---|"]
    for scenario, strategy, _ in RUNS:
        rows = [v for k, v in sorted(results.items()) if k.startswith(f"{scenario}:{strategy}:")]
        if rows:
            lines.append(f"| {scenario} | {strategy} | {len(rows)} | {_fmt([r['average_accuracy'] for r in rows])} | "
                         f"{_fmt([r['forgetting'] for r in rows])} | {_fmt([r['backward_transfer'] for r in rows])} | "
                         f"{statistics.mean(r['wall_s'] for r in rows):.0f} |")
    for scenario, strategy, _ in RUNS:
        r = results.get(f"{scenario}:{strategy}:0")
        if r:
            lines += ["", f"{scenario} / {strategy}, seed 0 (row: after experience i; column: test set of experience j):", "```"]
            lines += ["  ".join(f"{v:.3f}" for v in row) for row in r["accuracy_matrix"]]
            lines.append("```")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="*", default=[], help="scenario:strategy pairs to run")
    p.add_argument("--storage", default=None, help="where the runs go (default: a temp dir)")
    p.add_argument("--table", action="store_true", help="print the Markdown table of the results so far")
    args = p.parse_args()
    if args.table:
        print(table())
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    run(args.seeds, set(args.only), args.storage or tempfile.mkdtemp(prefix="raydl-continual-bench-"))
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
