"""Rank 0's per-epoch metrics, handed to the driver while a run trains (`raydl train`'s progress
lines, `raydl continual`'s and a pipeline's).

They go through the key-value store in the cluster's GCS: rank 0 puts each epoch's metrics under the
run's own prefix, numbered in order; a thread in the driver reads them in that order a few times a
second, and the run's keys are deleted when it ends. A `ray.util.queue.Queue` did this before, and a
queue is an actor: one more Python process for every run (0.5 CPU-seconds of a 2-core machine's start,
beside the run's own processes; bench/RESULTS.md, 2026-12-06). The store is Ray's internal one
(`ray.experimental.internal_kv`, which Ray's own libraries use); every worker of a cluster reaches it.
A driver killed with SIGKILL leaves its run's few keys behind.
"""

from __future__ import annotations

import pickle
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

NAMESPACE = "raydl_progress"
POLL_S = 0.25  # the driver's reads: a progress line is at most this late


@dataclass
class Progress:
    prefix: str = field(default_factory=lambda: f"{uuid.uuid4().hex}/")
    next: int | None = None  # rank 0's next number, counted from the store at its first put

    def key(self, n: int) -> bytes:
        return f"{self.prefix}{n:09d}".encode()

    def put(self, metrics: dict) -> None:
        """On rank 0, once an epoch. A worker group that Ray Train restarted numbers on after the keys
        already there (the driver has not deleted any yet)."""
        from ray.experimental import internal_kv as kv

        if self.next is None:
            self.next = len(kv._internal_kv_list(self.prefix, namespace=NAMESPACE))
        kv._internal_kv_put(self.key(self.next), pickle.dumps(metrics), namespace=NAMESPACE)
        self.next += 1

    def follow(self, on_epoch: Callable[[dict], None]) -> Callable[[], None]:
        """In the driver: hand each put to `on_epoch`, in order, from a thread. Returns the function to
        call once `fit()` has returned: it hands on what is left (rank 0's puts are synchronous, so
        every epoch is there by then) and deletes the run's keys."""
        from ray.experimental import internal_kv as kv

        stop, done = threading.Event(), [0]

        def drain() -> bool:
            while True:
                try:
                    value = kv._internal_kv_get(self.key(done[0]), namespace=NAMESPACE)
                except Exception:  # Ray shut down
                    return False
                if value is None:
                    return True
                done[0] += 1
                on_epoch(pickle.loads(value))

        def poll() -> None:
            while True:
                last = stop.is_set()  # read before draining: what was put before `end` is handed on
                if not drain() or last:
                    return
                stop.wait(POLL_S)

        th = threading.Thread(target=poll, daemon=True)
        th.start()

        def end() -> None:
            stop.set()
            th.join(5)
            try:
                kv._internal_kv_del(self.prefix.encode(), del_by_prefix=True, namespace=NAMESPACE)
            except Exception:  # Ray is gone, and its keys with it (an embedded Ray), or cannot be reached
                pass

        return end
