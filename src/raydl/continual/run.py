"""`run_stream(spec)`: train a whole experience stream, each experience an ordinary distributed
raydl training run (`raydl.launch.train`) that starts from the previous experience's model
directory, then score every model on every experience's test set.

Everything lives under `<run.storage_path>/<run.name>/`: `data/expN.parquet` (the rows each run
trained on), `runs/expN/` (each experience's run and its `model/` directory: weights, the
strategy's `extras.pt`, the replay buffer), `stream.json` (the experiences done: model directory
and accuracy row, written atomically after each), and the results: `continual.json`, the heat map
`accuracy_matrix.png` and `report.html`. Started again with the same spec (in any process), a
stream continues after the last experience in `stream.json`, from its model, buffer and Fisher;
`until` stops after an experience.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from raydl.continual import build_strategy
from raydl.continual.metrics import heatmap_png, html_report, summary
from raydl.continual.stream import TASK, Stream, build_stream
from raydl.errors import SpecError
from raydl.model_dir import json_safe
from raydl.paths import write_atomic
from raydl.spec import ContinualSpec, JobSpec, StreamSpec, spec_from_dict

log = logging.getLogger("raydl")
STATE = "stream.json"
RESULT = "continual.json"
HEATMAP = "accuracy_matrix.png"
REPORT = "report.html"


@dataclass(frozen=True)
class StreamResult:
    root: Path
    summary: dict  # continual.json: the matrix, average accuracy, forgetting, backward transfer, ...
    trained: list[int]  # the experiences (1-based) this call trained


def stream_root(spec: JobSpec) -> Path:
    from raydl import storage

    if storage.is_uri(spec.run.storage_path):
        raise SpecError(f"run.storage_path: raydl continual keeps its stream on a local path, not {spec.run.storage_path!r}")
    return Path(spec.run.storage_path).expanduser().resolve() / spec.run.name


def experience_spec(spec: JobSpec, stream: Stream, i: int, source: Path, previous: str | None, name: str) -> JobSpec:
    """Experience i's job spec: the stream spec's sections, its rows, the stream's classes, and
    `finetune.from` the previous model (the user's own `finetune:` settings kept)."""
    raw = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw.pop("stream", None)
    raw["run"] = {"name": name, "storage_path": str(stream_root(spec) / "runs")}
    train = spec.data.split.train
    raw["data"] = {**raw["data"], "source": str(source), "format": "parquet", "label": stream.label,
                   "features": stream.features, "classes": stream.classes,
                   "split": {"train": train, "val": round(1.0 - train, 12), "test": 0.0}}
    raw.setdefault("continual", {"strategy": "naive"})
    if previous is not None:
        raw["finetune"] = {**raw.get("finetune", {}), "from": previous}
    return spec_from_dict(raw, origin=f"for experience {i + 1}")


def accuracy_row(model_dir: Path, stream: Stream) -> list[float]:
    """The model's accuracy on each experience's test set."""
    from raydl.inference import encode_labels, metrics_on, model_inputs
    from raydl.model_dir import load_model

    model = load_model(model_dir)
    return [metrics_on(model, {**model_inputs(model, e.test), "y": encode_labels(model, e.test)}, "test")["test_accuracy"]
            for e in stream.experiences]


def _identity(spec: JobSpec, stream: Stream) -> dict:
    c = spec.continual or ContinualSpec()
    s = spec.stream or StreamSpec()
    return {"scenario": s.scenario, "strategy": c.strategy, "strategy_params": c.params,
            "experiences": len(stream), "seed": s.seed, "data_seed": spec.data.seed}


def _read_state(root: Path, ident: dict) -> list[dict]:
    path = root / STATE
    if not path.is_file():
        return []
    try:
        state = json.loads(path.read_text())
        done = state["done"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path}: not a stream state written by raydl continual ({type(e).__name__}); "
                        "start the stream again with --restart") from None
    if state.get("identity") != ident:
        diff = [k for k in ident if state.get("identity", {}).get(k) != ident[k]]
        raise SpecError(f"{path}: this stream was started with other settings ({', '.join(diff)} differ); "
                        "use another run.name, or --restart to start it again")
    return [d for d in done if Path(d["model_dir"]).is_dir()]


def _check(spec: JobSpec, stream: Stream) -> None:
    if TASK in stream.features and spec.data.standardize != "none":
        raise SpecError("data.standardize: a task-incremental stream's task id column must reach the model as it is; "
                        "set data.standardize: none")
    _check_heads(spec, stream)


def _check_heads(spec: JobSpec, stream: Stream) -> None:
    """A multi-head model (one with `classes_per_task`) reads the task id from the last feature, and
    task t's head scores classes t*k .. t*k+k-1: every experience's rows must be laid out so."""
    from raydl.models import model_params

    k = getattr(model_params(spec.model), "classes_per_task", None)
    if k is None:
        return
    if stream.features[-1:] != [TASK]:
        raise SpecError(f"model.name: {spec.model.name} reads the task id from the last feature column, {TASK!r}; this stream's "
                        f"last is {stream.features[-1:]} (use stream.scenario: split_digits_tasks, or put a {TASK!r} column last)")
    index = {c: i for i, c in enumerate(stream.classes)}
    for e in stream.experiences:
        for rows in (e.pool, e.test):
            task = rows.column(TASK).to_numpy(zero_copy_only=False)
            ids = np.array([index[v] for v in rows.column(stream.label).to_pylist()])
            if len(ids) and np.any(ids // k != np.round(task)):
                classes = sorted(set(rows.column(stream.label).to_pylist()))
                raise SpecError(f"model.classes_per_task: {k}, but experience {e.index + 1} ({e.name}) has classes {classes} under "
                                f"task id(s) {sorted(set(task.tolist()))}; task t's head scores classes t*{k} .. t*{k}+{k - 1} "
                                f"of {stream.classes} (set model.classes_per_task: {len(stream.classes) // len(stream)}?)")


def run_stream(spec: JobSpec, *, address: str | None = None, until: int | None = None, restart: bool = False,
               on_experience: Callable[[dict], None] | None = None) -> StreamResult:
    """Train the stream's experiences not done yet (up to `until`, 1-based), then write the results."""
    strategy = build_strategy(spec if spec.continual is not None else spec.model_copy(update={"continual": ContinualSpec()}))
    stream = build_stream(spec)  # every data check, before Ray starts
    _check(spec, stream)
    if until is not None and not 1 <= until <= len(stream):
        raise SpecError(f"--until: {until} is not an experience of this stream (1 to {len(stream)})")
    root = stream_root(spec)
    ident = _identity(spec, stream)
    if restart and root.exists():
        import shutil

        shutil.rmtree(root)
    done = _read_state(root, ident)
    last = len(stream) if until is None else until
    plan = [len(stream) - 1] if strategy.trains_once else list(range(len(done), last))
    if strategy.trains_once and done:
        plan = []
    if plan:
        strategy.train_rows(stream, plan[0], None)  # the strategy's own checks (a buffer's size), before Ray starts
    trained: list[int] = []
    if plan:
        from raydl import warm
        from raydl.launch import train
        from raydl.session import ray_session

        with ray_session(address, warm=warm.workers_for(spec.scaling)):  # the first experience's processes start with Ray
            for i in plan:
                previous = done[-1]["model_dir"] if done else (spec.finetune.from_ if spec.finetune else None)
                name = "joint" if strategy.trains_once else f"exp{i + 1}"
                t0 = time.time()
                rows = strategy.train_rows(stream, i, Path(previous) if previous else None)
                source = root / "data" / f"{name}.parquet"
                sink = io.BytesIO()
                pq.write_table(rows, sink)
                write_atomic(source, sink.getvalue())
                exp = experience_spec(spec, stream, i, source, previous, name)
                result = train(exp, address=address, warm_next=i != plan[-1])
                mdir = Path(result.model_dir)
                build_strategy(exp).after(stream, i, mdir, Path(previous) if previous else None)
                entry = {"experience": i + 1, "name": name, "model_dir": str(mdir), "train_rows": rows.num_rows,
                         "accuracies": accuracy_row(mdir, stream), "val_accuracy": result.metrics.get("val_accuracy"),
                         "seconds": time.time() - t0}
                done.append(entry)
                trained.append(i + 1)
                write_atomic(root / STATE, json.dumps(json_safe({"identity": ident, "done": done}), indent=2))
                log.info("raydl continual: %s done: accuracies %s", name, np.round(entry["accuracies"], 3).tolist())
                if on_experience is not None:
                    on_experience(entry)
    return StreamResult(root, write_results(spec, stream, root, ident, done, strategy.trains_once), trained)


def write_results(spec: JobSpec, stream: Stream, root: Path, ident: dict, done: list[dict], joint: bool) -> dict:
    """continual.json, the heat map and the HTML report of the experiences done; logged to W&B."""
    if not done:
        raise SpecError("raydl continual: no experience has been trained yet; run without --until 0")
    R = np.array([d["accuracies"] for d in done])
    out = {"run_name": spec.run.name, **ident, **summary(R, joint),
           "row_labels": [d["name"] for d in done], "experience_names": [e.name for e in stream.experiences],
           "model_dirs": [d["model_dir"] for d in done], "train_rows": [d["train_rows"] for d in done],
           "seconds": [d["seconds"] for d in done]}
    png = heatmap_png(R, f"{spec.run.name}: {ident['strategy']} on {ident['scenario']}", out["row_labels"])
    write_atomic(root / HEATMAP, png)
    write_atomic(root / REPORT, html_report(out, png))
    if spec.tracking.backend == "wandb":
        out["wandb_dir"] = log_wandb(spec, root, out)
    write_atomic(root / RESULT, json.dumps(json_safe(out), indent=2))
    return out


def log_wandb(spec: JobSpec, root: Path, out: dict) -> str:
    """One W&B run for the stream (offline by default): the average accuracy after each experience,
    the final figures in its summary, the matrix as a table and the heat map as an image."""
    import wandb

    tr = spec.tracking
    run = wandb.init(project=tr.project, entity=tr.entity, name=f"{spec.run.name}-continual", tags=[*tr.tags, "continual"],
                     dir=str(root), mode=tr.mode, reinit="finish_previous", job_type="continual",
                     config={"spec": spec.model_dump(mode="json", by_alias=True)},
                     settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
    R = out["accuracy_matrix"]
    for i, row in enumerate(R):
        run.log({"average_accuracy": out["average_accuracy_curve"][i],
                 **{f"accuracy/exp{j + 1}": v for j, v in enumerate(row)}}, step=i + 1)
    cols = [f"exp{j + 1}" for j in range(len(R[0]))]
    run.log({"accuracy_matrix": wandb.Table(columns=["after", *cols], data=[[lab, *row] for lab, row in zip(out["row_labels"], R)]),
             "accuracy_heatmap": wandb.Image(str(root / HEATMAP))}, step=len(R))
    for key in ("average_accuracy", "forgetting", "backward_transfer"):
        if out[key] is not None:
            run.summary[key] = out[key]
    run.finish()
    return str(Path(run.dir).parent)
