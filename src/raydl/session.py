"""Connecting to Ray: an embedded local Ray, `raydl cluster up`'s head, or a cluster's address;
checks that fail in seconds with one line where Ray would retry or wait for minutes.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raydl.capacity import shortfall, worker_need
from raydl.errors import ResourceError
from raydl.spec import JobSpec

log = logging.getLogger("raydl")


def connect(address: str | None, num_cpus: int | None = None, warm: int = 0) -> str | None:
    """Connect to `address` (or RAY_ADDRESS, or `raydl cluster up`'s head), else start an embedded
    local Ray: "connected" or "embedded", or None when this process was connected already. The
    caller has checked the address (`check_address`).
    `warm`: the embedded Ray starts warm processes for a run with that many Train workers
    (`raydl.warm`) instead of Ray's generic first workers."""
    from raydl import cluster

    local = not (address or os.environ.get("RAY_ADDRESS"))  # embedded, or `raydl cluster up`'s head
    if not local:
        address = address or os.environ["RAY_ADDRESS"]
    else:
        head = cluster.running()
        if head is not None:
            address = head.address
            log.warning("raydl: using the local cluster at %s (raydl cluster down to stop it)", address)
    client_env(bool(address), local)
    import ray

    if ray.is_initialized():
        return None
    # Worker output (Ray Train's per-report INFO lines, Ray Data plans) is kept in Ray's log files;
    # raydl shows its own progress. RAYDL_VERBOSE=1 forwards it all to this terminal.
    verbose = os.environ.get("RAYDL_VERBOSE") == "1"
    kwargs = dict(logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose, configure_logging=True)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise ResourceError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}; is it running (ray status --address {address})?") from None
    else:
        config = {**cluster.SYSTEM_CONFIG, "prestart_worker_first_driver": not warm}
        ray.init(include_dashboard=False, num_cpus=num_cpus, _system_config=config, **kwargs)
        if warm:
            from raydl import warm as warm_processes

            warm_processes.prestart(warm)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    if not verbose:  # Ray Data's execution plans and timings (it sets up its loggers when imported)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return "connected" if address else "embedded"


def client_env(to_cluster: bool, local: bool) -> None:
    """This process's settings for Ray and Ray Train (Ray reads them when it is first imported, Ray
    Train hands its own on to its processes: `raydl.warm` builds the same environments from them)."""
    # `ray start` turns token authentication on by default; a client on the same machine finds the
    # token in ~/.ray/auth_token once told to use one.
    if to_cluster and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # notices the end of a run sooner (default 2 s)
    if local:
        # One machine has no node to be preempted; the watcher is one more idle actor process to
        # start and to run beside the workers (each idle Ray process took ~0.7 % of a core here).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def check_address(address: str, where: str = "--address", timeout: float = 2.0) -> None:
    """Fail in seconds, with one line, when `address` is malformed or nothing listens there (Ray itself
    retries a closed port for minutes, and raises a bare ValueError on a malformed address).
    Ray takes `auto`, `host:port` (the GCS, as `ray start --head` prints it) or `ray://host:port`."""
    if address == "auto":
        return
    said = f"{where} {address!r}" if where == "--address" else f"{where}={address!r}"
    if address.startswith(("http://", "https://")):
        raise ResourceError(f"{said}: an http(s) URL is the Ray Jobs API, not a cluster address; give the GCS "
                            "address host:port as `ray start --head` prints it (e.g. 127.0.0.1:6379), or ray://host:port")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ResourceError(f"{said}: not a Ray address; expected host:port (e.g. 127.0.0.1:6379), ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = ("nothing is listening there (connection refused)" if isinstance(e, ConnectionRefusedError) else
               f"cannot resolve host {host!r}" if isinstance(e, socket.gaierror) else
               f"cannot reach it ({'timed out' if isinstance(e, TimeoutError) else e.strerror or e})")
        raise ResourceError(f"{said}: {why}; start a cluster with `raydl cluster up` or `ray start --head`, "
                            "or give the address of a running one") from None


# Ray Data's newer (V2) readers list files in a first task that asks for one CPU, even when the read
# and preprocessing tasks ask for none (raydl.source.task_args); with every CPU held by Ray Train's
# workers it would wait forever. raydl.source now reads Parquet with the V1 reader, which lists on
# the driver, but this CPU is still kept: a streamed run without it has not been tested.
STREAM_CPUS = 1


def embedded_cpus(spec: JobSpec, streams: bool) -> int | None:
    """Logical CPUs for an embedded Ray: Ray's default (the cores), or, when the data is streamed,
    at least the workers' CPUs plus `STREAM_CPUS` (the listing task shares the workers' cores)."""
    if not streams:
        return None
    need = math.ceil(spec.scaling.num_workers * spec.scaling.cpus_per_worker) + STREAM_CPUS
    return max(os.cpu_count() or 1, need)


def check_resources(spec: JobSpec, streams: bool = False) -> None:
    """Fail at once when the cluster cannot fit the workers (Ray would wait 60 s, then fail vaguely),
    or, for streamed data, leaves no CPU for Ray Data's file listing (it would wait forever)."""
    import ray

    sc = spec.scaling
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = shortfall(worker_need(sc), sc.num_workers, nodes)
    if problem:
        raise ResourceError(problem)
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    if streams and total_cpu < sc.num_workers * sc.cpus_per_worker + STREAM_CPUS - 1e-9:
        raise ResourceError(
            f"scaling: the data is streamed from files, which needs {STREAM_CPUS} CPU beyond the workers' "
            f"({sc.num_workers} x {sc.cpus_per_worker:g}) for Ray Data's file listing, and the cluster has {total_cpu:g}; "
            "lower scaling.num_workers, set data.loader: in_memory, or give the cluster another CPU "
            "(raydl cluster up --num-cpus N)")


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, warm: int = 0) -> Iterator[bool]:
    """Connected to Ray inside the block (`connect`); the block gets whether the Ray ends with it (an
    embedded Ray this session started, shut down after; a connection this session made is closed)."""
    term = signal.getsignal(signal.SIGTERM)
    started = connect(address, num_cpus, warm)
    if callable(term) and threading.current_thread() is threading.main_thread():
        # ray.init puts a fatal-signal handler on SIGTERM (stack dump, then abort): keep the caller's
        # (the CLI's raises KeyboardInterrupt, so the finally below shuts Ray down).
        signal.signal(signal.SIGTERM, term)
    try:
        yield started == "embedded"
    finally:
        if started:
            import ray

            if started == "embedded":
                stop_monitor_first()
            ray.shutdown()


def stop_monitor_first() -> None:
    """An embedded Ray's `ray.shutdown()` stops the raylet, then the GCS, then the autoscaler monitor,
    each with SIGTERM and 1 s of grace. The monitor's SIGTERM handler reports its end to the GCS, which is
    gone by then, so it sits out the whole second and is killed (1.0 of 1.4 s of shutdown here,
    `bench/RESULTS.md`). A one-node Ray that is about to stop has nothing for it to report: it is killed
    first. `ray.init` has no switch to start Ray without it; this uses Ray's node object, and a Ray
    without that method shuts down as before."""
    from ray._private import worker

    kill = getattr(worker._global_node, "kill_monitor", None)
    if kill is not None:
        try:
            kill(check_alive=False)
        except Exception as e:  # shutdown still stops it
            log.debug("raydl: stopping Ray's autoscaler monitor first: %s", e)
