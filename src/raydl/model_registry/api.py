"""`ModelRegistry`: named models, numbered versions with lineage, and aliases moved atomically.

    reg = ModelRegistry()                                    # $RAYDL_REGISTRY or ~/.raydl/registry, SQLite
    reg = ModelRegistry("s3://bucket/registry", db="postgresql://raydl@db/raydl")
    v = reg.register("runs/digits-mlp/model", "digits")      # {"name": "digits", "version": 1, ...}
    reg.promote("digits", 1, "production")
    reg.show("digits@production"); reg.rollback("digits", "production"); reg.history("digits")
    local_dir = reg.fetch("digits@production")               # a local model directory

Register copies the model directory to `<storage>/<name>/<random id>/` first (local: a temp dir
renamed into place; object store: a completion marker written last), then publishes the version
in one database transaction. A process killed before that commit leaves no version, only an
unreferenced copy; killed after it, the version is complete. Promote, rollback and delete are
each one transaction under the model's write lock, so concurrent promotes are applied one after
the other: the alias ends on the last one, and every promote is in the history with the holder
it replaced.

Rollback undoes the alias's latest promote that is not undone yet: the alias goes back to the
holder that promote replaced (`rollback_target`, a pure function of the alias's events).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from raydl.model_registry import RegistryError
from raydl.model_registry import db as tables
from raydl.model_registry.db import aliases, events, models, versions

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
DEFAULT_TIMEOUT_S = 10.0
TEST_HOOK_ENV = "RAYDL_REGISTRY_TEST_HOOK"


def _test_hook(point: str) -> None:
    """Test hook, for kill tests only: with RAYDL_REGISTRY_TEST_HOOK=<point>:<dir>, a process that
    reaches <point> creates <dir>/reached, then waits until <dir>/release exists."""
    hook = os.environ.get(TEST_HOOK_ENV, "")
    name, _, folder = hook.partition(":")
    if name != point or not folder:
        return
    Path(folder, "reached").touch()
    while not Path(folder, "release").exists():
        time.sleep(0.02)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_name(name: str, what: str = "--name") -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise RegistryError(f"{what}: {name!r} is not a model name; use 1-128 letters, digits, '_', '.' or '-', "
                            "starting with a letter or digit")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS.match(alias) or re.fullmatch(r"v\d+", alias):
        raise RegistryError(f"--alias: {alias!r} is not an alias; use 1-64 letters, digits, '_' or '-', starting with "
                            "a letter (and not v<number>, which names a version)")
    return alias


@dataclass(frozen=True)
class Ref:
    """NAME (the latest version), NAME@VERSION (3 or v3) or NAME@ALIAS."""

    name: str
    version: int | None = None
    alias: str | None = None


def parse_ref(text: str) -> Ref:
    name, at, rest = str(text).partition("@")
    check_name(name, "model")
    if not at:
        return Ref(name)
    m = re.fullmatch(r"v?(\d+)", rest)
    if m:
        return Ref(name, version=int(m.group(1)))
    return Ref(name, alias=check_alias(rest))


def rollback_target(alias_events: list[dict]) -> tuple[int, int] | None:
    """(id of the promote to undo, the version it replaced) from one alias's promote and
    rollback events in order, or None when there is no earlier holder to go back to. A rollback
    undoes the latest promote not undone yet; a promote of the first holder has nothing before it."""
    undone = {e["undoes"] for e in alias_events if e["action"] == "rollback"}
    for e in reversed(alias_events):
        if e["action"] == "promote" and e["id"] not in undone:
            return None if e["previous_version"] is None else (e["id"], e["previous_version"])
    return None


def _default_storage() -> str:
    from raydl.runlock import raydl_home

    return os.environ.get("RAYDL_REGISTRY") or str(raydl_home() / "registry")


class ModelRegistry:
    """The registry at `storage` (a local path or an object-store URI for artifacts) with its
    metadata in `db` (a SQLite file path or a Postgres URL; default: `storage`/registry.db)."""

    def __init__(self, storage: str | os.PathLike | None = None, db: str | None = None,
                 timeout_s: float | None = None) -> None:
        self.storage = str(storage or _default_storage())
        self.timeout_s = float(timeout_s or os.environ.get("RAYDL_REGISTRY_TIMEOUT") or DEFAULT_TIMEOUT_S)
        self.url = tables.database_url(db or os.environ.get("RAYDL_REGISTRY_DB"), self.storage)
        self._engine = None

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _tx(self, write: bool):
        if self._engine is None:
            engine = tables.connect(self.url, self.timeout_s)
            with self._errors():
                tables.ensure_schema(engine)
            self._engine = engine
        return tables.transaction(self._engine, write)

    def _errors(self):
        return tables.errors(self.url, self.timeout_s)

    # ---- writes ------------------------------------------------------------------------------

    def register(self, model_dir: str | os.PathLike, name: str, *, parent: str | None = None,
                 lineage: dict[str, Any] | None = None) -> dict[str, Any]:
        """Copy a model directory into the registry and publish it as the next version of `name`.
        `parent`: NAME@VERSION this model was trained from (a continual run's previous model);
        `lineage`: extra lineage fields, kept as given (with the directory's lineage.json).
        `model_dir` may be on an object store (as `raydl train` leaves it for a remote run)."""
        from raydl.storage import is_uri, open_dir

        check_name(name)
        parent_ref = parse_ref(parent) if parent else None
        if parent_ref is not None and parent_ref.version is None:
            raise RegistryError(f"--parent: give the parent as NAME@VERSION, got {parent!r}")
        if not is_uri(str(model_dir)):
            return self._register(Path(model_dir), name, parent_ref, lineage, None)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="raydl-register-") as tmp:  # a verified download first
            return self._register(open_dir(str(model_dir), Path(tmp) / "model"), name, parent_ref, lineage, str(model_dir))

    def _register(self, src: Path, name: str, parent_ref: Ref | None, lineage: dict | None, origin: str | None) -> dict:
        from raydl.model_dir import json_safe, load_model
        from raydl.model_registry.lineage import read_lineage
        from raydl.storage import check_writable, file_manifest, publish_dir, remove_tree

        load_model(src)  # a loadable raydl model directory, or one DataError line
        lin = read_lineage(src, origin)
        if lineage:
            lin["lineage"] = {**lin["lineage"], **lineage}
        files = file_manifest(src)
        check_writable(self.storage)
        with self._errors(), self._tx(write=True):
            pass  # the database answers (not locked, not corrupt) before anything is copied
        artifact = self._artifact_path(name, uuid.uuid4().hex[:16])
        publish_dir(src, artifact, progress=lambda stage, _file: _test_hook(f"register.{stage}"))
        _test_hook("register.published")
        try:
            with self._errors(), self._tx(write=True) as conn:
                model = self._lock_model(conn, name, create=True)
                if parent_ref is not None:
                    self._version_row(conn, parent_ref.name, parent_ref.version, "--parent")
                number = model["next_version"]
                conn.execute(update(models).where(models.c.name == name).values(next_version=number + 1))
                conn.execute(versions.insert().values(
                    model_name=name, version=number, artifact_uri=artifact, created_at=_now(),
                    source_run=lin["source_run"], run_dir=lin["run_dir"], data_fingerprint=lin["data_fingerprint"],
                    parent_model=parent_ref.name if parent_ref else None,
                    parent_version=parent_ref.version if parent_ref else None,
                    wandb_run_id=lin["wandb_run_id"], spec=lin["spec"], metrics=json_safe(lin["metrics"]),
                    calibration=json_safe(lin["calibration"]), drift_profile=lin["drift_profile"],
                    files=files, lineage=json_safe(lin["lineage"])))
                self._event(conn, name, "register", number)
                _test_hook("register.in_transaction")
        except BaseException:
            try:
                remove_tree(artifact)  # never published: nothing refers to it
            except Exception:  # noqa: BLE001 (the original error matters more)
                pass
            raise
        return self.show(f"{name}@{number}")

    def promote(self, name: str, version: int, alias: str) -> dict[str, Any]:
        """Point `alias` of `name` at `version` (recorded in the history with the holder it replaces)."""
        check_name(name)
        check_alias(alias)
        _test_hook("promote.start")
        with self._errors(), self._tx(write=True) as conn:
            self._require_model(conn, name, "promote")
            self._version_row(conn, name, version, "promote")
            current = self._alias_version(conn, name, alias)
            if current == version:
                return {"name": name, "alias": alias, "version": version, "previous_version": current, "changed": False}
            self._set_alias(conn, name, alias, version, current)
            _test_hook("promote.in_transaction")
            self._event(conn, name, "promote", version, alias=alias, previous=current)
        return {"name": name, "alias": alias, "version": version, "previous_version": current, "changed": True}

    def rollback(self, name: str, alias: str) -> dict[str, Any]:
        """Move `alias` back to the holder its latest (not yet undone) promote replaced."""
        check_name(name)
        check_alias(alias)
        with self._errors(), self._tx(write=True) as conn:
            self._require_model(conn, name, "rollback")
            current = self._alias_version(conn, name, alias)
            if current is None:
                raise RegistryError(f"rollback: alias {alias!r} of {name!r} points at no version; promote one first")
            rows = conn.execute(select(events).where(events.c.model_name == name, events.c.alias == alias)
                                .order_by(events.c.id)).mappings().all()
            target = rollback_target([dict(r) for r in rows])
            if target is None:
                raise RegistryError(f"rollback: alias {alias!r} of {name!r} has no previous holder: v{current} is the first "
                                    "version it pointed at (a promote rolled back counts as undone); nothing to roll back to")
            undone, version = target
            if self._version_row(conn, name, version, "rollback", required=False) is None:
                raise RegistryError(f"rollback: alias {alias!r} of {name!r} would go back to v{version}, which was deleted; "
                                    "promote the version you want instead")
            self._set_alias(conn, name, alias, version, current)
            self._event(conn, name, "rollback", version, alias=alias, previous=current, undoes=undone)
        return {"name": name, "alias": alias, "version": version, "previous_version": current, "changed": True}

    def delete(self, name: str, version: int) -> dict[str, Any]:
        """Delete a version no alias points at (its number is never given out again)."""
        from raydl.storage import remove_tree

        check_name(name)
        with self._errors(), self._tx(write=True) as conn:
            self._require_model(conn, name, "delete")
            row = self._version_row(conn, name, version, "delete")
            held = conn.execute(select(aliases.c.alias).where(aliases.c.model_name == name, aliases.c.version == version)
                                .order_by(aliases.c.alias)).scalars().all()
            if held:
                raise RegistryError(f"delete: v{version} of {name!r} is held by alias {', '.join(held)}; promote another "
                                    "version to it (or roll it back) first")
            conn.execute(delete(versions).where(versions.c.model_name == name, versions.c.version == version))
            self._event(conn, name, "delete", version)
        remove_tree(row["artifact_uri"])  # after the commit: a kill here leaves only an unreferenced copy
        return {"name": name, "version": version, "deleted": True}

    # ---- reads -------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every model: its number of versions, latest version and aliases."""
        with self._errors(), self._tx(write=False) as conn:
            counts = {r.model_name: (r.n, r.latest) for r in conn.execute(
                select(versions.c.model_name, func.count().label("n"), func.max(versions.c.version).label("latest"))
                .group_by(versions.c.model_name))}
            alias_map: dict[str, dict[str, int]] = {}
            for r in conn.execute(select(aliases).order_by(aliases.c.alias)):
                alias_map.setdefault(r.model_name, {})[r.alias] = r.version
            names = conn.execute(select(models.c.name, models.c.created_at).order_by(models.c.name)).all()
        return [{"name": n, "created_at": at, "versions": counts.get(n, (0, None))[0],
                 "latest_version": counts.get(n, (0, None))[1], "aliases": alias_map.get(n, {})} for n, at in names]

    def show(self, ref: str) -> dict[str, Any]:
        """The version NAME (latest), NAME@VERSION or NAME@ALIAS names, with its lineage."""
        r = parse_ref(ref)
        with self._errors(), self._tx(write=False) as conn:
            self._require_model(conn, r.name, "show", lock=False)
            if r.alias is not None:
                version = self._alias_version(conn, r.name, r.alias)
                if version is None:
                    held = conn.execute(select(aliases.c.alias).where(aliases.c.model_name == r.name)).scalars().all()
                    raise RegistryError(f"show: {r.name!r} has no alias {r.alias!r}; aliases: {', '.join(sorted(held)) or 'none'}")
            elif r.version is not None:
                version = r.version
            else:
                version = conn.execute(select(func.max(versions.c.version)).where(versions.c.model_name == r.name)).scalar()
                if version is None:
                    raise RegistryError(f"show: {r.name!r} has no versions (all deleted)")
            row = self._version_row(conn, r.name, version, "show")
            held = conn.execute(select(aliases.c.alias).where(aliases.c.model_name == r.name, aliases.c.version == version)
                                .order_by(aliases.c.alias)).scalars().all()
        return _version_record(row, held)

    def history(self, name: str) -> dict[str, Any]:
        """Every register, promote, rollback and delete of `name`, oldest first, and its versions."""
        check_name(name, "model")
        with self._errors(), self._tx(write=False) as conn:
            self._require_model(conn, name, "history", lock=False)
            evs = conn.execute(select(events).where(events.c.model_name == name).order_by(events.c.id)).mappings().all()
            vs = conn.execute(select(versions.c.version, versions.c.created_at, versions.c.source_run)
                              .where(versions.c.model_name == name).order_by(versions.c.version)).mappings().all()
            current = dict(conn.execute(select(aliases.c.alias, aliases.c.version).where(aliases.c.model_name == name)).all())
        keep = ("id", "at", "action", "version", "alias", "previous_version", "undoes")
        return {"name": name, "aliases": current, "versions": [dict(v) for v in vs],
                "events": [{k: e[k] for k in keep} for e in evs]}

    def fetch(self, ref: str, into: str | os.PathLike | None = None) -> Path:
        """A local directory holding the version's model directory (the artifact itself when the
        storage is local; else a verified download into `into` or a new temp dir)."""
        from raydl.storage import open_dir

        return open_dir(self.show(ref)["artifact_uri"], Path(into) if into is not None else None)

    # ---- helpers -----------------------------------------------------------------------------

    def _artifact_path(self, name: str, key: str) -> str:
        from raydl.storage import is_uri, join

        return join(self.storage if is_uri(self.storage) else str(Path(self.storage).expanduser().resolve()), name, key)

    @staticmethod
    def _lock_model(conn: Connection, name: str, create: bool = False):
        """The model's row, locked until the transaction ends (Postgres: FOR UPDATE; SQLite: the
        whole database is already locked by BEGIN IMMEDIATE)."""
        if create:
            if conn.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            conn.execute(insert(models).values(name=name, created_at=_now(), next_version=1)
                         .on_conflict_do_nothing(index_elements=["name"]))
        return conn.execute(select(models).where(models.c.name == name).with_for_update()).mappings().first()

    def _require_model(self, conn: Connection, name: str, what: str, lock: bool = True):
        row = self._lock_model(conn, name) if lock else conn.execute(select(models).where(models.c.name == name)).mappings().first()
        if row is None:
            known = conn.execute(select(models.c.name).order_by(models.c.name).limit(20)).scalars().all()
            raise RegistryError(f"{what}: no model named {name!r} in the registry; models: {', '.join(known) or 'none yet'}")
        return row

    @staticmethod
    def _version_row(conn: Connection, name: str, version: int, what: str, required: bool = True):
        row = None
        if isinstance(version, int) and not isinstance(version, bool):
            row = conn.execute(select(versions).where(versions.c.model_name == name, versions.c.version == version)).mappings().first()
        if row is None and required:
            have = conn.execute(select(versions.c.version).where(versions.c.model_name == name)
                                .order_by(versions.c.version)).scalars().all()
            listed = ", ".join(str(v) for v in have[-20:]) or "none"
            raise RegistryError(f"{what}: model {name!r} has no version {version!r}; its versions: {listed}")
        return row

    @staticmethod
    def _alias_version(conn: Connection, name: str, alias: str) -> int | None:
        return conn.execute(select(aliases.c.version).where(aliases.c.model_name == name, aliases.c.alias == alias)).scalar()

    @staticmethod
    def _set_alias(conn: Connection, name: str, alias: str, version: int, current: int | None) -> None:
        if current is None:
            conn.execute(aliases.insert().values(model_name=name, alias=alias, version=version, updated_at=_now()))
        else:
            conn.execute(update(aliases).where(aliases.c.model_name == name, aliases.c.alias == alias)
                         .values(version=version, updated_at=_now()))

    @staticmethod
    def _event(conn: Connection, name: str, action: str, version: int, alias: str | None = None,
               previous: int | None = None, undoes: int | None = None) -> None:
        conn.execute(events.insert().values(model_name=name, action=action, version=version, alias=alias,
                                            previous_version=previous, undoes=undoes, at=_now()))


def _version_record(row, held: list[str]) -> dict[str, Any]:
    r = dict(row)
    parent = f"{r['parent_model']}@{r['parent_version']}" if r.get("parent_model") else None
    return {"name": r["model_name"], "version": r["version"], "aliases": list(held), "artifact_uri": r["artifact_uri"],
            "created_at": r["created_at"], "source_run": r["source_run"], "run_dir": r["run_dir"],
            "data_fingerprint": r["data_fingerprint"], "parent": parent, "wandb_run_id": r["wandb_run_id"],
            "metrics": r["metrics"], "calibration": r["calibration"], "drift_profile": r["drift_profile"],
            "lineage": r["lineage"], "files": r["files"], "spec": r["spec"]}
