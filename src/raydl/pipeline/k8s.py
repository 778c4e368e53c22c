"""`raydl pipeline k8s`: a Kubernetes CronJob that runs one pass of the pipeline on the team's
Ray cluster, the pipeline spec in a ConfigMap beside it. Pure: it renders, it does not apply.

The pass's driver runs in the CronJob's pod and reaches the team's RayCluster (k8s/base/platform,
named `raydl`) through its head service; its state and run dirs live on the team's volume
(`raydl-runs` at /mnt/runs). `concurrencyPolicy: Forbid` keeps passes from overlapping (the
pipeline's own lock does too); `startingDeadlineSeconds` lets a missed run start late once.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import yaml

from raydl.errors import DataError
from raydl.kube import DEFAULT_IMAGE, MANAGED, RUNS_MOUNT, RUNS_PVC, S3_SECRET, WANDB_SECRET
from raydl.pipeline.spec import PipelineSpec

SPEC_MOUNT, SPEC_KEY = "/raydl/pipeline", "pipeline.yaml"
RESOURCES = {"cpu": "1", "memory": "2Gi"}


def _on_volume(path: str | None) -> str | None:
    if path is None or "://" in path or path.startswith("/"):
        return path
    return str(PurePosixPath(RUNS_MOUNT) / path)


def portable(spec: PipelineSpec) -> dict:
    """The pipeline as the pod reads it: the job spec inline, relative run and registry paths
    put on the team's volume. The data must be reachable from the pod."""
    loc = spec.data.location
    for p in loc if isinstance(loc, list) else [loc]:
        if "://" not in p and not p.startswith("/"):
            raise DataError(f"data.location {p!r}: a CronJob's pod cannot read local paths; give a URI "
                            f"(s3://bucket/windows/) or an absolute path on the team's volume ({RUNS_MOUNT}/...)")
    raw = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["run_dir"] = _on_volume(spec.run_dir)
    raw["model"]["registry"] = _on_volume(spec.model.registry or "registry")
    return raw


def cronjob_name(spec: PipelineSpec) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")[:40] or "pipeline"
    return f"raydl-pipeline-{stem}"


def build(spec: PipelineSpec, *, cron: str, namespace: str, image: str = DEFAULT_IMAGE,
          ray_address: str = "raydl-head-svc:6379", token_secret: str = "raydl") -> list[dict]:
    """The ConfigMap holding the pipeline and the CronJob (batch/v1) that runs `raydl pipeline run` on it."""
    from raydl.pipeline.schedule import check_cron

    check_cron(cron)
    if len(cron.split()) != 5:
        raise DataError(f"--cron {cron!r}: a Kubernetes CronJob takes 5 fields (minute hour day month weekday)")
    name = cronjob_name(spec)
    labels = {**MANAGED, "raydl.io/pipeline": spec.name[:63]}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-spec", "namespace": namespace, "labels": labels},
          "data": {SPEC_KEY: yaml.safe_dump(portable(spec), sort_keys=False)}}
    env = [{"name": "RAY_ADDRESS", "value": ray_address},
           {"name": "RAY_AUTH_MODE", "value": "token"},
           {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "auth_token", "optional": True}}},
           {"name": "RAYDL_HOME", "value": f"{RUNS_MOUNT}/.raydl"},
           {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": WANDB_SECRET, "key": "api-key", "optional": True}}}]
    container = {"name": "pipeline", "image": image,
                 "command": ["raydl", "pipeline", "run", f"{SPEC_MOUNT}/{SPEC_KEY}", "--json"],
                 "env": env, "envFrom": [{"secretRef": {"name": S3_SECRET, "optional": True}}],
                 "resources": {"requests": RESOURCES, "limits": RESOURCES},
                 "volumeMounts": [{"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
                                  {"name": "runs", "mountPath": RUNS_MOUNT}]}
    job = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "spec": {"schedule": cron, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 3600,
                    "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                    "jobTemplate": {"metadata": {"labels": labels}, "spec": {
                        "backoffLimit": 1, "template": {"metadata": {"labels": labels}, "spec": {
                            "restartPolicy": "Never", "serviceAccountName": "raydl-submitter",
                            "containers": [container],
                            "volumes": [{"name": "spec", "configMap": {"name": cm["metadata"]["name"]}},
                                        {"name": "runs", "persistentVolumeClaim": {"claimName": RUNS_PVC}}]}}}}}}
    return [cm, job]
