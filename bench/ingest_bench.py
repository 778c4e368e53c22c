"""Benchmark: how rows reach the workers, streamed from Parquet by Ray Data vs read into the driver.

Two studies, each running `raydl train` end to end as a subprocess (its own embedded Ray):

  scale       MLP on seeded Parquet data of 1M, 5M and 20M rows x 64 float32 features (generated
              here, under --data, not committed), one epoch, 2 CPU workers. For each size and
              loader: driver peak RSS and the peak RSS of each training worker (sampled from
              /proc every 0.2 s), steady rows/s, time to first step, wall time. The in-memory
              path (the code before streaming: the driver reads, splits and scales the table)
              runs only up to --memory-max rows.
  throughput  compute-bound MLP 64-512-512-10 on 200k x 64 rows, batch 256 per worker, 2
              workers, both loaders alternately --runs times: steady samples/s (median over
              epochs 2..N) and the ratio streamed / in memory (goal >= 0.9).

Usage:
  python bench/ingest_bench.py scale --data /tmp/raydl-bench [--sizes 1000000 5000000 20000000]
  python bench/ingest_bench.py throughput --data /tmp/raydl-bench --runs 3 --epochs 4
  --out FILE writes the runs as JSON after each; scale --limit-s N stops a run after N s (its memory
  peaks so far are kept); throughput --concurrent runs both loaders of a pair at once (only meaningful
  when both are in their steady epochs at the same time: check the per-epoch figures).

Prints one JSON object per run and a Markdown table at the end (pasted into bench/RESULTS.md).
This is a script, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 64


def write_data(path: Path, rows: int, seed: int = 0, rows_per_file: int = 500_000) -> Path:
    """Seeded 10-class data (a random linear teacher), float32 features, written once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = path / "_DONE"
    if done.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(FEATURES, 10))
    names = [f"f{i}" for i in range(FEATURES)]
    for i, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        X = rng.normal(size=(n, FEATURES)).astype(np.float32)
        y = (X @ w + rng.normal(scale=2.0, size=(n, 10))).argmax(1)
        table = pa.Table.from_arrays([pa.array(X[:, j]) for j in range(FEATURES)] + [pa.array(y)], names=[*names, "y"])
        pq.write_table(table, path / f"part-{i:05d}.parquet", row_group_size=100_000)
    done.touch()
    return path


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS counts the object-store pages a process has touched (shared memory, up to the store's
    size); RssAnon is its private heap alone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}/task").exists() else []:
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                kids = []
            for c in kids:
                if c not in out:
                    out.add(c)
                    todo.append(c)
    return out


RAY_SERVICES = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "ray::Dash")


class Sampler(threading.Thread):
    """Peak RSS of the driver, of every Ray Train worker under it, and of the other Ray workers
    (Ray Data's read/map tasks, the controller), every 0.2 s. RSS counts the object-store pages
    a process has mapped (shared memory), so a worker reading zero-copy arrays shows them."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.driver_kib, self.workers_kib, self.others_kib = pid, 0, {}, {}
        self.driver_anon_kib, self.workers_anon_kib = 0, {}
        self.others_names: dict[int, set[str]] = {}  # what each of those processes was seen running
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.driver_kib = max(self.driver_kib, _rss_kib(self.pid))
            self.driver_anon_kib = max(self.driver_anon_kib, _rss_kib(self.pid, "RssAnon"))
            for c in _descendants(self.pid):
                cmd = _cmdline(c)
                if "RayTrainWorker" in cmd:
                    self.workers_kib[c] = max(self.workers_kib.get(c, 0), _rss_kib(c))
                    self.workers_anon_kib[c] = max(self.workers_anon_kib.get(c, 0), _rss_kib(c, "RssAnon"))
                elif cmd.startswith("ray::") and not any(s in cmd for s in RAY_SERVICES):
                    self.others_kib[c] = max(self.others_kib.get(c, 0), _rss_kib(c))
                    self.others_names.setdefault(c, set()).add(cmd.split("(")[0].split()[0])
            time.sleep(0.2)


def _by_name(names: dict[int, set[str]]) -> dict[str, int]:
    """How many processes were seen running each kind of task or actor (ray::IDLE included)."""
    counts: dict[str, int] = {}
    for seen in names.values():
        for n in seen:
            counts[n] = counts.get(n, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def run_raydl(data: Path, name: str, loader: str, overrides: list[str], runs_dir: Path, limit_s: float = 3600) -> dict:
    """One `raydl train`, sampled; past `limit_s` it gets SIGTERM (raydl stops cleanly) and the
    figures sampled so far are returned with "stopped_after_s"."""
    spec = ROOT / "bench" / "ingest_bench.yaml"
    exe = shutil.which("raydl") or str(Path(sys.executable).with_name("raydl"))
    cmd = [exe, "train", str(spec), f"run.name={name}", f"run.storage_path={runs_dir}", f"data.source={data}",
           f"data.loader={loader}", *overrides, "--restart", "--json"]
    env = {**os.environ, "RAYDL_LAUNCH_TS": repr(time.time()), "RAY_USAGE_STATS_ENABLED": "0"}
    t0, load0 = time.time(), os.getloadavg()[0]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    sampler = Sampler(proc.pid)
    sampler.start()
    stopped = None
    try:
        out, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        stopped = time.time() - t0
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    workers = sorted(sampler.workers_kib.values())
    seen = {"loader": loader, "name": name, "wall_s": time.time() - t0, "load_start": load0, "load_end": os.getloadavg()[0],
            "driver_peak_mib": sampler.driver_kib / 1024, "worker_peak_mib": [w / 1024 for w in workers],
            "driver_anon_peak_mib": sampler.driver_anon_kib / 1024,
            "worker_anon_peak_mib": [w / 1024 for w in sorted(sampler.workers_anon_kib.values())],
            "other_ray_worker_peak_mib": max(sampler.others_kib.values(), default=0) / 1024,
            "other_ray_workers_seen": len(sampler.others_kib),  # worker processes started for tasks/actors
            "other_ray_workers_by_name": _by_name(sampler.others_names)}
    if stopped is not None:
        return {**seen, "stopped_after_s": stopped, "error": f"stopped after {stopped:.0f} s (--limit-s)"}
    if proc.returncode != 0:  # recorded, and the study goes on with the next run
        return {**seen, "error": f"exited {proc.returncode}: {err.strip()[-2000:]}"}
    payload = json.loads(out.strip().splitlines()[-1])
    m = payload["metrics"]
    try:  # every epoch's samples/s (the reported figure is the median of epochs 2..N)
        hist = json.loads((Path(payload["model_dir"]) / "metrics.json").read_text())["history"]
    except (OSError, KeyError, ValueError):
        hist = []
    return {**seen, "samples_per_sec": m["samples_per_sec"], "time_to_first_step_s": m["time_to_first_step_s"],
            "test_accuracy": m.get("test_accuracy"), "epochs": m["epochs_run"],
            "history_samples_per_sec": [h["samples_per_sec"] for h in hist] or None}


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    return f"{os.cpu_count()} cores ({cpu}), {mem / 2**20:.0f} GiB, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f} at start"


def save(args, runs: list[dict], **extra) -> None:
    """The study so far as one JSON file (--out), rewritten after every run."""
    if args.out:
        doc = {"study": args.study, "command": " ".join(sys.argv), "machine": args.machine, "started_utc": args.started,
               "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra, "runs": runs}
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(args.out)


def scale(args) -> None:
    print(f"# machine: {machine()}", flush=True)
    rows_out: list[dict] = []
    for rows in args.sizes:
        data = write_data(Path(args.data) / f"rows-{rows}", rows)
        loaders = [x for x in args.loaders if x == "ray_data" or rows <= args.memory_max]
        for loader in loaders:
            r = run_raydl(data, f"scale-{rows}-{loader}{args.tag}", loader, ["training.epochs=1"], Path(args.data) / "runs",
                          args.limit_s)
            r["rows"] = rows
            print(json.dumps(r), flush=True)
            rows_out.append(r)
            save(args, rows_out)
    print("\n| rows | loader | driver peak RSS | worker peak RSS (each) | rows/s | first step | wall | test acc |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        if "error" in r:
            print(f"| {r['rows']:,} | {r['loader']} | {r['driver_peak_mib']:.0f} MiB | failed: {r['error'][-200:]} |")
            continue
        w = ", ".join(f"{x:.0f}" for x in r["worker_peak_mib"])
        print(f"| {r['rows']:,} | {r['loader']} | {r['driver_peak_mib']:.0f} MiB | {w} MiB | {r['samples_per_sec']:,.0f} | "
              f"{r['time_to_first_step_s']:.1f} s | {r['wall_s']:.0f} s | {r['test_accuracy']:.3f} |")


def throughput(args) -> None:
    print(f"# machine: {machine()}", flush=True)
    data = write_data(Path(args.data) / f"rows-{args.rows}", args.rows)
    over = [f"training.epochs={args.epochs}", "training.batch_size=256", "model.hidden=[512,512]"]
    rates: dict[str, list[float]] = {"in_memory": [], "ray_data": []}
    runs: list[dict] = []
    for i in range(args.runs):
        # --concurrent: both loaders at once, so they share whatever load the machine has.
        with ThreadPoolExecutor(2 if args.concurrent else 1) as pool:
            done = list(pool.map(lambda loader, i=i: run_raydl(data, f"tput-{loader}-{i}", loader, over, Path(args.data) / "runs"),
                                 ("in_memory", "ray_data")))
        for r in done:
            print(json.dumps(r), flush=True)
            runs.append(r)
            if "error" not in r:
                rates[r["loader"]].append(r["samples_per_sec"])
        save(args, runs)
    med = {k: statistics.median(v) if v else float("nan") for k, v in rates.items()}
    save(args, runs, median_samples_per_sec=med, ratio=med["ray_data"] / med["in_memory"])
    print(f"\nsteady samples/s, medians of {args.runs}: in memory {med['in_memory']:,.0f}, streamed {med['ray_data']:,.0f}, "
          f"ratio {med['ray_data'] / med['in_memory']:.3f} (goal >= 0.9); runs: {json.dumps(rates)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="study", required=True)
    s = sub.add_parser("scale")
    s.add_argument("--data", required=True)
    s.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    s.add_argument("--memory-max", type=int, default=5_000_000, help="largest size the in-memory path runs at")
    s.add_argument("--loaders", nargs="+", choices=["ray_data", "in_memory"], default=["ray_data", "in_memory"])
    s.add_argument("--tag", default="", help="appended to the run names (two studies at once)")
    s.add_argument("--limit-s", type=float, default=3600, help="stop a run (SIGTERM) after this many seconds; "
                   "its memory peaks so far are still recorded")
    s.set_defaults(fn=scale)
    t = sub.add_parser("throughput")
    t.add_argument("--data", required=True)
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--rows", type=int, default=200_000, help="rows of seeded data (the issue's figure: 200k)")
    t.add_argument("--concurrent", action="store_true", help="run the two loaders of each pair at the same time")
    t.set_defaults(fn=throughput)
    for sp in (s, t):
        sp.add_argument("--out", help="write the runs as JSON here (e.g. bench/ingest_results_scale.json)")
    args = p.parse_args()
    args.machine, args.started = machine(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.fn(args)


if __name__ == "__main__":
    main()
