"""Shared fixtures. One embedded Ray instance serves every test that needs Ray in this session;
tests that need their own head or a multi-node cluster start and stop it themselves."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _ray_auth_mode_restored():
    """`raydl.session.connect` sets RAY_AUTH_MODE=token for an --address when ~/.ray/auth_token exists;
    in-process tests must not hand that to the next test's embedded Ray."""
    before = os.environ.get("RAY_AUTH_MODE")
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


@pytest.fixture(scope="session")
def s3_session():
    """A real S3 API server (moto, tests/s3.py) for the whole session, its endpoint and credentials
    in this process's environment: Ray's processes take their environment (and so their S3
    credentials) when Ray starts, so `ray_local` starts after this."""
    from s3 import s3_server

    with s3_server() as s3:
        os.environ.update(s3.env)
        yield s3


@pytest.fixture(scope="session")
def ray_local(s3_session):
    """An embedded Ray with its own temp dir, shut down at the end of the session: 3 logical CPUs, as
    `raydl train` gives an embedded Ray that streams files (2 workers and Ray Data's file listing)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="raydl-test-ray-")
    ray.init(num_cpus=3, include_dashboard=False, _temp_dir=tmp, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)  # its logs and sockets: about 14 MiB a session


@pytest.fixture(scope="session")
def two_nodes():
    """One two-node cluster (head 1 CPU + worker node 1 CPU, tests/clusters.py) for every test of the
    session that asks for it (starting one costs 30-60 s here). Stopped in the session's teardown: a
    pytest-xdist worker reports itself done after that, and its controller kills a worker still alive
    10 s later, which cut short a `config.add_cleanup` stop and left the head's gcs_server running."""
    from clusters import start_two_nodes

    cluster = start_two_nodes()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def cluster(two_nodes):
    """`two_nodes` for one module, once no Train actor of another module's runs is left on it."""
    two_nodes.wait_idle()
    return two_nodes


@pytest.fixture
def storage(tmp_path):
    """A fresh storage path for runs."""
    return str(tmp_path / "runs")


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory nobody can write to, root included: a read-only tmpfs mounted over it (root
    ignores permission bits), or plain 0o555 permissions for a non-root user."""
    import subprocess

    d = tmp_path / "readonly"
    d.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode == 0
    if not mounted:
        d.chmod(0o555)
    probe = d / ".probe"
    try:
        probe.touch()
    except OSError:
        pass
    else:
        probe.unlink()
        pytest.fail(f"could not make {d} read-only (no tmpfs mount and running as root)")
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], check=False)
    else:
        d.chmod(0o755)
