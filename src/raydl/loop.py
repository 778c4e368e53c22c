"""The training loop, written out once. It runs on every Ray Train worker.

Read it top to bottom: build the model, loss and optimizer from the spec; resume from the last
checkpoint if there is one; then each epoch stream this worker's shard of the train split,
step with gradient accumulation, clipping and mixed precision (DDP all-reduces the gradients),
evaluate on the whole validation set across all ranks, report, checkpoint, maybe stop early.
"""

from __future__ import annotations

import copy
import math
import os
import resource
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from raydl.data import Preprocessing
from raydl.losses import Loss, build_loss
from raydl.metrics import batch_stats, stats_size, summarize
from raydl.models import build_model
from raydl.optim import build_optimizer, build_scheduler, l1_penalty
from raydl.sharding import InMemoryShards, RayDataShards
from raydl.spec import JobSpec
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


def save_checkpoint(d: str, tensors: dict, state: TrainState) -> None:
    """Write a checkpoint into directory `d`: tensors with torch.save, the loop state as JSON."""
    import json

    for name, write in ((STATE_FILE, lambda f: torch.save(tensors, f)),
                        (LOOP_STATE_FILE, lambda f: f.write(json.dumps(asdict(state)).encode()))):
        tmp = os.path.join(d, name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, os.path.join(d, name))


def load_checkpoint(d: str) -> tuple[dict, TrainState]:
    """Read a checkpoint written by `save_checkpoint`. Tensors are loaded with weights_only=True, so
    a crafted pickle cannot run code; anything that is not a raydl checkpoint is refused."""
    import json
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
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.numpy()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def predictions(loss: Loss, logits: torch.Tensor) -> torch.Tensor:
    if loss.task == "regression":
        return logits.reshape(-1)
    return loss.probs(logits).argmax(dim=1)


@torch.no_grad()
def evaluate_batches(model, batches, loss: Loss, task: str, n_classes: int, device, autocast) -> np.ndarray:
    """Additive metric statistics over `batches` of (x, y) tensors (this rank's part only)."""
    model.eval()
    s = np.zeros(stats_size(task, n_classes))
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            z = model(x)
        z = z.float()
        s += batch_stats(task, n_classes, loss.fn(z, y).item() * len(y), predictions(loss, z).cpu().numpy(), y.cpu().numpy())
    return s


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    spec = JobSpec.model_validate(config["spec"])
    prep = Preprocessing.from_dict(config["prep"])
    t, ck = spec.training, spec.checkpoint
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    device = ray.train.torch.get_device()

    n_classes = len(prep.classes)
    loss = build_loss(spec.loss, prep.task, n_classes)
    model = build_model(spec.model, len(prep.features), loss.n_outputs(n_classes), prep.image_shape)
    optimizer = build_optimizer(model.parameters(), spec.optimizer)
    scheduler = build_scheduler(optimizer, spec.optimizer, t.epochs)
    use_amp = device.type == "cuda" and t.precision != "32"
    amp_dtype = torch.bfloat16 if t.precision == "bf16-mixed" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and t.precision == "16-mixed")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()

    # Resume: the latest checkpoint holds weights, optimizer, schedule and the loop's own state.
    state, best_weights = TrainState(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved, state = load_checkpoint(d)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        best_weights = saved["best_model"]
    ddp_model = ray.train.torch.prepare_model(model)  # moves to device; DDP when world > 1
    params = [p for p in model.parameters() if p.requires_grad]

    if config["loader"] == "in_memory":
        shards = InMemoryShards(ray.get(config["train_ref"]), ray.get(config["val_ref"]), rank, world, t.seed, t.shuffle)
    else:
        shards = RayDataShards(config["n_val"], rank, world, t.seed, t.shuffle)
    tracker = start_tracker(spec, config, rank) if rank == 0 else None
    progress = config.get("progress")
    launch_ts = config["launch_ts"]
    first_step_s = None

    def ckpt_metric(m: dict) -> float:
        return m[ck.metric]

    for epoch in range(state.next_epoch, t.epochs):
        if state.status != "running":
            break
        ddp_model.train()
        t0, steps, local_loss, local_n, micro = time.perf_counter(), 0, 0.0, 0, 0
        for i, (x, y) in enumerate(shards.train(epoch, t.batch_size)):
            x, y = x.to(device), y.to(device)
            micro += 1
            sync = micro == t.grad_accum_steps
            with (nullcontext() if sync or world == 1 else ddp_model.no_sync()), autocast():
                z = ddp_model(x)
                batch_loss = loss.fn(z.float(), y)
                total = batch_loss + spec.optimizer.l1 * l1_penalty(model) if spec.optimizer.l1 else batch_loss
            scaler.scale(total / t.grad_accum_steps).backward()
            local_loss += batch_loss.item() * len(y)
            local_n += len(y)
            if not sync:
                continue
            micro = 0
            scaler.unscale_(optimizer)
            if t.clip_grad_value:
                torch.nn.utils.clip_grad_value_(params, t.clip_grad_value)
            # Divergence is judged on all-reduced gradients, identical on every rank, so all ranks
            # take the same decision. Without norm clipping, the output layer's gradient (which a
            # NaN or infinite loss reaches first) is checked instead of a full norm: cheaper per step.
            if t.clip_grad_norm:
                health = torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm)
            else:
                health = params[-1].grad.sum() if params[-1].grad is not None else torch.zeros(())
            if not scaler.is_enabled() and not torch.isfinite(health):
                state.status, state.diverged_at = "diverged", (epoch, i)
                break
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if first_step_s is None:
                first_step_s = time.time() - launch_ts
        if micro and state.status == "running":  # leftover micro-batches at the end of the epoch
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        train_time = time.perf_counter() - t0
        scheduler.step()

        train_sums = _all_reduce(np.array([local_loss, local_n, steps]))
        # The bare module, not the DDP wrapper: ranks may hold different numbers of validation
        # batches, and DDP's forward would broadcast BatchNorm buffers (a collective) on each.
        val = _all_reduce(evaluate_batches(model, shards.val(), loss, prep.task, n_classes, device, autocast))
        peak = _all_reduce(np.array([_peak_memory_mb(device)]), op="max")[0]
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_sums[0] / max(train_sums[1], 1),
            **summarize(prep.task, n_classes, val, "val", prep.target_std),
            "lr": optimizer.param_groups[0]["lr"],
            "samples_per_sec": train_sums[1] / train_time,
            "time_per_step_s": train_time / max(train_sums[2], 1),
            "epoch_time_s": time.perf_counter() - t0,
            "time_to_first_step_s": first_step_s if first_step_s is not None else float("nan"),
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

        if rank == 0:
            tracker.log(metrics, step=epoch + 1)
            if progress is not None:
                progress.put_nowait(metrics)
        # `ray.train.report` is a barrier through the controller: call it only when a checkpoint is
        # due (every K epochs, a new best, the end). `due` is the same on every rank, so every rank
        # reports the same number of times. Per-epoch metrics reach W&B and the progress bar above.
        due = is_best or state.status != "running" or (epoch + 1) % ck.every_n_epochs == 0
        if not due:
            continue
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                tensors = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "best_model": best_weights,
                }
                save_checkpoint(d, tensors, state)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)
    if rank == 0:
        tracker.finish(best_weights, prep)
