"""Local output paths: checked before any work starts, written atomically.

`output_file` and `output_dir` turn the ways a path can be unusable (a directory where a file
should go, a file where a directory should go, a parent that is a file, no write permission)
into one `OutputError` line naming the option, before anything is computed. `write_atomic`
writes through a temp file in the same folder and `os.replace`, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raydl.errors import OutputError


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable(d: Path) -> bool:
    """Whether a file can be created in directory `d`, by trying (os.access says yes to root even
    on a read-only mount or an immutable directory)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".raydl-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def _creatable_under(path: Path, where: str, what: str) -> None:
    """`path` does not exist: its nearest existing ancestor must be a writable directory."""
    anc = _first_existing(path.parent)
    if not anc.is_dir():
        raise OutputError(f"{where}: cannot create {what} {str(path)!r}: {str(anc)!r} is a file, not a directory")
    if not writable(anc):
        raise OutputError(f"{where}: cannot create {what} {str(path)!r}: {str(anc)!r} is not writable")


def output_file(path: str | os.PathLike, where: str) -> Path:
    """A path a file can be written to (atomically, so its folder must be writable too)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"{where}: {str(p)!r} is a directory; give the path of a file to write")
    if p.exists():
        if not writable(p.parent):
            raise OutputError(f"{where}: cannot replace {str(p)!r}: its folder {str(p.parent)!r} is not writable")
        return p
    _creatable_under(p, where, "file")
    return p


def output_dir(path: str | os.PathLike, where: str) -> Path:
    """A directory that exists or can be created, and that can be written to."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise OutputError(f"{where}: {str(p)!r} is a file; give a directory")
        if not writable(p):
            raise OutputError(f"{where}: the directory {str(p)!r} is not writable")
        return p
    _creatable_under(p, where, "directory")
    return p


def write_atomic(out: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to `out` via a temp file in the same folder + os.replace."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def dir_swapped_in(dest: str | os.PathLike) -> Iterator[Path]:
    """A temp dir beside `dest` to fill in the `with`; at its end the temp dir replaces `dest` by
    renames (a reader sees the old directory or the new one, never a mix); on an error it goes."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    old = None
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex}")
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
