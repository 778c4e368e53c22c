"""The gateway's tables and every query on them (SQLAlchemy Core). The schema is created and
upgraded only by Alembic (`migrations/`), never by `create_all`, so an upgrade keeps the history."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

metadata = MetaData()

tokens = Table(
    "tokens", metadata,
    Column("id", String(32), primary_key=True),
    Column("team", String(64), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("salt", String(64), nullable=False),
    Column("hash", String(128), nullable=False),
    Column("label", String(200), nullable=False, default=""),
    Column("created_at", String(40), nullable=False),
    Column("revoked_at", String(40)),
)

jobs = Table(
    "jobs", metadata,
    Column("id", String(80), primary_key=True),  # also the Ray submission id
    Column("team", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("message", Text, nullable=False, default=""),
    Column("run_name", String(200), nullable=False),
    Column("spec", Text, nullable=False),  # the spec as submitted to the cluster (JSON)
    Column("workers", Integer, nullable=False),
    Column("gpus", Float, nullable=False),
    Column("storage_path", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    Column("ended_at", String(40)),
    Column("metrics", Text),  # JSON, once SUCCEEDED
    Column("model_dir", Text),
    Column("wandb_dir", Text),  # added by migration 0002
    Column("idempotency_key", String(200)),  # 0003: unique per team
    UniqueConstraint("team", "idempotency_key", name="uq_jobs_team_idempotency_key"),
)

ACTIVE = ("SUBMITTING", "PENDING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STATUSES = ACTIVE + TERMINAL


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def engine_for(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # a connection for each of the request threads (anyio's 40) so none waits on the pool and times out
        eng = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8, max_overflow=40)

        @event.listens_for(eng, "connect")
        def _wal(dbapi_conn, _rec) -> None:  # readers do not block the writer
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

        return eng
    return create_engine(url, pool_pre_ping=True)


def job_record(row, *, with_spec: bool = True) -> dict[str, Any]:
    out = {"id": row.id, "team": row.team, "kind": row.kind, "status": row.status, "message": row.message,
           "run_name": row.run_name, "workers": row.workers, "gpus": row.gpus, "created_at": row.created_at,
           "updated_at": row.updated_at, "ended_at": row.ended_at,
           "metrics": json.loads(row.metrics) if row.metrics else None,
           "model_dir": row.model_dir, "wandb_dir": row.wandb_dir}
    if with_spec:
        out["spec"] = json.loads(row.spec)
    return out


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- jobs ----------------------------------------------------------------------------------

    def add_job(self, conn, **values: Any) -> None:
        conn.execute(insert(jobs).values(created_at=now(), updated_at=now(), message="", **values))

    def job_by_key(self, conn, team: str, key: str):
        return conn.execute(select(jobs).where(jobs.c.team == team, jobs.c.idempotency_key == key)).first()

    def usage(self, conn, team: str) -> tuple[int, int, float]:
        """(active jobs, workers, GPUs) of the team's active jobs."""
        n, w, g = conn.execute(select(func.count(), func.coalesce(func.sum(jobs.c.workers), 0),
                                      func.coalesce(func.sum(jobs.c.gpus), 0.0))
                               .where(jobs.c.team == team, jobs.c.status.in_(ACTIVE))).one()
        return int(n), int(w), float(g)

    def set_job(self, job_id: str, only_if: str | None = None, **values: Any) -> None:
        """Update a job (only while its status is `only_if`, when given)."""
        values["updated_at"] = now()
        if values.get("status") in TERMINAL:
            values.setdefault("ended_at", now())
        q = update(jobs).where(jobs.c.id == job_id)
        if only_if is not None:
            q = q.where(jobs.c.status == only_if)
        with self.engine.begin() as conn:
            conn.execute(q.values(**values))

    def job(self, job_id: str, team: str | None = None):
        q = select(jobs).where(jobs.c.id == job_id)
        if team is not None:
            q = q.where(jobs.c.team == team)
        with self.engine.connect() as conn:
            return conn.execute(q).first()

    def jobs(self, team: str | None, status: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list, int]:
        q = select(jobs)
        c = select(func.count()).select_from(jobs)
        for cond in ([jobs.c.team == team] if team else []) + ([jobs.c.status == status] if status else []):
            q, c = q.where(cond), c.where(cond)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit).offset(offset)).all()
            return rows, int(conn.execute(c).scalar())

    def active_jobs(self, team: str | None = None) -> list:
        q = select(jobs).where(jobs.c.status.in_(ACTIVE))
        if team is not None:
            q = q.where(jobs.c.team == team)
        with self.engine.connect() as conn:
            return conn.execute(q).all()

    # ---- tokens --------------------------------------------------------------------------------

    def add_token(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(tokens).values(created_at=now(), **values))

    def token(self, token_id: str):
        with self.engine.connect() as conn:
            return conn.execute(select(tokens).where(tokens.c.id == token_id)).first()

    def tokens(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(select(tokens).order_by(tokens.c.team, tokens.c.created_at)).all()

    def revoke_token(self, token_id: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(update(tokens).where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
                                .values(revoked_at=now()))
            return done.rowcount == 1
