"""Real Ray clusters for tests: a head started with `ray start --head`, and extra nodes joined to it.

Other people run Ray on this machine too, so everything here is scoped to one cluster's own
`--temp-dir` and free ports: processes are found by that temp dir in their command line (and the
workers as children of that cluster's raylets), and only those are stopped. Never `ray stop`
(it stops every Ray on the machine).

Processes are read from /proc (Linux only; psutil is not a dependency).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from raydl.cluster import free_ports

RAY = str(Path(sys.executable).with_name("ray"))
RAYDL = str(Path(sys.executable).with_name("raydl"))
REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits_mlp.yaml")


def actors_of(cls: str) -> list[str]:
    """Ids of the actors of class `cls` that the connected Ray has started, alive or not."""
    import ray._private.state

    return [i for i, a in ray._private.state.actors().items() if a["ActorClassName"] == cls]


def free_port() -> int:
    return free_ports(1)[0]


def ray_env(**extra: str) -> dict[str, str]:
    """Environment for `ray start` and for clients of our clusters: no auth token, no usage stats."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", WANDB_SILENT="true", WANDB_MODE="offline")
    env.update(extra)
    return env


# ---- /proc helpers ---------------------------------------------------------------------------


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def pids_with(text: str) -> list[int]:
    me = os.getpid()
    return [p for p in all_pids() if p != me and text in cmdline(p)]


def kill_all(pids: list[int], grace: float = 8.0) -> None:
    """SIGTERM, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        live = [p for p in pids if alive(p)]
        for p in live:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(p) for p in live):
            time.sleep(0.2)


# ---- clusters --------------------------------------------------------------------------------


@dataclass
class RayCluster:
    """A head started with `ray start --head` (plus optional worker nodes), all under one temp dir."""

    temp_dir: str
    address: str
    nodes: int = 1
    log: list[str] = field(default_factory=list)

    def raylets(self) -> list[int]:
        return [p for p in pids_with(self.temp_dir) if "/raylet/raylet " in cmdline(p) + " "]

    def worker_pids(self, name: str = "RayTrainWorker") -> dict[int, list[int]]:
        """raylet pid -> pids of its worker processes whose title contains `name` (e.g. RayTrainWorker)."""
        return {r: [c for c in descendants(r) if name in cmdline(c)] for r in self.raylets()}

    def train_workers(self) -> list[int]:
        return sorted(p for ps in self.worker_pids().values() for p in ps)

    def wait_idle(self, timeout: float = 90.0) -> None:
        """Until no Ray Train controller or worker of an earlier run is left on the cluster."""
        deadline = time.monotonic() + timeout
        while True:
            left = [p for n in ("RayTrainWorker", "TrainController") for ps in self.worker_pids(n).values() for p in ps]
            if not left:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Ray Train actors still alive after {timeout:.0f} s: {left}")
            time.sleep(0.5)

    def add_node(self, num_cpus: int = 1, resources: str | None = None) -> None:
        agent, metrics = free_ports(2)
        args = [
            RAY, "start", f"--address={self.address}", f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dir}",
            f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
            "--disable-usage-stats",
        ]
        if resources:
            args.append(f"--resources={resources}")
        for attempt in range(2):  # a loaded machine can miss Ray's fixed 30 s raylet start-up wait
            before = set(pids_with(self.temp_dir))
            try:
                _run_ray_start(args, self)
                break
            except RuntimeError:
                new = [p for p in pids_with(self.temp_dir) if p not in before]
                kill_all(new + [c for p in new for c in descendants(p)])
                if attempt:
                    raise
        self.nodes += 1

    def stop(self) -> None:
        pids = set(pids_with(self.temp_dir))
        for p in list(pids):
            pids.update(descendants(p))
        kill_all(sorted(pids))
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> None:
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([sys.executable, "-c", code, self.address], env=ray_env(), capture_output=True, text=True, timeout=120)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster {self.address} did not reach {n} alive nodes: {out.stdout} {out.stderr[-2000:]}")
            time.sleep(1)


def _run_ray_start(args: list[str], cluster: RayCluster | None = None) -> str:
    out = subprocess.run(args, env=ray_env(), capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    if cluster is not None:
        cluster.log.append(text)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{text[-4000:]}")
    return text


def start_head(num_cpus: int = 2, resources: str | None = None) -> RayCluster:
    """`ray start --head` on free ports with its own temp dir (kept short: Unix socket paths are limited)."""
    temp_dir = tempfile.mkdtemp(prefix="rdl-", dir="/tmp")
    cluster = RayCluster(temp_dir=temp_dir, address="")
    for attempt in range(2):  # a loaded machine can miss Ray's fixed 30 s raylet start-up wait
        port, dashboard, client, agent, metrics = free_ports(5)  # fresh ports for each attempt
        args = [
            RAY, "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
            f"--temp-dir={temp_dir}", "--include-dashboard=false", f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}", "--disable-usage-stats",
        ]
        if resources:
            args.append(f"--resources={resources}")
        try:
            text = _run_ray_start(args, cluster)
            break
        except BaseException:
            cluster.stop()
            os.makedirs(temp_dir, exist_ok=True)
            if attempt:
                shutil.rmtree(temp_dir, ignore_errors=True)
                raise
    m = re.search(r"ray start --address='([^']+)'", re.sub(r"\x1b\[[0-9;]*m", "", text))
    cluster.address = m.group(1) if m else f"127.0.0.1:{port}"
    return cluster


TEST_RESOURCE = "raydl_test_node"  # a custom resource (1 per node) only our clusters have


def start_two_nodes() -> RayCluster:
    """A head with 1 CPU and one worker node with 1 CPU, both on this machine."""
    res = json.dumps({TEST_RESOURCE: 1})
    cluster = start_head(num_cpus=1, resources=res)
    try:
        cluster.add_node(num_cpus=1, resources=res)
        cluster.wait_for_nodes(2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# ---- running the CLI -------------------------------------------------------------------------


EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\b", re.M)


def epochs_printed(stderr: str) -> list[int]:
    return [int(m.group(1)) for m in EPOCH_LINE.finditer(stderr)]


class Raydl:
    """`raydl ...` running in its own process group, its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [RAYDL, *args], env=env or ray_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def epochs(self) -> list[int]:
        return epochs_printed(self.stderr)

    def wait_until(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                raise AssertionError(f"raydl exited ({self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.2)

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"raydl {' '.join(self.args)} did not finish in {timeout:.0f} s:\n{self.stderr[-3000:]}") from None
        for t in self._readers:
            t.join(timeout=10)
        return rc

    def kill(self) -> None:
        """SIGKILL the whole process group (the CLI and an embedded Ray it may have started)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        for t in self._readers:
            t.join(timeout=10)
