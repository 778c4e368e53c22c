"""Where does Ray Train V2's time to first optimizer step go?  (standalone study)

Launches a 2-worker ``ray.train.torch.TorchTrainer`` whose loop builds an MLP
(64-128-64-10) wrapped with ``ray.train.torch.prepare_model`` and takes optimizer
steps on random data, and records wall-clock timestamps of each phase:

    launch -> import ray -> ray.init -> import ray.train.torch -> fit() called
    -> worker process created -> worker loop starts -> prepare_model done
    -> first optimizer step -> fit() returns -> ray.shutdown

Every measured run is a fresh Python process (``run`` sub-command) launched by the
``study`` sub-command, which sets ``BENCH_LAUNCH_TS`` just before ``Popen``.

Variants (``--variant``):
  a   plain ``ray.init()`` embedded, as a laptop user would write it
  b   ``ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)`` plus
      env knobs (usage stats off, Train health-check 0.1 s, state-actor
      reconciliation / preemption watcher / structured logging off)
  c   connect to an already running local head (``ray start --head``) that the
      study starts once with its own temp dir and port, and stops by PID
  d   as b, plus ``datasets={"train": ds}`` (sklearn digits, 1797 rows via Ray Data
      ``streaming_split``); the loop takes its first step on the first batch
  e   as a but with only ``include_dashboard=False`` (isolates the dashboard)
  f   as b but without the Train env knobs (isolates them)
  g   as f + 8 prestarted Python workers and Train metrics off (helper actors reuse
      idle workers instead of spawning processes)

Usage:
  python bench/startup_probe.py study --repeats 3 [--variants a,b,c,d] [--write-results]
  python bench/startup_probe.py run --variant b            # one run, prints JSON

This script does not import raydl.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTION = "## Ray Train start-up"

# Env knobs for variants b/d (set in the child's environment before import ray).
TRAIN_KNOBS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
}
CORE_KNOBS = {"RAY_USAGE_STATS_ENABLED": "0"}

VARIANT_ENV = {
    "a": {},
    "b": {**CORE_KNOBS, **TRAIN_KNOBS},
    "c": {**CORE_KNOBS, **TRAIN_KNOBS, "RAY_AUTH_MODE": "disabled"},
    "d": {**CORE_KNOBS, **TRAIN_KNOBS},
    "e": {},
    "f": {**CORE_KNOBS},
    "g": {**CORE_KNOBS, "RAY_num_prestart_python_workers": "8", "RAY_TRAIN_METRICS_ENABLED": "0"},
}
VARIANT_DESC = {
    "a": "plain `ray.init()` (dashboard on, defaults)",
    "b": "`ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)` + env knobs",
    "c": "`ray.init(address=...)` to a running local head (+ env knobs)",
    "d": "as b + `datasets={'train': digits}` (Ray Data streaming_split)",
    "e": "plain `ray.init(include_dashboard=False)` only",
    "f": "as b without the RAY_TRAIN_* knobs",
    "g": "as f + `RAY_num_prestart_python_workers=8`, `RAY_TRAIN_METRICS_ENABLED=0`",
}

# Phases reported in the table: (label, start key, end key).
PHASES = [
    ("import ray", "launch", "import_ray"),
    ("ray.init / connect", "import_ray", "ray_init"),
    ("import ray.train.torch", "ray_init", "import_train"),
    ("TorchTrainer(...) built", "import_train", "fit_call"),
    ("fit() -> worker loop starts", "fit_call", "loop_start"),
    ("loop start -> prepare_model done", "loop_start", "prepared"),
    ("prepare_model -> first step done", "prepared", "first_step"),
    ("**launch -> first step**", "launch", "first_step"),
    ("last step -> fit() returns", "last_step", "fit_return"),
    ("ray.shutdown()", "fit_return", "shutdown"),
    ("**launch -> exit (end to end)**", "launch", "exit"),
]


def _psutil():
    """psutil is not a dependency here; Ray vendors it (import ray puts it on the path)."""
    try:
        import psutil
    except ImportError:
        import importlib

        import ray  # noqa: F401  (puts ray/thirdparty_files on sys.path)

        psutil = importlib.import_module("psutil")
    return psutil


# --------------------------------------------------------------------------- worker
def _train_loop(config: dict) -> None:
    t_loop = time.time()
    import psutil
    import ray.train
    import ray.train.torch
    import torch
    from torch import nn

    t_imports = time.time()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    t_model = time.time()
    if config.get("profile") and rank == 0:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        model = prof.runcall(ray.train.torch.prepare_model, model)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        Path(config["out_dir"], "prepare_model.prof.txt").write_text(buf.getvalue())
    else:
        model = ray.train.torch.prepare_model(model)
    t_prep = time.time()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    t_first = None
    shard = ray.train.get_dataset_shard("train") if config.get("dataset") else None
    if shard is not None:
        for batch in shard.iter_torch_batches(batch_size=64, dtypes=torch.float32):
            step(batch["x"], batch["y"].long())
            if t_first is None:
                t_first = time.time()
    else:
        g = torch.Generator().manual_seed(rank)
        for _ in range(config["steps"]):
            step(torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g))
            if t_first is None:
                t_first = time.time()
    t_last = time.time()
    rec = {
        "rank": rank,
        "pid": os.getpid(),
        "proc_create": psutil.Process().create_time(),
        "loop_start": t_loop,
        "imports": t_imports,
        "model_built": t_model,
        "prepared": t_prep,
        "first_step": t_first,
        "last_step": t_last,
    }
    Path(config["out_dir"], f"rank{rank}.json").write_text(json.dumps(rec))


# --------------------------------------------------------------------------- one run
def run_once(variant: str, address: str | None, steps: int) -> dict:
    """Executed in a fresh process; returns the timestamps dict."""
    ts = {"launch": float(os.environ.get("BENCH_LAUNCH_TS") or 0)}
    if not ts["launch"]:
        ts["launch"] = _psutil().Process().create_time()
    ts["interp_start"] = _INTERP_START
    ts["load1_at_start"] = os.getloadavg()[0]
    import ray

    ts["import_ray"] = time.time()
    if variant in ("a",):
        ray.init()
    elif variant == "e":
        ray.init(include_dashboard=False)
    elif variant == "c":
        ray.init(address=address, log_to_driver=False)
    else:  # b, d, f, g
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ts["ray_init"] = time.time()
    import ray.train
    import ray.train.torch

    ts["import_train"] = time.time()

    out_dir = tempfile.mkdtemp(prefix="probe-ranks-")
    storage = tempfile.mkdtemp(prefix="probe-storage-")
    datasets = None
    if variant == "d":
        import numpy as np
        import ray.data
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        ds = ray.data.from_items(
            [{"x": xi.astype(np.float32), "y": int(yi)} for xi, yi in zip(x, y)]
        )
        datasets = {"train": ds}
        ts["dataset_built"] = time.time()
    trainer = ray.train.torch.TorchTrainer(
        _train_loop,
        train_loop_config={
            "steps": steps,
            "out_dir": out_dir,
            "dataset": datasets is not None,
            "profile": bool(os.environ.get("PROBE_PROFILE")),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
        run_config=ray.train.RunConfig(name=f"probe-{variant}", storage_path=storage),
        datasets=datasets,
    )
    ts["fit_call"] = time.time()
    trainer.fit()
    ts["fit_return"] = time.time()
    if os.environ.get("PROBE_TIMELINE"):
        ts["timeline"] = _timeline_summary(ray.timeline())
    ray.shutdown()
    ts["shutdown"] = time.time()
    ranks = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("rank*.json"))]
    ts["ranks"] = ranks
    prof = Path(out_dir, "prepare_model.prof.txt")
    if prof.exists():
        print(prof.read_text(), file=sys.stderr)
    # Phase boundaries use the slowest rank (DDP: a step is done when all ranks are).
    for k in ("loop_start", "prepared", "first_step", "last_step"):
        ts[k] = max(r[k] for r in ranks)
    ts["worker_proc_create"] = max(r["proc_create"] for r in ranks)
    return ts


def _timeline_summary(events: list) -> list:
    """First occurrence of each task/actor-method span in Ray's timeline: (name, start, end)."""
    first: dict[str, tuple[float, float]] = {}
    for e in events:
        if e.get("ph") != "X":
            continue
        start = e["ts"] / 1e6
        end = start + e.get("dur", 0) / 1e6
        name = e.get("cat") or e["name"]
        if not name.startswith("task::"):
            continue
        if name not in first or start < first[name][0]:
            first[name] = (start, end)
    return sorted(([n, a, b] for n, (a, b) in first.items()), key=lambda x: x[1])


_INTERP_START = time.time()


# --------------------------------------------------------------------------- head (c)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHead:
    """A ``ray start --head`` with its own temp dir and port; stopped by PID."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rayprobe-")
        self.port = _free_port()
        self.address = None
        self.start_s = None

    def __enter__(self) -> LocalHead:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        t0 = time.time()
        try:
            self._start(env)
        except BaseException:
            self.__exit__(None, None, None)  # never leave a half-started head behind
            raise
        self.start_s = time.time() - t0
        return self

    def _start(self, env: dict) -> None:
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
             f"--temp-dir={self.temp_dir}", f"--port={self.port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"],
            env=env, check=True, capture_output=True, text=True,
        )
        ip = socket.gethostbyname(socket.gethostname())
        self.address = f"{ip}:{self.port}"
        # Check which address GCS actually bound to.
        for cand in (self.address, f"127.0.0.1:{self.port}"):
            try:
                with socket.create_connection(tuple([cand.split(":")[0], self.port]), 2):
                    self.address = cand
                    break
            except OSError:
                continue

    def pids(self) -> list[int]:
        psutil = _psutil()
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if self.temp_dir in cmd or f"--gcs_server_port={self.port}" in cmd or (
                f":{self.port}" in cmd and ("raylet" in cmd or "gcs_server" in cmd)
            ):
                out.append(p.info["pid"])
        return out

    def __exit__(self, *exc) -> None:
        psutil = _psutil()

        # Only processes that belong to this head (its temp dir / port) are stopped.
        procs = []
        for pid in self.pids():
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


# --------------------------------------------------------------------------- study
def _child(variant: str, address: str | None, steps: int) -> dict:
    env = {**os.environ, **VARIANT_ENV[variant]}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, __file__, "run", "--variant", variant, "--steps", str(steps)]
    if address:
        cmd += ["--address", address]
    env["BENCH_LAUNCH_TS"] = repr(time.time())
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    t1 = time.time()
    if p.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{p.stderr[-3000:]}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
    rec = json.loads(line)
    rec["exit"] = t1
    rec["wall_s"] = t1 - t0
    return rec


def torchrun_first_step(repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        env = {**os.environ, "BENCH_LAUNCH_TS": repr(time.time())}
        p = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", str(HERE / "torchrun_ddp.py"), "--epochs", "2",
             "--repeat", "1"],
            env=env, capture_output=True, text=True,
        )
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-3000:])
        rec = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
        out.append(rec["time_to_first_step_s"])
    return out


def _phase(rec: dict, a: str, b: str) -> float | None:
    if a not in rec or b not in rec or rec[a] is None or rec[b] is None:
        return None
    return rec[b] - rec[a]


def _machine() -> str:
    import platform

    from train_vs_torchrun import cpu_model  # bench/ is on sys.path when this runs as a script

    psutil = _psutil()
    cpu = cpu_model()
    import ray
    import torch

    return (
        f"{os.cpu_count()} CPUs ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}"
    )


def render(results: dict, torchrun: list[float], head_start: float | None, note: str) -> str:
    variants = list(results)
    lines = [SECTION, ""]
    lines.append(
        "Measured by `bench/startup_probe.py` (standalone, no raydl): a 2-worker "
        "`TorchTrainer` whose loop wraps a 64-128-64-10 MLP with `prepare_model` and "
        "takes Adam steps; each run a fresh process; launch timestamp taken just before "
        "`Popen`. Worker phases use the slower of the two ranks. Medians in seconds."
    )
    lines += ["", f"Machine: {_machine()}. {note}", ""]
    lines.append("Variants:")
    for v in variants:
        lines.append(f"- **{v}** ({len(results[v])} runs): {VARIANT_DESC[v]}")
    knobs = ", ".join(f"`{k}={v}`" for k, v in {**CORE_KNOBS, **TRAIN_KNOBS}.items())
    lines += ["", f"Env knobs of b, c, d: {knobs}.", ""]
    lines.append("| phase | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---:|" * len(variants))
    loads = [[r["load1_at_start"] for r in results[v] if "load1_at_start" in r] for v in variants]
    if any(loads):
        lines.append("| load average at launch (1 min) | " + " | ".join(
            f"{statistics.median(x):.1f}" if x else "-" for x in loads) + " |")
    for label, a, b in PHASES:
        cells = []
        for v in variants:
            vals = [x for x in (_phase(r, a, b) for r in results[v]) if x is not None]
            cells.append(f"{statistics.median(vals):.2f}" if vals else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if torchrun:
        lines.append(
            f"\nNative `torchrun --standalone --nproc_per_node=2 bench/torchrun_ddp.py`: "
            f"launch -> first step median **{statistics.median(torchrun):.2f} s** "
            f"(runs: {', '.join(f'{x:.2f}' for x in torchrun)})."
        )
    if head_start is not None:
        lines.append(
            f"Starting the local head for variant c (`ray start --head`, not counted above) "
            f"took {head_start:.1f} s."
        )
    lines.append("")
    lines.append("Reproduce: `python bench/startup_probe.py study --repeats 3 --variants a,b,c,d,f --write-results`")
    return "\n".join(lines) + "\n"


def write_section(path: Path, header: str, body: str) -> None:
    """Replace (or append) the ``header`` section of ``path``; keep everything else."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == header), None)
    if start is None:
        if not text.endswith("\n"):
            text += "\n"
        path.write_text(text + "\n" + body)
        return
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
    )
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + body + ("\n" + tail if tail else ""))


def study(args: argparse.Namespace) -> None:
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    head_start = None
    raw = []
    head = LocalHead().__enter__() if "c" in variants else None
    try:
        if head:
            head_start = head.start_s
            print(f"head at {head.address} ({head.start_s:.1f} s)", file=sys.stderr)
        for i in range(args.repeats):  # interleave variants to spread machine noise
            for v in variants:
                rec = _child(v, head.address if (head and v == "c") else None, args.steps)
                rec["variant"] = v
                results[v].append(rec)
                raw.append(rec)
                print(
                    f"[{i}] {v}: first step {rec['first_step'] - rec['launch']:.2f} s, "
                    f"wall {rec['wall_s']:.2f} s",
                    file=sys.stderr,
                )
    finally:
        if head:
            head.__exit__(None, None, None)
    tr = torchrun_first_step(args.repeats) if args.torchrun else []
    if args.raw:
        Path(args.raw).write_text(
            json.dumps({"runs": raw, "torchrun": tr, "head_start_s": head_start}, indent=1)
        )
    load = os.getloadavg()
    note = (
        f"Load average before/after: {args._load0[0]:.2f} / {load[0]:.2f} "
        "(other Ray users were active on this machine: timings are noisy)."
    )
    body = render(results, tr, head_start, note)
    print(body)
    if args.write_results:
        write_section(RESULTS, SECTION, body + args.extra_md)


# --------------------------------------------------------------------------- loop profile
def _loop_profile_fn(config: dict) -> None:
    """Per-epoch cost of feeding a tiny epoch through Ray Data vs in-memory tensors."""
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch
    from torch import nn

    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    bs, epochs = config["batch_size"], config["epochs"]
    shard = ray.train.get_dataset_shard("train")

    def step(x, y, clip=False, item=False):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        if clip:  # what raydl's loop does every step
            n = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            bool(torch.isfinite(n))
        opt.step()
        if item:
            loss.item()

    def one_epoch(make_iter, ep, **kw):
        """One epoch; returns (global samples/s, first-batch s, fetch s, compute s)."""
        t0 = time.perf_counter()
        it = iter(make_iter(ep))
        n, first, fetch, compute = 0, None, 0.0, 0.0
        while True:
            tf = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                break
            tc = time.perf_counter()
            fetch += tc - tf
            x, y = (b["x"], b["y"]) if isinstance(b, dict) else b
            step(x, y, **kw)
            compute += time.perf_counter() - tc
            n += len(y)
            if first is None:
                first = time.perf_counter() - t0
        return n * world / (time.perf_counter() - t0), first, fetch, compute

    def ray_iter(**kw):
        return lambda ep: shard.iter_torch_batches(batch_size=bs, **kw)

    def raydl_iter(ep):
        return shard.iter_torch_batches(batch_size=bs, local_shuffle_buffer_size=4 * bs,
                                        local_shuffle_seed=ep * 1009 + rank)

    # Materialise the shard once (one pass through Ray Data), then batch from tensors.
    t0 = time.perf_counter()
    rows = list(shard.iter_torch_batches(batch_size=100_000))
    X = torch.cat([r["x"] for r in rows])
    Y = torch.cat([r["y"] for r in rows])
    mat_s = time.perf_counter() - t0

    def tensor_iter(ep):
        g = torch.Generator().manual_seed(ep * 1009 + rank)
        perm = torch.randperm(len(Y), generator=g)
        return ((X[perm[i:i + bs]], Y[perm[i:i + bs]]) for i in range(0, len(Y), bs))

    variants = [
        ("iter_torch_batches (default prefetch=1)", ray_iter(), {}),
        ("iter_torch_batches + local shuffle (raydl)", raydl_iter, {}),
        ("as raydl + clip_grad_norm_(inf) + loss.item()", raydl_iter, {"clip": True, "item": True}),
        ("iter_torch_batches prefetch_batches=0", ray_iter(prefetch_batches=0), {}),
        ("iter_torch_batches prefetch_batches=4", ray_iter(prefetch_batches=4), {}),
        ("shard materialised once -> in-memory tensors (shuffled)", tensor_iter, {}),
        ("in-memory tensors + clip_grad_norm_(inf) + loss.item()", tensor_iter,
         {"clip": True, "item": True}),
    ]
    rec: dict[str, list] = {name: [] for name, _, _ in variants}
    # Round-robin: every epoch runs each variant once, so load drift hits all of them alike.
    for ep in range(epochs):
        for name, make_iter, kw in variants:
            rec[name].append(one_epoch(make_iter, ep, **kw))
    out = {}
    for name, rows_ in rec.items():
        steady = rows_[1:]
        out[name] = {
            "samples_per_sec": float(np.median([r[0] for r in steady])),
            "first_batch_ms": 1000 * float(np.median([r[1] for r in steady])),
            "fetch_s": sum(r[2] for r in steady), "compute_s": sum(r[3] for r in steady),
        }
    out["_materialise_s"] = mat_s
    if rank == 0:
        Path(config["out"]).write_text(json.dumps(out))


def loop_profile(args: argparse.Namespace) -> None:
    """TorchTrainer, 2 workers, digits train split (1078 rows) via ``datasets=``."""
    import numpy as np
    import pyarrow as pa
    import ray
    import ray.data
    import ray.train
    import ray.train.torch
    from ray.data.extensions import ArrowTensorArray
    from sklearn.datasets import load_digits

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))[: int(round(0.6 * len(y)))]
    x = ((x - x[perm].mean(0)) / np.where(x[perm].std(0) == 0, 1, x[perm].std(0))).astype(np.float32)
    xs, ys = x[perm], y[perm].astype(np.int64)
    b = np.linspace(0, len(ys), 5, dtype=int)  # 4 blocks, as raydl's to_ray_dataset(2 * workers)
    ds = ray.data.from_arrow([
        pa.table({"x": ArrowTensorArray.from_numpy(xs[i:j]), "y": ys[i:j]})
        for i, j in zip(b[:-1], b[1:])
    ])
    out = tempfile.mktemp(suffix=".json")
    ray.train.torch.TorchTrainer(
        _loop_profile_fn,
        train_loop_config={"batch_size": 64, "epochs": args.epochs, "out": out},
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(name="loop-profile",
                                       storage_path=tempfile.mkdtemp(prefix="probe-storage-")),
        datasets={"train": ds},
    ).fit()
    ray.shutdown()
    res = json.loads(Path(out).read_text())
    print(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--variant", required=True, choices=sorted(VARIANT_ENV))
    r.add_argument("--address")
    r.add_argument("--steps", type=int, default=20)
    s = sub.add_parser("study")
    s.add_argument("--variants", default="a,b,c,d")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--no-torchrun", dest="torchrun", action="store_false")
    s.add_argument("--write-results", action="store_true")
    s.add_argument("--raw", help="write raw timestamps JSON here")
    s.add_argument("--extra-md", default="", help=argparse.SUPPRESS)
    rp = sub.add_parser("report", help="re-render the section from a --raw file")
    rp.add_argument("raw")
    rp.add_argument("--write-results", action="store_true")
    rp.add_argument("--note", default="")
    rp.add_argument("--extra-md-file")
    lp = sub.add_parser("loop", help="profile the per-epoch data feeding in the worker loop")
    lp.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    if args.cmd == "loop":
        loop_profile(args)
    elif args.cmd == "report":
        raw = json.loads(Path(args.raw).read_text())
        results: dict[str, list[dict]] = {}
        for rec in raw["runs"]:
            results.setdefault(rec["variant"], []).append(rec)
        body = render(results, raw.get("torchrun", []), raw.get("head_start_s"), args.note)
        if args.extra_md_file:
            body += "\n" + Path(args.extra_md_file).read_text()
        print(body)
        if args.write_results:
            write_section(RESULTS, SECTION, body)
    elif args.cmd == "run":
        rec = run_once(args.variant, args.address, args.steps)
        print(json.dumps(rec))
    else:
        args._load0 = os.getloadavg()
        study(args)


if __name__ == "__main__":
    main()
