"""Where run outputs live: a local directory or an object-store URI (s3://, gs://, ...).

Every function takes a plain string: a local path (`runs`, `/data/runs`) or a URI
(`s3://bucket/runs`). URIs go through `pyarrow.fs`, the same layer Ray Train uses for
checkpoints, so `filesystem(uri)` can be handed to `RunConfig(storage_filesystem=...)`.

For s3:// an S3-compatible server (MinIO, moto, Ceph) is found through RAYDL_S3_ENDPOINT,
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, in that order; credentials come from the usual AWS
chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance metadata). Storage
problems (endpoint down, no bucket, credentials refused) become one-line DataError (reading)
or OutputError (writing) within seconds.

A published directory on an object store cannot be swapped in with one rename, so
`publish_dir` writes a marker, `_COMPLETE`, last, listing every file with its size and
sha256; `open_dir` refuses a directory whose marker is missing or does not match its files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pyarrow
import pyarrow.fs as pafs

from raydl.errors import DataError, OutputError, RaydlError
from raydl.paths import dir_swapped_in

MARKER = "_COMPLETE"
ENDPOINT_VARS = ("RAYDL_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CHUNK = 1 << 20

# Seconds, not the SDK defaults (minutes of retries against a dead endpoint). The request
# timeout bounds a stalled read on one connection, not a whole transfer, so large files are fine.
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 2


def is_uri(path: str) -> bool:
    """True for `scheme://...` (s3://, gs://, file://...). A URI must not be wrapped in Path;
    file:// URIs still resolve to the local filesystem in `filesystem`."""
    return "://" in str(path)


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint URL from the environment, or None for AWS itself."""
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding `path`, and `path` on it (no scheme; absolute if local)."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    parsed = urlparse(path)
    with _errors(path, "open", DataError):
        if parsed.scheme != "s3" or parsed.query:  # other stores, or s3 options given in the URI
            return pafs.FileSystem.from_uri(path)
        return _s3(parsed.netloc), f"{parsed.netloc}{parsed.path}".rstrip("/")


def _s3(bucket: str) -> pafs.S3FileSystem:
    # pyarrow 26 reads AWS_ENDPOINT_URL in FileSystem.from_uri("s3://...") but not in the
    # S3FileSystem() constructor (seen here; apache/arrow#49643), and neither sets short
    # timeouts, so the filesystem is built here. A pickled copy (Ray's storage_filesystem, on
    # its controller and workers) keeps the endpoint, region and timeouts, but not the retry
    # strategy (pyarrow's default, 3 attempts) nor credentials: each process finds those itself
    # (AWS_* variables, profile, instance role); seen here with pyarrow 26.
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    options = dict(
        connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
        allow_bucket_creation=False, allow_bucket_deletion=False,
        allow_delayed_open=True)  # a small file is one PutObject, not a 3-request multipart upload
    if endpoint is None:
        return pafs.S3FileSystem(region=region or _bucket_region(bucket), **options)
    url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    return pafs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme,
                             region=region or "us-east-1", **options)


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str:
    return pafs.resolve_s3_region(bucket)  # one request to AWS; cached per bucket


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a URI (always '/'), or an OS path for a local base."""
    base = str(base)
    if not is_uri(base):
        return str(Path(base, *parts))
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])


@contextmanager
def _errors(path: str, action: str, error: type[RaydlError]) -> Iterator[None]:
    """Turn a filesystem failure into one line naming `path` and what to check."""
    try:
        yield
    except (OSError, pyarrow.ArrowException) as e:
        raise error(f"{path}: cannot {action}: {_why(path, e)}") from None


def _why(path: str, e: BaseException) -> str:
    text = " ".join(str(e).split())
    bucket = urlparse(path).netloc if is_uri(path) else ""
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        where = s3_endpoint() or "AWS S3"
        detail = text[text.index("Details:"):] if "Details:" in text else text
        return (f"the storage endpoint {where} is unreachable; check that the server is up and "
                f"{'/'.join(ENDPOINT_VARS)} ({detail[:120]})")
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return f"bucket {bucket!r} does not exist; create it first (raydl never creates buckets)"
    if any(k in text for k in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
                               "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                               "credentials", "HTTP status 403")):
        return ("access denied; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
                "and the bucket's policy")
    if isinstance(e, FileNotFoundError):
        return "no such file or directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    return text[:200]


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old content or the new, never a part."""
    fs, p = filesystem(path)
    with _errors(path, "write", OutputError):
        if _is_local(fs):
            target = Path(p)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            # An object store makes one PUT (or a multipart upload, completed by one request)
            # visible whole or not at all, so no temp object is needed.
            with fs.open_output_stream(p) as out:
                out.write(data)


def read_bytes(path: str) -> bytes:
    """The whole content of the file at `path`."""
    fs, p = filesystem(path)
    with _errors(path, "read", DataError):
        with fs.open_input_stream(p) as f:
            return f.read()


def exists(path: str) -> bool:
    """Whether a file or directory (on an object store: any object under the prefix) is there."""
    fs, p = filesystem(path)
    with _errors(path, "check", DataError):
        return fs.get_file_info(p).type != pafs.FileType.NotFound


def listdir(path: str) -> list[str]:
    """Sorted names directly under `path`; [] when it does not exist."""
    fs, p = filesystem(path)
    with _errors(path, "list", DataError):
        infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def remove_tree(path: str) -> None:
    """Delete `path` and everything under it; nothing to do when it does not exist."""
    fs, p = filesystem(path)
    if not _is_local(fs) and "/" not in p.strip("/"):
        raise OutputError(f"{path}: refusing to remove a whole bucket; name a prefix inside it")
    with _errors(path, "remove", OutputError):
        _delete(fs, p)


def _delete(fs: pafs.FileSystem, p: str) -> None:
    kind = fs.get_file_info(p).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif kind != pafs.FileType.NotFound:
        fs.delete_file(p)


def check_writable(path: str) -> None:
    """Fail in seconds, with one line, if files cannot be written under `path` (endpoint down,
    no bucket, credentials refused, read-only directory): write and delete a probe file."""
    fs, p = filesystem(path)
    probe = f"{p.rstrip('/')}/.raydl-probe-{uuid.uuid4().hex}"
    with _errors(path, "write to", OutputError):
        if _is_local(fs):
            Path(p).mkdir(parents=True, exist_ok=True)
        with fs.open_output_stream(probe):
            pass
        fs.delete_file(probe)


def file_manifest(local_dir: Path) -> dict[str, dict]:
    """{relative name: {"size", "sha256"}} for every file under `local_dir`."""
    return {f.relative_to(local_dir).as_posix(): {"size": f.stat().st_size, "sha256": _sha256(f)}
            for f in sorted(Path(local_dir).rglob("*")) if f.is_file()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


Progress = Callable[[str, str], None]


def publish_dir(local_dir: Path, dest: str, progress: Progress | None = None) -> str:
    """Replace directory `dest` with the files of `local_dir`, so that readers see the old
    version or the new one (local: a rename swap), or a directory `open_dir` refuses (object
    store, crash mid-publish). On an object store, `progress(stage, name)` is called after each
    file is "uploaded" to the temp prefix and after it is "copied" into `dest`."""
    local_dir = Path(local_dir)
    fs, root = filesystem(dest)
    if _is_local(fs):
        _swap_local(local_dir, Path(root))
        return root
    if "/" not in root.strip("/"):
        raise OutputError(f"{dest}: publish into a prefix inside the bucket, not the bucket root")
    files = file_manifest(local_dir)
    parent, name = root.rsplit("/", 1)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
    report = progress or (lambda stage, name: None)
    with _errors(dest, "publish to", OutputError):
        try:
            # The slow part, uploading, goes to a temp prefix while dest still holds the old
            # complete version; only the server-side copies below touch dest.
            for rel in files:
                pafs.copy_files(str(local_dir / rel), f"{tmp}/{rel}",
                                source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
                report("uploaded", rel)
            _delete(fs, f"{root}/{MARKER}")
            for rel in files:
                fs.copy_file(f"{tmp}/{rel}", f"{root}/{rel}")  # S3 CopyObject: no re-upload
                report("copied", rel)
            for stale in set(_files_under(fs, root)) - set(files) - {MARKER}:
                fs.delete_file(f"{root}/{stale}")
            with fs.open_output_stream(f"{root}/{MARKER}") as out:
                out.write(json.dumps({"files": files}, indent=2).encode())
        finally:
            _delete(fs, tmp)
    return dest


def _swap_local(local_dir: Path, dest: Path) -> None:
    """Copy into a temp dir beside `dest`, then swap it in with renames."""
    with _errors(str(dest), "publish to", OutputError):
        with dir_swapped_in(dest) as tmp:
            shutil.copytree(local_dir, tmp, dirs_exist_ok=True)


def _files_under(fs: pafs.FileSystem, root: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return [i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File]


def _marker(dest: str, fs: pafs.FileSystem, root: str) -> dict[str, dict] | None:
    """The file list of dest's marker, or None when there is no readable marker."""
    if fs.get_file_info(f"{root}/{MARKER}").type != pafs.FileType.File:
        return None
    with fs.open_input_stream(f"{root}/{MARKER}") as f:
        try:
            return json.loads(f.read())["files"]
        except (ValueError, KeyError, TypeError):
            return None


def is_complete(dest: str) -> bool:
    """Whether `dest` is a fully published directory: local, it exists; on an object store, its
    marker is there and every file it lists has the listed size (hashes: see `open_dir`)."""
    fs, root = filesystem(dest)
    with _errors(dest, "check", DataError):
        if _is_local(fs):
            return Path(root).is_dir()
        files = _marker(dest, fs, root)
        if files is None:
            return False
        infos = fs.get_file_info([f"{root}/{rel}" for rel in files])
        return all(i.type == pafs.FileType.File and i.size == meta["size"]
                   for i, meta in zip(infos, files.values()))


def open_dir(dest: str, into: Path | None = None) -> Path:
    """A local directory holding `dest`: `dest` itself when local; otherwise a download into
    `into` (default: a new temp dir, the caller's to delete; removed again when the download is
    refused), every file checked against the marker."""
    fs, root = filesystem(dest)
    if _is_local(fs):
        if not Path(root).is_dir():
            raise DataError(f"{dest}: no such directory")
        return Path(root)

    def incomplete(why: str) -> DataError:
        return DataError(f"{dest}: the model directory is incomplete (a crash during publishing?): "
                         f"{why}; publish it again or use a complete copy")

    with _errors(dest, "read", DataError):
        files = _marker(dest, fs, root)
        if files is None:
            raise incomplete(f"no readable {MARKER} marker")
        local = Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="raydl-dir-"))
        try:
            _download_checked(fs, root, files, local, incomplete)
        except BaseException:
            if into is None:  # a refused or failed download leaves no temp dir of partial files behind
                shutil.rmtree(local, ignore_errors=True)
            raise
    return local


def _download_checked(fs: pafs.FileSystem, root: str, files: dict, local: Path,
                      incomplete: Callable[[str], DataError]) -> None:
    """Every file of the marker into `local`, each checked against its size and sha256."""
    for rel, meta in files.items():
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            size, digest = _download(fs, f"{root}/{rel}", target)
        except FileNotFoundError:
            raise incomplete(f"{rel} is missing") from None
        if (size, digest) != (meta["size"], meta["sha256"]):
            raise incomplete(f"{rel} does not match the marker")


def _download(fs: pafs.FileSystem, src: str, target: Path) -> tuple[int, str]:
    """Copy one file to local `target`; its size and sha256."""
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(src) as f, open(target, "wb") as out:
        while block := f.read(CHUNK):
            h.update(block)
            size += len(block)
            out.write(block)
    return size, h.hexdigest()
