"""Benchmark: `raydl train` vs a plain `torchrun` DDP script, side by side.

Same model (MLP 64-128-64-10), data (sklearn digits, seeded 60/20/20 split,
train-split standardisation), optimizer (Adam 1e-3), per-worker batch (64) and
worker count (2, gloo on CPU). The two commands run alternately, ``--runs`` times
each; every run is a fresh process tree with the launch timestamp taken just before
``Popen`` (``RAYDL_LAUNCH_TS`` / ``BENCH_LAUNCH_TS``).

Reported (medians over the runs):
  samples/s           steady state: median over epochs 2..N of the per-epoch global
                      training samples/s (both sides define it the same way)
  time to first step  launch -> first optimizer step done (rank 0)
  wall time           launch -> process exit, end to end

and the ratios raydl/torchrun. Goals (issue acceptance): samples/s ratio >= 0.97,
time-to-first-step ratio <= 2.

Usage:
  python bench/train_vs_torchrun.py --runs 3 --epochs 400 [--raydl-address HOST:PORT]
  python bench/train_vs_torchrun.py --runs 3 --epochs 400 --start-head   # variant c

Rewrites only the ``## Training: raydl vs torchrun`` section of bench/RESULTS.md
(``--no-write`` to skip). This is a script, not a test: nothing here asserts on time.
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
SECTION = "## Training: raydl vs torchrun"
SPEC = HERE / "digits_mlp_bench.yaml"
TORCHRUN_SCRIPT = HERE / "torchrun_ddp.py"
GOAL_RATE, GOAL_STARTUP = 0.97, 2.0


def _last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise ValueError("no JSON line on stdout")
    return json.loads(lines[-1])


def _run(cmd: list[str], env: dict, ts_var: str, timeout: float) -> dict:
    env = {**env, ts_var: repr(time.time())}
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} exited {p.returncode}:\n{p.stderr[-4000:]}\n{p.stdout[-2000:]}"
        )
    out = _last_json(p.stdout)
    m = out.get("metrics", out)  # raydl nests its metrics; torchrun_ddp prints them flat
    return {
        "samples_per_sec": m["samples_per_sec"],
        "time_to_first_step_s": m["time_to_first_step_s"],
        "val_accuracy": m.get("val_accuracy"),
        "test_accuracy": m.get("test_accuracy"),
        "wall_s": wall,
    }


def raydl_cmd(i: int, epochs: int, address: str | None) -> list[str]:
    exe = shutil.which("raydl") or str(Path(sys.executable).with_name("raydl"))
    # overrides right after the spec: argparse will not take positionals after the flags
    cmd = [exe, "train", str(SPEC.relative_to(ROOT)), f"run.name=bench-{i}",
           f"training.epochs={epochs}", "--restart", "--json"]
    if address:
        cmd += ["--address", address]
    return cmd


def torchrun_cmd(epochs: int) -> list[str]:
    exe = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    return [exe, "--standalone", "--nproc_per_node=2", str(TORCHRUN_SCRIPT.relative_to(ROOT)),
            "--epochs", str(epochs)]


def cpu_model() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict:
    cpu = cpu_model()
    try:
        kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
        ram = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        ram = "unknown"
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    vers = subprocess.run(
        [sys.executable, "-c", "import torch, ray; print(torch.__version__, ray.__version__)"],
        capture_output=True, text=True,
    ).stdout.split()
    return {"nproc": nproc, "ram": ram, "cpu": cpu, "python": platform.python_version(),
            "torch": vers[0] if vers else "?", "ray": vers[1] if len(vers) > 1 else "?"}


def _start_head() -> tuple[str, object]:
    sys.path.insert(0, str(HERE))
    from startup_probe import LocalHead  # our own helper: own temp dir + port, stop by PID

    head = LocalHead().__enter__()
    return head.address, head


def render(args, res: dict, mach: dict, loads: tuple, reproduce: str) -> str:
    med = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0] if runs[0][k] is not None}
           for side, runs in res.items()}
    rate = med["raydl"]["samples_per_sec"] / med["torchrun"]["samples_per_sec"]
    startup = med["raydl"]["time_to_first_step_s"] / med["torchrun"]["time_to_first_step_s"]
    wall = med["raydl"]["wall_s"] / med["torchrun"]["wall_s"]
    ok = lambda b: "**met**" if b else "**not met**"  # noqa: E731
    where = f"against a running local head ({args.raydl_address or 'started by the harness'})" \
        if (args.raydl_address or args.start_head) else "embedded Ray (`ray.init` inside `raydl train`)"
    L = [SECTION, ""]
    L.append(
        f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['ram']} RAM, Python {mach['python']}, "
        f"torch {mach['torch']}, ray {mach['ray']}. Load average (1 min) before/after: "
        f"{loads[0]:.2f} / {loads[1]:.2f}; other Ray users shared this machine, so timings are noisy."
    )
    L += ["", f"Reproduce: `{reproduce}`", ""]
    L.append(
        f"Job: sklearn digits (1078 train rows), MLP 64-128-64-10 ReLU, Adam 1e-3, per-worker batch 64, "
        f"2 workers (DDP, gloo, CPU), {args.epochs} epochs (raydl) / {args.torchrun_epochs or args.epochs} "
        f"epochs (torchrun); raydl {where}. {args.runs} runs each, "
        "alternating; medians. samples/s = median over epochs 2..N of the per-epoch global training "
        "samples/s; time to first step from the `Popen` timestamp; wall = launch to exit."
    )
    L += ["", "| metric | raydl | torchrun | raydl / torchrun | goal |", "|---|---:|---:|---:|---|"]
    L.append(f"| steady-state samples/s | {med['raydl']['samples_per_sec']:.0f} | "
             f"{med['torchrun']['samples_per_sec']:.0f} | {rate:.3f} | >= {GOAL_RATE}: {ok(rate >= GOAL_RATE)} |")
    L.append(f"| launch -> first optimizer step (s) | {med['raydl']['time_to_first_step_s']:.2f} | "
             f"{med['torchrun']['time_to_first_step_s']:.2f} | {startup:.2f} | <= {GOAL_STARTUP:g}x: "
             f"{ok(startup <= GOAL_STARTUP)} |")
    t_ep = args.torchrun_epochs or args.epochs
    same = t_ep == args.epochs
    L.append(f"| end-to-end wall time (s){'' if same else f'; {args.epochs} vs {t_ep} epochs'} | "
             f"{med['raydl']['wall_s']:.1f} | {med['torchrun']['wall_s']:.1f} | "
             f"{f'{wall:.2f}' if same else 'not comparable'} | - |")
    for k in ("val_accuracy", "test_accuracy"):
        if k in med["raydl"] and k in med["torchrun"]:
            L.append(f"| {k} | {med['raydl'][k]:.4f} | {med['torchrun'][k]:.4f} | - | - |")
    L += ["", "Per run (samples/s, first step s, wall s):", ""]
    for side, runs in res.items():
        cells = "; ".join(f"{r['samples_per_sec']:.0f}, {r['time_to_first_step_s']:.2f}, {r['wall_s']:.1f}"
                          for r in runs)
        L.append(f"- {side}: {cells}")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=400,
                    help="epochs for both sides (digits is tiny; ~400 gives >= 15 s of timed training)")
    ap.add_argument("--torchrun-epochs", type=int,
                    help="epochs for torchrun if different (samples/s is a per-epoch median, so it does "
                         "not depend on the epoch count; raydl's per-epoch overhead makes long runs slow)")
    ap.add_argument("--raydl-address", help="run raydl against this running Ray cluster (--address)")
    ap.add_argument("--start-head", action="store_true",
                    help="start a local head (own temp dir/port) for raydl, stop it after")
    ap.add_argument("--timeout", type=float, default=1800, help="per command, seconds")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--raw", help="also write the raw per-run results here (JSON)")
    ap.add_argument("--from-raw", help="skip the runs: re-render from a --raw file")
    ap.add_argument("--notes-file", help="markdown appended to the section (analysis)")
    args = ap.parse_args()

    argv, skip = [], False
    for a in sys.argv[1:]:  # the command to reproduce: drop the bookkeeping options
        if skip:
            skip = False
        elif a in ("--raw", "--from-raw", "--notes-file"):
            skip = True
        elif a != "--no-write" and not a.startswith(("--raw=", "--from-raw=", "--notes-file=")):
            argv.append(a)
    reproduce = "python bench/train_vs_torchrun.py " + shlex.join(argv)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    head = None
    address = args.raydl_address
    if args.start_head:
        address, head = _start_head()
        env["RAY_AUTH_MODE"] = "disabled"
    if address and not args.start_head:
        env.setdefault("RAY_AUTH_MODE", "disabled")
    load0 = os.getloadavg()[0]
    res = {"raydl": [], "torchrun": []}
    if args.from_raw:
        saved = json.loads(Path(args.from_raw).read_text())
        if "results" not in saved:  # bare {"raydl": [...], "torchrun": [...]}
            saved = {"results": saved, "load": [float("nan")] * 2}
        res, load0 = saved["results"], saved["load"][0]
        reproduce = saved.get("reproduce", reproduce)
    try:
        for i in range(0 if args.from_raw else args.runs):
            order = ("raydl", "torchrun") if i % 2 == 0 else ("torchrun", "raydl")
            for side in order:
                if side == "raydl":
                    r = _run(raydl_cmd(i, args.epochs, address), env, "RAYDL_LAUNCH_TS", args.timeout)
                else:
                    r = _run(torchrun_cmd(args.torchrun_epochs or args.epochs), env, "BENCH_LAUNCH_TS",
                             args.timeout)
                res[side].append(r)
                print(f"[{i}] {side}: {json.dumps(r)}", file=sys.stderr, flush=True)
    finally:
        if head is not None:
            head.__exit__(None, None, None)
    loads = (load0, saved["load"][1]) if args.from_raw else (load0, os.getloadavg()[0])
    body = render(args, res, machine(), loads, reproduce)
    if args.notes_file:
        body += "\n" + Path(args.notes_file).read_text()
    print(body)
    if args.raw and not args.from_raw:
        Path(args.raw).write_text(
            json.dumps({"results": res, "load": loads, "reproduce": reproduce}, indent=1)
        )
    if not args.no_write:
        sys.path.insert(0, str(HERE))
        from startup_probe import write_section

        write_section(RESULTS, SECTION, body)


if __name__ == "__main__":
    main()
