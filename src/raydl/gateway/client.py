"""`raydl submit --gateway URL` and `raydl jobs list|status|logs|stop --gateway URL`: a team gateway
instead of a cluster. The token comes from RAYDL_GATEWAY_TOKEN; a spec is validated here first, then
again by the gateway."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from raydl.errors import AuthError, NotFoundError, ResourceError, SpecError

TOKEN_ENV = "RAYDL_GATEWAY_TOKEN"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def call(url: str, method: str, path: str, token: str, body: dict | None = None, timeout: float = 60.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read())
        except ValueError:
            detail = {"detail": e.reason}
        text = detail.get("detail", "")
        if detail.get("problems"):
            text += ": " + "; ".join(detail["problems"])
        err = {401: AuthError, 404: NotFoundError, 422: SpecError}.get(e.code, ResourceError)
        raise err(f"gateway {url}: HTTP {e.code}: {text}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ResourceError(f"gateway {url}: cannot reach it ({getattr(e, 'reason', e)})") from None


def _token() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise AuthError(f"--gateway: set {TOKEN_ENV} to your team's token (an admin creates it with "
                        "`raydl gateway token create --team TEAM`)")
    return token


def submit(args: argparse.Namespace, emit) -> int:
    from raydl.spec import load_spec

    token = _token()
    spec = load_spec(args.spec, args.overrides)
    raw = spec.model_dump(mode="json", by_alias=True, exclude_unset=False)
    job = call(args.gateway, "POST", "/v1/jobs", token, {"kind": args.kind, "spec": raw})
    print(f"submitted {job['id']} to {args.gateway} (team {job['team']}, run {job['run_name']})",
          file=sys.stderr if args.json else sys.stdout, flush=True)
    if not args.follow:
        emit(args, job, "")
        return 0
    return _follow(args, emit, token, job["id"])


def _follow(args: argparse.Namespace, emit, token: str, job_id: str) -> int:
    out = sys.stderr if args.json else sys.stdout
    offset = 0
    while True:
        page = call(args.gateway, "GET", f"/v1/jobs/{job_id}/logs?offset={offset}", token)
        out.write(page["text"])
        out.flush()
        offset = page["next_offset"]
        if page["complete"]:
            break
        if not page["text"]:
            time.sleep(1.0)
    job = call(args.gateway, "GET", f"/v1/jobs/{job_id}", token)
    emit(args, job, f"job {job['id']}: {job['status']}" + (f": {job['message']}" if job["status"] == "FAILED" else ""))
    return 0 if job["status"] == "SUCCEEDED" else 1



def jobs(args: argparse.Namespace, emit) -> int:
    token = _token()
    if args.action == "list":
        page = call(args.gateway, "GET", "/v1/jobs?limit=500", token)
        table = "\n".join(f"{j['id']:<36} {j['status']:<10} {j['run_name']}" for j in page["jobs"]) or "no jobs"
        emit(args, page, table)
    elif args.action == "status":
        job = call(args.gateway, "GET", f"/v1/jobs/{args.job_id}", token)
        emit(args, job, f"{job['id']}: {job['status']}" + (f": {job['message']}" if job["status"] == "FAILED" else ""))
    elif args.action == "logs":
        if args.follow:
            return _follow(args, emit, token, args.job_id)
        page = call(args.gateway, "GET", f"/v1/jobs/{args.job_id}/logs?limit=1048576", token)
        if args.json:
            emit(args, {"job_id": args.job_id, "logs": page["text"]}, "")
        else:
            sys.stdout.write(page["text"])
    else:
        job = call(args.gateway, "POST", f"/v1/jobs/{args.job_id}/cancel", token)
        emit(args, job, f"{job['id']}: {job['status']}")
    return 0
