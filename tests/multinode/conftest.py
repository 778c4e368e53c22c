"""The two-node cluster of the tests in this package (`--address`, `RAY_ADDRESS`, a worker killed
on another node, a driver killed and rerun).

It is started once for the package and stopped after the package's last test: the scheduler in
tests/conftest.py gives the whole package to one pytest-xdist worker, so its tests run back to back
and a second worker never starts a cluster of its own (12-13 s alone on the machine, 30-60 s under
load), and the cluster does not idle through the rest of the session (a head and a worker node cost
about 5 CPU-seconds a minute)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def two_nodes():
    """A head with 1 CPU and a worker node with 1 CPU (tests/clusters.py), both on this machine."""
    from clusters import start_two_nodes

    cluster = start_two_nodes()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def cluster(two_nodes):
    """`two_nodes` for one module, once no Train actor of another module's runs is left on it."""
    two_nodes.wait_idle()
    return two_nodes
