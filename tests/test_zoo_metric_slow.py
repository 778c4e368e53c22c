"""The metric-learning, multi-task and transfer bars under `raydl train` (2 CPU workers, DDP, the
shared local Ray): kNN accuracy of a triplet embedding, every head of the multi-task model, and a
CNN pretrained on digits 0-4 fine-tuned on 10 images per class of 5-9 against the same spec from
scratch. The SimCLR and Siamese rows and the few-shot episodes are measured by bench/zoo_metric.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydl.fewshot import knn_accuracy
from raydl.inference import evaluate, predict
from raydl.launch import train
from raydl.spec import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.bar]
CONFIGS = Path(__file__).parent.parent / "configs"


def _train(name: str, storage: str, *overrides: str):
    return train(load_spec(CONFIGS / name, [f"run.storage_path={storage}", "tracking.backend=none", *overrides]))


def test_triplet_embedding_knn_accuracy(ray_local, storage, tmp_path):
    result = _train("metric_triplet_digits.yaml", storage)
    knn = knn_accuracy(result.model_dir)
    print(f"metric_triplet_digits: kNN accuracy (test vs train) {knn:.4f}, in-batch {result.metrics['test_knn_accuracy']:.4f}")
    assert knn >= 0.95 and result.metrics["test_knn_accuracy"] >= 0.95
    assert evaluate(result.model_dir, "digits_metric", "test")["test_knn_accuracy"] == pytest.approx(
        result.metrics["test_knn_accuracy"], abs=0.02)  # scored in other batches (one rank's part vs the whole)
    import pyarrow.parquet as pq

    emb = pq.read_table(predict(result.model_dir, "digits_metric", tmp_path / "e.parquet")).column("embedding")
    assert len(emb) == 1797 and len(emb[0]) == 64


def test_multitask_heads_meet_their_bars(ray_local, storage):
    m = _train("multitask_digits.yaml", storage).metrics
    print("multitask_digits:", {k: round(v, 4) for k, v in m.items() if k.startswith("test_")})
    assert m["test_digit_accuracy"] >= 0.96
    assert m["test_parity_accuracy"] >= 0.97
    assert m["test_ink_r2"] >= 0.9


@pytest.fixture(scope="module")
def transfer(ray_local, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("transfer"))
    pre = _train("transfer_pretrain_digits.yaml", storage)
    source = f"finetune.from={pre.model_dir}"
    tuned = _train("transfer_finetune_digits.yaml", storage, source)
    scratch = _train("transfer_finetune_digits.yaml", storage, source, "finetune=null", "run.name=transfer-scratch-digits")
    print(f"transfer: pretrained (0-4) {pre.metrics['test_accuracy']:.4f}; on 5-9 with 10 per class: fine-tuned "
          f"{tuned.metrics['test_accuracy']:.4f}, from scratch {scratch.metrics['test_accuracy']:.4f}")
    return pre.metrics, tuned.metrics, scratch.metrics


def test_transfer_pretrains_and_fine_tunes(transfer):
    # Not "fine-tuned > scratch": at training seeds 0/1/2 the difference is +2.2 / -2.2 / +0.5 points,
    # within the seed noise of 50 training images (bench/RESULTS.md); one seed would be a chosen result.
    pre, tuned, scratch = transfer
    assert pre["test_accuracy"] >= 0.98
    assert tuned["test_accuracy"] >= 0.9 and scratch["test_accuracy"] >= 0.9


@pytest.mark.xfail(reason="not met: fine-tuned minus scratch is +2.2 / -2.2 / +0.5 points at training seeds 0-2 "
                          "(bench/RESULTS.md); scratch already reaches 0.91-0.96 on 50 images and all 535 labelled "
                          "5-9 rows reach only 0.984-0.989, so 5 points has no room", strict=False)
def test_transfer_by_five_points(transfer):
    _, tuned, scratch = transfer
    assert tuned["test_accuracy"] >= scratch["test_accuracy"] + 0.05
