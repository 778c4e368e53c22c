"""gateway.yaml: one typed, frozen config, every problem listed with its dotted path.

    data_dir: /var/lib/raydl-gateway     # SQLite file, runs, registries, drift reports live under it
    database: null                       # a SQLAlchemy URL (postgresql+psycopg://...); default SQLite
    ray_address: http://127.0.0.1:8265   # the Jobs API; `runner: kuberay` makes RayJobs in each team's
                                         # namespace instead; `runner: noop` runs nothing (benchmarks)
    teams:
      team-a: {max_concurrent_jobs: 4, max_workers: 8, max_gpus: 0}
    limits: {max_body_bytes: 1048576, requests_per_minute: 600, burst: 60}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raydl.errors import SpecError

TEAM = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label: also a namespace name
ADMIN_TEAM = "admin"


class Quota(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_concurrent_jobs: int = Field(4, ge=0)
    max_workers: int = Field(8, ge=0, description="workers asked for by the team's active jobs, summed")
    max_gpus: float = Field(0, ge=0, description="GPUs asked for by the team's active jobs, summed")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    requests_per_minute: float = Field(600, gt=0, description="per token, sustained")
    burst: int = Field(60, ge=1, description="per token, at once")


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    data_dir: Path
    database: str | None = None
    runner: Literal["ray", "kuberay", "noop"] = "ray"
    ray_address: str | None = None
    kube_context: str | None = Field(None, description="kuberay: the kubeconfig context (in a pod: its ServiceAccount)")
    kube_image: str | None = Field(None, description="kuberay: the raydl image of each RayJob (default: raydl.kube's)")
    teams: dict[str, Quota] = Field(default_factory=dict)
    limits: Limits = Limits()
    refresh_s: float = Field(15.0, gt=0, description="how often active jobs are refreshed from the cluster in the background")

    @field_validator("teams")
    @classmethod
    def _team_names(cls, v: dict[str, Quota]) -> dict[str, Quota]:
        bad = [t for t in v if not TEAM.match(t) or t == ADMIN_TEAM]
        if bad:
            raise ValueError(f"team names must be DNS labels (lowercase letters, digits, '-') and not {ADMIN_TEAM!r}: {bad}")
        return v

    @property
    def database_url(self) -> str:
        if not self.database:
            return f"sqlite:///{self.data_dir / 'gateway.db'}"
        return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", self.database)  # psycopg 3, as the registry

    def team_dir(self, team: str) -> Path:
        return self.data_dir / "teams" / team

    def runs_dir(self, team: str) -> Path:
        return self.team_dir(team) / "runs"

    def registry_dir(self, team: str) -> Path:
        return self.team_dir(team) / "registry"

    def drift_dir(self, team: str) -> Path:
        return self.team_dir(team) / "drift"


def config_from_dict(raw: object, origin: str = "") -> GatewayConfig:
    if not isinstance(raw, dict):
        raise SpecError(f"gateway config {origin}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        cfg = GatewayConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg'].removeprefix('Value error, ')}"
                 for e in err.errors()]
        raise SpecError(f"invalid gateway config {origin}: " + "; ".join(lines)) from None
    if cfg.runner == "ray" and not cfg.ray_address:
        raise SpecError(f"invalid gateway config {origin}: ray_address: required with runner: ray "
                        "(the Jobs API, e.g. http://127.0.0.1:8265)")
    if not cfg.data_dir.is_absolute():
        raise SpecError(f"invalid gateway config {origin}: data_dir: {str(cfg.data_dir)!r} must be an absolute path "
                        "(runs are written there by the cluster)")
    return cfg


def load_config(path: str | Path) -> GatewayConfig:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"--config {p}: no such file (a gateway.yaml; see services/gateway/gateway.yaml)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"--config {p}: malformed YAML ({getattr(e, 'problem', e)})") from None
    return config_from_dict(raw or {}, origin=f"in {p}")
