"""Every shipped config is a test case: it validates, runs one short epoch, and meets its bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raydl.launch import resolve, train
from raydl.spec import load_spec

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))

# Quality bars of the shipped examples (the acceptance); regression reports R².
BARS = {
    "digits_mlp.yaml": ("test_accuracy", 0.96),
    "breast_cancer_logreg.yaml": ("test_accuracy", 0.95),
    "xor_mlp.yaml": ("test_accuracy", 0.95),
    "diabetes_regression.yaml": ("test_r2", 0.30),  # least squares: 0.339 on this split
    # vision zoo (#8); bars whose runs take minutes are checked by bench/zoo_vision.py (BENCHED)
    "cnn_digits.yaml": ("test_accuracy", 0.98),
    "resnet_digits.yaml": ("test_accuracy", 0.98),
    "mobilenet_v1_digits.yaml": ("test_accuracy", 0.97),
    "mobilenet_v2_digits.yaml": ("test_accuracy", 0.97),
    "unet_shapes.yaml": ("test_miou", 0.85),
    "detection_shapes.yaml": ("test_map50", 0.70),  # the goal
    "focal_digits_imbalanced.yaml": ("test_recall", 0.85),  # macro recall (0.87 measured); minority recall vs CE: bench
    # Sequence and graph rows (zoo-seq); figures in bench/RESULTS.md ("Model zoo: sequences and graphs").
    "cnn1d_waveforms.yaml": ("test_accuracy", 0.95),
    "rnn_digits_rows.yaml": ("test_accuracy", 0.95),
    "lstm_digits_rows.yaml": ("test_accuracy", 0.95),
    "gru_majority.yaml": ("test_accuracy", 0.95),  # variable-length task: no bar in the issue; ours
    "transformer_digits_rows.yaml": ("test_accuracy", 0.95),
    "transformer_majority.yaml": ("test_accuracy", 0.95),  # variable-length task: ours
    "transformer_grammar.yaml": ("test_ppl_reduction", 0.5),  # perplexity at most half the unigram baseline's
    "gcn_karate.yaml": ("test_accuracy", 0.7),  # members never used in training
    "gcn_graph_shapes.yaml": ("test_accuracy", 0.9),
    "gat_graph_shapes.yaml": ("test_accuracy", 0.9),
    # Metric, few-shot, multi-task and transfer rows (zoo-metric); figures in bench/RESULTS.md ("Model zoo: metric ...").
    # test_knn_accuracy is scored within each evaluation batch; the split-exact kNN (test rows against train rows,
    # raydl.fewshot.knn_accuracy) is checked >= 0.95 by tests/test_zoo_metric_slow.py and bench/zoo_metric.py.
    "metric_triplet_digits.yaml": ("test_knn_accuracy", 0.95),
    "metric_siamese_digits.yaml": ("test_knn_accuracy", 0.95),
    "metric_simclr_digits.yaml": ("test_knn_accuracy", 0.85),  # in-batch 0.899; vs train rows 0.972 (bench)
    "fewshot_digits.yaml": ("test_knn_accuracy", 0.95),  # on digits 0-4; the episodes on 5-9: bench/zoo_metric.py
    "multitask_digits.yaml": ("test_digit_accuracy", 0.96),  # and parity >= 0.97, ink R^2 >= 0.9: the slow test
    "transfer_pretrain_digits.yaml": ("test_accuracy", 0.98),
    "transfer_finetune_digits.yaml": ("test_accuracy", 0.9),  # and vs from scratch: the slow test
    "tune_digits_asha.yaml": ("test_accuracy", 0.96),  # the search's best trial (raydl tune, #10)
    # continual streams (#9): average accuracy over the experiences after the last one (continual.json)
    "continual_split_digits.yaml": ("average_accuracy", 0.88),  # replay, 500-row buffer
    "continual_permuted_digits.yaml": ("average_accuracy", 0.88),  # replay
    "continual_rotated_digits.yaml": ("average_accuracy", 0.0),  # reported (bench/RESULTS.md)
    "continual_split_digits_tasks.yaml": ("average_accuracy", 0.0),  # reported
}
# Configs whose bar is checked elsewhere (the runs take minutes here): where.
CHECKED_ELSEWHERE = {
    # each run is a Ray Train start-up (about 20 CPU-seconds here), so a test that trains a shipped config as
    # it is checks that config's bar too
    "digits_mlp.yaml": "tests/test_calibration_trained.py (the model it calibrates)",
    "xor_mlp.yaml": "tests/test_local_cluster.py (trained on the `raydl cluster up` head)",
    "cnn_digits.yaml": "tests/test_zoo_vision_slow.py (with its int8 copies)",
    **dict.fromkeys(["resnet_digits.yaml", "mobilenet_v1_digits.yaml", "mobilenet_v2_digits.yaml", "unet_shapes.yaml",
                     "detection_shapes.yaml", "focal_digits_imbalanced.yaml"], "bench/zoo_vision.py"),
    **dict.fromkeys(["rnn_digits_rows.yaml", "gru_majority.yaml", "transformer_digits_rows.yaml",
                     "transformer_majority.yaml", "transformer_grammar.yaml", "gcn_graph_shapes.yaml",
                     "gat_graph_shapes.yaml"], "bench/zoo_seq.py"),
    **dict.fromkeys(["metric_siamese_digits.yaml", "metric_simclr_digits.yaml", "fewshot_digits.yaml"], "bench/zoo_metric.py"),
    **dict.fromkeys(["metric_triplet_digits.yaml", "multitask_digits.yaml", "transfer_pretrain_digits.yaml",
                     "transfer_finetune_digits.yaml"], "tests/test_zoo_metric_slow.py"),
    "tune_digits_asha.yaml": "bench/tune_bench.py (the search, and its best spec retrained with raydl train)",
    **dict.fromkeys(["continual_split_digits.yaml", "continual_permuted_digits.yaml", "continual_rotated_digits.yaml",
                     "continual_split_digits_tasks.yaml"],
                    "tests/test_continual_stream.py (stream built), tests/test_continual_run.py (split bar), bench/continual_bench.py"),
}
# Configs that start from another config's model directory (finetune.from): validated against a
# model directory made here from the source config's data and model (tests/model_dirs.py).
FINETUNE_SOURCES = {"transfer_finetune_digits.yaml": "transfer_pretrain_digits.yaml"}
FEW_LABELLED = {"transfer_finetune_digits.yaml": 50}  # 10 train images of each of 5 classes


def _overrides(path: Path, tmp_path: Path) -> list[str]:
    source = FINETUNE_SOURCES.get(path.name)
    if source is None:
        return []
    from model_dirs import model_dir

    src = load_spec(path.parent / source)
    mdir = model_dir(tmp_path / "source", source=src.data.source, data=src.data.model_dump(),
                     model={"name": src.model.name, **src.model.params})
    return [f"finetune.from={mdir}"]


def test_every_config_has_a_quality_bar():
    assert {c.name for c in CONFIGS} == set(BARS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path, tmp_path):
    spec = load_spec(path, _overrides(path, tmp_path))
    prepared = resolve(spec)
    if path.name in FEW_LABELLED:  # a few labelled train rows on purpose
        assert len(prepared.train) == FEW_LABELLED[path.name] and len(prepared.val) > 0
    else:
        assert len(prepared.train) > len(prepared.val) > 0


def assert_meets_bar(config: str, metrics: dict, model_dir) -> None:
    """A run of shipped config `config` (as shipped) meets its bar, and its model directory says so."""
    metric, bar = BARS[config]
    print(f"{config}: {metric}={metrics[metric]:.4f} (bar {bar}) after {metrics['epochs_run']} epochs")
    assert metrics[metric] >= bar
    saved = json.loads((Path(model_dir) / "metrics.json").read_text())
    assert saved["final"][metric] == pytest.approx(metrics[metric])
    assert len(saved["history"]) == metrics["epochs_run"]


@pytest.mark.slow
@pytest.mark.parametrize("path", [c for c in CONFIGS if c.name not in CHECKED_ELSEWHERE], ids=lambda p: p.name)
def test_config_meets_its_bar(path, ray_local, storage):
    spec = load_spec(path, [f"run.storage_path={storage}", "tracking.backend=none"])
    result = train(spec)
    assert_meets_bar(path.name, result.metrics, result.model_dir)
