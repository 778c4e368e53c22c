"""A persistent local Ray head that `raydl train` reuses: `raydl cluster up | status | down`.

Starting Ray is the largest start-up cost raydl controls (bench/RESULTS.md): an embedded
`ray.init` takes seconds, a connect to a running head a fraction of one. The head keeps its own
temp dir and a free port, and its address in `$RAYDL_HOME/cluster.json` (default `~/.raydl`).
`up` runs `ray start` in a session of its own and records the head's processes (pid and start
time); `down` stops only those and their descendants, never other Ray instances on the machine, and
removes only the temp dir `up` made.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from raydl.errors import ResourceError

log = logging.getLogger("raydl")

# Ray system settings for a Ray that raydl starts itself (embedded, or `up`): Ray imports these
# modules in every Python worker before it runs anything (see there).
SYSTEM_CONFIG = {"preload_python_modules": ["raydl.gc_thresholds", "raydl.warm"]}


def home() -> Path:
    return Path(os.environ.get("RAYDL_HOME", Path.home() / ".raydl"))


def state_file() -> Path:
    return home() / "cluster.json"


@dataclass(frozen=True)
class LocalHead:
    address: str  # host:port of the GCS
    temp_dir: str
    num_cpus: int
    started_at: float
    pids: dict[int, int] = field(default_factory=dict)  # pid -> start time, recorded by `up`
    session: int = 0  # the session `up` started `ray start` in (0: not recorded)

    def reachable(self, timeout: float = 0.5) -> bool:
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            return False


def _recorded() -> LocalHead | None:
    try:
        raw = json.loads(state_file().read_text())
        raw["pids"] = {int(k): int(v) for k, v in raw.get("pids", {}).items()}  # JSON keys are strings
        return LocalHead(**raw)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def running() -> LocalHead | None:
    """The local head recorded by `raydl cluster up`, if it answers."""
    head = _recorded()
    return head if head is not None and head.reachable() else None


def free_ports(n: int) -> list[int]:
    """n distinct free ports, all held open until all are chosen: the kernel may hand a port it has
    just freed out again, and `ray start` refuses two of its components on one port."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _names(arg: str, temp_dir: str) -> bool:
    """Whether one argv element names `temp_dir` itself or a path inside it (never a mere prefix:
    /tmp/raydl-0-123 does not name /tmp/raydl-0-1234)."""
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    return value == temp_dir or value.startswith(temp_dir + "/")


def _stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time in clock ticks since boot) from /proc/PID/stat (fields 6 and 22).
    With the pid, the start time names one process for good, so a reused pid is never taken for ours."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[3]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _start_time(pid: int) -> int | None:
    st = _stat(pid)
    return st[1] if st else None


def _is_heads(pid: int, temp_dir: str, address: str | None = None) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(_names(a, temp_dir) for a in argv) or (address is not None and f"--address={address}" in argv)


def _descendants(pids: list[int]) -> list[int]:
    todo, seen = list(pids), set(pids)
    while todo:  # workers retitle themselves (ray::IDLE): they are found as the raylet's children
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):  # empty when the process is gone
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for c in kids:
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
    return sorted(seen)


def _head_processes(temp_dir: str, session: int | None = None, address: str | None = None) -> dict[int, int]:
    """pid -> start time of the processes one of whose arguments names `temp_dir`, or is
    `--address=<address>` (Ray's client server names only the GCS's address), and, if given, that
    belong to `session`: the one `up` started `ray start` in."""
    found = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        st = _stat(int(p))
        if st and (session is None or st[0] == session) and _is_heads(int(p), temp_dir, address):
            found[int(p)] = st[1]
    return found


def _ours(head: LocalHead) -> list[int]:
    """The recorded processes that are still the same processes (same start time, still naming the
    head's temp dir or address), the head's that started after `up` looked (in its session), and
    their descendants (the raylet's workers)."""
    live = [pid for pid, st in head.pids.items() if _start_time(pid) == st and _is_heads(pid, head.temp_dir, head.address)]
    if head.session:
        live += [pid for pid in _head_processes(head.temp_dir, head.session, head.address) if pid not in live]
    return _descendants(live)


def _stop(head: LocalHead) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in _ours(head):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _ours(head) and time.monotonic() < deadline:
            time.sleep(0.2)


def _made_by_up(temp_dir: str) -> bool:
    return re.fullmatch(rf"/tmp/raydl-{os.getuid()}-[A-Za-z0-9_]+", temp_dir) is not None


def up(num_cpus: int | None = None) -> LocalHead:
    head = running()
    if head is not None:
        return head
    temp_dir = tempfile.mkdtemp(prefix=f"raydl-{os.getuid()}-", dir="/tmp")  # new, ours; short: Unix socket paths are limited
    port, agent, metrics, raylet = free_ports(4)
    # One logical CPU beyond the cores: Ray Data's file listing needs one while the training
    # workers hold theirs (see raydl.session.STREAM_CPUS); it shares the cores with them.
    cpus = num_cpus or (os.cpu_count() or 1) + 1
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    cmd = [ray_bin, "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}", f"--num-cpus={cpus}",
           "--include-dashboard=false", "--disable-usage-stats", f"--system-config={json.dumps(SYSTEM_CONFIG)}",
           f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}", f"--node-manager-port={raylet}"]
    # In a session of its own, so the head's daemons (which outlive `ray start`) carry its pid as their session id.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    found = re.search(r"--address='([0-9A-Za-z.\-]+:\d+)'", stdout)  # the node's own IP, as Ray picked it
    address = found.group(1) if found else f"127.0.0.1:{port}"
    head = LocalHead(address, temp_dir, cpus, time.time(), _head_processes(temp_dir, proc.pid, address), proc.pid)
    if proc.returncode != 0:
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        raise ResourceError(f"cluster up: `ray start --head` failed (exit {proc.returncode}): {tail[0]}")
    state_file().parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(head)))
    os.replace(tmp, state_file())
    _warm(head.address.rpartition(":")[0], raylet)
    return head


def _warm(host: str, raylet: int) -> None:
    """The first run's processes, started now and kept warm (`raydl.warm`), as a client of this head
    (`raydl train` on this machine) would ask for them."""
    from raydl.session import client_env

    client_env(to_cluster=True, local=True)
    from raydl import warm
    from raydl.spec import ScalingSpec

    try:
        warm.raylet(f"{host}:{raylet}", ScalingSpec().num_workers)  # a spec's default
    except Exception as e:  # the head runs; its first run starts its own processes
        log.warning("raydl: could not start warm worker processes (%s)", str(e).splitlines()[0])


def down() -> bool:
    """Stop the recorded head's processes (SIGTERM, then SIGKILL) and remove the temp dir `up` made.
    False if none was recorded."""
    head = _recorded()
    if head is None:
        return False
    _stop(head)
    if _made_by_up(head.temp_dir):
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    state_file().unlink(missing_ok=True)
    return True
