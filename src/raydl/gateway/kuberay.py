"""`runner: kuberay`: each job a KubeRay RayJob in its team's namespace (the namespace is the team's
name), built and created by `raydl.kube` as `raydl submit --k8s` does, with the gateway's own
identity (its ServiceAccount in a pod; k8s/base/platform binds each team's submitter Role to it).
The team's ResourceQuota is checked before creating, as the CLI does. Runs go to the team's runs
volume (`/mnt/runs/<job id>`), which the gateway does not mount: metrics and model directory of a
finished RayJob are not read back (its status is)."""

from __future__ import annotations

import threading
from pathlib import Path

from raydl import kube
from raydl.errors import NotFoundError, ResourceError
from raydl.spec import JobSpec

# KubeRay's jobStatus is Ray's job status; a suspended job that has not ended was stopped.
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class KubeRayRunner:
    def __init__(self, context: str | None = None, image: str | None = None) -> None:
        self.context, self.image = context, image or kube.DEFAULT_IMAGE
        self._kube: kube.Kube | None = None
        self._lock = threading.Lock()

    def k(self) -> kube.Kube:
        with self._lock:
            if self._kube is None:
                self._kube = kube.Kube(self.context)
            return self._kube

    def storage_root(self, team: str) -> Path | None:
        return Path(kube.RUNS_MOUNT)

    def submit(self, job_id: str, team: str, kind: str, spec: JobSpec, metadata: dict[str, str]) -> None:
        kube.check_data(spec)
        k = self.k()
        problem = kube.quota_problem(team, kube.requested(spec), k.quotas(team))
        if problem:
            raise ResourceError(problem)
        cm, job = kube.build(spec, name=job_id, namespace=team, image=self.image, kind=kind)
        job["metadata"].setdefault("annotations", {}).update({f"raydl.io/{k_}": v for k_, v in metadata.items()})
        k.create(cm, job)

    def status(self, job_id: str, team: str) -> tuple[str, str] | None:
        try:
            rec = kube.job_record(self.k().get(team, job_id))
        except NotFoundError:
            return None
        status = rec["status"]
        if rec["deployment_status"] == "Failed" and status not in TERMINAL:
            status = "FAILED"
        if rec["suspended"] and status not in TERMINAL:
            status = "STOPPED"
        return status, rec["message"] or ""

    def logs(self, job_id: str, team: str) -> str:
        try:
            return self.k().submitter_logs(team, job_id)
        except NotFoundError as e:
            if "no submitter pod yet" in str(e):
                return ""
            raise

    def stop(self, job_id: str, team: str) -> None:
        self.k().suspend(team, job_id)

    def problem(self) -> str | None:
        try:
            self.k()
        except Exception as e:  # noqa: BLE001 (readiness reports any reason in one line)
            return str(e)
        return None
