"""Benchmark: the vision rows of the model zoo (issue #8), trained with `raydl train` (2 CPU workers).

Trains each shipped vision config with the real CLI (`raydl train CONFIG --json`, tracking off)
and records its bar metric, the epochs, wall time and steady-state samples/s; counts parameters
(MobileNets vs the plain CNN); compares focal loss with cross-entropy on `digits_imbalanced`
(minority-class recall on the test split, over several data seeds); and quantises the digits MLP
and the CNN (`raydl.quantize`: dynamic/static int8, fp16, bf16) with accuracy, weight size and
per-sample CPU latency at batch 1 and 256, before and after.

Usage:
  python bench/zoo_vision.py                       # everything (about 20-40 minutes on 2 cores)
  python bench/zoo_vision.py --only cnn_digits.yaml,unet_shapes.yaml --no-quant --no-focal

Rewrites only the ``## Model zoo: vision`` section of bench/RESULTS.md (``--no-write`` to skip) and
writes the raw figures to bench/zoo_vision_results.json. A script, not a test: it asserts nothing,
it reports each bar as met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from startup_probe import write_section  # noqa: E402
from train_vs_torchrun import machine  # noqa: E402

RESULTS = HERE / "RESULTS.md"
RAW = HERE / "zoo_vision_results.json"
SECTION = "## Model zoo: vision"
BARS = {  # config -> (metric, bar); the detection bar is the goal
    "cnn_digits.yaml": ("test_accuracy", 0.98),
    "resnet_digits.yaml": ("test_accuracy", 0.98),
    "mobilenet_v1_digits.yaml": ("test_accuracy", 0.97),
    "mobilenet_v2_digits.yaml": ("test_accuracy", 0.97),
    "unet_shapes.yaml": ("test_miou", 0.85),
    "detection_shapes.yaml": ("test_map50", 0.70),
}
FOCAL = "focal_digits_imbalanced.yaml"
FOCAL_SEEDS = (0, 1, 2)


def load1() -> float:
    return os.getloadavg()[0]


ENV = dict(os.environ)


def raydl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raydl.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout)


def raydl_train(config: str, storage: str, overrides: list[str] = ()) -> dict:
    cmd = ["train", str(ROOT / "configs" / config), "--json", f"run.storage_path={storage}", "tracking.backend=none", *overrides]
    load, t0 = load1(), time.time()
    p = raydl(*cmd, timeout=3600)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip().splitlines()[-3:]}")
    out = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    return {"command": " ".join(["raydl train", f"configs/{config}", *overrides]), "wall_s": wall, "load_at_start": load,
            "model_dir": out["model_dir"], "metrics": out["metrics"]}


def parameter_counts() -> dict[str, int]:
    import yaml

    from raydl.batches import FixedShape
    from raydl.models import build_model
    from raydl.spec import ModelSpec

    counts = {}
    for config in ("cnn_digits.yaml", "resnet_digits.yaml", "mobilenet_v1_digits.yaml", "mobilenet_v2_digits.yaml"):
        model = yaml.safe_load((ROOT / "configs" / config).read_text())["model"]
        net = build_model(ModelSpec(**model), FixedShape("image", (1, 8, 8)), 10)
        counts[config] = sum(p.numel() for p in net.parameters())
    return counts


def minority_recall(model_dir: str) -> dict:
    """Recall of class 1 (the nines) and of class 0 on the test split the run held out."""
    import numpy as np

    from raydl.data import prepare
    from raydl.model_dir import load_model

    model = load_model(model_dir)
    test = prepare(model.spec.data).test
    pred = model.task.logits(model.forward({"x": test.X})).argmax(1).numpy()
    y = np.asarray(test.y)
    return {"minority_recall": float((pred[y == 1] == 1).mean()), "majority_recall": float((pred[y == 0] == 0).mean()),
            "minority_test_rows": int((y == 1).sum()), "test_rows": len(y)}


def focal_vs_ce(storage: str) -> list[dict]:
    rows = []
    for seed in FOCAL_SEEDS:
        for loss in ("focal", "cross_entropy"):
            r = raydl_train(FOCAL, storage, [f"loss.name={loss}", f"data.seed={seed}", f"run.name=focal-{loss}-{seed}"])
            rows.append({"loss": loss, "seed": seed, **minority_recall(r["model_dir"]), "wall_s": r["wall_s"]})
            print(f"  {loss} seed {seed}: {rows[-1]}", flush=True)
    return rows


def quantisation(model_dirs: dict[str, str], out_root: str) -> list[dict]:
    from raydl.quantize import quantize_dir

    rows = []
    for name, mdir in model_dirs.items():
        for method in ("dynamic", "static", "fp16", "bf16"):
            r = quantize_dir(mdir, Path(out_root) / f"{name}-{method}", method)
            rows.append({"model": name, "method": method, "accuracy_before": r["before"]["test_accuracy"],
                         "accuracy_after": r["after"]["test_accuracy"], "bytes_before": r["weights_bytes"]["before"],
                         "bytes_after": r["weights_bytes"]["after"], "latency": r["latency_ms_per_sample"]})
            print(f"  {name} {method}: {rows[-1]}", flush=True)
    return rows


def torchao_latency(mlp_dir: str) -> dict | None:
    """The same MLP with torchao's int8 dynamic quantisation, if torchao is importable (not a dependency)."""
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception as e:  # noqa: BLE001
        return {"error": f"torchao not importable: {type(e).__name__}"}
    import copy

    from raydl.data import prepare
    from raydl.model_dir import load_model
    from raydl.quantize import latency_per_sample_ms

    model = load_model(mlp_dir)
    cols = {"x": prepare(model.spec.data).test.X}
    net = copy.deepcopy(model.module)
    quantize_(net, Int8DynamicActivationInt8WeightConfig())
    return {f"batch_{b}": latency_per_sample_ms(net, model.kind, cols, b) for b in (1, 256)}


def render(res: dict) -> str:
    m = res["machine"]
    lines = [SECTION, "",
             f"Measured by `bench/zoo_vision.py` ({res['started']} UTC): each config trained once with `raydl train CONFIG --json "
             "run.storage_path=... tracking.backend=none` (2 CPU workers) against one local Ray head started by `raydl cluster up --num-cpus 3` (`--embedded`: an embedded Ray per run), one run after another. "
             f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']}, Python {m['python']}, torch {m['torch']}, ray {m['ray']}. "
             "The machine was shared with other agents' test runs: wall times and samples/s are noisy (the 1-minute load "
             "average at each start is given); the metrics are not (seeded data, split and training).", "",
             "| config | metric | value | bar | met | epochs | wall s | samples/s | load |", "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for config, r in res["configs"].items():
        metric, bar = BARS[config]
        v = r["metrics"][metric]
        lines.append(f"| {config} | {metric} | {v:.4f} | {bar} | {'yes' if v >= bar else '**no**'} | {r['metrics']['epochs_run']} | "
                     f"{r['wall_s']:.0f} | {r['metrics']['samples_per_sec']:.0f} | {r['load_at_start']:.1f} |")
    if res.get("params"):
        cnn = res["params"]["cnn_digits.yaml"]
        lines += ["", "Parameters (10 classes, 1x8x8 input):", "", "| config | parameters | vs cnn |", "|---|---:|---:|"]
        lines += [f"| {c} | {n:,} | {n / cnn:.2f}x |" for c, n in res["params"].items()]
    if res.get("focal"):
        lines += ["", f"Focal loss vs cross-entropy on `digits_imbalanced` ({FOCAL}, MLP 64, gamma 2, alpha 0.75; the nines "
                  "are the minority class, about 2.5% of rows): recall on each seed's test split.", "",
                  "| loss | data seed | minority recall | majority recall | minority test rows |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['loss']} | {r['seed']} | {r['minority_recall']:.3f} | {r['majority_recall']:.4f} | {r['minority_test_rows']} |"
                  for r in res["focal"]]
        for loss in ("focal", "cross_entropy"):
            vals = [r["minority_recall"] for r in res["focal"] if r["loss"] == loss]
            lines.append(f"| **{loss}, mean** | | **{statistics.mean(vals):.3f}** | | |")
    if res.get("quant"):
        lines += ["", "Post-training quantisation (`raydl quantize`; torch.ao eager int8 kernels, x86 engine): test accuracy, "
                  "weights.pt size, median CPU latency per sample on one thread.", "",
                  "| model | method | accuracy before | after | drop (points) | bytes before | after | ms/sample b1 before | after | b256 before | after |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["quant"]:
            la = r["latency"]
            lines.append(f"| {r['model']} | {r['method']} | {r['accuracy_before']:.4f} | {r['accuracy_after']:.4f} | "
                         f"{100 * (r['accuracy_before'] - r['accuracy_after']):.2f} | {r['bytes_before']:,} | {r['bytes_after']:,} | "
                         f"{la['batch_1']['before']:.4f} | {la['batch_1']['after']:.4f} | {la['batch_256']['before']:.5f} | {la['batch_256']['after']:.5f} |")
        if res.get("torchao"):
            lines += ["", f"torchao int8 dynamic (Int8DynamicActivationInt8WeightConfig) on the same MLP, ms/sample: {res['torchao']}"]
    if res.get("notes"):
        lines += ["", *(f"- {note}" for note in res["notes"])]
    lines += ["", "Reproduce: `python bench/zoo_vision.py` (raw figures in `bench/zoo_vision_results.json`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated configs to train (default: every vision config)")
    ap.add_argument("--no-focal", action="store_true")
    ap.add_argument("--no-quant", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--embedded", action="store_true", help="an embedded Ray per run instead of one local head for all runs")
    ap.add_argument("--raw", type=Path, default=RAW, help="where the raw figures go (and are merged from, with --only)")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="also take these raw files' figures (later ones win)")
    args = ap.parse_args()
    configs = [c for c in args.only.split(",") if c] if args.only is not None else list(BARS)
    res = json.loads(args.raw.read_text()) if args.raw.exists() and args.only is not None else {}
    res.update({"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine()})
    res.setdefault("configs", {})
    with tempfile.TemporaryDirectory(prefix="zoo-vision-bench-") as storage:
        if not args.embedded:  # one local Ray head (its own RAYDL_HOME) that every `raydl train` connects to
            ENV["RAYDL_HOME"] = str(Path(storage) / "raydl-home")
            up = raydl("cluster", "up", "--num-cpus", "3")
            if up.returncode != 0:
                raise RuntimeError(f"raydl cluster up failed: {up.stderr.strip()[-300:]}")
        try:
            run_all(args, configs, res, storage)
        finally:
            if not args.embedded:
                raydl("cluster", "down")
    for extra in args.merge:  # e.g. runs made at the same time into another raw file
        other = json.loads(extra.read_text())
        res["configs"] = {**res.get("configs", {}), **other.pop("configs", {})}
        res.update({k: v for k, v in other.items() if k not in ("started", "machine")})
    args.raw.write_text(json.dumps(res, indent=2))
    if not args.no_write:
        write_section(RESULTS, SECTION, render(res))
    print(render(res))


def run_all(args: argparse.Namespace, configs: list[str], res: dict, storage: str) -> None:
    cnn_dir = None
    for config in configs:
        print(f"training {config} ...", flush=True)
        r = raydl_train(config, storage)
        res["configs"][config] = {k: v for k, v in r.items() if k != "model_dir"}
        metric, bar = BARS[config]
        print(f"  {metric} = {r['metrics'][metric]:.4f} (bar {bar}), {r['wall_s']:.0f} s", flush=True)
        if config == "cnn_digits.yaml":
            cnn_dir = r["model_dir"]
    res["params"] = parameter_counts()
    if not args.no_focal:
        res["focal"] = focal_vs_ce(storage)
    if not args.no_quant:
        print("quantising ...", flush=True)
        mlp = raydl_train("digits_mlp.yaml", storage)
        if cnn_dir is None:
            cnn_dir = raydl_train("cnn_digits.yaml", storage)["model_dir"]
        res["quant"] = quantisation({"digits_mlp": mlp["model_dir"], "cnn_digits": cnn_dir}, storage)
        res["torchao"] = torchao_latency(mlp["model_dir"])


if __name__ == "__main__":
    main()
