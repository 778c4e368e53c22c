"""Benchmark: `raydl train` vs a plain `torchrun` DDP script, side by side (issue #14).

Cases (2 workers, gloo on CPU; the plain side is bench/torchrun_ddp.py, which slices the train
split's tensors per batch):
  digits_mlp   tiny: sklearn digits, MLP 64-128-64-10, batch 64 (bench/digits_mlp_bench.yaml); the
               plain side imports no raydl (the start-up reference)
  compute_mlp  compute-bound: MLP 64-512-512-10 on 200k x 64 seeded Parquet rows, batch 256
               (bench/compute_mlp_bench.yaml; the plain side prepares data and model with raydl's code)
  digits_cnn   configs/cnn_digits.yaml (digits as 1x8x8 images, conv 32-64-128 + batch norm, batch 32),
               40 epochs a side: an epoch trains in 0.25-0.3 s and single epochs move +-10 %, so 8 epochs
               (2 s of steady state) measured the run's first seconds more than its steady rate

raydl runs each case on each `--loaders` data path and `--where`. The paths: in_memory, ray_data (a
Parquet source's splits cached in the object store when they fit, as by default; the digits cases put
their prepared arrays there as blocks) and ray_data_uncached (a Parquet source with `data.cache: false`:
every epoch a Ray Data execution per split behind `streaming_split`, the path of data too big to cache;
compute_mlp only). Where: embedded Ray
(`ray.init` inside `raydl train`) or warm (a `raydl cluster up` head, started and stopped here, with
its own RAYDL_HOME). The sides alternate run by run (`--runs` each). Every run is a fresh process tree,
the launch timestamp taken just before `Popen` (`RAYDL_LAUNCH_TS` / `BENCH_LAUNCH_TS`); the 1-minute
load average is recorded at each launch. Each side of a pair starts once the CPUs are quiet (`settle`):
on a warm head the processes a raydl run leaves for the next one (`raydl/warm.py`) import torch in the
seconds after it, and the torchrun side would otherwise start while they do.

Per run: samples/s (median over epochs 2..N of the per-epoch global training samples/s, both sides),
launch -> first optimizer step, end of run (last optimizer step -> process exit: final scoring, model
directory, shutdown) and wall. `--short-runs N` adds N back-to-back 1-epoch digits_mlp runs on the warm
head, each a `raydl train` process launched as the previous one exits; and N such runs in one driver
(`raydl.launch.train` called N times in one Ray session, as `raydl continual` runs its experiences and
a pipeline its passes), timed from one run's return to the next one's first step; and a `raydl tune`
search of N 1-epoch trials run one at a time, timed from one trial's last step to the next one's first.
Each of the three sequences starts once the CPUs are quiet. A goal is not judged where the load at a
launch was above 2 a core; a sequence, which makes that load itself, is judged on the load at its start.

Usage:
  python bench/train_vs_torchrun.py --runs 3 --raw /tmp/bench.json            # everything, writes RESULTS.md
  python bench/train_vs_torchrun.py --cases compute_mlp --where embedded --runs 3 --no-write

Writes the ``SECTION`` section of bench/RESULTS.md (``--no-write`` to skip; ``--from-raw`` re-renders).
This is a script, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
SECTION = "## Performance #14: raydl vs torchrun (2026-12-03)"
TORCHRUN_SCRIPT = HERE / "torchrun_ddp.py"
DATA = Path("/tmp/raydl-bench-data/rows-200000")
GOAL_RATE, GOAL_FIRST = 0.97, {"embedded": 3.0, "warm": 2.0}
GOAL_NEXT, GOAL_END = 1.5, 2.0


@dataclass(frozen=True)
class Case:
    spec: Path
    overrides: tuple[str, ...]
    epochs: int  # raydl
    torchrun_epochs: int  # the plain loop is cheaper per epoch: more epochs in the same time
    plain_spec: bool  # the plain side builds data and model from the spec with raydl's code


CASES = {
    "digits_mlp": Case(HERE / "digits_mlp_bench.yaml", (), 30, 200, False),
    "compute_mlp": Case(HERE / "compute_mlp_bench.yaml", (f"data.source={DATA}",), 4, 4, True),
    "digits_cnn": Case(ROOT / "configs" / "cnn_digits.yaml",
                       ("tracking=none", "run.storage_path=/tmp/raydl-bench"), 40, 40, True),
}


def _last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise ValueError("no JSON line on stdout")
    return json.loads(lines[-1])


def _run(cmd: list[str], env: dict, ts_var: str, timeout: float) -> dict:
    load = os.getloadavg()[0]
    env = {**env, ts_var: repr(time.time())}
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}:\n{p.stderr[-4000:]}\n{p.stdout[-2000:]}")
    m = _last_json(p.stdout)
    m = m.get("metrics", m)  # raydl nests its metrics; torchrun_ddp prints them flat
    return {
        "samples_per_sec": m["samples_per_sec"],
        "time_to_first_step_s": m["time_to_first_step_s"],
        "end_s": wall - m["time_to_last_step_s"],
        "test_accuracy": m.get("test_accuracy"),
        "wall_s": wall,
        "load": load,
    }


def raydl_cmd(case: Case, name: str, loader: str, epochs: int | None = None) -> list[str]:
    exe = shutil.which("raydl") or str(Path(sys.executable).with_name("raydl"))
    # overrides right after the spec: argparse will not take positionals after the flags
    data = ["data.loader=ray_data", "data.cache=false"] if loader == "ray_data_uncached" else [f"data.loader={loader}"]
    return [exe, "train", str(case.spec), *case.overrides, f"run.name={name}", *data,
            f"training.epochs={epochs or case.epochs}", "--restart", "--json"]


def torchrun_cmd(case: Case) -> list[str]:
    exe = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cmd = [exe, "--standalone", "--nproc_per_node=2", str(TORCHRUN_SCRIPT), "--epochs", str(case.torchrun_epochs)]
    if case.plain_spec:
        cmd += ["--spec", str(case.spec), *(a for o in case.overrides for a in ("--set", o))]
    return cmd


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown")
    kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    vers = subprocess.run([sys.executable, "-c", "import torch, ray; print(torch.__version__, ray.__version__)"],
                          capture_output=True, text=True).stdout.split()
    return {"nproc": os.cpu_count(), "ram": f"{kb / 2**20:.1f} GiB", "cpu": cpu, "python": platform.python_version(),
            "torch": vers[0], "ray": vers[1]}


class WarmHead:
    """`raydl cluster up` with its own RAYDL_HOME (so no one else's head is used or stopped)."""

    def __init__(self, env: dict) -> None:
        self.env = {**env, "RAYDL_HOME": tempfile.mkdtemp(prefix="raydl-bench-home-")}
        self.exe = shutil.which("raydl") or str(Path(sys.executable).with_name("raydl"))

    def __enter__(self) -> dict:
        t0 = time.time()
        p = subprocess.run([self.exe, "cluster", "up"], env=self.env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"raydl cluster up exited {p.returncode}: {p.stderr.strip()[-2000:]}")
        self.up_s = time.time() - t0
        return self.env

    def __exit__(self, *exc) -> None:
        subprocess.run([self.exe, "cluster", "down"], env=self.env, capture_output=True, text=True)
        shutil.rmtree(self.env["RAYDL_HOME"], ignore_errors=True)


def _busy() -> tuple[int, int]:
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)  # busy, all (jiffies; idle and iowait are not busy)


def settle(quiet: float = 0.25, most: float = 30.0) -> None:
    """Wait (at most `most` s) until the machine's CPUs are less than `quiet` busy over half a second:
    each side of a pair starts on a quiet machine, not while the other side's processes still work
    (a warm head's idle processes left by the last raydl run importing torch, an exiting process)."""
    deadline = time.monotonic() + most
    while time.monotonic() < deadline:
        b0, a0 = _busy()
        time.sleep(0.5)
        b1, a1 = _busy()
        if (b1 - b0) / max(a1 - a0, 1) < quiet:
            return


def measure(args, env: dict, save) -> dict:
    """{where: {case: {"torchrun": [runs], loader: [runs]}}, "short": [runs]}; sides alternate per run."""
    res: dict = {}
    for where in args.where:
        head = WarmHead(env) if where == "warm" else None
        try:
            run_env = head.__enter__() if head else env
            res[where] = {}
            for case_name in args.cases:
                case, sides = CASES[case_name], ["torchrun", *args.loaders]
                got = res[where][case_name] = {s: [] for s in sides}
                for i in range(args.runs):
                    for side in (sides if i % 2 == 0 else sides[::-1]):
                        settle()
                        if side == "torchrun":
                            r = _run(torchrun_cmd(case), env, "BENCH_LAUNCH_TS", args.timeout)
                        else:
                            r = _run(raydl_cmd(case, f"bench-{case_name}-{side}-{i}", side), run_env,
                                     "RAYDL_LAUNCH_TS", args.timeout)
                        got[side].append(r)
                        print(f"[{where} {case_name} {i}] {side}: {json.dumps(r)}", file=sys.stderr, flush=True)
                        save(res)  # so far: a pass stopped half-way still renders
            if where == "warm" and args.short_runs:
                res["start_load"] = {}  # each sequence's load at its first launch, CPUs settled
                for name, sequence in (("short", back_to_back), ("in_driver", in_driver), ("tune_trials", tune_trials)):
                    settle()
                    res["start_load"][name] = os.getloadavg()[0]
                    res[name] = sequence(args.short_runs, run_env, args.timeout)
                    print(f"[{name}] {json.dumps(res[name])}", file=sys.stderr, flush=True)
                    save(res)
        finally:
            if head:
                head.__exit__()
    return res


def back_to_back(n: int, env: dict, timeout: float) -> list[dict]:
    """n 1-epoch digits_mlp `raydl train` processes on the warm head, each launched as the last exits."""
    return [_run(raydl_cmd(CASES["digits_mlp"], f"bench-short-{i}", "in_memory", 1), env, "RAYDL_LAUNCH_TS", timeout)
            for i in range(n)]


# N short runs in one driver process on the warm head (RAYDL_HOME says which): the gap of each is
# from the previous run's return (the first: from just before it) to its first optimizer step.
IN_DRIVER = """
import json, sys, time
import raydl.gc_thresholds  # as in the raydl command (continual, pipeline) that would run them
from raydl.launch import train
from raydl.session import ray_session
from raydl.spec import load_spec

spec, n = sys.argv[1], int(sys.argv[2])
out = []
with ray_session(None, warm=2):  # as `raydl continual` holds its session
    t = time.time()
    for i in range(n):
        r = train(load_spec(spec, [f"run.name=bench-indriver-{i}", "training.epochs=1", "data.loader=in_memory"]),
                  restart=True, launch_ts=t)
        end = time.time()
        out.append({"time_to_first_step_s": r.metrics["time_to_first_step_s"], "end_s": end - t - r.metrics["time_to_last_step_s"],
                    "load": float(open("/proc/loadavg").read().split()[0])})
        t = end
print(json.dumps(out))
"""


def in_driver(n: int, env: dict, timeout: float) -> list[dict]:
    p = subprocess.run([sys.executable, "-c", IN_DRIVER, str(CASES["digits_mlp"].spec), str(n)], env=env,
                       capture_output=True, text=True, timeout=timeout * n, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{n} runs in one driver exited {p.returncode}:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def tune_trials(n: int, env: dict, timeout: float) -> list[dict]:
    """`raydl tune` on the warm head: n 1-epoch digits_mlp trials, one at a time (a learning-rate
    search). Per trial, sorted by start: the gap from the previous trial's last optimizer step to its
    first (the first trial's: from the search's launch) and its warm workers."""
    import yaml

    d = Path(tempfile.mkdtemp(prefix="raydl-bench-tune-"))
    raw = yaml.safe_load(CASES["digits_mlp"].spec.read_text())
    raw["run"] = {"name": "bench-tune", "storage_path": str(d)}
    raw["training"]["epochs"] = 1
    raw["tune"] = {"metric": "val_accuracy", "mode": "max", "num_samples": n, "seed": 0, "max_concurrent_trials": 1,
                   "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}}
    (d / "tune.yaml").write_text(yaml.safe_dump(raw))
    exe = shutil.which("raydl") or str(Path(sys.executable).with_name("raydl"))
    load = os.getloadavg()[0]
    p = subprocess.run([exe, "tune", str(d / "tune.yaml")], env={**env, "RAYDL_LAUNCH_TS": repr(time.time())},
                       capture_output=True, text=True, timeout=timeout * n, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"raydl tune exited {p.returncode}:\n{p.stderr[-4000:]}")
    trials = sorted((json.loads(f.read_text().splitlines()[-1]) for f in (d / "bench-tune" / "tune").glob("*/result.json")),
                    key=lambda m: m["time_to_first_step_s"])
    last = [0.0] + [m["time_to_last_step_s"] for m in trials[:-1]]
    shutil.rmtree(d, ignore_errors=True)
    return [{"time_to_first_step_s": m["time_to_first_step_s"] - prev, "warm_workers": m["warm_workers"], "load": load}
            for m, prev in zip(trials, last)]


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _loads(runs: list[dict]) -> str:
    return f"{min(r['load'] for r in runs):.1f}-{max(r['load'] for r in runs):.1f}"


MAX_LOAD_PER_CORE = 2.0  # above this 1-minute load per core at any launch, a goal is not judged
# A sequence of short runs makes its own load (each run keeps both cores busy: about 4 on two cores by
# its third run), so outside load is read at its first launch, once the CPUs have settled; the load at
# each launch is still recorded. Raw results from before 2026-12-06 have no start load: every launch counts.


def _sequence_loads(res: dict, name: str) -> list[dict]:
    """The launches whose load judges the sequence `name` (its torchrun baseline is added by the caller)."""
    if name in res.get("start_load", {}):
        return [{"load": res["start_load"][name]}]
    return res[name]


def _sequence_load_text(res: dict, name: str) -> str:
    at = _loads(res[name])
    if name in res.get("start_load", {}):
        return f"load {res['start_load'][name]:.1f} at its start (judged on it), {at} at its launches"
    return f"load {at}"


def _next_verdict(gaps: list[float], runs: list[dict], torchrun: list[dict], judge) -> str:
    """Goal 3's line: the median gap to the next run's first step against torchrun's launch -> first step."""
    ratio = statistics.median(gaps) / _med(torchrun, "time_to_first_step_s")
    return f"Against torchrun's launch -> first step: {ratio:.2f}x (goal <= {GOAL_NEXT}x: {judge(runs)(ratio <= GOAL_NEXT)})."


def render(res: dict, mach: dict, reproduce: str, runs: int) -> str:
    verdict = {True: "met", False: "**not met**"}

    def judge(runs_: list[dict]):
        """met / not met, or not judged when the machine was too loaded for a ratio to mean anything."""
        worst = max(r["load"] for r in runs_)
        if worst > MAX_LOAD_PER_CORE * mach["nproc"]:
            return lambda b: f"not judged: load {worst:.0f}"
        return lambda b: verdict[b]
    L = [SECTION, "",
         f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['ram']} RAM, Python {mach['python']}, torch "
         f"{mach['torch']}, ray {mach['ray']}. Shared: the load column is the 1-minute load average at each "
         f"launch (min-max). Up to {runs} runs per side, alternating; medians.", "", f"Reproduce: `{reproduce}`", ""]
    for where in ("embedded", "warm"):
        if where not in res:
            continue
        L += [f"**{where}** ({'`ray.init` inside `raydl train`' if where == 'embedded' else 'a `raydl cluster up` head'}):", "",
              "| case | data path | samples/s raydl / torchrun | ratio | first step s raydl / torchrun | ratio | "
              "end of run s raydl / torchrun | load | runs |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
        for case_name, sides in res[where].items():
            t = sides["torchrun"]
            for loader, rr in sides.items():
                if loader == "torchrun" or not rr or not t:  # a pass stopped before this side ran
                    continue
                rate = _med(rr, "samples_per_sec") / _med(t, "samples_per_sec")
                first = _med(rr, "time_to_first_step_s") / _med(t, "time_to_first_step_s")
                goal_first = GOAL_FIRST[where] if case_name == "digits_mlp" else None
                ok = judge(rr + t)
                L.append(
                    f"| {case_name} | {loader} | {_med(rr, 'samples_per_sec'):,.0f} / {_med(t, 'samples_per_sec'):,.0f} | "
                    f"{rate:.3f} ({ok(rate >= GOAL_RATE)}) | {_med(rr, 'time_to_first_step_s'):.1f} / "
                    f"{_med(t, 'time_to_first_step_s'):.1f} | {first:.2f}x"
                    f"{f' ({ok(first <= goal_first)})' if goal_first else ''} | {_med(rr, 'end_s'):.2f} / "
                    f"{_med(t, 'end_s'):.2f} ({ok(_med(rr, 'end_s') < GOAL_END)}) | {_loads(rr + t)} | {len(rr)} / {len(t)} |")
        L += ["", "Per run (samples/s, first step s, end of run s, load at launch):", ""]
        for case_name, sides in res[where].items():
            for side, rr in sides.items():
                cells = "; ".join(f"{r['samples_per_sec']:,.0f}, {r['time_to_first_step_s']:.1f}, {r['end_s']:.1f}, "
                                  f"{r['load']:.0f}" for r in rr)
                L.append(f"- {case_name} {side}: {cells}")
        L.append("")
    if "short" in res:
        s, t = res["short"], res.get("warm", res.get("embedded", {})).get("digits_mlp", {}).get("torchrun")
        gaps = [r["time_to_first_step_s"] for r in s]
        L.append(f"**Repeated short runs** ({len(s)} back-to-back 1-epoch digits_mlp runs on the warm head; each "
                 f"launched as the previous one exited): previous exit -> next first step, s: "
                 f"{', '.join(f'{g:.1f}' for g in gaps)}; median {statistics.median(gaps):.1f}; end of run median "
                 f"{_med(s, 'end_s'):.2f} s; {_sequence_load_text(res, 'short')}.")
        if t:
            ok = judge(_sequence_loads(res, "short") + t)
            ratio = statistics.median(gaps) / _med(t, "time_to_first_step_s")
            L.append(f"Against torchrun's launch -> first step ({_med(t, 'time_to_first_step_s'):.1f} s): "
                     f"{ratio:.2f}x (goal <= {GOAL_NEXT}x: {ok(ratio <= GOAL_NEXT)}).")
        L.append("")
    if res.get("in_driver"):
        s, t = res["in_driver"], res.get("warm", {}).get("digits_mlp", {}).get("torchrun")
        later = s[1:] or s  # the first run's gap holds connecting to the head (kept when it is the only one)
        gaps = [r["time_to_first_step_s"] for r in later]
        every = ", ".join(f"{r['time_to_first_step_s']:.1f}" for r in s)
        L.append(f"**Repeated short runs in one driver** ({len(s)} 1-epoch digits_mlp runs, `raydl.launch.train` called "
                 f"back to back in one Ray session on the warm head, as `raydl continual` runs its experiences): "
                 f"previous run's return -> next first step, s: {every} "
                 f"(the first from just before it, connecting included); median of runs 2-{len(s)} "
                 f"{statistics.median(gaps):.1f}; end of run (last step -> return) median {_med(later, 'end_s'):.2f} s; "
                 f"{_sequence_load_text(res, 'in_driver')}.")
        if t:
            L.append(_next_verdict(gaps, _sequence_loads(res, "in_driver") + t, t, judge))
        L.append("")
    if res.get("tune_trials"):
        s, t = res["tune_trials"], res.get("warm", {}).get("digits_mlp", {}).get("torchrun")
        later = s[1:] or s  # the first trial's gap holds the search's own start
        gaps = [r["time_to_first_step_s"] for r in later]
        every = ", ".join(f"{r['time_to_first_step_s']:.1f} ({r['warm_workers']} warm)" for r in s)
        L.append(f"**Repeated Tune trials** (`raydl tune` on the warm head: {len(s)} 1-epoch digits_mlp trials of a "
                 f"learning-rate search, one at a time): previous trial's last step -> next trial's first step, s: {every} "
                 f"(the first from the search's launch); median of trials 2-{len(s)} {statistics.median(gaps):.1f}; "
                 f"{_sequence_load_text(res, 'tune_trials')}.")
        if t:
            L.append(_next_verdict(gaps, _sequence_loads(res, "tune_trials") + t, t, judge))
        L.append("")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--loaders", nargs="+", default=["in_memory", "ray_data"], choices=["in_memory", "ray_data", "ray_data_uncached"])
    ap.add_argument("--where", nargs="+", default=["embedded", "warm"], choices=["embedded", "warm"])
    ap.add_argument("--short-runs", type=int, default=8, help="back-to-back short runs on the warm head (0: none)")
    ap.add_argument("--timeout", type=float, default=1800, help="per command, seconds")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--raw", help="also write the raw per-run results here (JSON)")
    ap.add_argument("--from-raw", nargs="+", help="skip the runs: re-render from --raw files (merged)")
    ap.add_argument("--notes-file", help="markdown appended to the section (analysis)")
    args = ap.parse_args()
    if "ray_data_uncached" in args.loaders and set(args.cases) - {"compute_mlp"}:
        ap.error("--loaders ray_data_uncached: only the compute_mlp case reads Parquet files (give --cases compute_mlp)")

    argv = [a for a in sys.argv[1:] if a != "--no-write"]  # the command to reproduce
    for opt in ("--raw", "--notes-file"):  # bookkeeping options and their value
        if opt in argv:
            del argv[argv.index(opt):argv.index(opt) + 2]
    reproduce = "python bench/train_vs_torchrun.py " + shlex.join(argv)
    if args.from_raw:
        saved = [json.loads(Path(f).read_text()) for f in args.from_raw]
        res = {k: v for s in saved for k, v in s["results"].items()}
        reproduce = "`; `".join(s["reproduce"] for s in saved)
    else:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
        if "compute_mlp" in args.cases:
            sys.path.insert(0, str(HERE))
            from ingest_bench import write_data  # seeded; written once

            write_data(DATA, 200_000)
        def save(res: dict) -> None:
            if args.raw:
                Path(args.raw).write_text(json.dumps({"results": res, "reproduce": reproduce}, indent=1))

        res = measure(args, env, save)
        save(res)
    body = render(res, machine(), reproduce, args.runs)
    if args.notes_file:
        body += "\n" + Path(args.notes_file).read_text()
    print(body)
    if not args.no_write:
        sys.path.insert(0, str(HERE))
        from startup_probe import write_section

        write_section(RESULTS, SECTION, body)


if __name__ == "__main__":
    main()
