"""A real PostgreSQL server for tests: Debian's `postgresql` binaries, a fresh data directory
and a free port on 127.0.0.1, trust authentication, stopped and removed at exit.

    with postgres_server() as pg:
        pg.url        # postgresql://postgres@127.0.0.1:PORT/raydl

The server refuses to run as root, so as root (CI here) initdb and pg_ctl run as the `postgres`
user. `server_binaries()` is None when no server is installed: callers skip with that reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clusters import free_port

MISSING = "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/postgres); .ci/run installs Debian's postgresql"


def server_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PgServer:
    url: str
    port: int
    data_dir: Path

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        import uuid

        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name


def running_postgres() -> Iterator[PgServer]:
    """Fixture body (a module makes it its fixture with
    `_pg = pytest.fixture(scope="module", name="pg")(running_postgres)`): a server, or a skip
    saying why there is none."""
    import pytest

    if server_binaries() is None:
        pytest.skip(MISSING)
    with postgres_server() as server:
        yield server


@contextmanager
def postgres_server(db: str = "raydl") -> Iterator[PgServer]:
    bindir = server_binaries()
    if bindir is None:
        raise RuntimeError(MISSING)
    root = Path(tempfile.mkdtemp(prefix="raydl-pg-"))
    os.chmod(root, 0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*cmd: str, timeout: float = 120) -> None:
        out = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "120",
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off", "start")
        started = True
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db)
        yield PgServer(f"postgresql://postgres@127.0.0.1:{port}/{db}", port, data)
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
