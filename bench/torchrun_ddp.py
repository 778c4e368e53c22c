"""Plain PyTorch DDP baseline for the raydl benchmark (gloo, CPU).

Launch:  torchrun --standalone --nproc_per_node=2 bench/torchrun_ddp.py --epochs 10

Same job as ``bench/digits_mlp_bench.yaml``: sklearn digits (64 flat features,
standardised with train-split statistics, seeded 60/20/20 split), MLP
64-128-64-10 ReLU, Adam lr 1e-3, per-worker batch 64, ``DistributedSampler`` with
``set_epoch`` each epoch.

Rank 0 prints ONE JSON line at the end:
  time_to_first_step_s  launch -> first optimizer step done (launch = env
                        ``BENCH_LAUNCH_TS``, else create time of the parent, i.e.
                        the torchrun process)
  samples_per_sec       median over epochs 2..N (first epoch excluded: warm-up) of
                        the per-epoch global training samples/s, the epoch timed on
                        rank 0 from creating the loader iterator to its last step
                        (the same definition as raydl's loop)
  samples_per_sec_overall  all steady-state samples / wall time of epochs 2..N
  val_accuracy, test_accuracy, epochs, steps, steady_state_s
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


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
    ap.add_argument("--batch-size", type=int, default=64, help="per worker")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="repeat the train split K times")
    args = ap.parse_args()
    t_launch = launch_ts()

    torch.set_num_threads(1)  # 2 procs on 2 cores: one intra-op thread each
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)

    train, val, test = load_split(args.seed)
    if args.repeat > 1:
        train = (train[0].repeat(args.repeat, 1), train[1].repeat(args.repeat))
    ds = TensorDataset(*train)
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler)

    model = DDP(build_model())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    t_first = None
    steps = 0
    epoch_rate = []  # global samples / this rank's train time, per epoch (as raydl's loop)
    t_steady0 = None
    steady_samples = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        if epoch == 1:
            dist.barrier()
            t_steady0 = time.time()
        t0, n_local = time.perf_counter(), 0
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            opt.step()
            steps += 1
            n_local += len(xb)
            if t_first is None:
                t_first = time.time()
        epoch_rate.append(n_local * world / (time.perf_counter() - t0))
        if epoch >= 1:
            steady_samples += n_local * world  # equal shards (DistributedSampler pads)
    dist.barrier()
    t_end = time.time()

    if rank == 0:
        steady_s = (t_end - t_steady0) if t_steady0 is not None else float("nan")
        out = {
            "time_to_first_step_s": t_first - t_launch,
            # median over epochs 2..N of per-epoch global samples/s (raydl's definition)
            "samples_per_sec": float(np.median(epoch_rate[1:] or epoch_rate)),
            "samples_per_sec_overall": steady_samples / steady_s if t_steady0 else None,
            "val_accuracy": accuracy(model.module, val),
            "test_accuracy": accuracy(model.module, test),
            "epochs": args.epochs,
            "steps_per_worker": steps,
            "steady_state_s": steady_s,
            "train_rows": len(ds),
            "world_size": world,
        }
        print(json.dumps(out), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
