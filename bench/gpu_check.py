"""GPU check (not part of CI): raydl on CUDA (NCCL DDP, bf16 autocast) against plain PyTorch DDP on
the same model, data and batch, side by side in one run. Run it on a machine with GPUs:

  python bench/gpu_check.py --runs 3 --epochs 6 [--cases mlp cnn transformer] [--out gpu.json]

Cases:
  mlp          compute-bound MLP 64-512-512-10 on 200k x 64 seeded rows (Parquet, written here), batch 256
  cnn          configs/cnn_digits.yaml (sklearn digits as 1x8x8 images)
  transformer  configs/transformer_digits_rows.yaml (digits rows as 8 tokens)

raydl side: `raydl train CONFIG scaling.use_gpu=true scaling.num_workers=<GPUs> training.precision=bf16-mixed`
(steady samples/s: the median over epochs 2..N that raydl reports). PyTorch side: the same model built by
raydl's registry on the same prepared split, the train split as GPU tensors sliced per batch (the fastest
baseline), one process per GPU (torch.multiprocessing + NCCL), the spec's optimizer (raydl.optim), bf16
autocast, the same per-GPU batch; samples/s per epoch, median over epochs 2..N. The two sides alternate run
by run. Prints one JSON line per run and a table with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "mlp": (None, ["model.name=mlp", "model.hidden=[512,512]", "training.batch_size=256"]),
    "cnn": (ROOT / "configs" / "cnn_digits.yaml", []),
    "transformer": (ROOT / "configs" / "transformer_digits_rows.yaml", []),
}


def mlp_spec(data: Path) -> Path:
    import yaml

    spec = {"run": {"name": "gpu-mlp"}, "data": {"source": str(data), "label": "y", "loader": "in_memory"},
            "model": {"name": "mlp", "hidden": [512, 512]}, "optimizer": {"name": "adamw", "lr": 1e-3},
            "training": {"epochs": 4, "batch_size": 256}, "tracking": "none"}
    path = data.parent / "gpu_mlp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def raydl_run(config: Path, overrides: list[str], gpus: int, epochs: int, runs_dir: Path) -> float:
    exe = shutil.which("raydl") or str(Path(sys.executable).with_name("raydl"))
    cmd = [exe, "train", str(config), *overrides, f"run.storage_path={runs_dir}", f"training.epochs={epochs}",
           "scaling.use_gpu=true", f"scaling.num_workers={gpus}", "scaling.gpus_per_worker=1",
           "training.precision=bf16-mixed", "tracking=none", "--restart", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr[-3000:]}")
    return float(json.loads(p.stdout.strip().splitlines()[-1])["metrics"]["samples_per_sec"])


def _plain_worker(rank: int, world: int, config: str, overrides: list[str], epochs: int, out: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    from raydl.batches import build_kind
    from raydl.data import prepare
    from raydl.models import build_model
    from raydl.optim import build_optimizer
    from raydl.spec import load_spec
    from raydl.tasks import build_task

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    torch.cuda.set_device(rank)  # before the process group: NCCL binds each rank to the current device
    dist.init_process_group("nccl", rank=rank, world_size=world)
    dev = torch.device("cuda", rank)
    spec = load_spec(config, overrides)
    p = prepare(spec.data)
    kind, task = build_kind(p.prep), build_task(p.prep, spec.loss)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_model(spec.model, kind, task.n_outputs()).to(dev), device_ids=[rank])
    opt = build_optimizer(model.parameters(), spec.optimizer)
    cols = {k: torch.as_tensor(v).to(dev) for k, v in p.train.cols.items()}
    n, b = len(cols["y"]), spec.training.batch_size
    rates = []
    for epoch in range(epochs):
        g = torch.Generator(device="cpu").manual_seed(epoch)
        order = torch.randperm(n, generator=g)[: (n // world) * world][rank::world].to(dev)
        torch.cuda.synchronize()
        t0, seen = time.perf_counter(), 0
        for i in range(0, len(order), b):
            idx = order[i : i + b]
            batch = kind.collate({k: v[idx] for k, v in cols.items()})
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = task.loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        torch.cuda.synchronize()
        rates.append(seen * world / (time.perf_counter() - t0))
    if rank == 0:
        Path(out).write_text(json.dumps({"samples_per_sec": float(np.median(rates[1:] or rates))}))
    dist.destroy_process_group()


def plain_run(config: Path, overrides: list[str], gpus: int, epochs: int, tmp: Path) -> float:
    import torch.multiprocessing as mp

    out = tmp / "plain.json"
    mp.spawn(_plain_worker, args=(gpus, str(config), overrides, epochs, str(out)), nprocs=gpus, join=True)
    return float(json.loads(out.read_text())["samples_per_sec"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--work", default="/tmp/raydl-gpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        sys.exit("no CUDA device visible: this check runs on a GPU machine")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    results = {}
    for case in args.cases:
        config, overrides = CASES[case]
        if config is None:
            sys.path.insert(0, str(ROOT / "bench"))
            from ingest_bench import write_data

            config = mlp_spec(write_data(work / "rows-200000", 200_000))
        rates = {"raydl": [], "pytorch": []}
        for i in range(args.runs):
            for side in ("raydl", "pytorch") if i % 2 == 0 else ("pytorch", "raydl"):  # alternate: drift hits both
                rates[side].append(raydl_run(config, overrides, gpus, args.epochs, work / "runs") if side == "raydl"
                                   else plain_run(config, overrides, gpus, args.epochs, work))
            print(json.dumps({"case": case, "run": i, **{k: v[-1] for k, v in rates.items()}}), flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        results[case] = {**med, "ratio": med["raydl"] / med["pytorch"], "runs": rates}
    print("\n| case | raydl samples/s | PyTorch DDP samples/s | ratio |\n|---|---:|---:|---:|")
    for case, r in results.items():
        print(f"| {case} | {r['raydl']:,.0f} | {r['pytorch']:,.0f} | {r['ratio']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"gpus": gpus, "device": torch.cuda.get_device_name(0), "results": results}, indent=2))


if __name__ == "__main__":
    main()
