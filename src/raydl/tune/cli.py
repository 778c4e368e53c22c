"""`raydl tune SPEC [key=value ...] [--address] [--resume] [--json]`: live progress on stderr, the
trials table and the best trial on stdout (or one JSON object with --json)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def cmd_tune(args: argparse.Namespace) -> int:
    from raydl.cli import _json_stdout
    from raydl.spec import load_spec
    from raydl.tune.progress import LiveProgress
    from raydl.tune.results import format_table
    from raydl.tune.run import tune

    launch = time.time()
    spec = load_spec(args.spec, args.overrides)
    out_fd = _json_stdout() if args.json else None

    def on_start(concurrency: int) -> None:
        sc = spec.scaling
        print(f"tune: each trial is a driver ({spec.tune.driver_cpus:g} CPU) + {sc.num_workers} Train worker(s); "
              f"{concurrency} trial(s) run at once", file=sys.stderr)

    try:
        outcome = tune(spec, address=args.address, resume=args.resume, on_start=on_start,
                       callbacks=[LiveProgress(spec.tune.metric, spec.tune.mode)])
    except KeyboardInterrupt:
        from raydl.cli import _received

        print(f"raydl: interrupted: search {spec.run.name} stopped; its finished trials and checkpoints are kept; "
              "run the same command with --resume to continue it", file=sys.stderr)
        return 128 + (_received[-1] if _received else signal.SIGINT)
    summary = {**outcome.summary(spec.tune.metric), "wall_s": round(time.time() - launch, 1)}
    if out_fd is not None:
        os.write(out_fd, (json.dumps(summary, default=str) + "\n").encode())
        return 0
    print(format_table(outcome.table, spec.tune.metric))
    if outcome.best:
        print(f"best: {spec.tune.metric}={outcome.best['metric']:.4g} with {outcome.best['values']}")
        print(f"  spec:  {outcome.best['spec']} (raydl train {outcome.best['spec']})")
        print(f"  model: {outcome.best['model_dir']}")
    else:
        print("best: no trial finished its run, so no model was exported")
    print(f"trials table: {summary['table']} (and trials.csv)")
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("tune", help="search a job spec's hyperparameters with Ray Tune (its tune: section)")
    t.add_argument("spec")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. tune.num_samples=8")
    t.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted search of the same run.name")
    t.add_argument("--json", action="store_true", help="print one JSON object on stdout, everything else on stderr")
    t.set_defaults(func=cmd_tune)
