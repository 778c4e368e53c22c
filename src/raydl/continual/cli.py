"""`raydl continual SPEC [key=value ...] [--until N] [--restart] [--address ADDR] [--json]`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def cmd_continual(args: argparse.Namespace) -> int:
    from raydl.continual.run import run_stream
    from raydl.model_dir import json_safe
    from raydl.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    out_fd = None
    if args.json:  # stdout carries one JSON object; everything else goes to stderr
        sys.stdout.flush()
        out_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def progress(entry: dict) -> None:
        accs = " ".join(f"{a:.3f}" for a in entry["accuracies"])
        print(f"experience {entry['experience']} ({entry['name']}, {entry['train_rows']} train rows, "
              f"{entry['seconds']:.0f} s): test accuracies {accs}", file=sys.stderr, flush=True)

    result = run_stream(spec, address=args.address, until=args.until, restart=args.restart, on_experience=progress)
    s = result.summary
    if out_fd is not None:
        os.write(out_fd, (json.dumps(json_safe({**s, "root": str(result.root), "trained": result.trained}), allow_nan=False) + "\n").encode())
        return 0

    def fmt(v) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    print(f"stream {spec.run.name}: {s['strategy']} on {s['scenario']}, {len(s['accuracy_matrix'])} of {s['experiences']} "
          f"experience(s) done ({len(result.trained)} trained now)")
    print("accuracy matrix (row: after experience i; column: test set of experience j)")
    for label, row in zip(s["row_labels"], s["accuracy_matrix"]):
        print(f"  {label:>6}  " + " ".join(f"{v:.3f}" for v in row))
    print(f"average accuracy {fmt(s['average_accuracy'])}  forgetting {fmt(s['forgetting'])}  "
          f"backward transfer {fmt(s['backward_transfer'])}")
    print(f"results: {result.root}/continual.json, accuracy_matrix.png, report.html")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `continual` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "continual", help="train an experience stream with a continual-learning strategy",
        description="Train each experience of the spec's stream (stream: scenario, experiences, seed, sources) as a "
                    "distributed raydl training run that starts from the previous experience's model, with the "
                    "spec's continual strategy; write the accuracy matrix, average accuracy, forgetting and backward "
                    "transfer (continual.json, accuracy_matrix.png, report.html under run.storage_path/run.name). "
                    "Run again to continue a stream after its last experience.")
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. continual.size=200")
    p.add_argument("--until", type=int, default=None, metavar="N", help="stop after experience N (1-based)")
    p.add_argument("--restart", action="store_true", help="discard the stream's experiences done so far")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout, everything else on stderr")
    p.set_defaults(func=cmd_continual)
    return p
