"""The `raydl` command line: train, validate, predict, evaluate (and drift, when installed).

Errors a user can fix print one line and exit 2 (no traceback unless --debug). With `--json`,
stdout carries exactly one JSON object; everything else (Ray's own output included) goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
import time

from raydl.calibration import cli as calibration_cli
from raydl.errors import RaydlError
from raydl.model_registry import cli as model_registry_cli

SHOWN = ("train_loss", "val_loss", "val_accuracy", "val_f1", "val_r2", "val_miou", "val_map50", "samples_per_sec")


class Progress:
    """An epoch bar with live metrics on a terminal; one plain line per epoch otherwise."""

    def __init__(self, epochs: int, stream=sys.stderr) -> None:
        self.epochs, self.stream, self.tty = epochs, stream, stream.isatty()

    def __call__(self, m: dict) -> None:
        e = int(m["epoch"])
        shown = "  ".join(f"{k}={m[k]:.4g}" for k in SHOWN if k in m)
        if self.tty:
            done = int(30 * e / self.epochs)
            self.stream.write(f"\r\x1b[2Kepoch {e}/{self.epochs} [{'#' * done}{'.' * (30 - done)}] {shown}")
            if e == self.epochs:
                self.stream.write("\n")
        else:
            self.stream.write(f"epoch {e}/{self.epochs} {shown}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def summary_table(metrics: dict) -> str:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(w)}  {v}" for k, v in rows)


def _json_stdout() -> int:
    """Point fd 1 (and sys.stdout) at stderr; return a duplicate of the real stdout for the JSON."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


_received: list[int] = []  # the signals _on_signal has seen


def _on_signal(signum: int, frame) -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, so `finally` blocks (ray.shutdown,
    the run lock) run; the exit status says which signal it was (128 + signum)."""
    _received.append(signum)
    raise KeyboardInterrupt


def _last_checkpoint_epoch(rdir) -> int | None:
    """Epochs done in the checkpoint a rerun resumes from: Ray Train's latest registered checkpoint
    (its record can lag the checkpoint dirs on disk), read from the loop state raydl saves in it; or,
    when there is no record or a kill cut it off, the newest whole checkpoint (`record.salvage`)."""
    from raydl.loop import LOOP_STATE_FILE
    from raydl.record import RAY_RECORD, newest_whole_checkpoint

    try:
        snap = rdir.read_json(RAY_RECORD)
    except Exception:  # none yet, or cut off: a rerun resumes from the newest whole checkpoint, if any
        newest = None if rdir.remote else newest_whole_checkpoint(rdir)
        return newest[1].next_epoch if newest is not None else None
    try:
        return int(rdir.read_json(snap["latest_checkpoint_result"]["checkpoint_dir_name"], LOOP_STATE_FILE)["next_epoch"])
    except Exception:  # a format this version does not know
        return None


def cmd_train(args: argparse.Namespace) -> int:
    from raydl.launch import run_dir, train
    from raydl.spec import load_spec

    launch_ts = float(os.environ.get("RAYDL_LAUNCH_TS") or time.time())
    spec = load_spec(args.spec, args.overrides)
    out_fd = _json_stdout() if args.json else None
    progress = Progress(spec.training.epochs)
    try:
        result = train(spec, address=args.address, restart=args.restart, on_epoch=progress, launch_ts=launch_ts)
    except (KeyboardInterrupt, SystemExit) as e:
        # Ray Train's fit() swaps in its own SIGINT handler: it aborts the workers and the controller,
        # then raises SystemExit (1 in Ray 2.60). train() has shut Ray down by the time we are here.
        if isinstance(e, SystemExit) and signal.getsignal(signal.SIGINT) is _on_signal:
            raise
        progress.close()
        epoch = _last_checkpoint_epoch(run_dir(spec))
        if epoch:
            kept = f"its last checkpoint (epoch {epoch}) is kept"
        else:
            kept = "its last checkpoint is kept" if run_dir(spec).has_checkpoints() else "it had no checkpoint yet"
        print(f"raydl: interrupted: run {spec.run.name} stopped; {kept}; run the same command again to resume",
              file=sys.stderr)
        return 128 + (_received[-1] if _received and not isinstance(e, SystemExit) else signal.SIGINT)
    progress.close()
    if out_fd is not None:
        payload = {"model_dir": str(result.model_dir), "run_name": result.run_name, "metrics": result.metrics}
        os.write(out_fd, (json.dumps(payload) + "\n").encode())
    else:
        print(f"run {result.run_name}: {result.status}; model written to {result.model_dir}")
        print(summary_table(result.metrics))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from raydl.launch import validate
    from raydl.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    p = validate(spec, args.address)
    print(f"{args.spec}: valid ({spec.model.name} on {spec.data.source}: {p.describe()})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from raydl.models import describe

    print(describe())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from raydl.inference import predict

    print(f"predictions written to {predict(args.model_dir, args.data, args.out)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raydl.inference import evaluate
    from raydl.model_dir import json_safe

    metrics = evaluate(args.model_dir, args.data, args.split)
    print(json.dumps(json_safe(metrics), allow_nan=False) if args.json else summary_table(metrics))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from raydl import cluster

    if args.action == "up":
        head = cluster.up(args.num_cpus)
        print(f"local Ray head at {head.address} ({head.num_cpus} CPUs); raydl train uses it until `raydl cluster down`")
    elif args.action == "down":
        print("stopped the local Ray head" if cluster.down() else "no local Ray head was running")
    else:
        head = cluster.running()
        print(f"running at {head.address} ({head.num_cpus} CPUs)" if head else "not running")
        return 0 if head else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raydl", description="Distributed deep-learning training on Ray.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML job spec")
    t.add_argument("spec")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optimizer.lr=3e-3")
    t.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    t.add_argument("--restart", action="store_true", help="start the run fresh instead of resuming it")
    t.add_argument("--json", action="store_true", help="print one JSON object on stdout, everything else on stderr")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("validate", help="check a job spec and its data without training",
                       description="Check a job spec and its data without training; every problem is listed, one per line "
                                   "of the message. The model section is {name, ...that model's parameters}: see `raydl models`.")
    v.add_argument("spec")
    v.add_argument("overrides", nargs="*", metavar="key=value")
    v.add_argument("--address", help="Ray cluster for a streamed source's statistics pass (default: as raydl train)")
    v.set_defaults(func=cmd_validate)

    m = sub.add_parser("models", help="list the registered models, the data they take, and their parameters")
    m.set_defaults(func=cmd_models)

    pr = sub.add_parser("predict", help="apply a model directory to data")
    pr.add_argument("model_dir")
    pr.add_argument("data", help="Parquet/CSV path or URI, or a built-in dataset name")
    pr.add_argument("--out", required=True, help="output Parquet file")
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="print a model's metrics on labelled data")
    ev.add_argument("model_dir")
    ev.add_argument("data")
    ev.add_argument("--split", choices=["all", "train", "val", "test"], default="all",
                    help="one split of the data the model was trained on (rebuilt with its seed), or every row")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("cluster", help="a persistent local Ray head that raydl train reuses (faster start-up)")
    c.add_argument("action", choices=["up", "status", "down"])
    c.add_argument("--num-cpus", type=int, default=None)
    c.set_defaults(func=cmd_cluster)

    __import__("raydl.jobs_cli", fromlist=["add_parser"]).add_parser(sub)  # raydl submit, raydl jobs
    __import__("raydl.quantize_cli", fromlist=["add_parser"]).add_parser(sub)  # raydl quantize
    __import__("raydl.gateway.cli", fromlist=["add_parser"]).add_parser(sub)  # raydl gateway
    __import__("raydl.pipeline.cli", fromlist=["add_parser"]).add_parser(sub)  # raydl pipeline
    __import__("raydl.fewshot_cli", fromlist=["add_parser"]).add_parser(sub)  # raydl fewshot
    try:
        from raydl.drift.cli import add_parser as add_drift
    except ImportError:
        add_drift = None
    if add_drift is not None:
        add_drift(sub)
    calibration_cli.add_parser(sub)
    __import__("raydl.tune.cli", fromlist=["add_parser"]).add_parser(sub)  # raydl tune
    model_registry_cli.add_parser(sub)
    __import__("raydl.continual.cli", fromlist=["add_parser"]).add_parser(sub)  # raydl continual
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: this process is raydl's (a program calling main keeps its own)
        from raydl import gc_thresholds

        gc_thresholds.apply()
    parser = build_parser()
    # Overrides may come after flags too (`raydl train spec.yaml --json optimizer.lr=3e-3`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _received.clear()
    handled = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if handled else {}
    try:
        return args.func(args)
    except RaydlError as e:
        if args.debug:
            raise
        print(f"raydl: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("raydl: interrupted", file=sys.stderr)
        return 128 + (_received[-1] if _received else signal.SIGINT)
    except Exception as e:  # an unexpected failure: one line, unless --debug
        if args.debug:
            raise
        cause = _root_raydl_error(e)
        if cause is not None:
            print(f"raydl: error: {cause}", file=sys.stderr)
            return cause.exit_code
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"raydl: error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if argv is None:  # the console script: the process exits next
            # Skip the interpreter's last collection over Ray's and torch's objects at exit:
            # 1-3.6 s on 2 cores (0.25 s frozen), after the model and output are written.
            gc.freeze()


def _root_raydl_error(e: BaseException) -> RaydlError | None:
    """A RaydlError raised inside a Ray worker arrives wrapped; find it."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, RaydlError):
            return e
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
