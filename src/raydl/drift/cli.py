"""`raydl drift profile` and `raydl drift check` (exit 0 no drift, 3 drift, 2 bad input, 1 bug)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from raydl.drift import engine as eng
from raydl.drift.errors import DriftError

EXIT_OK, EXIT_DRIFT = 0, 3


def _features(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [f for v in values for f in v.split(",") if f]


def _session(engine: str, address: str | None):
    chosen = eng.choose_engine(engine, address)
    return chosen, (eng.ray_session(address) if chosen == "ray" else contextlib.nullcontext())


def cmd_profile(args: argparse.Namespace) -> int:
    """Build a reference profile and write it."""
    from raydl.drift.ood import ModelScorer
    from raydl.drift.profile import ProfileSettings, build_profile
    from raydl.paths import output_file

    output_file(args.out, "--out")  # before any work

    settings = ProfileSettings(n_bins=args.bins, variance_share=args.variance,
                               percentile=args.percentile, ood_percentile=args.ood_percentile,
                               sample_size=args.sample_size, seed=args.seed)
    model = ModelScorer(args.model) if args.model else None
    if model is not None:
        _ = model.model  # fail early, with a clear error, on a bad model dir
    chosen, session = _session(args.engine, args.address)
    with session:
        prof = build_profile(args.data, _features(args.features), model, args.model,
                             settings, chosen)
    path = prof.save(args.out)
    if not args.quiet:
        print(f"profile: {len(prof.features)} features, {prof.doc['n_rows']} rows -> {path}")
    return EXIT_OK


def _mc_dropout(model_dir: str, data: str, features: list[str], n: int, rows: int) -> dict:
    import numpy as np

    from raydl.drift import data as dd
    from raydl.drift.ood import load_model_dir, mc_dropout_scores
    from raydl.drift.partial import numeric_matrix

    m = load_model_dir(model_dir)
    xs, got = [], 0
    for b in dd.iter_batches(data, features):
        xs.append(numeric_matrix(b, features))
        got += b.num_rows
        if got >= rows:
            break
    x = np.concatenate(xs)[:rows]
    x = x[~np.isnan(x).any(axis=1)]
    sc = mc_dropout_scores(m.module, m.preprocess(x), n_samples=n)
    return {"rows": int(len(x)), "samples": n,
            **{f"{k}_mean": float(v.mean()) for k, v in sc.items()},
            **{f"{k}_p95": float(np.percentile(v, 95)) for k, v in sc.items()}}


def cmd_check(args: argparse.Namespace) -> int:
    """Check DATA against a profile; print a summary; write JSON / HTML / W&B as asked."""
    from raydl.drift.detectors import FIXED_THRESHOLDS, CheckSettings, check
    from raydl.drift.ood import ModelScorer
    from raydl.drift.profile import load_profile
    from raydl.drift.report import log_wandb, write_report
    from raydl.paths import output_file, write_atomic

    for flag, path in (("--json", args.json), ("--report", args.report)):
        if path:
            output_file(path, flag)  # before any work
    prof = load_profile(args.profile)
    fixed = dict(FIXED_THRESHOLDS)
    if args.js_threshold is not None:
        fixed["js"] = args.js_threshold
    settings = CheckSettings(threshold=args.threshold, method=args.method, fixed=fixed,
                             alpha=args.alpha, seed=args.seed)
    settings.validate()
    model = ModelScorer(args.model) if args.model else None
    if model is not None:
        _ = model.model
    chosen, session = _session(args.engine, args.address)
    with session:
        result = check(prof, args.data, model, settings, chosen)
    if args.mc_dropout:
        if not args.model:
            raise DriftError("--mc-dropout needs --model")
        result.mc_dropout = _mc_dropout(args.model, args.data, prof.model["features"],
                                        args.mc_dropout, args.mc_rows)
    d = result.to_dict()
    if args.json:
        write_atomic(args.json, json.dumps(d, indent=1, allow_nan=False))
    report = write_report(d, args.report) if args.report else None
    if args.wandb or args.tracking == "offline":
        d["wandb_run_dir"] = log_wandb(d, report, args.run_dir)
    if not args.quiet:
        _print_summary(d)
    return EXIT_DRIFT if result.drifted else EXIT_OK


def _print_summary(d: dict[str, Any]) -> None:
    print(f"drift: {'DRIFT' if d['drifted'] else 'none'} ({d['n_rows']} rows, "
          f"{len(d['drifted_features'])}/{len(d['features'])} features drifted)")
    for f in d["features"]:
        if f["drifted"]:
            js = f["stats"]["js"]
            print(f"  {f['name']}: JS {js if js is None else round(js, 4)} "
                  f"(threshold {round(f['thresholds'].get('js', float('nan')), 4)}) {f['status']}")
    mv = d.get("multivariate")
    if mv:
        print(f"  reconstruction: {'DRIFT' if mv['drifted'] else 'ok'} mean {mv['current_mean']:.4g}"
              f" (ref {mv['reference_mean']:.4g}), above threshold {100 * mv['share_above']:.2f}%")
    for o in d.get("output") or []:
        print(f"  output {o['name']}: {'DRIFT' if o['drifted'] else 'ok'} flagged "
              f"{100 * o['share_flagged']:.2f}% (expected {100 * o['expected_share']:.2f}%)")
    if d.get("wandb_run_dir"):
        print(f"  wandb run: {d['wandb_run_dir']}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=eng.ENGINES, default="auto",
                   help="local (pyarrow batches in-process) or ray (Ray Data); auto: ray only "
                        "when a cluster is given or running")
    p.add_argument("--address", default=None, help="Ray cluster address (else RAY_ADDRESS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `drift profile` and `drift check` on the main CLI's subparsers."""
    drift = subparsers.add_parser("drift", help="data drift and OOD detection")
    sub = drift.add_subparsers(dest="drift_command", required=True)

    pr = sub.add_parser("profile", help="build a reference profile of DATA")
    pr.add_argument("data", help="Parquet/CSV file or directory, local path or URI")
    pr.add_argument("--out", required=True, help="profile JSON to write")
    pr.add_argument("--features", nargs="+", help="feature columns, space- or comma-separated (default: all, or the model's)")
    pr.add_argument("--model", help="model directory: also profile its OOD scores")
    pr.add_argument("--bins", type=int, default=20, help="quantile bins per numeric feature")
    pr.add_argument("--variance", type=float, default=0.9, help="PCA explained-variance share")
    pr.add_argument("--percentile", type=float, default=99.0,
                    help="reconstruction-error threshold percentile")
    pr.add_argument("--ood-percentile", type=float, default=95.0,
                    help="OOD-score threshold percentile")
    pr.add_argument("--sample-size", type=int, default=50_000,
                    help="rows sampled (uniformly) for quantiles and PCA")
    _common(pr)
    pr.set_defaults(func=cmd_profile)

    ck = sub.add_parser("check", help="check DATA against a reference profile")
    ck.add_argument("data", help="Parquet/CSV file or directory, local path or URI")
    ck.add_argument("--profile", required=True)
    ck.add_argument("--model", help="model directory: also check its OOD scores")
    ck.add_argument("--json", help="write every number here")
    ck.add_argument("--report", help="write a self-contained HTML report here")
    ck.add_argument("--threshold", choices=["calibrated", "fixed"], default="calibrated",
                    help="calibrated: bootstrap of the reference (<= alpha false alarms); "
                         "fixed: --js-threshold")
    ck.add_argument("--js-threshold", type=float, default=None, help="fixed JS threshold (0.1)")
    ck.add_argument("--method", choices=["js", "kl", "psi"], default="js",
                    help="statistic that decides a feature's verdict")
    ck.add_argument("--alpha", type=float, default=0.02,
                    help="overall false-alarm rate of an i.i.d. sample (calibrated mode)")
    ck.add_argument("--mc-dropout", type=int, default=0, metavar="N",
                    help="with --model: N MC Dropout passes on up to --mc-rows rows")
    ck.add_argument("--mc-rows", type=int, default=2000)
    ck.add_argument("--wandb", action="store_true", help="log to an offline W&B run")
    ck.add_argument("--tracking", choices=["none", "offline"], default="none")
    ck.add_argument("--run-dir", default="runs/drift", help="where W&B runs are written")
    _common(ck)
    ck.set_defaults(func=cmd_check)
    return drift


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: `python -m raydl.drift.cli drift check ...`."""
    from raydl.errors import RaydlError

    parser = argparse.ArgumentParser(prog="raydl")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RaydlError as e:
        print(f"raydl: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # unexpected: say so in one line, exit 1
        print(f"raydl: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
