"""Plain PyTorch DDP baseline for the raydl benchmark (gloo, CPU).

Launch:  torchrun --standalone --nproc_per_node=2 bench/torchrun_ddp.py --epochs 10
         torchrun ... bench/torchrun_ddp.py --spec SPEC.yaml [--set key=value ...] --epochs 4

Without ``--spec``: the same job as ``bench/digits_mlp_bench.yaml`` with no raydl import:
sklearn digits (64 flat features, standardised with train-split statistics, seeded
60/20/20 split), MLP 64-128-64-10 ReLU, Adam lr 1e-3, per-worker batch 64.
With ``--spec``: the data split and preprocessed by ``raydl.data.prepare``, the model,
loss and optimizer built by raydl's registries from the spec (the same objects a raydl
worker builds), batch size from the spec; everything else is this script's plain loop.

Batches: the train split as tensors, a seeded permutation per epoch, every world-th row
to each rank, sliced per batch (the fastest plain loop; what raydl's in-memory path does).

Rank 0 prints ONE JSON line at the end:
  time_to_first_step_s  launch -> first optimizer step done (launch = env
                        ``BENCH_LAUNCH_TS``, else create time of the parent, i.e.
                        the torchrun process)
  samples_per_sec       median over epochs 2..N (first epoch excluded: warm-up) of
                        the per-epoch global training samples/s, the epoch timed on
                        rank 0 from its permutation to its last step (raydl's definition)
  val_accuracy, test_accuracy, epochs, steps_per_worker, train_rows, world_size
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def proc_create_time(pid: int) -> float:
    """Start time of ``pid`` (psutil if importable, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:
        ticks = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
        btime = next(
            int(ln.split()[1]) for ln in open("/proc/stat") if ln.startswith("btime")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK")


def launch_ts() -> float:
    env = os.environ.get("BENCH_LAUNCH_TS")
    if env:
        return float(env)
    return proc_create_time(os.getppid())  # the torchrun launcher


def load_split(seed: int):
    """Seeded 60/20/20 split of sklearn digits, standardised with train stats."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_tr, n_va = int(round(0.6 * len(x))), int(round(0.2 * len(x)))  # as raydl.data
    tr, va, te = idx[:n_tr], idx[n_tr : n_tr + n_va], idx[n_tr + n_va :]
    mean = x[tr].mean(0)
    std = x[tr].std(0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    t = lambda i: (torch.from_numpy(x[i]), torch.from_numpy(y[i]).long())  # noqa: E731
    return t(tr), t(va), t(te)


def build_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


class Job:
    """What the loop needs: the splits as (x, y) tensors, a model, its loss and optimizer."""

    def __init__(self, args) -> None:
        if args.spec is None:
            self.train, self.val, self.test = load_split(args.seed)
            self.model, self.batch_size = build_model(), args.batch_size
            self.loss = lambda out, x, y: nn.functional.cross_entropy(out, y)
            self.opt = lambda params: torch.optim.Adam(params, lr=args.lr)
            return
        from raydl.batches import build_kind
        from raydl.data import prepare
        from raydl.models import build_model as raydl_model
        from raydl.optim import build_optimizer
        from raydl.spec import load_spec
        from raydl.tasks import build_task

        spec = load_spec(args.spec, args.set)
        p = prepare(spec.data)
        kind, task = build_kind(p.prep), build_task(p.prep, spec.loss)
        xy = lambda part: (kind.collate({"x": torch.as_tensor(part.cols["x"])})["x"], torch.as_tensor(part.cols["y"]))  # noqa: E731
        self.train, self.val, self.test = xy(p.train), xy(p.val), xy(p.test)
        self.model, self.batch_size = raydl_model(spec.model, kind, task.n_outputs()), spec.training.batch_size
        self.loss = lambda out, x, y: task.loss(out, {"x": x, "y": y})
        self.opt = lambda params: build_optimizer(params, spec.optimizer)


@torch.no_grad()
def accuracy(model: nn.Module, xy) -> float:
    model.eval()
    x, y = xy
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64, help="per worker (without --spec)")
    ap.add_argument("--lr", type=float, default=1e-3, help="without --spec")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spec", help="a raydl job spec: data, model, loss, optimizer and batch size from it")
    ap.add_argument("--set", action="append", default=[], help="a dotted override of --spec (repeatable)")
    args = ap.parse_args()
    t_launch = launch_ts()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # torchrun sets 1: one per core here
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)

    job = Job(args)
    x_train, y_train = job.train
    model = DDP(job.model)
    opt = job.opt(model.parameters())
    n, b = len(y_train), job.batch_size

    t_first = None
    steps = 0
    epoch_rate = []  # global samples / this rank's train time, per epoch (as raydl's loop)
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        rows = torch.randperm(n, generator=g)[: (n // world) * world][rank::world]
        t0 = time.perf_counter()
        for i in range(0, len(rows), b):
            idx = rows[i : i + b]
            xb, yb = x_train[idx], y_train[idx]
            job.loss(model(xb), xb, yb).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            if t_first is None:
                t_first = time.time()
        epoch_rate.append(len(rows) * world / (time.perf_counter() - t0))
    t_last = time.time()
    dist.barrier()

    if rank == 0:
        out = {
            "time_to_first_step_s": t_first - t_launch,
            "time_to_last_step_s": t_last - t_launch,
            # median over epochs 2..N of per-epoch global samples/s (raydl's definition)
            "samples_per_sec": float(np.median(epoch_rate[1:] or epoch_rate)),
            "val_accuracy": accuracy(model.module, job.val),
            "test_accuracy": accuracy(model.module, job.test),
            "epochs": args.epochs,
            "steps_per_worker": steps,
            "train_rows": n,
            "world_size": world,
        }
        print(json.dumps(out), flush=True)
    # Every rank leaves together: a rank that destroyed its gloo group while rank 0 still scored died
    # with SIGABRT ("terminate called without an active exception"), once in about 16 runs (2026-12-06).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
