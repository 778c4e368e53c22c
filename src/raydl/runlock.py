"""One driver per run: an OS advisory lock taken before a run's directory is touched.

Two `raydl train` of the same run (same `run.storage_path` and `run.name`) would otherwise write
checkpoints into one directory at once, and `--restart` would delete a directory another run is
writing. `RunLock` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on a lock file; the second driver fails
at once with a `RunLockedError` (exit 2) naming the holder (pid, host, start time, from a small
JSON record the holder writes into the lock file).

Where the lock file lives: `<storage_path>/.<name>.lock`, beside the run directory and not in it.
`--restart` deletes the run directory with `shutil.rmtree`; a lock file inside it would be unlinked
while held, and the next driver would create and lock a new file (a new inode) while the first
still ran. Beside the run directory it survives every rmtree, and it is never deleted: unlinking a
lock file on release has the same race (a waiter holding the old inode, a newcomer a new one).

A crashed run does not block the next: the kernel drops a flock when the last descriptor of the
open file goes, so a SIGKILLed driver's lock is gone with it. The descriptor is opened
close-on-exec (Python's default), so processes the driver starts (an embedded Ray's raylet and
GCS) do not inherit it. A stale holder record left in the file is simply overwritten.

Scope: flock works between processes of one machine, and on NFS (Linux emulates it with POSIX
byte-range locks there). For a storage URI (`s3://...`, anything with `://`) there is no file to
lock: the lock file goes under `$RAYDL_HOME/locks/` (default `~/.raydl`), keyed by a hash of the
URI and name, which protects only against a second driver on the same machine.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from raydl.errors import RaydlError


class RunLockedError(RaydlError):
    """Another driver holds the run's lock."""


def raydl_home() -> Path:
    return Path(os.environ.get("RAYDL_HOME") or "~/.raydl").expanduser()


def lock_path(storage_path: str, name: str) -> Path:
    """The lock file of run `name` under `storage_path` (a local path, or a URI)."""
    if "://" in storage_path:
        key = hashlib.sha256(f"{storage_path.rstrip('/')}/{name}".encode()).hexdigest()[:24]
        return raydl_home() / "locks" / f"{key}.lock"
    return Path(storage_path).expanduser().resolve() / f".{name}.lock"


def read_holder(path: str | os.PathLike) -> dict:
    """The holder record in a lock file ({} when absent, empty or half written)."""
    try:
        rec = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


class RunLock:
    """`with RunLock(path, run="name", where=run_dir):` holds the run's lock, or raises RunLockedError."""

    def __init__(self, path: str | os.PathLike, *, run: str, where: str | os.PathLike | None = None) -> None:
        self.path, self.run, self.where = Path(path), run, where
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(self._held_message()) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "argv": sys.argv, "run": self.run, "run_dir": str(self.where or "")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # no stale record for the next reader; the file itself stays (see above)
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _held_message(self) -> str:
        rec = {}
        for _ in range(10):  # the holder writes its record just after it takes the lock
            rec = read_holder(self.path)
            if rec:
                break
            time.sleep(0.05)
        who = (f"pid {rec.get('pid', '?')} on host {rec.get('host', '?')} since {rec.get('started_at', '?')}"
               if rec else f"held on {self.path}")
        where = self.where or rec.get("run_dir") or self.path
        return (f"run {self.run} is already running ({who}, {where}); "
                "wait for it, or pick another run.name")
