"""GPU check (not part of CI): raydl on CUDA (NCCL, bf16 autocast) against plain PyTorch on the same
model, data and batch, side by side in one run. Run it on a machine with GPUs:

  python bench/gpu_check.py --runs 3 --epochs 6 [--cases mlp cnn mlp_stream transformer] [--out gpu.json]
  python bench/gpu_check.py --smoke     # the same flow on the CPU (gloo, fp32, tiny): checks the script itself

Cases:
  mlp          compute-bound MLP 64-512-512-10 on 200k x 64 seeded rows (Parquet, written here), batch 256,
               raydl's in-memory path (on a GPU its shard is copied to the device once)
  mlp_stream   the same through Ray Data (`data.loader=ray_data`): batches cross from host to device each step
  cnn          configs/cnn_digits.yaml (sklearn digits as 1x8x8 images)
  transformer  configs/transformer_digits_rows.yaml (digits rows as 8 tokens)

raydl side: `raydl train CONFIG scaling.use_gpu=true scaling.num_workers=<GPUs> training.precision=bf16-mixed`
(steady samples/s: the median over epochs 2..N that raydl reports). PyTorch side: the same model built by
raydl's registry on the same prepared split, the train split as GPU tensors sliced per batch (the fastest
baseline), one process per GPU (torch.multiprocessing + NCCL), the spec's optimizer (raydl.optim), bf16
autocast, the same per-GPU batch; samples/s per epoch, median over epochs 2..N. The two sides alternate run
by run. Then a divergence check: diabetes regression with plain SGD at lr=10 must stop with raydl's
"training diverged" line (on CUDA the finite check reads each step's flag one step late, see raydl.loop).
Prints one JSON line per run and a table with the ratios; --out is rewritten after each case.
With one GPU the world size is 1: Ray Train sets up the NCCL process group but does not wrap the model in
DDP, so gradient all-reduce itself is exercised only with 2 or more GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "mlp": (None, []),
    "mlp_stream": (None, ["data.loader=ray_data"]),
    "cnn": (ROOT / "configs" / "cnn_digits.yaml", []),
    "transformer": (ROOT / "configs" / "transformer_digits_rows.yaml", []),
}


def spec_file(path: Path, spec: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


def mlp_spec(data: Path) -> Path:
    return spec_file(data.parent / "gpu_mlp.yaml", {
        "run": {"name": "gpu-mlp"}, "data": {"source": str(data), "label": "y", "loader": "in_memory"},
        "model": {"name": "mlp", "hidden": [512, 512]}, "optimizer": {"name": "adamw", "lr": 1e-3},
        "training": {"epochs": 4, "batch_size": 256}, "tracking": "none"})


def device_args(smoke: bool, gpus: int) -> list[str]:
    if smoke:
        return ["scaling.use_gpu=false", "scaling.num_workers=1", 'training.precision="32"']
    return ["scaling.use_gpu=true", f"scaling.num_workers={gpus}", "scaling.gpus_per_worker=1",
            "training.precision=bf16-mixed"]


def raydl_cmd(config: Path, overrides: list[str], dev: list[str], epochs: int, runs_dir: Path) -> list[str]:
    return [sys.executable, "-m", "raydl.cli", "train", str(config), *overrides, f"run.storage_path={runs_dir}",
            f"training.epochs={epochs}", *dev, "tracking=none", "--restart", "--json"]


def raydl_run(config: Path, overrides: list[str], dev: list[str], epochs: int, runs_dir: Path) -> dict:
    cmd = raydl_cmd(config, overrides, dev, epochs, runs_dir)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr[-3000:]}")
    m = json.loads(p.stdout.strip().splitlines()[-1])["metrics"]
    return {"samples_per_sec": float(m["samples_per_sec"]), "time_to_first_step_s": m.get("time_to_first_step_s")}


def diverge_check(dev: list[str], work: Path) -> dict:
    """A run that must diverge (tests/test_bad_input.py's: diabetes regression, plain SGD at lr=10):
    raydl stops it with one line and a non-zero exit."""
    config = spec_file(work / "gpu_diverge.yaml", {
        "run": {"name": "gpu-diverge"}, "data": {"source": "diabetes"}, "model": {"name": "mlp", "hidden": [32]},
        "optimizer": {"name": "sgd", "lr": 10}, "training": {"epochs": 3, "batch_size": 16}, "tracking": "none"})
    cmd = raydl_cmd(config, [], dev, 3, work / "runs")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    line = next((ln for ln in p.stderr.splitlines() if "training diverged" in ln), None)
    return {"returncode": p.returncode, "ok": p.returncode != 0 and line is not None,
            "line": line or p.stderr[-1500:]}


def _plain_worker(rank: int, world: int, config: str, overrides: list[str], epochs: int, out: str, smoke: bool) -> None:
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
    if smoke:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        dev = torch.device("cpu")
    else:
        torch.cuda.set_device(rank)  # before the process group: NCCL binds each rank to the current device
        dist.init_process_group("nccl", rank=rank, world_size=world)
        dev = torch.device("cuda", rank)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    spec = load_spec(config, [o for o in overrides if not o.startswith("data.loader=")])  # in memory here
    p = prepare(spec.data)
    kind, task = build_kind(p.prep), build_task(p.prep, spec.loss)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_model(spec.model, kind, task.n_outputs()).to(dev),
                                                      device_ids=[rank] if dev.type == "cuda" else None)
    opt = build_optimizer(model.parameters(), spec.optimizer)
    cols = {k: torch.as_tensor(v).to(dev) for k, v in p.train.cols.items()}
    n, b = len(cols["y"]), spec.training.batch_size
    rates = []
    for epoch in range(epochs):
        g = torch.Generator(device="cpu").manual_seed(epoch)
        order = torch.randperm(n, generator=g)[: (n // world) * world][rank::world].to(dev)
        sync()
        t0, seen = time.perf_counter(), 0
        for i in range(0, len(order), b):
            idx = order[i : i + b]
            batch = kind.collate({k: v[idx] for k, v in cols.items()})
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not smoke):
                loss = task.loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        sync()
        rates.append(seen * world / (time.perf_counter() - t0))
    if rank == 0:
        Path(out).write_text(json.dumps({"samples_per_sec": float(np.median(rates[1:] or rates))}))
    dist.destroy_process_group()


def plain_run(config: Path, overrides: list[str], gpus: int, epochs: int, tmp: Path, smoke: bool) -> dict:
    import torch.multiprocessing as mp

    out = tmp / "plain.json"
    mp.spawn(_plain_worker, args=(gpus, str(config), overrides, epochs, str(out), smoke), nprocs=gpus, join=True)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the MLP cases' data")
    ap.add_argument("--cases", nargs="+", default=["mlp", "cnn", "mlp_stream"], choices=list(CASES))
    ap.add_argument("--smoke", action="store_true", help="on the CPU, 1 run of 2 epochs on 20k rows")
    ap.add_argument("--work", default="/tmp/raydl-gpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    if args.smoke:
        args.runs, args.epochs, args.rows = 1, 2, 20_000
    gpus = 1 if args.smoke else torch.cuda.device_count()
    if gpus == 0:
        sys.exit("no CUDA device visible: this check runs on a GPU machine (or try --smoke)")
    dev = device_args(args.smoke, gpus)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    name = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    print(f"# {gpus} x {name}, torch {torch.__version__}", flush=True)
    report = {"gpus": gpus, "device": name, "torch": torch.__version__, "results": {}}

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))

    for case in args.cases:
        config, overrides = CASES[case]
        if config is None:
            sys.path.insert(0, str(ROOT / "bench"))
            from ingest_bench import write_data

            config = mlp_spec(write_data(work / f"rows-{args.rows}", args.rows))
        runs = {"raydl": [], "pytorch": []}
        try:
            for i in range(args.runs):
                for side in ("raydl", "pytorch") if i % 2 == 0 else ("pytorch", "raydl"):  # alternate: drift hits both
                    runs[side].append(raydl_run(config, overrides, dev, args.epochs, work / "runs") if side == "raydl"
                                      else plain_run(config, overrides, gpus, args.epochs, work, args.smoke))
                print(json.dumps({"case": case, "run": i, **{k: v[-1] for k, v in runs.items()}}), flush=True)
        except Exception as e:  # one case failing still leaves the others measured
            print(f"# {case} failed: {e}", flush=True)
            report["results"][case] = {"error": str(e)[-3000:], "runs": runs}
            save()
            continue
        med = {k: statistics.median(r["samples_per_sec"] for r in v) for k, v in runs.items()}
        report["results"][case] = {**med, "ratio": med["raydl"] / med["pytorch"], "runs": runs}
        save()
    report["diverge"] = diverge_check(dev, work)
    print(json.dumps({"diverge": report["diverge"]}), flush=True)
    save()
    print("\n| case | raydl samples/s | PyTorch samples/s | ratio |\n|---|---:|---:|---:|")
    for case, r in report["results"].items():
        if "error" in r:
            print(f"| {case} | failed | | |")
            continue
        print(f"| {case} | {r['raydl']:,.0f} | {r['pytorch']:,.0f} | {r['ratio']:.3f} |")
    if not report["diverge"]["ok"]:
        sys.exit("the divergence check failed: " + report["diverge"]["line"])


if __name__ == "__main__":
    main()
