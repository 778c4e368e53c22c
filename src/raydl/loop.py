"""The training loop, written out once. It runs on every Ray Train worker.

Read it top to bottom: build the task (loss and metrics), the data kind (collate), the model,
its penalties and optimizer from the spec; resume from the last checkpoint if there is one; then
each epoch stream this worker's shard of the train split, step with gradient accumulation,
clipping and mixed precision (DDP all-reduces the gradients), score validation (each rank its
part, statistics reduced across ranks), report, checkpoint, maybe stop early. When the run stops,
the best weights are scored on validation and test the same way, into the last checkpoint.

Nothing here names a model family, a data kind or a task: a batch is whatever the kind's collate
makes, the model is called as `model(batch)`, and the task reads its target from the batch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raydl import finetune, warm
from raydl.batches import DataKind, batch_len, build_kind, to_device
from raydl.data import Preprocessing
from raydl.models import build_model
from raydl.optim import build_optimizer, build_scheduler
from raydl.penalties import build_consolidations, build_penalties
from raydl.sharding import InMemoryShards, RayDataShards
from raydl.spec import JobSpec
from raydl.tasks import Task, build_task
from raydl.tracking import start_tracker

STATE_FILE = "state.pt"  # tensors only: weights, optimizer, schedule, scaler, best weights
LOOP_STATE_FILE = "state.json"  # the loop's own state (epochs, best values, history) as plain JSON


@dataclass
class TrainState:
    """Everything beyond the weights that a resumed run needs; saved in every checkpoint."""

    next_epoch: int = 0
    best_value: float | None = None
    best_epoch: int = -1
    stop_value: float | None = None
    bad_epochs: int = 0
    status: str = "running"  # running | finished | early_stopped | diverged
    diverged_at: tuple[int, int] | None = None
    history: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)  # the best weights' val (and test) metrics, once stopped


@dataclass(frozen=True)
class WorkerConfig:
    """What the driver hands every worker, typed (Ray pickles it once for the whole group)."""

    spec: JobSpec
    prep: Preprocessing
    loader: str  # "in_memory" | "ray_data"
    run_dir: str
    manifest: dict
    launch_ts: float
    scored: tuple[str, ...] = ("val", "test")  # the splits scored at the end ("test" when it has rows)
    splits: Any = None  # in_memory: an ObjectRef of {"train"|"val"|"test": arrays}
    blocks: dict | None = None  # ray_data: the materialized splits, {split: sharding.Blocks}
    progress: Any = None  # `raydl.progress.Progress`: rank 0 hands each epoch's metrics to the driver; or None
    report_every_epoch: bool = False  # report metrics to Ray Train every epoch (Ray Tune trials)
    start_from: str | None = None  # a checkpoint directory to start from when the run has none of its own


def save_checkpoint(d: str, tensors: dict, state: TrainState) -> None:
    """Write a checkpoint into directory `d`: tensors with torch.save, the loop state as JSON."""
    for name, write in ((STATE_FILE, lambda f: torch.save(tensors, f)),
                        (LOOP_STATE_FILE, lambda f: f.write(json.dumps(asdict(state)).encode()))):
        tmp = os.path.join(d, name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, os.path.join(d, name))


def stopped(d: str) -> bool:
    """Whether the loop state in checkpoint directory `d` says the run has ended (finished, early-stopped,
    diverged); False while it runs or when the state cannot be read (yet)."""
    try:
        with open(os.path.join(d, LOOP_STATE_FILE), "rb") as f:
            return json.loads(f.read().decode("utf-8"))["status"] != "running"
    except (OSError, ValueError, KeyError):
        return False


def load_checkpoint(d: str) -> tuple[dict, TrainState]:
    """Read a checkpoint written by `save_checkpoint`. Tensors are loaded with weights_only=True, so
    a crafted pickle cannot run code; anything that is not a raydl checkpoint is refused."""
    import pickle

    from raydl.errors import DataError

    path = os.path.join(d, STATE_FILE)
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
        with open(os.path.join(d, LOOP_STATE_FILE), "rb") as f:
            raw = json.loads(f.read().decode("utf-8"))
        state = TrainState(**raw)
        if state.diverged_at is not None:
            state.diverged_at = tuple(state.diverged_at)
        if not isinstance(tensors, dict) or "model" not in tensors:
            raise ValueError("no model weights")
    except (pickle.UnpicklingError, OSError, RuntimeError, ValueError, TypeError, EOFError) as e:
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DataError(f"checkpoint {path}: not a raydl checkpoint, or it holds more than tensors and plain state "
                        f"(refusing to unpickle code: {why}); delete it or run again with --restart") from None
    return tensors, state


def refuse_code(d: str) -> None:
    """Raise if checkpoint `d` holds a pickle with more than tensors (a checkpoint cut off by a kill,
    which Ray Train skips, is left alone)."""
    import pickle

    path = os.path.join(d, STATE_FILE)
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        load_checkpoint(d)  # raises the one-line error
    except Exception:  # noqa: BLE001 (truncated or missing: not ours to judge here)
        pass


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _all_reduce(x: np.ndarray, op: str = "sum") -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().numpy()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@torch.no_grad()
def evaluate_batches(model, batches, task: Task, kind: DataKind, device, autocast=nullcontext) -> np.ndarray:
    """The task's additive metric statistics over `batches` (this rank's part only)."""
    model.eval()
    s = np.zeros(task.stats_size())
    for cols in batches:
        batch = to_device(kind.collate(cols), device)
        with autocast():
            out = model(batch)
        s += task.stats(out.float(), batch)
    return s


def _grad_health(params: list[torch.Tensor]) -> torch.Tensor:
    """Sum of every gradient: NaN or infinite if any entry is. One reduction per parameter that
    received a gradient (other heads and frozen layers get none), no norm computed."""
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return torch.stack(sums).sum() if sums else torch.zeros(())


class FiniteCheck:
    """Whether a step's gradient health (`_grad_health` or the clipped norm) was finite. On the CPU
    it is read at once. On a GPU reading it would stall the device every step, so the flag is copied
    to pinned host memory without blocking and read one step later, while the GPU runs the next
    step: a non-finite step is then found one step late, after its update reached the live weights
    (the best weights are a separate copy, and the run stops as diverged either way)."""

    def __init__(self, device: torch.device) -> None:
        self.lag = device.type == "cuda"
        if self.lag:
            self.flags = [torch.ones((), dtype=torch.bool).pin_memory() for _ in range(2)]
            self.events = [torch.cuda.Event() for _ in range(2)]
        self.pending: tuple[int, int] | None = None  # (slot, step) copied but not yet read
        self.checks = 0

    def bad_step(self, health: torch.Tensor, step: int) -> int | None:
        """The step whose health was non-finite, if one is known now; else None."""
        if not self.lag:
            return None if torch.isfinite(health) else step
        slot = self.checks % 2  # not the step's index: with gradient accumulation that skips numbers
        self.checks += 1
        self.flags[slot].copy_(torch.isfinite(health), non_blocking=True)
        self.events[slot].record()
        earlier, self.pending = self.pending, (slot, step)
        return self._read(earlier)

    def flush(self) -> int | None:
        """At the end of an epoch: the last step's verdict (none is left pending)."""
        earlier, self.pending = self.pending, None
        return self._read(earlier)

    def _read(self, pending: tuple[int, int] | None) -> int | None:
        if pending is None:
            return None
        slot, step = pending
        self.events[slot].synchronize()
        return None if bool(self.flags[slot]) else step


def final_metrics(best, shards, task: Task, kind: DataKind, device, autocast, scored) -> dict:
    """The best weights scored on validation and test, each rank on its part, reduced across ranks."""
    out = {}
    for split in scored:
        out.update(task.summarize(_all_reduce(evaluate_batches(best, shards.eval(split), task, kind, device, autocast)), split))
    return out


def consolidate(consolidations, best, shards, task: Task, kind: DataKind, device, batch_size: int) -> dict:
    """What each consolidation (e.g. a diagonal Fisher) sums over this rank's train shard, summed
    across ranks and finished (e.g. divided by the count): tensors saved with the model for the
    next run that starts from it."""
    out = {}
    for c in consolidations:
        batches = (to_device(kind.collate(cols), device) for cols in shards.train(0, batch_size))
        sums = {name: torch.from_numpy(_all_reduce(t.detach().cpu().double().numpy())).float()
                for name, t in c(best, batches, task).items()}
        out.update(c.finish(sums))
    return out


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg: WorkerConfig = ray.get(config["worker"])  # in the object store: `raydl.controller`
    spec, prep = cfg.spec, cfg.prep
    t, ck = spec.training, spec.checkpoint
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    warm.use_ray_threads()
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # this worker's GPU for NCCL's reductions and new tensors

    task = build_task(prep, spec.loss)
    kind = build_kind(prep)
    # On the device before the optimizer exists, so that a resumed optimizer's state lands there too.
    model = build_model(spec.model, kind, task.n_outputs()).to(device)
    if spec.finetune is not None:  # start from a trained model: its weights, some layers frozen
        finetune.apply(model, spec.finetune)
    penalties = build_penalties(spec, model)
    lr_mult = spec.finetune.lr_mult if spec.finetune is not None else {}
    optimizer = build_optimizer(finetune.param_groups(model, spec.optimizer.lr, lr_mult), spec.optimizer)
    scheduler = build_scheduler(optimizer, spec.optimizer, t.epochs)
    use_amp = device.type == "cuda" and t.precision != "32"
    amp_dtype = torch.bfloat16 if t.precision == "bf16-mixed" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and t.precision == "16-mixed")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()

    # Resume: the latest checkpoint holds weights, optimizer, schedule and the loop's own state.
    state, best_weights, extras = TrainState(), None, {}
    checkpoint = ray.train.get_checkpoint() or (Checkpoint(cfg.start_from) if cfg.start_from else None)
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved, state = load_checkpoint(d)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        best_weights = saved["best_model"]
        extras = saved.get("extras", {})
    ddp_model = ray.train.torch.prepare_model(model)  # moves to device; DDP when world > 1
    params = [p for p in model.parameters() if p.requires_grad]

    if cfg.loader == "in_memory":
        shards = InMemoryShards(ray.get(cfg.splits), rank, world, t.seed, t.shuffle, device)
    else:
        shards = RayDataShards(rank, world, t.seed, t.shuffle, cfg.scored, cfg.blocks)
    tracker = start_tracker(spec, cfg.run_dir, cfg.manifest, rank) if rank == 0 else None
    first_step_s, finite = None, FiniteCheck(device)

    def ckpt_metric(m: dict) -> float:
        return m[ck.metric]

    for epoch in range(state.next_epoch, t.epochs):
        if state.status != "running":
            break
        ddp_model.train()
        t0, steps, local_n, micro = time.perf_counter(), 0, 0, 0
        # The loss summed on the device (float64, as Python's float would): no sync per step on a GPU.
        local_loss = torch.zeros((), dtype=torch.float64, device=device)
        following = epoch + 1 if epoch + 1 < t.epochs else None  # a streamed epoch is fetched while the one before validates
        for i, cols in enumerate(shards.train(epoch, t.batch_size, following)):
            batch = to_device(kind.collate(cols), device)
            n = batch_len(batch)
            micro += 1
            sync = micro == t.grad_accum_steps
            with (nullcontext() if sync or world == 1 else ddp_model.no_sync()), autocast():
                out = ddp_model(batch)
                batch_loss = task.loss(out, batch)
                total = batch_loss + sum(p(model, batch, out) for p in penalties) if penalties else batch_loss
            scaler.scale(total / t.grad_accum_steps).backward()
            local_loss += batch_loss.detach().double() * n
            local_n += n
            if not sync:
                continue
            micro = 0
            scaler.unscale_(optimizer)
            if t.clip_grad_value:
                torch.nn.utils.clip_grad_value_(params, t.clip_grad_value)
            # Divergence is judged on all-reduced gradients, identical on every rank, so all ranks
            # take the same decision: the total norm when clipping by norm, else the sum of every
            # gradient (cheaper than a norm, and as non-finite as any of its entries).
            health = torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm) if t.clip_grad_norm else _grad_health(params)
            bad = None if scaler.is_enabled() else finite.bad_step(health, i)
            if bad is not None:
                state.status, state.diverged_at = "diverged", (epoch, bad)
                break
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if first_step_s is None:
                first_step_s = time.time() - cfg.launch_ts
        bad = finite.flush() if state.status == "running" else None
        if bad is not None:
            state.status, state.diverged_at = "diverged", (epoch, bad)
        if micro and state.status == "running":  # leftover micro-batches at the end of the epoch
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        train_time = time.perf_counter() - t0
        last_step_s = time.time() - cfg.launch_ts
        scheduler.step()

        # The last: how many workers run in a process started ahead of the run (raydl.warm).
        train_sums = _all_reduce(np.array([local_loss.item(), local_n, steps, warm.prestarted]))
        # The bare module, not the DDP wrapper: ranks may hold different numbers of validation
        # batches, and DDP's forward would broadcast BatchNorm buffers (a collective) on each.
        val = _all_reduce(evaluate_batches(model, shards.eval("val"), task, kind, device, autocast))
        peak = _all_reduce(np.array([_peak_memory_mb(device)]), op="max")[0]
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_sums[0] / max(train_sums[1], 1),
            **task.summarize(val, "val"),
            "lr": optimizer.param_groups[0]["lr"],
            "samples_per_sec": train_sums[1] / train_time,
            "time_per_step_s": train_time / max(train_sums[2], 1),
            "epoch_time_s": time.perf_counter() - t0,
            "time_to_first_step_s": first_step_s if first_step_s is not None else float("nan"),
            "time_to_last_step_s": last_step_s,
            "warm_workers": int(train_sums[3]),
            "peak_memory_mb": float(peak),
        }
        if state.status == "running" and not math.isfinite(metrics["train_loss"]):
            state.status, state.diverged_at = "diverged", (epoch, int(train_sums[2]))
        metrics["diverged"] = state.status == "diverged"

        is_best = state.status == "running" and improved(ckpt_metric(metrics), state.best_value, ck.mode)
        if is_best:
            state.best_value, state.best_epoch = ckpt_metric(metrics), epoch + 1
            best_weights = copy.deepcopy(model.state_dict())
        if t.early_stopping and state.status == "running":
            es = t.early_stopping
            if improved(metrics[es.metric], state.stop_value, es.mode, es.min_delta):
                state.stop_value, state.bad_epochs = metrics[es.metric], 0
            else:
                state.bad_epochs += 1
                if state.bad_epochs >= es.patience:
                    state.status = "early_stopped"
        state.next_epoch = epoch + 1
        if state.status == "running" and state.next_epoch >= t.epochs:
            state.status = "finished"
        state.history.append(metrics)
        if state.status in ("finished", "early_stopped"):
            best = copy.deepcopy(model)
            best.load_state_dict(best_weights)
            state.final = final_metrics(best, shards, task, kind, device, autocast, cfg.scored)
            extras = consolidate(build_consolidations(spec), best, shards, task, kind, device, t.batch_size)

        if rank == 0:
            tracker.log(metrics, step=epoch + 1)
            if cfg.progress is not None:
                cfg.progress.put(metrics)
        # `ray.train.report` is a barrier through the controller: call it only when a checkpoint is
        # due (every K epochs, the end), or every epoch when asked (Ray Tune's schedulers decide on
        # every epoch's metrics). Both are the same on every rank, so every rank reports the same
        # number of times. Per-epoch metrics reach W&B and the progress bar above. A new best is kept
        # in memory until the next checkpoint: checkpointing each one cost 0.3-0.5 s a time (200 GCN
        # epochs on karate, every 100: 68 s with a checkpoint per new best, 19.5 s without, the same model).
        due = state.status != "running" or (epoch + 1) % ck.every_n_epochs == 0
        if not due:
            if cfg.report_every_epoch:
                ray.train.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                tensors = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "best_model": best_weights,
                    "extras": extras,
                }
                save_checkpoint(d, tensors, state)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)
    shards.close()
    if rank == 0:
        tracker.finish(best_weights, prep)
