"""A persistent local Ray head that `raydl train` reuses: `raydl cluster up | status | down`.

Starting Ray is the largest start-up cost raydl controls (bench/RESULTS.md): an embedded
`ray.init` takes seconds, a connect to a running head a fraction of one. The head keeps its own
temp dir and a free port, and its address in `$RAYDL_HOME/cluster.json` (default `~/.raydl`).
`down` stops only that head's processes, never other Ray instances on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from raydl.errors import ResourceError


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

    def reachable(self, timeout: float = 0.5) -> bool:
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            return False


def running() -> LocalHead | None:
    """The local head recorded by `raydl cluster up`, if it answers."""
    try:
        head = LocalHead(**json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return head if head.reachable() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _pids_of(temp_dir: str) -> list[int]:
    """Processes whose command line names this head's temp dir (Linux /proc)."""
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                if temp_dir in Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(p))
            except OSError:
                pass
    todo, seen = list(pids), set(pids)
    while todo:  # workers retitle themselves (ray::IDLE): take the raylets' descendants too
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


def up(num_cpus: int | None = None) -> LocalHead:
    head = running()
    if head is not None:
        return head
    temp_dir = f"/tmp/raydl-{os.getuid()}-{_free_port()}"  # short: Unix socket paths are limited
    port = _free_port()
    cpus = num_cpus or os.cpu_count() or 1
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    cmd = [ray_bin, "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}", f"--num-cpus={cpus}",
           "--include-dashboard=false", "--disable-usage-stats",
           f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ResourceError(f"cluster up: `ray start --head` failed: {tail[0]}")
    found = re.search(r"--address='([0-9A-Za-z.\-]+:\d+)'", out.stdout)  # the node's own IP, as Ray picked it
    head = LocalHead(found.group(1) if found else f"127.0.0.1:{port}", temp_dir, cpus, time.time())
    state_file().parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(head)))
    os.replace(tmp, state_file())
    return head


def down() -> bool:
    """Stop the recorded head's processes (SIGTERM, then SIGKILL). False if none was recorded."""
    try:
        head = LocalHead(**json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return False
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in _pids_of(head.temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _pids_of(head.temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    state_file().unlink(missing_ok=True)
    return True
