"""Shared fixtures. One embedded Ray instance serves every test that needs Ray in this session;
tests that need their own head or a multi-node cluster start and stop it themselves."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# ---- how the README's `-n 2 --dist loadfile` deals the files out to its two workers ----------

# The longest files first (seconds of test time on 2 cores, suite run of 2026-12-06 04:40, `bar` tests
# included), so that the run ends on short files and neither worker idles while the other finishes a
# long one. xdist's own order (most tests first) dealt these, each a few minutes-long Ray Train runs,
# out last. Alone on the machine: 957 and 967 s (1802 busy CPU-seconds) in this order, 1008 s (1843) in
# xdist's, without the `bar` tests (bench/RESULTS.md); 1254 s with them. A file not listed keeps its
# place after them; a stale list costs time, not a test.
LONGEST_FIRST = (
    "test_loaders.py", "test_continual_run.py", "test_tune_slow.py", "multinode",  # 208-369 with their bars
    "test_concurrency.py", "test_zoo_metric_slow.py", "test_hardening.py", "test_configs.py",  # 82-111
    "test_gateway_cluster.py", "test_zoo_vision_slow.py", "test_s3_runs.py", "test_local_cluster.py",  # 68-73
    "test_source.py", "test_zoo_seq_ddp.py", "test_pipeline_crash.py", "test_jobs.py", "test_ddp.py",  # 51-62
    "test_continual_hooks.py", "test_warm.py", "test_ray_engine.py", "test_calibration_trained.py",  # 34-36
    "test_continual_agem.py", "test_cli.py", "test_session.py", "test_pipeline_e2e.py",  # 26-33
)
# Packages whose files one worker runs back to back, for a package-scoped fixture they share.
WHOLE_PACKAGES = ("tests/multinode",)


def _unit(nodeid: str) -> str:
    """The work unit of a test: its file, or its package when that is dealt out whole."""
    path = nodeid.split("::", 1)[0]
    package = path.rsplit("/", 1)[0]
    return package if package in WHOLE_PACKAGES else path


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid).rsplit("/", 1)[-1], len(rank)))  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` in the collection order above, with whole packages as one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class InOrderByUnit(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    config.option.loadscopereorder = False
    return InOrderByUnit(config, log)


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
    from raydl.cluster import SYSTEM_CONFIG

    ray.init(num_cpus=3, include_dashboard=False, _temp_dir=tmp, log_to_driver=False, logging_level="WARNING",
             _system_config=SYSTEM_CONFIG)  # as raydl's own embedded Ray
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)  # its logs and sockets: about 14 MiB a session


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
