"""`raydl calibrate MODEL_DIR [--method temperature|platt|isotonic] [--data DATA] [--json]`."""

from __future__ import annotations

import argparse
import json
from typing import Any

SHOWN = ("ece", "mce", "adaptive_ece", "brier", "nll", "accuracy")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from raydl.calibration.api import REPORT_FILE, calibrate_model_dir
    from raydl.model_dir import json_safe

    result = calibrate_model_dir(args.model_dir, args.method, args.data)
    if args.json:
        print(json.dumps(json_safe(result), allow_nan=False))
        return 0
    params = ", ".join(f"{k}={v:.4g}" for k, v in result["params"].items())
    fitted = result["fitted_on"]
    print(f"calibrated {result['model_dir']} with {result['method']}{f' ({params})' if params else ''} "
          f"on {fitted['source']} ({fitted['rows']} rows)")
    print(f"  {'split':<6} {'metric':<13} {'before':>8} {'after':>8}")
    for split, m in result["metrics"].items():
        for name in SHOWN:
            print(f"  {split:<6} {name:<13} {m['before'][name]:>8.4f} {m['after'][name]:>8.4f}")
    print(f"report: {result['model_dir']}/{REPORT_FILE}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `calibrate` on the main CLI's subparsers."""
    from raydl.calibration.calibrators import METHODS

    p = subparsers.add_parser(
        "calibrate", help="fit a probability calibrator for a classifier's model directory",
        description="Fit a calibrator on the model's validation split (rebuilt from its spec.yaml; never the test "
                    "split), or on labelled --data, and store it in the model directory: predict and evaluate "
                    "apply it from then on. Metrics before and after go to metrics.json, with a reliability "
                    "diagram (reliability.png) and calibration.html.")
    p.add_argument("model_dir")
    p.add_argument("--method", choices=METHODS.names(), default="temperature",
                   help="temperature (any classifier), platt (binary), isotonic (binary and one-vs-rest)")
    p.add_argument("--data", default=None, help="labelled Parquet/CSV path or URI, or a built-in dataset name, to fit on")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_calibrate)
    return p
