"""`raydl quantize`: its arguments and output (the work is in `raydl.quantize`, imported when run)."""

from __future__ import annotations

import json
from typing import Any

METHODS = ("dynamic", "static", "fp16", "bf16")


def cmd_quantize(args: Any) -> int:
    from raydl.quantize import quantize_dir

    report = quantize_dir(args.model_dir, args.out, args.method, args.calibration_rows)
    if args.json:
        print(json.dumps(report))
        return 0
    key = next((k for k in report["after"] if k.endswith(("_accuracy", "_miou", "_map50", "_r2"))), next(iter(report["after"])))
    lat = report["latency_ms_per_sample"]
    print(f"quantised ({args.method}) model written to {report['out']}\n"
          f"  {key}: {report['before'][key]:.4f} -> {report['after'][key]:.4f}\n"
          f"  weights: {report['weights_bytes']['before']:,} -> {report['weights_bytes']['after']:,} bytes\n"
          + "\n".join(f"  latency {b.replace('_', ' ')}: {v['before']:.4f} -> {v['after']:.4f} ms/sample" for b, v in lat.items()))
    return 0


def add_parser(sub: Any) -> None:
    q = sub.add_parser("quantize", help="post-training int8 (dynamic/static) or fp16/bf16 copy of a model directory",
                       description="Write a quantised copy of a model directory (a model directory itself: raydl predict and "
                                   "evaluate run it) and report metrics, weight size and CPU latency before/after.")
    q.add_argument("model_dir")
    q.add_argument("--method", required=True, choices=METHODS,
                   help="dynamic: int8 linear layers; static: int8 conv/linear with calibrated activations; fp16/bf16: half-precision weights")
    q.add_argument("--out", required=True, help="the new model directory")
    q.add_argument("--calibration-rows", type=int, default=512, help="train rows that calibrate static int8 activations")
    q.add_argument("--json", action="store_true", help="print the report as one JSON object")
    q.set_defaults(func=cmd_quantize)
