"""`raydl continual` on a real local Ray: the replay bar on class-incremental Split-Digits (one
seed; bench/continual_bench.py runs every strategy over 3 seeds), its results read back from
W&B, and a stream continued by a new process from the previous experience's model, replay buffer
and Fisher."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from raydl.continual import EXTRAS
from raydl.continual.ewc import PREFIX
from raydl.continual.replay import read_buffer
from raydl.continual.run import HEATMAP, REPORT, RESULT, STATE, run_stream
from raydl.continual.stream import build_stream
from raydl.spec import load_spec

CONFIGS = Path(__file__).parent.parent / "configs"


def _wandb_summary(run_dir: str) -> dict:
    wandb = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    out = subprocess.run([wandb, "leet", "inspect", "--summary", "--json", run_dir], capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_replay_meets_the_split_digits_bar_and_its_figures_reach_wandb(ray_local, tmp_path):
    spec = load_spec(CONFIGS / "continual_split_digits.yaml", [f"run.storage_path={tmp_path}", "run.name=split"])
    result = run_stream(spec)
    s = result.summary
    R = s["accuracy_matrix"]
    print(f"replay on split_digits: average accuracy {s['average_accuracy']:.4f}, forgetting {s['forgetting']:.4f}, "
          f"backward transfer {s['backward_transfer']:.4f}; matrix {R}")
    assert result.trained == [1, 2, 3, 4, 5] and len(R) == 5 and all(len(r) == 5 for r in R)
    assert all(R[i][j] == 0.0 for i in range(5) for j in range(i + 1, 5))  # unseen classes are never predicted
    assert s["average_accuracy"] >= 0.88
    saved = json.loads((result.root / RESULT).read_text())
    assert saved["average_accuracy"] == pytest.approx(s["average_accuracy"])
    assert (result.root / HEATMAP).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (result.root / REPORT).read_text()
    logged = _wandb_summary(s["wandb_dir"])["summary"]
    for key in ("average_accuracy", "forgetting", "backward_transfer"):
        assert logged[key] == pytest.approx(s[key], rel=1e-9), key
    assert [logged[f"accuracy/exp{j + 1}"] for j in range(5)] == pytest.approx(R[-1])
    assert logged["accuracy_heatmap"]["format"] == "png" and logged["accuracy_matrix"]["nrows"] == 5


def _write_spec(tmp_path: Path, strategy: dict) -> Path:
    raw = yaml.safe_load((CONFIGS / "continual_permuted_digits.yaml").read_text())
    raw["run"] = {"name": "permuted", "storage_path": str(tmp_path / "runs")}
    raw["stream"] = {"scenario": "permuted_digits", "experiences": 3, "seed": 0}
    raw["continual"] = strategy
    raw["training"] = {"epochs": 5, "batch_size": 64, "seed": 0}
    raw["tracking"] = {"backend": "none"}
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(spec: Path, *args: str) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-m", "raydl.cli", "continual", str(spec), "--json", *args],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.bar
@pytest.mark.parametrize("strategy", [{"strategy": "replay", "size": 300}, {"strategy": "ewc", "weight": 50.0, "fisher_samples": 300}],
                         ids=["replay", "ewc"])
def test_a_new_process_continues_the_stream_from_the_previous_model_buffer_and_fisher(tmp_path, strategy):
    spec_path = _write_spec(tmp_path, strategy)
    first = _cli(spec_path, "--until", "2")
    assert first["trained"] == [1, 2] and len(first["accuracy_matrix"]) == 2
    root = Path(first["root"])
    exp2 = Path(first["model_dirs"][1])
    second = _cli(spec_path)  # a new process: experience 3 only
    assert second["trained"] == [3] and len(second["accuracy_matrix"]) == 3
    assert second["accuracy_matrix"][:2] == first["accuracy_matrix"]
    exp3 = Path(second["model_dirs"][2])
    assert yaml.safe_load((exp3 / "spec.yaml").read_text())["finetune"]["from"] == str(exp2)
    assert len(json.loads((root / STATE).read_text())["done"]) == 3
    pools = [e.pool.num_rows for e in build_stream(load_spec(spec_path)).experiences]
    if strategy["strategy"] == "replay":
        buf2, seen2 = read_buffer(exp2)
        buf3, seen3 = read_buffer(exp3)
        assert (buf2.num_rows, seen2) == (300, pools[0] + pools[1])
        assert (buf3.num_rows, seen3) == (300, sum(pools))
        assert second["train_rows"][2] == pools[2] + 300  # experience 3 trained on its rows and experience 2's buffer
    else:
        f2 = torch.load(exp2 / EXTRAS, weights_only=True)
        f3 = torch.load(exp3 / EXTRAS, weights_only=True)
        assert set(f2) == set(f3) and all(k.startswith(PREFIX) for k in f3)
        # plain EWC: experience 3's Fisher is its own plus experience 2's (itself 1's plus 2's)
        assert all(bool((f3[k] >= f2[k] - 1e-6).all()) for k in f2)
        assert sum(float((f3[k] - f2[k]).sum()) for k in f2) > 0
    # a third call has nothing left to train, and says so in its results
    assert _cli(spec_path)["trained"] == []
