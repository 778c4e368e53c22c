"""`raydl submit --gateway URL`: send a spec to a team gateway instead of a cluster. The token comes
from RAYDL_GATEWAY_TOKEN; the spec is validated here first, then again by the gateway."""

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


def submit(args: argparse.Namespace, emit) -> int:
    from raydl.spec import load_spec

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise AuthError(f"--gateway: set {TOKEN_ENV} to your team's token (an admin creates it with "
                        "`raydl gateway token create --team TEAM`)")
    spec = load_spec(args.spec, args.overrides)
    raw = spec.model_dump(mode="json", by_alias=True, exclude_unset=False)
    job = call(args.gateway, "POST", "/v1/jobs", token, {"kind": args.kind, "spec": raw})
    out = sys.stderr if args.json else sys.stdout
    print(f"submitted {job['id']} to {args.gateway} (team {job['team']}, run {job['run_name']})", file=out, flush=True)
    if not args.follow:
        emit(args, job, "")
        return 0
    offset = 0
    while True:
        page = call(args.gateway, "GET", f"/v1/jobs/{job['id']}/logs?offset={offset}", token)
        out.write(page["text"])
        out.flush()
        offset = page["next_offset"]
        if page["complete"]:
            break
        if not page["text"]:
            time.sleep(1.0)
    job = call(args.gateway, "GET", f"/v1/jobs/{job['id']}", token)
    emit(args, job, f"job {job['id']}: {job['status']}" + (f": {job['message']}" if job["status"] == "FAILED" else ""))
    return 0 if job["status"] == "SUCCEEDED" else 1

