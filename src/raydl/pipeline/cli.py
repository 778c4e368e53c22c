"""`raydl pipeline run|schedule|status|history|k8s` (the command-line side of raydl.pipeline)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def _say(args: argparse.Namespace):
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda line: print(line, file=stream, flush=True)


def _load(args: argparse.Namespace):
    from raydl.pipeline.spec import load_pipeline

    return load_pipeline(args.pipeline, args.overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from raydl.cli import _json_stdout
    from raydl.pipeline.run import run_pass

    spec = _load(args)
    out_fd = _json_stdout() if args.json else None
    result = run_pass(spec, window=args.window, force=args.force, address=args.address, say=_say(args))
    if out_fd is not None:
        os.write(out_fd, (json.dumps(result, default=str) + "\n").encode())
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from raydl.pipeline.run import run_pass
    from raydl.pipeline.schedule import check_cron, schedule

    check_cron(args.cron)
    spec = _load(args)
    say = _say(args)
    try:
        n = schedule(args.cron, lambda: run_pass(spec, address=args.address, say=say), say=say, max_passes=args.max_passes)
    except (KeyboardInterrupt, SystemExit):
        say(f"schedule of pipeline {spec.name} stopped; an interrupted pass resumes at its step on the next run")
        return 0
    say(f"schedule of pipeline {spec.name}: {n} passes, done")
    return 0


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _line(p: dict) -> str:
    reasons = (p.get("decision") or {}).get("reasons") or []
    lin = p.get("lineage") or {}
    ver = f" v{lin['registry_version']}" if lin.get("registry_version") else ""
    took = f"{p['finished_at'] - p['started_at']:.1f}s" if p.get("finished_at") else "running"
    return (f"pass {p['id']:>4}  {p['window']:<24} {p['status']:<8} {(p['outcome'] or '-') + ver:<14} "
            f"{_when(p['started_at'])} ({took}){' resumed' if p['resumed'] else ''}"
            + "".join(f"\n      {r}" for r in reasons))


def _passes(args: argparse.Namespace, limit: int | None) -> tuple[Any, list[dict]]:
    from raydl.pipeline.state import State

    spec = _load(args)
    if not (spec.home / "state.db").is_file():
        return spec, []
    with State(spec.home) as st:
        return spec, st.passes(limit)


def cmd_status(args: argparse.Namespace) -> int:
    from raydl.pipeline.run import registry
    from raydl.pipeline.windows import list_windows

    spec, passes = _passes(args, None)
    done = {p["window"] for p in passes if p["status"] == "done"}
    windows = [w.name for w in list_windows(spec.data.location)]
    with registry(spec) as reg:
        held = next((m["aliases"] for m in reg.list() if m["name"] == spec.model.name), {})
    payload = {"pipeline": spec.name, "model": spec.model.name, "alias": spec.model.alias,
               "production": held.get(spec.model.alias), "windows": len(windows), "windows_done": len(done),
               "next_window": next((w for w in windows if w not in done), None),
               "interrupted": next((p["id"] for p in passes if p["status"] == "running"), None),
               "last_passes": passes[-args.limit:]}
    if args.json:
        print(json.dumps(payload, default=str))
        return 0
    prod = f"v{payload['production']}" if payload["production"] else "none"
    print(f"pipeline {spec.name}: {spec.model.name}@{spec.model.alias} = {prod}; windows {len(done)}/{len(windows)} done; "
          f"next: {payload['next_window'] or '-'}" + (f"; pass {payload['interrupted']} interrupted" if payload["interrupted"] else ""))
    for p in payload["last_passes"]:
        print(_line(p))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    spec, passes = _passes(args, args.limit)
    if args.json:
        print(json.dumps({"pipeline": spec.name, "passes": passes}, default=str))
        return 0
    print("\n".join(_line(p) for p in passes) or f"pipeline {spec.name}: no passes yet")
    return 0


def cmd_k8s(args: argparse.Namespace) -> int:
    import yaml

    from raydl.paths import output_file, write_atomic
    from raydl.pipeline.k8s import build

    if args.out:
        output_file(args.out, "--out")
    objs = build(_load(args), cron=args.cron, namespace=args.namespace, image=args.image, ray_address=args.ray_address)
    class Dumper(yaml.SafeDumper):  # multi-line strings (the pipeline in the ConfigMap) as literal blocks
        pass

    Dumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))
    text = yaml.dump_all(objs, Dumper=Dumper, sort_keys=False)
    if args.out:
        write_atomic(args.out, text)
        print(f"wrote {', '.join(o['kind'] for o in objs)} to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("pipeline", help="drift-triggered continual retraining pipelines (pipelines/*.yaml)")
    sub = p.add_subparsers(dest="pipeline_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("pipeline", help="a pipeline spec (YAML)")
        q.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the pipeline spec")

    r = sub.add_parser("run", help="one pass over the next window (or --window)")
    common(r)
    r.add_argument("--window", help="the window to process (default: an interrupted pass's, else the next new one)")
    r.add_argument("--force", action="store_true", help="retrain even if nothing triggers; process a done window again")
    r.add_argument("--address", help="Ray cluster address for the retraining (default: RAY_ADDRESS, else embedded)")
    r.add_argument("--json", action="store_true", help="stdout: one JSON object with the pass's outcome")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("schedule", help="run passes on a cron schedule (one process; Ctrl-C stops it)")
    common(s)
    s.add_argument("--cron", required=True, help='5 fields ("0 3 * * *"), or 6 with seconds last')
    s.add_argument("--max-passes", type=int, default=None, help="stop after this many passes")
    s.add_argument("--address", help="Ray cluster address for the retraining")
    s.set_defaults(func=cmd_schedule)

    for name, fn, limit, text in (("status", cmd_status, 5, "the pipeline's state and its last passes"),
                                  ("history", cmd_history, None, "every pass, its decision and reasons")):
        q = sub.add_parser(name, help=text)
        common(q)
        q.add_argument("--limit", type=int, default=limit, help="passes shown")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=fn)

    k = sub.add_parser("k8s", help="render a Kubernetes CronJob that runs the pipeline on the team's Ray cluster")
    common(k)
    k.add_argument("--cron", required=True, help='the CronJob schedule (5 fields, e.g. "0 3 * * *")')
    k.add_argument("--namespace", default="team-a")
    k.add_argument("--image", default="raydl:0.1.0")
    k.add_argument("--ray-address", default="raydl-head-svc:6379", help="the team RayCluster's GCS address")
    k.add_argument("--out", help="write the manifests here (default: stdout)")
    k.set_defaults(func=cmd_k8s)
    return p
