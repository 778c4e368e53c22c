"""What the gateway does, without HTTP: submit (validate, check the quota, record, hand to Ray),
refresh a job from the cluster, reconcile every active job on start, cancel, read logs.

A job's row is written (SUBMITTING) before the cluster hears of it, with the Ray submission id the
row's id, so a gateway killed at any point loses nothing and duplicates nothing: on restart a row
the cluster knows takes the cluster's status, and one it does not know failed before submission.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from raydl import jobs
from raydl.datasets import DATASETS
from raydl.errors import NotFoundError, RaydlError, ResourceError, SpecError
from raydl.gateway.config import GatewayConfig
from raydl.gateway.runner import JobRunner
from raydl.gateway.store import ACTIVE, Store, job_record
from raydl.gateway.tokens import Caller
from raydl.spec import JobSpec, spec_and_problems
from raydl.storage import is_uri

log = logging.getLogger("raydl.gateway")
NEVER_SUBMITTED = "the gateway stopped before the job reached the cluster; submit it again"


class Problems(RaydlError):
    """The request's spec is invalid: every problem with its dotted path (HTTP 422)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems))
        self.problems = problems


class OverQuota(RaydlError):
    """The submission would take the team over its quota (HTTP 429)."""


class ClusterError(ResourceError):
    """The cluster refused or failed what the gateway asked (HTTP 503): never the caller's 401/404."""


def _cluster(fn, job_id: str, team: str):
    try:
        return fn(job_id, team)
    except ClusterError:
        raise
    except RaydlError as e:
        raise ClusterError(f"job {job_id}: the cluster answered: {e}") from None


class Forbidden(RaydlError):
    """The caller's role does not allow this (HTTP 403)."""


def check_spec(raw: Any, kind: str, team_dir: Path) -> JobSpec:
    """The typed spec, or Problems listing everything wrong (the kind, the spec, what the gateway refuses)."""
    if not isinstance(raw, dict):
        raise Problems([f"spec: the top level must be a mapping of sections, got {type(raw).__name__}"])
    found: list[str] = []
    try:
        jobs.entrypoint(kind)
    except SpecError as e:
        found.append(f"kind: {str(e).removeprefix('--kind ')}")
    if missing := jobs.missing_section(kind, raw):
        found.append(f"kind: {missing.removeprefix('--kind ')}")
    spec, problems = spec_and_problems(raw)
    found += problems
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    src = data.get("source")
    if isinstance(src, str) and src not in DATASETS and not is_uri(src):
        found.append(f"data.source: {src[:80]!r} is a local path; through the gateway give a built-in dataset "
                     f"({', '.join(DATASETS.names())}) or a URI the cluster can read (s3://, gs://, file:///shared/...)")
    ft = raw.get("finetune") if isinstance(raw.get("finetune"), dict) else {}
    start = ft.get("from")
    if isinstance(start, str) and not is_uri(start) and not Path(start).resolve().is_relative_to(team_dir.resolve()):
        found.append(f"finetune.from: {start[:80]!r} is outside the team's directory {team_dir}")
    if found or spec is None:
        raise Problems(found or ["spec: invalid"])
    return spec


def _read_result(storage_path: str, run_name: str) -> dict[str, Any]:
    run = Path(storage_path) / run_name
    try:
        result = json.loads((run / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    wandb = sorted(run.glob("**/offline-run-*")) + sorted(run.glob("**/run-*-*"))
    return {"metrics": json.dumps(result.get("metrics") or {}), "model_dir": result.get("model_dir"),
            "wandb_dir": str(wandb[0]) if wandb else None}


class Gateway:
    def __init__(self, config: GatewayConfig, store: Store, runner: JobRunner) -> None:
        self.config, self.store, self.runner = config, store, runner
        self._team_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.verified: dict[str, str] = {}  # tokens.verify's cache

    def _team_lock(self, team: str) -> threading.Lock:
        with self._locks_lock:
            return self._team_locks.setdefault(team, threading.Lock())

    # ---- submit --------------------------------------------------------------------------------

    def submit(self, caller: Caller, kind: str, raw: Any, key: str | None = None) -> tuple[dict[str, Any], bool]:
        """(the job, whether it is new): with an idempotency `key` the team used before, its first job."""
        team = caller.team
        quota = self.config.teams.get(team)
        if quota is None:
            raise Forbidden(f"team {team!r} has no quota on this gateway; an admin adds it to gateway.yaml")
        spec = check_spec(raw, kind, self.config.team_dir(team))
        job_id = f"rdg-{team}-{uuid.uuid4().hex[:12]}"
        storage = (self.runner.storage_root(team) or self.config.runs_dir(team)) / job_id
        spec = spec.model_copy(update={"run": spec.run.model_copy(update={"storage_path": str(storage)})})
        for row in self.store.active_jobs(team):  # jobs that ended since anyone looked no longer count
            self.refresh(row)
        sc = spec.scaling
        workers, gpus = sc.num_workers, (sc.num_workers * sc.gpus_per_worker if sc.use_gpu else 0.0)
        with self._team_lock(team), self.store.engine.begin() as conn:  # one gateway process: the lock orders a team's submits
            if key is not None and (earlier := self.store.job_by_key(conn, team, key)) is not None:
                return job_record(earlier), False
            n, w, g = self.store.usage(conn, team)
            over = [f"{n} of {quota.max_concurrent_jobs} concurrent jobs are running" if n + 1 > quota.max_concurrent_jobs else "",
                    f"{w} + {workers} workers asked for, over the limit of {quota.max_workers}" if w + workers > quota.max_workers else "",
                    f"{g:g} + {gpus:g} GPUs asked for, over the limit of {quota.max_gpus:g}" if g + gpus > quota.max_gpus else ""]
            over = [o for o in over if o]
            if over:
                raise OverQuota(f"team {team} is over its quota: {'; '.join(over)}; wait for a job to end or cancel one")
            self.store.add_job(conn, id=job_id, team=team, kind=kind, status="SUBMITTING", run_name=spec.run.name,
                               spec=json.dumps(spec.model_dump(mode="json", by_alias=True)), workers=workers, gpus=gpus,
                               storage_path=str(storage), idempotency_key=key)
        meta = {"raydl_gateway_team": team, "raydl_run": spec.run.name, "raydl_kind": kind}
        try:
            self.runner.submit(job_id, team, kind, spec, meta)
        except Exception as e:  # nothing stays SUBMITTING (holding quota) after a failed hand-over
            self.store.set_job(job_id, status="FAILED", message=f"not submitted: {str(e)[:500] if isinstance(e, RaydlError) else type(e).__name__}")
            if isinstance(e, RaydlError):
                raise ClusterError(f"the cluster did not take job {job_id}: {e}") from None
            raise
        self.store.set_job(job_id, only_if="SUBMITTING", status="PENDING")  # a refresh may have seen it run already
        return self.get(caller, job_id), True

    # ---- reading and refreshing ----------------------------------------------------------------

    def _row(self, caller: Caller, job_id: str):
        row = self.store.job(job_id, None if caller.admin else caller.team)
        if row is None:  # another team's job reads as absent, not forbidden
            raise NotFoundError(f"job {job_id!r} not found")
        return row

    def refresh(self, row):
        """The row with the cluster's view of the job, saved when it changed."""
        if row.status not in ACTIVE:
            return row
        try:
            seen = self.runner.status(row.id, row.team)
        except RaydlError as e:
            log.warning("cannot refresh %s: %s", row.id, e)
            return row
        if seen is None:
            if row.status != "SUBMITTING":  # the cluster forgot it (a new head): say so, once
                self.store.set_job(row.id, status="FAILED", message="the cluster no longer knows this job")
            return self.store.job(row.id)
        status, message = seen
        if status == row.status:
            return row
        extra = _read_result(row.storage_path, row.run_name) if status == "SUCCEEDED" else {}
        self.store.set_job(row.id, status=status, message=message[:2000], **extra)
        return self.store.job(row.id)

    def get(self, caller: Caller, job_id: str) -> Any:
        return job_record(self.refresh(self._row(caller, job_id)))

    def list(self, caller: Caller, status: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        team = None if caller.admin else caller.team
        for row in self.store.active_jobs(team):
            self.refresh(row)
        rows, total = self.store.jobs(team, status, limit, offset)
        return [job_record(r, with_spec=False) for r in rows], total

    def logs(self, caller: Caller, job_id: str) -> str:
        row = self._row(caller, job_id)
        if row.status == "SUBMITTING" or (row.status == "FAILED" and row.message.startswith("not submitted")):
            return ""
        return _cluster(self.runner.logs, job_id, row.team)

    def cancel(self, caller: Caller, job_id: str) -> dict[str, Any]:
        row = self.refresh(self._row(caller, job_id))
        if row.status in ACTIVE:
            _cluster(self.runner.stop, job_id, row.team)
        return self.get(caller, job_id)

    def reconcile(self) -> dict[str, int]:
        """On start: every active job takes the cluster's status; SUBMITTING rows the cluster never saw fail."""
        counts: dict[str, int] = {}
        for row in self.store.active_jobs():
            try:
                seen = self.runner.status(row.id, row.team)
            except RaydlError as e:
                log.warning("reconcile: cannot reach the cluster for %s: %s", row.id, e)
                continue
            if seen is None:
                msg = NEVER_SUBMITTED if row.status == "SUBMITTING" else "the cluster no longer knows this job"
                self.store.set_job(row.id, status="FAILED", message=msg)
            else:
                self.refresh(row)
            new = self.store.job(row.id).status
            counts[new] = counts.get(new, 0) + 1
        return counts

    def refresh_active(self) -> None:
        """Every active job takes the cluster's status (the background loop): the history stays true
        and finished jobs free their quota even when nobody is looking."""
        for row in self.store.active_jobs():
            self.refresh(row)

    def usage(self) -> list[dict[str, Any]]:
        out = []
        with self.store.engine.connect() as conn:
            for team, q in sorted(self.config.teams.items()):
                n, w, g = self.store.usage(conn, team)
                out.append({"team": team, "active_jobs": n, "workers": w, "gpus": g, "quota": q.model_dump()})
        return out

