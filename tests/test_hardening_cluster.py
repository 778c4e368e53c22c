"""Hardening, `raydl cluster down`: it stops only the processes `up` started (and their workers),
never a process that merely names a path like the head's temp dir, and removes only that temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raydl import cluster


def _raydl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raydl.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def _naming(temp_dir: str, address: str | None = None) -> set[int]:
    """Processes one of whose arguments is the temp dir or a path inside it, or `--address=<address>`
    (Ray's client server names only the head's address)."""
    found = set()
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.split("=", 1)[-1] == temp_dir or a.split("=", 1)[-1].startswith(temp_dir + "/") for a in argv) or (
                address is not None and f"--address={address}" in argv):
            found.add(int(p))
    return found


def _sleeper(*args: str) -> subprocess.Popen:
    """A process that is not Ray's and names `args` (GNU sleep refuses extra arguments); returned once
    its command line shows them."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *args])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if all(a in argv for a in args):
            break
        time.sleep(0.02)
    return proc


def _home(tmp_path: Path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("RAYDL_HOME", str(tmp_path / "home"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0")
    return env


@pytest.mark.slow
@pytest.mark.cluster
def _is_worker(pid: int) -> bool:
    """A Ray worker process: `default_worker.py` until it retitles itself `ray::IDLE` (or an actor's name)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"default_worker.py" in cmd or (cmd.startswith(b"ray::") and b"Agent" not in cmd)


def test_down_spares_decoys_that_share_the_temp_dir_prefix(tmp_path, monkeypatch):
    env = _home(tmp_path, monkeypatch)
    up = _raydl(env, "cluster", "up", "--num-cpus=1")
    assert up.returncode == 0, up.stderr
    head = json.loads((tmp_path / "home" / "cluster.json").read_text())
    temp, address = head["temp_dir"], head["address"]
    decoy_file = Path(temp + "5")  # same prefix, another path
    decoys = []
    try:
        decoy_file.write_text("not Ray's")
        decoys = [_sleeper(temp + "5/x"),  # a path with the same prefix
                  _sleeper(f"--log={temp}-other"),
                  _sleeper(f"{temp}/session_latest/logs/raylet.out"),  # a user's tail of its logs
                  _sleeper(f"--address={address}")]  # names the head's address, outside its session
        started = _naming(temp, address) - {d.pid for d in decoys}
        assert started, "no head processes found"
        recorded = set(map(int, head["pids"]))
        # `up` recorded exactly the head's processes; the rest are worker processes its raylet started
        # (the first run's, raydl.warm), which `down` finds as the recorded processes' descendants
        workers = {p for p in set(cluster._descendants(sorted(recorded))) - recorded if _is_worker(p)}
        assert recorded <= started and started - recorded <= workers, (head["pids"], started, workers)

        down = _raydl(env, "cluster", "down")
        assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
        assert [d.poll() for d in decoys] == [None] * len(decoys), "cluster down killed a process that was not Ray's"
        assert decoy_file.read_text() == "not Ray's"
        deadline = time.monotonic() + 10
        while _naming(temp, address) - {d.pid for d in decoys} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _naming(temp, address) - {d.pid for d in decoys}, "the head's processes are still running"
        assert not Path(temp).exists() and not (tmp_path / "home" / "cluster.json").exists()
    finally:
        for d in decoys:
            d.kill()
            d.wait()
        decoy_file.unlink(missing_ok=True)
        _raydl(env, "cluster", "down")


def test_a_reused_pid_or_a_process_elsewhere_is_not_ours(tmp_path, monkeypatch):
    temp = str(tmp_path / "raydl-head")
    other = _sleeper(temp + "5/x")  # alive, but names another path
    inside = _sleeper(temp + "/x")
    try:
        st = cluster._start_time(inside.pid)
        assert st is not None and cluster._start_time(other.pid) is not None
        head = cluster.LocalHead("127.0.0.1:1", temp, 1, 0.0, {inside.pid: st + 1, other.pid: cluster._start_time(other.pid)})
        assert cluster._ours(head) == []  # a different start time: the pid was reused; the other names another dir
        assert cluster._ours(cluster.LocalHead("127.0.0.1:1", temp, 1, 0.0, {inside.pid: st})) == [inside.pid]
    finally:
        for p in (other, inside):
            p.kill()
            p.wait()


def test_down_removes_only_a_temp_dir_up_made(tmp_path, monkeypatch):
    _home(tmp_path, monkeypatch)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("keep")
    cluster.state_file().parent.mkdir(parents=True)
    cluster.state_file().write_text(json.dumps({"address": "127.0.0.1:1", "temp_dir": str(precious), "num_cpus": 1,
                                                "started_at": 0.0, "pids": {}}))
    assert cluster.down()
    assert (precious / "keep").read_text() == "keep" and not cluster.state_file().exists()


def test_free_ports_are_distinct_and_free():
    """`up` hands three of these to one `ray start`, which refuses two components on one port."""
    import socket

    ports = cluster.free_ports(64)
    assert len(set(ports)) == 64, sorted(ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("", port))  # still free once returned
