"""Acceptance 1: the shipped digits pipeline, end to end on a real local Ray, a real registry, a
real webhook and offline W&B runs read back.

    01-baseline      -> the first champion (bootstrap), promoted
    02-shifted       -> drift -> EWC retrain from the champion -> passes the gate -> promoted
    03-like-shifted  -> no drift -> skipped
    04-bad-retrain   -> drift -> naive fine-tuning on classes 0-4 forgets 5-9 -> rejected; production stays

The replay strategy (branch `continual`) is not exercised here: the pipeline passes any registered
strategy name through to the job spec's `continual:` section.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_env import Webhook, pipeline_file

from raydl.model_registry.api import ModelRegistry
from raydl.pipeline.run import STEPS, run_pass
from raydl.pipeline.scenario import digits_windows
from raydl.pipeline.spec import load_pipeline

pytestmark = pytest.mark.slow


def _wandb_summary(run_dir: Path) -> dict:
    """An offline W&B run read back (wandb leet inspect), as STACK_NOTES describes."""
    exe = Path(sys.executable).with_name("wandb")
    r = subprocess.run([str(exe), "leet", "inspect", "--summary", "--json", str(run_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_digits_scenario_end_to_end(tmp_path, ray_local):
    digits_windows(tmp_path / "windows", seed=0)
    hook = Webhook()
    try:
        p = pipeline_file(tmp_path, tmp_path / "windows", notify={"webhook": hook.url},
                          tracking={"backend": "wandb", "mode": "offline", "project": "raydl-pipelines"})
        spec = load_pipeline(p)
        said: list[str] = []
        first, second, third = (run_pass(spec, say=said.append) for _ in range(3))
        bad = load_pipeline(p, ["retrain.strategy=naive", "retrain.params={}",
                                "retrain.overrides=[training.epochs=20, optimizer.lr=0.01]"])
        fourth = run_pass(bad, say=said.append)
        idle = run_pass(spec)
    finally:
        hook.close()
    print("\n".join(said))
    assert [r["outcome"] for r in (first, second, third, fourth)] == ["promoted", "promoted", "skipped", "rejected"], said
    assert idle["outcome"] == "idle"
    assert (first["registry_version"], second["registry_version"], fourth["production"]) == (1, 2, 2)
    assert any("challenger.old.accuracy" in r and "misses" in r for r in fourth["reasons"]), fourth["reasons"]
    assert any(r.startswith("drift/") and "no drift" in r for r in third["reasons"])

    with ModelRegistry(tmp_path / "registry") as reg:
        prod = reg.show("digits-continual@production")
        assert [v["version"] for v in reg.history("digits-continual")["versions"]] == [1, 2]
    assert prod["version"] == 2 and prod["parent"] == "digits-continual@1"
    lin = prod["lineage"]
    assert lin["steps"] == list(STEPS) and lin["pipeline_pass"] == "digits-continual#2"
    assert lin["trigger"]["action"] == "retrain" and any(r.startswith("drift/features") for r in lin["trigger"]["reasons"])
    assert Path(lin["drift_report"]["json"]).is_file() and Path(lin["drift_report"]["html"]).is_file()
    assert Path(lin["training_run"], "result.json").is_file() and lin["strategy"] == "ewc"
    assert lin["decision"]["action"] == "promote" and lin["calibration"] == "temperature"
    m = lin["metrics"]
    assert m["challenger.new.accuracy"] >= m["champion.new.accuracy"] + 0.02
    assert m["challenger.old.accuracy"] >= m["champion.old.accuracy"] - 0.03

    assert [b["outcome"] for b in hook.bodies] == ["promoted", "promoted", "skipped", "rejected"]
    assert hook.bodies[3]["production"] == 2 and hook.bodies[3]["decision"]["action"] == "reject"

    for r in (first, second, third, fourth):  # each pass: a W&B run of job type `pipeline`, read back
        lineage = json.loads(Path(r["pass_dir"], "lineage.json").read_text())
        runs = sorted(Path(r["pass_dir"], "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and runs[0].name.endswith(lineage["wandb_run_id"])
    run = _wandb_summary(sorted(Path(fourth["pass_dir"], "wandb").glob("offline-run-*"))[0])
    assert run["name"] == "digits-continual-pass4" and run["state"] == "finished"
    assert run["summary"]["outcome"] == "rejected" and run["summary"]["decision"] == "reject"
    assert run["summary"]["drift/report"]["_type"] == "html-file"  # the drift report, linked
    cfg = run["config"]  # the lineage: the training run (and its W&B run) and the decision with reasons
    assert Path(cfg["training"]["run_dir"]).is_dir() and cfg["decision"]["action"] == "reject"
    assert any("misses" in r for r in cfg["decision"]["reasons"])
    keep = ("accuracy", "f1", "ece")
    for i, r in ((1, first), (2, second), (4, fourth)):  # the figures for bench/RESULTS.md
        m = json.loads(Path(r["pass_dir"], "metrics.json").read_text())
        print(f"pass {i} metrics:", {k: round(v, 4) for k, v in m.items() if k.endswith(keep) or k == "forgetting"})
