"""Benchmark: the sequence and graph rows of the model zoo (issue #8) trained to their bars.

Each shipped config (configs/cnn1d_*, rnn_*, lstm_*, gru_*, transformer_*, gcn_*, gat_*) is
trained with `raydl train CONFIG --json` (2 CPU workers, DDP, tracking off), then its model
directory is read back with `raydl evaluate` and `raydl predict` on the same built-in dataset.
Reported per config: the bar metric (from tests/test_configs.py's BARS) and whether it is met,
epochs, wall time of the run, time to the first step, steady-state samples/s, and for the
language model the perplexity against the unigram baseline.

Usage:
  python bench/zoo_seq.py [--no-write]
  python bench/zoo_seq.py --only transformer_grammar,gcn_karate    # rerun some; keep the others' rows

Each config's figures are kept in bench/zoo_seq_results.json (a rerun replaces that config's row)
and the "## Model zoo: sequences and graphs" section of bench/RESULTS.md is rendered from all of
them. A script, not a test: nothing here asserts; a bar that is not met is reported as such.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
RAW = HERE / "zoo_seq_results.json"
SECTION = "## Model zoo: sequences and graphs"
FAMILIES = ("cnn1d_", "rnn_", "lstm_", "gru_", "transformer_", "gcn_", "gat_")


def bars() -> dict[str, tuple[str, float]]:
    """BARS of tests/test_configs.py, read without importing the test module."""
    tree = ast.parse((ROOT / "tests" / "test_configs.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "BARS")
    return ast.literal_eval(node.value)


def configs(only: list[str] | None) -> list[Path]:
    paths = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name.startswith(FAMILIES))
    return [p for p in paths if not only or p.stem in only]


def _json_line(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def _raydl(args: list[str], env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raydl.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def run_one(path: Path, bar: tuple[str, float], storage: Path, env: dict) -> dict:
    load = os.getloadavg()[0]
    t0 = time.time()
    p = _raydl(["train", str(path), f"run.storage_path={storage}", "tracking.backend=none", "--json"], env)
    wall = time.time() - t0
    if p.returncode != 0:
        return {"config": path.name, "error": (p.stderr.strip().splitlines() or ["?"])[-1], "load": load}
    out = _json_line(p.stdout)
    m, mdir = out["metrics"], out["model_dir"]
    source = next(ln.split("source:")[1].split(",")[0].strip() for ln in path.read_text().splitlines()
                  if ln.startswith("data:"))
    ev = _raydl(["evaluate", mdir, source, "--json"], env, 600)
    pr = _raydl(["predict", mdir, source, "--out", str(storage / f"{path.stem}.parquet")], env, 600)
    metric, goal = bar
    return {
        "config": path.name, "metric": metric, "value": m[metric], "bar": goal, "met": m[metric] >= goal,
        "epochs": m["epochs_run"], "best_epoch": m["best_epoch"], "wall_s": wall,
        "first_step_s": m.get("time_to_first_step_s"), "samples_per_sec": m["samples_per_sec"], "load": load,
        "val": m.get(metric.replace("test_", "val_")),
        "perplexity": m.get("test_perplexity"), "unigram": m.get("test_unigram_perplexity"),
        "evaluate_ok": ev.returncode == 0, "predict_ok": pr.returncode == 0,
        "eval": _json_line(ev.stdout) if ev.returncode == 0 else (ev.stderr.strip().splitlines() or ["?"])[-1],
    }


def render(rows: list[dict], mach: dict, started: str) -> str:
    L = [SECTION, "",
         f"`python bench/zoo_seq.py` (last run {started} UTC; each row's start in bench/zoo_seq_results.json): every "
         "sequence and graph config trained with `raydl train CONFIG "
         "--json` (2 CPU workers, DDP, embedded Ray per run, tracking off), then `raydl evaluate` and `raydl predict` on "
         "its model directory.",
         f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['ram']}, Python {mach['python']}, torch {mach['torch']}, "
         f"ray {mach['ray']}. Shared with other agents' test runs: wall times are noisy (load average at each launch given).",
         "",
         "| config | bar metric | value (val) | bar | met | epochs (best) | run wall s | first step s | samples/s | load | predict/evaluate |",
         "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            L.append(f"| {r['config']} | run failed: {r['error']} | | | no | | | | | {r['load']:.1f} | |")
            continue
        val = f" ({r['val']:.4f})" if r["val"] is not None else ""
        L.append(f"| {r['config']} | {r['metric']} | {r['value']:.4f}{val} | {r['bar']} | {'yes' if r['met'] else 'NO'} | "
                 f"{r['epochs']} ({r['best_epoch']}) | {r['wall_s']:.0f} | {r['first_step_s'] or float('nan'):.0f} | "
                 f"{r['samples_per_sec']:.0f} | {r['load']:.1f} | {'ok' if r['evaluate_ok'] and r['predict_ok'] else 'FAILED'} |")
    lm = [r for r in rows if r.get("perplexity")]
    for r in lm:
        L += ["", f"{r['config']}: test perplexity **{r['perplexity']:.2f}** vs the unigram baseline's **{r['unigram']:.2f}** "
              f"on the same test tokens (the best unigram model for them, fitted to their own frequencies)."]
    L += ["", "Wall and first-step times above are mostly Ray start-up under the load shown (about 20-25 s to the first "
          "step on a quiet machine: see \"Ray Train start-up\"); the bars do not depend on it. A run that fails to start "
          "(under heavy load Ray can time out starting its node) is rerun with `--only`.",
          "", "Reproduce: `python bench/zoo_seq.py` (one config: `--only gcn_karate`).", ""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated config stems to rerun (the other rows are kept)")
    ap.add_argument("--no-write", action="store_true", help="print, do not rewrite bench/RESULTS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from startup_probe import write_section
    from train_vs_torchrun import machine

    table = bars()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    rows = json.loads(RAW.read_text()) if RAW.exists() and args.only else []
    with tempfile.TemporaryDirectory(prefix="zoo-seq-") as tmp:
        # Its own RAYDL_HOME: never connect to a head someone else started with `raydl cluster up`.
        env = {**os.environ, "RAYDL_HOME": str(Path(tmp) / "home"), "RAY_USAGE_STATS_ENABLED": "0", "WANDB_SILENT": "true"}
        for path in configs(args.only.split(",") if args.only else None):
            row = run_one(path, table[path.name], Path(tmp) / "runs", env)
            row["started"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows = sorted([r for r in rows if r["config"] != row["config"]] + [row], key=lambda r: r["config"])
    body = render(rows, machine(), started)
    print(body)
    if not args.no_write:
        RAW.write_text(json.dumps(rows, indent=1) + "\n")
        write_section(RESULTS, SECTION, body)


if __name__ == "__main__":
    main()
