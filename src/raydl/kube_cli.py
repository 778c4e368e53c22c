"""`raydl submit --k8s` and `raydl jobs ... --k8s`: the command-line side of raydl.kube."""

from __future__ import annotations

import argparse
import sys

from raydl import kube
from raydl.errors import SpecError


def _connect(args: argparse.Namespace) -> tuple[kube.Kube, str]:
    k = kube.Kube(args.context)
    ns = args.namespace or k.default_ns
    if not ns:
        raise SpecError(f"--k8s needs --namespace TEAM (context {k.context} names no namespace)")
    return k, ns


def submit(args: argparse.Namespace, load_submission, emit) -> int:
    """Validate locally (spec, data, kind), then read the team's quota, then create the RayJob."""
    spec, _ = load_submission(args.spec, args.overrides, args.kind, ships_data=False)
    kube.check_data(spec)
    if args.pip:
        raise SpecError("--pip works with the Ray Jobs API only; on Kubernetes, raydl comes with the image (--image)")
    k, ns = _connect(args)
    problem = kube.quota_problem(ns, kube.requested(spec), k.quotas(ns))
    if problem:
        from raydl.errors import ResourceError

        raise ResourceError(problem)
    cm, job = kube.build(spec, name=kube.job_name(spec), namespace=ns, image=args.image or kube.DEFAULT_IMAGE, kind=args.kind)
    made = k.create(cm, job)
    name = made["metadata"]["name"]
    print(f"created RayJob {name} in namespace {ns} (context {k.context}); "
          f"follow it with `raydl jobs status {name} --k8s --namespace {ns}`",
          file=sys.stderr if args.json else sys.stdout, flush=True)
    emit(args, {"job_id": name, "namespace": ns, "context": k.context, "status": "PENDING"}, "")
    return 0


def jobs(args: argparse.Namespace, emit) -> int:
    k, ns = _connect(args)
    if args.action == "list":
        recs = [kube.job_record(o) for o in k.list(ns)]
        table = "\n".join(f"{r['job_id']:<40} {r['status']:<10} {r['deployment_status'] or ''}" for r in recs) or "no RayJobs"
        emit(args, {"namespace": ns, "jobs": recs}, table)
    elif args.action == "status":
        rec = kube.job_record(k.get(ns, args.job_id))
        emit(args, rec, f"{rec['job_id']}: {rec['status']}" + (f": {rec['message']}" if rec["message"] else ""))
    elif args.action == "logs":
        text = k.submitter_logs(ns, args.job_id)
        if args.json:
            emit(args, {"job_id": args.job_id, "logs": text}, "")
        else:
            sys.stdout.write(text)
    else:
        rec = kube.job_record(k.suspend(ns, args.job_id))
        emit(args, rec, f"{rec['job_id']}: stop requested (spec.suspend=true; KubeRay deletes its Ray cluster)")
    return 0
