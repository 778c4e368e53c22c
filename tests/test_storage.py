"""raydl.storage against the local filesystem and a real S3 API server (moto, see tests/s3.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from unittest import mock

import pyarrow.fs as pafs
import pytest
from clusters import free_port

from raydl import storage
from raydl.errors import DataError, OutputError


@pytest.fixture
def s3(monkeypatch, s3_session):
    """The session's server (conftest.py), with its endpoint and credentials in this process's environment."""
    for k, v in s3_session.env.items():
        monkeypatch.setenv(k, v)
    for k in ("RAYDL_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    return s3_session


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    """A fresh, empty storage root: a local directory or a prefix in the bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    s3 = request.getfixturevalue("s3")
    return s3.uri(request.node.name.replace("[", "-").rstrip("]"))


def make_dir(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def read_dir(root: Path) -> dict[str, bytes]:
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


# --- paths and filesystems -------------------------------------------------------------------

def test_is_uri_and_join(tmp_path):
    assert storage.is_uri("s3://b/runs") and storage.is_uri("file:///tmp/x")
    assert not storage.is_uri("runs") and not storage.is_uri(str(tmp_path))
    assert storage.join("s3://b/runs/", "exp", "/model/") == "s3://b/runs/exp/model"
    assert storage.join("s3://b", "") == "s3://b"
    assert storage.join(str(tmp_path), "exp", "model") == str(tmp_path / "exp" / "model")


def test_filesystem_local_file_uri_and_s3(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, p = storage.filesystem("runs")
    assert isinstance(fs, pafs.LocalFileSystem) and p == str(tmp_path / "runs")
    fs, p = storage.filesystem(f"file://{tmp_path}/runs")
    assert isinstance(fs, pafs.LocalFileSystem) and p == f"{tmp_path}/runs"
    fs, p = storage.filesystem(s3.uri("runs", "exp/"))
    assert isinstance(fs, pafs.S3FileSystem) and p == f"{s3.bucket}/runs/exp"
    assert fs.get_file_info(s3.bucket).type == pafs.FileType.Directory  # it reached the server


def test_endpoint_variables_in_order(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("RAYDL_S3_ENDPOINT", s3.endpoint)
    assert storage.s3_endpoint() == s3.endpoint
    assert storage.exists(s3.uri())


# --- bytes, listing, removal: local and S3 ---------------------------------------------------

def test_bytes_round_trip(base):
    target = storage.join(base, "exp", "result.json")
    assert not storage.exists(target)
    storage.write_bytes_atomic(target, b'{"a": 1}')
    assert storage.read_bytes(target) == b'{"a": 1}'
    storage.write_bytes_atomic(target, b"")  # replaces, and an empty file is still a file
    assert storage.read_bytes(target) == b"" and storage.exists(target)
    assert storage.listdir(storage.join(base, "exp")) == ["result.json"]  # no temp files left


def test_listdir_and_remove_tree(base):
    for name in ("run/a.bin", "run/ckpt/1.pt", "run/ckpt/2.pt", "other.txt"):
        storage.write_bytes_atomic(storage.join(base, name), name.encode())
    assert storage.listdir(base) == ["other.txt", "run"]
    assert storage.listdir(storage.join(base, "run")) == ["a.bin", "ckpt"]
    assert storage.listdir(storage.join(base, "nothing-here")) == []
    storage.remove_tree(storage.join(base, "run"))
    assert not storage.exists(storage.join(base, "run", "ckpt", "1.pt"))
    assert storage.listdir(base) == ["other.txt"]
    storage.remove_tree(storage.join(base, "run"))  # already gone: nothing to do
    storage.remove_tree(storage.join(base, "other.txt"))
    assert not storage.exists(storage.join(base, "other.txt"))


def test_read_missing_file_is_one_line_data_error(base):
    with pytest.raises(DataError, match="cannot read: no such file") as e:
        storage.read_bytes(storage.join(base, "missing.json"))
    assert "\n" not in str(e.value)


def test_check_writable(base):
    storage.check_writable(base)
    assert storage.listdir(base) == []  # the probe is gone


# --- publishing a directory ------------------------------------------------------------------

OLD = {"weights.pt": b"old weights", "spec.yaml": b"old: spec", "stale.json": b"{}"}
NEW = {"weights.pt": b"new weights, longer", "spec.yaml": b"new: spec", "sub/extra.txt": b"x"}


def test_publish_dir_replaces_existing_dest(base, tmp_path):
    dest = storage.join(base, "exp", "model")
    storage.publish_dir(make_dir(tmp_path / "old", OLD), dest)
    assert storage.is_complete(dest)
    assert read_dir(storage.open_dir(dest, into=tmp_path / "got-old")) == OLD
    storage.publish_dir(make_dir(tmp_path / "new", NEW), dest)
    assert storage.is_complete(dest)
    assert read_dir(storage.open_dir(dest, into=tmp_path / "got-new")) == NEW  # stale.json gone
    assert storage.listdir(storage.join(base, "exp")) == ["model"]  # no temp dir or prefix left
    if storage.is_uri(dest):
        marker = json.loads(storage.read_bytes(storage.join(dest, storage.MARKER)))
        assert sorted(marker["files"]) == sorted(NEW)
        assert marker["files"]["spec.yaml"]["size"] == len(NEW["spec.yaml"])


def test_open_dir_local_returns_the_directory(tmp_path):
    d = make_dir(tmp_path / "model", OLD)
    assert storage.open_dir(str(d)) == d
    with pytest.raises(DataError, match="no such directory"):
        storage.open_dir(str(tmp_path / "missing"))


class Crash(Exception):
    pass


def crash_after(stage: str, n: int):
    seen = []

    def progress(s, name):
        seen.append(s)
        if seen.count(stage) == n:
            raise Crash(f"crashed after {n} {stage}")
    return progress


def open_refused(dest: str, match: str) -> DataError:
    """`open_dir(dest)` is refused, and leaves no temp dir of partial files behind."""
    with tempfile.TemporaryDirectory() as scratch, mock.patch.object(tempfile, "tempdir", scratch):
        with pytest.raises(DataError, match=match) as e:
            storage.open_dir(dest)
        assert os.listdir(scratch) == [], "the refused download left its temp dir behind"
    return e.value


def assert_refused(dest: str):
    assert not storage.is_complete(dest)
    err = open_refused(dest, "the model directory is incomplete")
    assert "\n" not in str(err) and dest in str(err)


def test_crash_while_copying_into_dest_is_refused(s3, tmp_path):
    dest = s3.uri("crash-copy", "model")
    storage.publish_dir(make_dir(tmp_path / "old", OLD), dest)
    with pytest.raises(Crash):
        storage.publish_dir(make_dir(tmp_path / "new", NEW), dest, progress=crash_after("copied", 1))
    assert_refused(dest)  # weights.pt is new, spec.yaml old: never served as complete
    assert storage.listdir(s3.uri("crash-copy")) == ["model"]  # the temp prefix was cleaned up
    storage.publish_dir(tmp_path / "new", dest)  # publishing again repairs it
    assert read_dir(storage.open_dir(dest, into=tmp_path / "got")) == NEW


def test_crash_while_uploading_keeps_the_previous_version(s3, tmp_path):
    dest = s3.uri("crash-upload", "model")
    storage.publish_dir(make_dir(tmp_path / "old", OLD), dest)
    with pytest.raises(Crash):
        storage.publish_dir(make_dir(tmp_path / "new", NEW), dest, progress=crash_after("uploaded", 2))
    assert storage.is_complete(dest)
    assert read_dir(storage.open_dir(dest, into=tmp_path / "got")) == OLD


def test_file_changed_after_publish_is_refused(s3, tmp_path):
    """A reader racing a publisher can see the old marker beside a new file: refused, not mixed."""
    dest = s3.uri("changed", "model")
    storage.publish_dir(make_dir(tmp_path / "old", OLD), dest)
    storage.write_bytes_atomic(storage.join(dest, "spec.yaml"), b"new: spec")  # same size
    assert storage.is_complete(dest)  # sizes match: only the hashes tell
    open_refused(dest, "spec.yaml does not match the marker")
    storage.remove_tree(storage.join(dest, "weights.pt"))
    assert_refused(dest)


def test_sigkill_mid_publish_is_refused(s3, tmp_path):
    """A real crash: the publishing process is SIGKILLed after its first server-side copy."""
    dest = s3.uri("sigkill", "model")
    storage.publish_dir(make_dir(tmp_path / "old", OLD), dest)
    make_dir(tmp_path / "new", NEW)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from raydl import storage

        def progress(stage, name):
            if stage == "copied":
                os.kill(os.getpid(), signal.SIGKILL)

        storage.publish_dir(Path({str(tmp_path / "new")!r}), {dest!r}, progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, **s3.env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_refused(dest)
    # The killed process could not clean up: its temp prefix stays beside dest, harmlessly.
    assert [n for n in storage.listdir(s3.uri("sigkill")) if n != "model"][0].startswith(".model.tmp-")
    storage.publish_dir(tmp_path / "new", dest)
    assert read_dir(storage.open_dir(dest, into=tmp_path / "got")) == NEW


def test_publish_local_dest_swaps_whole_directory(tmp_path):
    dest = tmp_path / "exp" / "model"
    storage.publish_dir(make_dir(tmp_path / "old", OLD), str(dest))
    storage.publish_dir(make_dir(tmp_path / "new", NEW), str(dest))
    assert read_dir(dest) == NEW and sorted(os.listdir(dest.parent)) == ["model"]


# --- storage that cannot be used fails fast, in one line -------------------------------------

def test_unreachable_endpoint_fails_fast(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    uri = s3.uri("runs", "result.json")
    for call, error in ((storage.exists, DataError), (storage.read_bytes, DataError),
                        (storage.check_writable, OutputError)):
        start = time.monotonic()
        with pytest.raises(error, match="endpoint http://127.0.0.1:.* is unreachable") as e:
            call(uri)
        assert time.monotonic() - start < 10
        message = str(e.value)
        assert "\n" not in message and message.startswith(uri) and "AWS_ENDPOINT_URL" in message


def test_missing_bucket_is_named(s3):
    uri = "s3://raydl-no-such-bucket/runs"
    with pytest.raises(OutputError, match="bucket 'raydl-no-such-bucket' does not exist"):
        storage.check_writable(uri)
    with pytest.raises(OutputError, match="does not exist"):
        storage.write_bytes_atomic(storage.join(uri, "result.json"), b"{}")


def test_refused_credentials_are_named(s3):
    uri = s3.uri("runs", "result.json")
    with s3.checking_credentials():
        for call, error in ((storage.read_bytes, DataError), (storage.write_bytes_atomic, OutputError)):
            with pytest.raises(error, match="access denied; check AWS_ACCESS_KEY_ID") as e:
                call(uri, *([b"{}"] if error is OutputError else []))
            assert "\n" not in str(e.value) and str(e.value).startswith(uri)


def test_refuses_to_remove_or_publish_a_bucket_root(s3, tmp_path):
    with pytest.raises(OutputError, match="refusing to remove a whole bucket"):
        storage.remove_tree(s3.uri())
    with pytest.raises(OutputError, match="not the bucket root"):
        storage.publish_dir(make_dir(tmp_path / "d", OLD), s3.uri())


# --- Ray Train V2 checkpoints on S3 ----------------------------------------------------------

@pytest.mark.slow
def test_ray_train_checkpoints_on_s3_and_resumes(ray_local, s3):
    """`storage_filesystem` carries the endpoint to Ray's controller and workers (pickled), but
    not the credentials: those come from each process's environment, inherited from this
    process when `ray_local` started. Without them moto answers the controller 403 (anonymous)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def report_three_checkpoints(config):  # nested: Ray pickles it by value (tests/ is not importable)
        """A loop that only checkpoints: three steps, after the step it resumed from (if any)."""
        import json
        import os
        import tempfile
        from pathlib import Path

        import ray.train
        from ray.train import Checkpoint

        resumed_from = -1
        if (start := ray.train.get_checkpoint()) is not None:
            with start.as_directory() as d:
                resumed_from = json.loads((Path(d) / "state.json").read_text())["step"]
        for step in range(resumed_from + 1, resumed_from + 4):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"step": step}))
                ray.train.report({"step": step, "resumed_from": resumed_from,
                                  "worker_has_credentials": "AWS_ACCESS_KEY_ID" in os.environ},
                                 checkpoint=Checkpoint.from_directory(d))

    runs = s3.uri("ray-runs")
    fs, fs_path = storage.filesystem(runs)

    def fit():
        run = RunConfig(name="probe", storage_path=fs_path, storage_filesystem=fs)
        return TorchTrainer(report_three_checkpoints, scaling_config=ScalingConfig(num_workers=1),
                            run_config=run).fit()

    first = fit()
    assert first.error is None and first.metrics["step"] == 2 and first.metrics["resumed_from"] == -1
    listing = storage.listdir(storage.join(runs, "probe"))
    assert "checkpoint_manager_snapshot.json" in listing  # what a resumed run reads first
    checkpoints = [n for n in listing if n.startswith("checkpoint_2")]  # checkpoint_<timestamp>
    assert len(checkpoints) == 3
    for name in checkpoints:
        assert storage.exists(storage.join(runs, "probe", name, "state.json"))
    assert first.checkpoint.path.startswith(f"{fs_path}/probe/checkpoint_")
    with first.checkpoint.as_directory() as d:  # downloads to the driver
        assert json.loads((Path(d) / "state.json").read_text()) == {"step": 2}

    second = fit()  # same storage_path and name: resumes from the latest checkpoint
    assert second.error is None and second.metrics["resumed_from"] == 2 and second.metrics["step"] == 5
    assert second.metrics["worker_has_credentials"]
