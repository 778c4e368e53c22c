"""The Ray edge: what the gateway asks of a cluster. `RayJobsRunner` goes through the Ray Jobs API
with `raydl.jobs` (staging, entrypoints, token auth); `KubeRayRunner` (kuberay.py) creates RayJobs in
each team's namespace with `raydl.kube`; `NoopRunner` keeps jobs in memory, RUNNING until stopped, for
load benchmarks and demos (`runner: noop`), and forgets them on restart."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Protocol

from raydl import jobs
from raydl.errors import NotFoundError
from raydl.spec import JobSpec


class JobRunner(Protocol):
    def submit(self, job_id: str, team: str, kind: str, spec: JobSpec, metadata: dict[str, str]) -> None: ...

    def status(self, job_id: str, team: str) -> tuple[str, str] | None:
        """(status, message), or None when the cluster does not know the job."""

    def logs(self, job_id: str, team: str) -> str: ...

    def stop(self, job_id: str, team: str) -> None: ...

    def problem(self) -> str | None:
        """Why the cluster cannot take jobs now, or None (readiness)."""

    def storage_root(self, team: str) -> Path | None:
        """Where the team's runs go on the cluster, or None: the gateway's own runs folder (shared)."""


class RayJobsRunner:
    def __init__(self, address: str) -> None:
        self.address = address
        self._cluster: jobs.Cluster | None = None
        self._lock = threading.Lock()

    def cluster(self) -> jobs.Cluster:
        with self._lock:
            if self._cluster is None:
                self._cluster = jobs.Cluster.connect(self.address)
            return self._cluster

    def submit(self, job_id: str, team: str, kind: str, spec: JobSpec, metadata: dict[str, str]) -> None:
        cluster = self.cluster()
        with tempfile.TemporaryDirectory(prefix="raydl-gw-") as tmp:
            jobs.stage(spec, Path(tmp))
            cluster.submit(jobs.entrypoint(kind), jobs.runtime_env(Path(tmp)), job_id, metadata)

    def status(self, job_id: str, team: str) -> tuple[str, str] | None:
        try:
            info = self.cluster().info(job_id)
        except NotFoundError:
            return None
        return str(info.status), (info.message or "").strip().splitlines()[0] if info.message else ""

    def logs(self, job_id: str, team: str) -> str:
        return self.cluster().logs(job_id)

    def stop(self, job_id: str, team: str) -> None:
        cluster = self.cluster()
        cluster._call("stopping the job", job_id, cluster.client().stop_job, job_id)

    def storage_root(self, team: str) -> Path | None:
        return None

    def problem(self) -> str | None:
        try:
            jobs._get_json(jobs.dashboard_url(self.address), "/api/version", jobs.find_token())
        except Exception as e:  # noqa: BLE001 (readiness reports any reason in one line)
            return str(e)
        return None


class NoopRunner:
    def __init__(self) -> None:
        self._jobs: dict[str, str] = {}
        self._lock = threading.Lock()

    def submit(self, job_id: str, team: str, kind: str, spec: JobSpec, metadata: dict[str, str]) -> None:
        jobs.entrypoint(kind)
        with self._lock:
            if job_id in self._jobs:
                raise RuntimeError(f"job {job_id} submitted twice")
            self._jobs[job_id] = "RUNNING"

    def status(self, job_id: str, team: str) -> tuple[str, str] | None:
        with self._lock:
            st = self._jobs.get(job_id)
        return None if st is None else (st, "noop runner")

    def logs(self, job_id: str, team: str) -> str:
        return f"noop runner: job {job_id} runs nothing\n"

    def stop(self, job_id: str, team: str) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id] = "STOPPED"

    def storage_root(self, team: str) -> Path | None:
        return None

    def problem(self) -> str | None:
        return None


def make_runner(config) -> JobRunner:
    if config.runner == "noop":
        return NoopRunner()
    if config.runner == "kuberay":
        from raydl.gateway.kuberay import KubeRayRunner

        return KubeRayRunner(config.kube_context, config.kube_image)
    return RayJobsRunner(config.ray_address or "")
