"""The registry's tables (SQLAlchemy Core) and its database: a SQLite file by default, or a
Postgres URL for a team.

Versions keep the lineage every version has in typed columns, and anything else (a parent's
continual-learning strategy, replay buffer, Fisher state, ...) in the `lineage` JSON column, so
new lineage fields need no schema change. `events` is the append-only history: register,
promote, rollback and delete, each one row.

Writes are serialised per model: on SQLite every write transaction starts with BEGIN IMMEDIATE
(the database's write lock, waited for up to `timeout_s`), on Postgres it locks the model's row
(SELECT ... FOR UPDATE; `lock_timeout` bounds the wait). A reader never waits for a writer on
Postgres; on SQLite only during a commit. Database trouble a user can act on (locked past the
timeout, a corrupt file, a server that does not answer) becomes one `RegistryError` line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from raydl.model_registry import RegistryError

SCHEMA_VERSION = 1
_PG_INIT_LOCK = 0x7261_7964  # pg_advisory_xact_lock key: one schema creation at a time

metadata = MetaData()

schema_info = Table(
    "schema_info", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

models = Table(
    "models", metadata,
    Column("name", String(128), primary_key=True),
    Column("created_at", String(32), nullable=False),
    Column("next_version", Integer, nullable=False),  # version numbers are never reused, even after a delete
)

versions = Table(
    "versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(128), ForeignKey("models.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("artifact_uri", String(2048), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("source_run", String(256)),
    Column("run_dir", String(2048)),
    Column("data_fingerprint", String(128)),
    Column("parent_model", String(128)),
    Column("parent_version", Integer),
    Column("wandb_run_id", String(128)),
    Column("spec", Text),
    Column("metrics", JSON),
    Column("calibration", JSON),
    Column("drift_profile", JSON),
    Column("files", JSON),  # {relative name: {size, sha256}} of the artifact
    Column("lineage", JSON),  # everything else: manifest facts and any extra lineage fields
    UniqueConstraint("model_name", "version", name="uq_versions_model_version"),
)

aliases = Table(
    "aliases", metadata,
    Column("model_name", String(128), ForeignKey("models.name"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", String(32), nullable=False),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(128), nullable=False, index=True),
    Column("action", String(16), nullable=False),  # register | promote | rollback | delete
    Column("version", Integer, nullable=False),
    Column("alias", String(64)),
    Column("previous_version", Integer),  # promote/rollback: the alias's holder before
    Column("undoes", Integer),  # rollback: the id of the promote event it undid
    Column("at", String(32), nullable=False),
)


def database_url(db: str | None, storage: str) -> str:
    """The SQLAlchemy URL of `db` (a URL, or a SQLite file path), or the default: a SQLite file
    `registry.db` under a local `storage` root."""
    from raydl.storage import is_uri

    if db:
        if "://" not in db:
            return f"sqlite:///{Path(db).expanduser().resolve()}"
        return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", db)
    if is_uri(storage):
        raise RegistryError(f"--db: the registry storage {storage} is an object store, where a SQLite file cannot live; "
                            "give a database with --db (postgresql://user@host/db, or a local SQLite file path) "
                            "or RAYDL_REGISTRY_DB")
    return f"sqlite:///{Path(storage).expanduser().resolve() / 'registry.db'}"


def shown(url: str) -> str:
    """`url` fit to print: no password; a SQLite URL as its file path."""
    try:
        u = make_url(url)
    except ArgumentError:
        return url
    if u.get_backend_name() == "sqlite":
        return u.database or ":memory:"
    return u.render_as_string(hide_password=True)


def connect(url: str, timeout_s: float) -> Engine:
    """An engine for `url` whose transactions behave as the module docstring says."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise RegistryError(f"--db: {url!r} is not a database URL; give postgresql://user@host:port/db or a SQLite file path") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"timeout": timeout_s})

        @event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("raydl_write") else "BEGIN")

        return engine
    if backend == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise RegistryError("--db: a Postgres registry needs the psycopg driver: pip install 'raydl[postgres]'") from None
        ms = int(timeout_s * 1000)
        return create_engine(u, pool_pre_ping=True, connect_args={
            "connect_timeout": max(1, int(timeout_s)), "options": f"-c lock_timeout={ms} -c statement_timeout={10 * ms}"})
    raise RegistryError(f"--db: {backend} databases are not supported; give a postgresql:// URL or a SQLite file path")


@contextmanager
def errors(url: str, timeout_s: float) -> Iterator[None]:
    """Database failures a user can act on, as one RegistryError line each."""
    try:
        yield
    except DBAPIError as e:
        raise _translated(e, url, timeout_s) from None


def _translated(e: DBAPIError, url: str, timeout_s: float) -> Exception:
    where = shown(url)
    orig = e.orig
    msg = " ".join(str(orig).split())
    low, name = msg.lower(), type(orig).__name__
    if "database is locked" in low or "database table is locked" in low or name == "LockNotAvailable":
        return RegistryError(f"registry database {where} is locked: another process has held it for more than "
                             f"{timeout_s:g} s; try again, or wait longer with --timeout / RAYDL_REGISTRY_TIMEOUT")
    if name == "QueryCanceled":
        return RegistryError(f"registry database {where} did not answer in time ({msg[:160]}); try again")
    if "not a database" in low or "malformed" in low or "file is encrypted" in low:
        return RegistryError(f"registry database {where} is corrupt ({msg}); restore it from a backup, "
                             "or move it aside to start an empty registry")
    if "unable to open database file" in low:
        return RegistryError(f"registry database {where} cannot be opened ({msg}); check that its folder exists "
                             "and is writable")
    if e.connection_invalidated or any(k in low for k in ("connection refused", "could not connect", "connection to server",
                                                          "timeout expired", "could not translate host", "password authentication")):
        return RegistryError(f"cannot reach the registry database {where}: {msg[:200]}")
    return e


@contextmanager
def transaction(engine: Engine, write: bool) -> Iterator[Connection]:
    """One transaction; a write one holds the database's write lock from its start on SQLite."""
    with engine.connect() as conn:
        if write:
            conn.execution_options(raydl_write=True)
        with conn.begin():
            yield conn


def ensure_schema(engine: Engine) -> None:
    """Create the tables on first use (once, under the write lock); refuse a newer schema or a
    database that holds something else."""
    with transaction(engine, write=False) as conn:
        have = set(inspect(conn).get_table_names())
    if "schema_info" in have:
        _check_version(engine)
        return
    if have:
        raise RegistryError(f"registry database {shown(str(engine.url))} holds other tables "
                            f"({', '.join(sorted(have)[:5])}) and no raydl registry; give an empty or a registry database")
    with transaction(engine, write=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_INIT_LOCK})
        if not inspect(conn).has_table("schema_info"):
            metadata.create_all(conn)
            conn.execute(schema_info.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
    _check_version(engine)


def _check_version(engine: Engine) -> None:
    with transaction(engine, write=False) as conn:
        v = conn.execute(select(schema_info.c.value).where(schema_info.c.key == "schema_version")).scalar()
    if v is None or not v.isdigit() or int(v) > SCHEMA_VERSION:
        raise RegistryError(f"registry database {shown(str(engine.url))} has schema version {v!r}; this raydl reads "
                            f"version {SCHEMA_VERSION} and older; upgrade raydl")
