"""Whether a cluster can fit a spec's workers: pure functions over resource dictionaries.

The same check answers for an embedded or connected Ray (`ray.nodes()`), for a remote cluster seen
through its dashboard (`raydl submit`), and for a Kubernetes namespace's ResourceQuota (`raydl
submit --k8s`); each caller only gathers the numbers. A mismatch is one line that says what was asked,
what is there, and which spec keys to lower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from raydl.spec import ScalingSpec


def worker_need(sc: ScalingSpec) -> dict[str, float]:
    """Ray resources one training worker asks for."""
    need = {"CPU": float(sc.cpus_per_worker), **{k: float(v) for k, v in sc.resources_per_worker.items()}}
    if sc.use_gpu:
        need["GPU"] = float(sc.gpus_per_worker)
    return need


def shortfall(need: Mapping[str, float], num_workers: int, nodes: Sequence[Mapping[str, float]]) -> str | None:
    """None when `num_workers` workers, each asking for `need`, fit on `nodes` (each node's total
    resources); else why not, in one line. A worker must fit on one node, so free CPUs spread
    over several nodes do not add up to a worker."""
    total = {k: sum(float(n.get(k, 0.0)) for n in nodes) for k in need}
    short = [f"{k}: {v * num_workers:g} asked ({num_workers} workers x {v:g}), {total[k]:g} in the cluster"
             for k, v in need.items() if v * num_workers > total[k] + 1e-9]
    fits = sum(int(min(float(n.get(k, 0.0)) / v for k, v in need.items() if v > 0) + 1e-9) for n in nodes)
    if not short and fits >= num_workers:
        return None
    detail = "; ".join(short) or f"only {fits} worker(s) fit on the nodes' resources"
    return (f"scaling: the cluster cannot fit {num_workers} workers ({detail}); "
            "lower scaling.num_workers or per-worker resources")
