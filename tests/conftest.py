"""Shared fixtures. One embedded Ray instance serves every test that needs Ray in this session;
tests that need their own head or a multi-node cluster start and stop it themselves."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _ray_auth_mode_restored():
    """`raydl.launch.connect` sets RAY_AUTH_MODE=token for an --address when ~/.ray/auth_token exists;
    in-process tests must not hand that to the next test's embedded Ray."""
    before = os.environ.get("RAY_AUTH_MODE")
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray with 2 CPUs and its own temp dir, shut down at the end of the session."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="raydl-test-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


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
