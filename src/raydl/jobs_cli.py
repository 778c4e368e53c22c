"""`raydl submit` and `raydl jobs list|status|logs|stop` on a Ray cluster (Jobs API) or, with --k8s,
on Kubernetes (KubeRay RayJobs). `--json` prints exactly one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raydl import jobs
from raydl.errors import SpecError


def _emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    if args.json:
        os.write(args.out_fd, (json.dumps(payload, default=str) + "\n").encode())
    elif text:
        print(text, flush=True)


@contextmanager
def _json_mode(args: argparse.Namespace) -> Iterator[None]:
    """With --json, fd 1 points at stderr while the command runs (Ray's chatter included) and the one
    JSON object goes to the real stdout (`args.out_fd`); fd 1 is restored afterwards."""
    args.out_fd = None
    if not args.json:
        yield
        return
    sys.stdout.flush()
    args.out_fd, saved = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(args.out_fd, 1)
        os.close(args.out_fd)
        sys.stdout = saved


def load_submission(spec_path: str, overrides: list[str], kind: str, *, ships_data: bool = True):
    """Everything checked locally before a cluster is contacted: the kind, the spec (every problem),
    the storage path, the data (its size first, then its contents when it is built-in or local)."""
    from raydl.spec import load_spec

    entry = jobs.entrypoint(kind)
    spec = load_spec(spec_path, overrides)
    if missing := jobs.missing_section(kind, spec):
        raise SpecError(f"{spec_path}: {missing}")
    jobs.check_storage_path(spec)
    local = jobs.shipped_source(spec) if ships_data else None
    if local is not None or spec.data.source in _builtins():
        from raydl.launch import resolve

        resolve(spec)
    return spec, entry


def _builtins():
    from raydl.datasets import DATASETS

    return DATASETS


def cmd_submit(args: argparse.Namespace) -> int:
    with _json_mode(args):
        return _submit(args)


def _submit(args: argparse.Namespace) -> int:
    if args.gateway:
        from raydl.gateway import client

        return client.submit(args, _emit)
    if args.k8s:
        from raydl import kube_cli

        return kube_cli.submit(args, load_submission, _emit)
    spec, entry = load_submission(args.spec, args.overrides, args.kind)
    cluster = jobs.Cluster.connect(args.address)
    if not args.skip_resource_check:
        cluster.check_fits(spec)
    job_id = f"raydl-{spec.run.name}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="raydl-job-") as tmp:
        shipped = jobs.stage(spec, Path(tmp))
        cluster.submit(entry, jobs.runtime_env(Path(tmp), args.pip), job_id,
                       {"raydl_run": spec.run.name, "raydl_kind": args.kind})
    print(f"submitted {job_id} to {cluster.url} (run {spec.run.name}, data {shipped.data.source})",
          file=sys.stderr if args.json else sys.stdout, flush=True)
    if not args.follow:
        _emit(args, {"job_id": job_id, "address": cluster.url, "status": "PENDING"}, "")
        return 0
    return _finish(args, cluster, job_id)


def _finish(args: argparse.Namespace, cluster: jobs.Cluster, job_id: str) -> int:
    """Follow the job's logs to its end; exit 0 if it SUCCEEDED, else 1 with its one-line reason."""
    out = sys.stderr if args.json else sys.stdout
    try:
        cluster.follow(job_id, lambda chunk: (out.write(chunk), out.flush()))
    except KeyboardInterrupt:
        print(f"raydl: stopped following {job_id}; it keeps running on the cluster "
              f"(`raydl jobs stop {job_id} --address {cluster.url}` stops it)", file=sys.stderr)
        return 130
    info = cluster.wait(job_id, 30.0)
    rec = jobs.job_record(info)
    if rec["status"] == "FAILED":
        rec["reason"] = jobs.failure_reason(info.message, cluster.logs(job_id))
    _emit(args, rec, f"job {job_id}: {rec['status']}" + (f": {rec['reason']}" if "reason" in rec else ""))
    return 0 if rec["status"] == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    with _json_mode(args):
        return _jobs(args)


def _jobs(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.job_id:
        raise SpecError(f"raydl jobs {args.action}: give a JOB_ID (`raydl jobs list` shows them)")
    if args.gateway:
        from raydl.gateway import client

        return client.jobs(args, _emit)
    if args.k8s:
        from raydl import kube_cli

        return kube_cli.jobs(args, _emit)
    cluster = jobs.Cluster.connect(args.address)
    if args.action == "list":
        recs = [jobs.job_record(i) for i in cluster.list()]
        recs.sort(key=lambda r: r["start_time"] or 0)
        table = "\n".join(f"{r['job_id']:<40} {r['status']:<10} {r['entrypoint']}" for r in recs) or "no jobs"
        _emit(args, {"address": cluster.url, "jobs": recs}, table)
    elif args.action == "status":
        info = cluster.info(args.job_id)
        rec = jobs.job_record(info)
        if rec["status"] == "FAILED":
            rec["reason"] = jobs.failure_reason(info.message, cluster.logs(args.job_id))
        _emit(args, rec, f"{rec['job_id']}: {rec['status']}" + (f": {rec['reason']}" if "reason" in rec else ""))
    elif args.action == "logs":
        if args.follow:
            return _finish(args, cluster, args.job_id)
        text = cluster.logs(args.job_id)
        if args.json:
            _emit(args, {"job_id": args.job_id, "logs": text}, "")
        else:
            sys.stdout.write(text)
    else:
        rec = jobs.job_record(cluster.stop(args.job_id))
        _emit(args, rec, f"{rec['job_id']}: {rec['status']}")
    return 0


def _k8s_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k8s", action="store_true", help="on Kubernetes: a KubeRay RayJob in --namespace")
    p.add_argument("--namespace", help="with --k8s: the team's namespace")
    p.add_argument("--context", help="with --k8s: the kubeconfig context (default: the current one)")


def add_parser(sub) -> None:
    s = sub.add_parser("submit", help="run a job on a Ray cluster (Jobs API) or as a KubeRay RayJob (--k8s)",
                       description="Validate a spec locally, then run `raydl KIND` on a cluster: its driver runs there, "
                                   "survives this terminal, and is followed or stopped later with `raydl jobs`.")
    s.add_argument("spec")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.add_argument("--address", help="the Jobs API, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
    s.add_argument("--gateway", metavar="URL", help="submit through a team gateway (token: RAYDL_GATEWAY_TOKEN)")
    s.add_argument("--kind", default="train", help=f"what the job runs (available: {', '.join(jobs.KINDS)})")
    s.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 0 only if it succeeded")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout, everything else on stderr")
    s.add_argument("--pip", action="append", metavar="REQ",
                   help="install this into the job's runtime env (e.g. --pip raydl==0.1.0) when the cluster image lacks it")
    s.add_argument("--skip-resource-check", action="store_true",
                   help="submit even if the cluster's nodes cannot fit the workers now (an autoscaling cluster adds nodes)")
    _k8s_flags(s)
    s.add_argument("--image", help="with --k8s: the container image with raydl (default: the RayJob template's)")
    s.set_defaults(func=cmd_submit)

    j = sub.add_parser("jobs", help="list, inspect, follow or stop submitted jobs")
    j.add_argument("action", choices=["list", "status", "logs", "stop"])
    j.add_argument("job_id", nargs="?", help="the submission id `raydl submit` printed (the RayJob name with --k8s)")
    j.add_argument("--address", help="the Jobs API, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
    j.add_argument("--gateway", metavar="URL", help="jobs of your team on a team gateway (token: RAYDL_GATEWAY_TOKEN)")
    j.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    j.add_argument("--json", action="store_true")
    _k8s_flags(j)
    j.set_defaults(func=cmd_jobs)
