"""The registry under concurrency and crashes: promotes at once, `raydl registry` processes
SIGKILLed while provably inside a register or a promote (paused at a test hook: the process
creates <dir>/reached and waits for <dir>/release, which never comes), and databases that are
locked, corrupt or unreachable. On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from model_dirs import model_dir
from postgres import running_postgres

from raydl.cli import main
from raydl.model_registry.api import TEST_HOOK_ENV, ModelRegistry

RAYDL = str(Path(sys.executable).with_name("raydl"))


@pytest.fixture(scope="module")
def mdir(tmp_path_factory) -> Path:
    return model_dir(tmp_path_factory.mktemp("m") / "model", source="iris")


_pg = pytest.fixture(scope="module", name="pg")(running_postgres)


def fresh(backend: str, request, tmp_path: Path) -> list[str]:
    """--storage/--db arguments of a fresh registry on `backend`."""
    args = ["--storage", str(tmp_path / "store")]
    if backend == "postgres":
        args += ["--db", request.getfixturevalue("pg").new_database()]
    return args


@pytest.fixture(params=["sqlite", "postgres"])
def where(request, tmp_path) -> list[str]:
    return fresh(request.param, request, tmp_path)


def registry(where: list[str]) -> ModelRegistry:
    opts = dict(zip(where[::2], where[1::2]))
    return ModelRegistry(opts["--storage"], db=opts.get("--db"))


def start(args: list[str], hook: Path | None = None, point: str = "") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != TEST_HOOK_ENV}
    if hook is not None:
        hook.mkdir()
        env[TEST_HOOK_ENV] = f"{point}:{hook}"
    return subprocess.Popen([RAYDL, "registry", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_reached(p: subprocess.Popen, hook: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (hook / "reached").exists():
        if p.poll() is not None:
            pytest.fail(f"the process ended (rc {p.returncode}) before the hook: {p.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "the process never reached the hook"
        time.sleep(0.02)


def finish(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    return out


def sigkill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL


def test_two_promotes_at_once_are_applied_one_after_the_other(where, mdir, tmp_path):
    with registry(where) as reg:
        for _ in range(3):
            reg.register(mdir, "iris")
        reg.promote("iris", 1, "production")
    # A pauses inside its promote transaction (alias row updated, not committed)...
    slow_ok = ["--timeout", "120"]  # B waits for A's lock; a busy machine must not turn that into a timeout
    a = start(["promote", "iris", "2", "--alias", "production", *where, *slow_ok], tmp_path / "a", "promote.in_transaction")
    wait_reached(a, tmp_path / "a")
    # ...B is let go just before its transaction, and must wait for A's lock.
    b = start(["promote", "iris", "3", "--alias", "production", *where, *slow_ok], tmp_path / "b", "promote.start")
    wait_reached(b, tmp_path / "b")
    (tmp_path / "b" / "release").touch()
    time.sleep(1.5)
    assert b.poll() is None, f"B finished while A held the lock: {b.communicate()}"
    (tmp_path / "a" / "release").touch()
    assert "production -> v2 (was v1)" in finish(a)
    assert "production -> v3 (was v2)" in finish(b)  # B read A's committed alias
    with registry(where) as reg:
        h = reg.history("iris")
    assert h["aliases"] == {"production": 3}
    promotes = [(e["version"], e["previous_version"]) for e in h["events"] if e["action"] == "promote"]
    assert promotes == [(1, None), (2, 1), (3, 2)]


def test_many_promotes_at_once_each_recorded_in_one_chain(where, mdir):
    n = 6
    with registry(where) as reg:
        for _ in range(n):
            reg.register(mdir, "iris")
    barrier, errors = threading.Barrier(n), []

    def promote(version: int) -> None:
        try:
            with registry(where) as r:
                barrier.wait()
                r.promote("iris", version, "production")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=promote, args=(v,)) for v in range(1, n + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with registry(where) as reg:
        h = reg.history("iris")
    chain = [e for e in h["events"] if e["action"] == "promote"]
    assert sorted(e["version"] for e in chain) == list(range(1, n + 1))  # every promote is in the history
    assert [e["previous_version"] for e in chain] == [None] + [e["version"] for e in chain[:-1]]  # one after another
    assert h["aliases"] == {"production": chain[-1]["version"]}  # the alias is on exactly the last one


# Killed after the copy, before any database work: the same on both backends, so once.
@pytest.mark.parametrize("backend,point", [("sqlite", "register.published"), ("sqlite", "register.in_transaction"),
                                           ("postgres", "register.in_transaction")])
def test_register_killed_midway_leaves_no_version(backend, point, mdir, tmp_path, request):
    where = fresh(backend, request, tmp_path)
    with registry(where) as reg:
        reg.register(mdir, "iris")
        before = reg.history("iris")
    p = start(["register", str(mdir), "--name", "iris", *where], tmp_path / "hook", point)
    wait_reached(p, tmp_path / "hook")
    copies = {d.name for d in (tmp_path / "store" / "iris").iterdir()}
    assert len(copies) == 2  # the artifact was copied in full before the kill
    sigkill(p)
    with registry(where) as reg:
        assert reg.history("iris") == before  # absent: no version, no event
        assert reg.register(mdir, "iris")["version"] == 2  # not locked, and the number was not used
        referenced = {Path(reg.show(f"iris@{v}")["artifact_uri"]).name for v in (1, 2)}
    assert len(copies - referenced) == 1  # the killed one's copy: never referenced


def test_promote_killed_midway_leaves_the_alias_as_it_was(where, mdir, tmp_path):
    with registry(where) as reg:
        reg.register(mdir, "iris")
        reg.register(mdir, "iris")
        reg.promote("iris", 1, "production")
        before = reg.history("iris")
    p = start(["promote", "iris", "2", "--alias", "production", *where], tmp_path / "hook", "promote.in_transaction")
    wait_reached(p, tmp_path / "hook")
    sigkill(p)
    with registry(where) as reg:
        assert reg.history("iris") == before and reg.show("iris@production")["version"] == 1
        assert reg.promote("iris", 2, "production")["previous_version"] == 1


def test_register_killed_mid_upload_to_s3(tmp_path, mdir, s3_session):
    # s3_session's endpoint and credentials are in os.environ: the subprocess inherits them
    where = ["--storage", s3_session.uri(f"registry-{tmp_path.name}"), "--db", str(tmp_path / "reg.db")]
    p = start(["register", str(mdir), "--name", "iris", *where], tmp_path / "hook", "register.uploaded")
    wait_reached(p, tmp_path / "hook")  # one file uploaded to the temp prefix, the rest not yet
    sigkill(p)
    with registry(where) as reg:
        assert reg.list() == []
        assert reg.register(mdir, "iris")["version"] == 1
        assert (reg.fetch("iris@1", into=tmp_path / "got") / "weights.pt").is_file()


def cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(["registry", *args])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) <= 1, err
    return rc, err


def test_a_locked_sqlite_database_is_one_line_and_nothing_is_copied(tmp_path, mdir, capsys):
    store = tmp_path / "store"
    with ModelRegistry(store) as reg:
        reg.register(mdir, "iris")
    holder = sqlite3.connect(store / "registry.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction, held
    try:
        for args in (["promote", "iris", "1", "--alias", "production"], ["register", str(mdir), "--name", "iris"]):
            rc, err = cli(capsys, *args, "--storage", str(store), "--timeout", "0.3")
            assert rc == 2 and "registry database" in err and "is locked" in err and "more than 0.3 s" in err, err
        assert len(list((store / "iris").iterdir())) == 1  # the refused register copied nothing
        assert cli(capsys, "list", "--storage", str(store))[0] == 0  # readers are not blocked
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cli(capsys, "promote", "iris", "1", "--alias", "production", "--storage", str(store))[0] == 0


def test_a_locked_postgres_model_row_is_one_line(pg, mdir, tmp_path, capsys):
    import psycopg

    db = pg.new_database()
    where = ["--storage", str(tmp_path / "store"), "--db", db]
    with registry(where) as reg:
        reg.register(mdir, "iris")
    with psycopg.connect(db) as holder:
        holder.execute("SELECT * FROM models WHERE name = 'iris' FOR UPDATE")  # held until the block ends
        rc, err = cli(capsys, "promote", "iris", "1", "--alias", "production", *where, "--timeout", "0.5")
        assert rc == 2 and "is locked" in err and "postgres@127.0.0.1" in err, err
    assert cli(capsys, "promote", "iris", "1", "--alias", "production", *where)[0] == 0


def test_corrupt_foreign_and_unreachable_databases_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "registry.db").write_bytes(b"this is not a database file\n" * 200)
    rc, err = cli(capsys, "list", "--storage", str(bad))
    assert rc == 2 and f"registry database {bad / 'registry.db'} is corrupt" in err, err

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    rc, err = cli(capsys, "list", "--storage", str(tmp_path), "--db", str(other))
    assert rc == 2 and "holds other tables (invoices) and no raydl registry" in err, err

    from clusters import free_port

    rc, err = cli(capsys, "list", "--storage", str(tmp_path), "--db", f"postgresql://u:secret@127.0.0.1:{free_port()}/x",
                  "--timeout", "2")
    assert rc == 2 and "cannot reach the registry database postgresql+psycopg://u:***@127.0.0.1" in err, err
    assert "secret" not in err
