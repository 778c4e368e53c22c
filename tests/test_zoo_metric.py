"""Metric learning, few-shot, multi-task and transfer rows of the zoo, fast (no Ray): the losses
against hand-worked values, seeded augmentations, the multitask task's weighted loss and additive
statistics, the digits cuts, few-shot episodes and `raydl fewshot`'s bad input, and the transfer
config's bad input (each one line, exit 2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from model_dirs import model_dir

from raydl.batches import FixedShape, build_kind
from raydl.cli import main
from raydl.data import prepare
from raydl.errors import DataError, SpecError
from raydl.fewshot import check_episode, episode_accuracy, fewshot
from raydl.models import build_model
from raydl.models.embedding import augment
from raydl.spec import DataSpec, LossSpec, ModelSpec
from raydl.tasks import build_task
from raydl.tasks.embedding import contrastive_loss, infonce_loss, knn_predict, triplet_loss

CONFIGS = Path(__file__).parent.parent / "configs"
IMAGE = FixedShape("image", (1, 8, 8))
EMBEDDER = {"name": "embedder", "channels": [8, 16]}


def test_contrastive_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0, 1 the same class and the same point
    y = torch.tensor([0, 0, 1])
    # positives: (0,1) at distance 0; negatives (0,2), (1,2) at sqrt(2): max(0, 2 - sqrt 2)^2 each
    assert contrastive_loss(z, y, margin=2.0).item() == pytest.approx((2 - math.sqrt(2)) ** 2, abs=1e-6)
    assert contrastive_loss(z, y, margin=1.0).item() == pytest.approx(0.0, abs=1e-6)  # negatives beyond the margin


def test_triplet_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # anchor 0's positive (1) is far, its negative (2) near
    y = torch.tensor([0, 0, 1])
    d = math.sqrt(2)
    # active triplets: (0,1,2): d - 0 + m; (1,0,2): d - d + m = m; mean over the active ones
    m = 0.5
    assert triplet_loss(z, y, m).item() == pytest.approx(((d + m) + m) / 2, abs=1e-5)
    far = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert triplet_loss(far, y, 0.5).item() == 0.0  # every triplet satisfied
    torch.manual_seed(0)
    big, labels = torch.randn(40, 8), torch.randint(0, 4, (40,))  # anchors taken a few at a time: the same mean
    assert triplet_loss(big, labels, 0.3, chunk_elems=1).item() == pytest.approx(triplet_loss(big, labels, 0.3).item(), rel=1e-6)


def test_infonce_with_views_is_simclr_cross_entropy():
    torch.manual_seed(0)
    z = torch.randn(8, 4)  # 4 images x 2 views
    y = torch.zeros(4, dtype=torch.long)
    n = F.normalize(z, dim=1)
    logits = n @ n.T / 0.5
    logits.fill_diagonal_(float("-inf"))
    expected = F.cross_entropy(logits, torch.tensor([4, 5, 6, 7, 0, 1, 2, 3]))
    assert infonce_loss(z, y, 0.5).item() == pytest.approx(expected.item(), rel=1e-5)
    # without views the positives are the same-class rows; one class alone: every other row is a positive
    assert infonce_loss(z[:4], torch.tensor([0, 0, 1, 1]), 0.5).item() > 0


def test_knn_predict_by_hand():
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    assert knn_predict(ref, y, np.array([[1.0, 0.05], [0.05, 1.0]]), k=3).tolist() == [0, 1]
    assert knn_predict(ref, y, ref, k=1, leave_one_out=True).tolist() == [0, 0, 1, 1]


def test_augmentations_are_seeded_and_views_follow_seed_rank_and_step():
    x = torch.randn(6, 1, 8, 8)
    a, b = augment(x, 7, shift=1, crop=6, noise=0.3), augment(x, 7, shift=1, crop=6, noise=0.3)
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, augment(x, 8, 1, 6, 0.3))
    torch.manual_seed(0)
    m = build_model(ModelSpec(**EMBEDDER, views="simclr"), IMAGE, 16)
    torch.manual_seed(0)
    m2 = build_model(ModelSpec(**EMBEDDER, views="simclr"), IMAGE, 16)
    m.eval(), m2.eval()
    with torch.no_grad():
        assert m({"x": x}).shape == (6, 16)  # evaluation: the image as it is
        m.train(), m2.train()
        m.net[1][1].momentum = m2.net[1][1].momentum = 0.0  # keep BN running stats out of it
        first = m({"x": x})
        assert first.shape == (12, 16) and int(m.step) == 1  # two views per image; the step is counted
        assert torch.equal(first, m2({"x": x}))  # same (aug_seed, rank, step): the same views
        assert not torch.equal(m({"x": x}), first)  # the next step draws new views
    assert "step" in m.state_dict()  # saved with the weights: a resumed run continues the stream


def test_embed_features_is_what_enters_the_head_and_projection_is_training_only():
    x = torch.randn(3, 1, 8, 8)
    m = build_model(ModelSpec(**EMBEDDER, head="flatten", embed="features", projection=32), IMAGE, 16)
    assert isinstance(m.net[-1], torch.nn.Linear) and m.net[-1].in_features == 16 * 4 * 4  # 8x8 pooled once to 4x4
    with torch.no_grad():
        assert m.eval()({"x": x}).shape == (3, 256)  # evaluation: the flattened feature map
        assert m.train()({"x": x}).shape == (3, 16)  # training: head, then the projection the loss sees


def test_embedding_task_reads_its_losses_and_refuses_a_classification_loss():
    prep = prepare(DataSpec(source="digits_metric")).prep
    assert build_task(prep, LossSpec()).loss_.name == "triplet"
    with pytest.raises(SpecError, match="classification loss but the data is a embedding task"):
        build_task(prep, LossSpec(name="cross_entropy"))
    with pytest.raises(SpecError, match="embedding loss"):
        build_task(prepare(DataSpec(source="digits_images")).prep, LossSpec(name="triplet"))


def test_digits_cuts():
    ten = prepare(DataSpec(source="digits_5to9_10shot", seed=3))
    labels, counts = np.unique(ten.train.y, return_counts=True)
    assert ten.prep.classes == [5, 6, 7, 8, 9] and counts.tolist() == [10] * 5
    assert len(ten.val) > 150 and len(ten.test) > 150
    assert prepare(DataSpec(source="digits_0to4")).prep.classes == [0, 1, 2, 3, 4]
    mt = prepare(DataSpec(source="digits_multitask"))
    y = mt.train.y
    assert y.shape[1] == 3 and np.array_equal(y[:, 1], y[:, 0] % 2) and (0 < y[:, 2]).all() and (y[:, 2] < 1).all()


def _multitask(weights=None):
    p = prepare(DataSpec(source="digits_multitask", standardize="global"))
    task = build_task(p.prep, LossSpec(task_weights=weights or {}))
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="multitask_cnn", channels=[8, 16], heads=[10, 2, 1]), build_kind(p.prep), task.n_outputs())
    return p, task, model.eval()


def test_multitask_loss_is_the_weighted_sum_and_stats_are_additive():
    p, task, model = _multitask({"parity": 0.5, "ink": 2.0})
    batch = build_kind(p.prep).collate({k: torch.as_tensor(v[:40]) for k, v in p.val.cols.items()})
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (40, 13)
    digit, parity, ink = task.head_losses(out, batch)
    assert task.loss(out, batch).item() == pytest.approx((digit + 0.5 * parity + 2.0 * ink).item(), rel=1e-6)
    assert digit.item() == pytest.approx(F.cross_entropy(out[:, :10], batch["y"][:, 0].long()).item(), rel=1e-6)
    whole = task.summarize(task.stats(out, batch), "val")
    cuts = (slice(0, 17), slice(17, 40))  # two ranks' parts: the statistics add up to the whole
    parts = task.summarize(sum(task.stats(out[c], {k: v[c] for k, v in batch.items()}) for c in cuts), "val")
    for k in whole:
        assert parts[k] == pytest.approx(whole[k], rel=1e-6, abs=1e-9), k
    assert {"val_digit_accuracy", "val_parity_accuracy", "val_ink_mae", "val_ink_r2"} <= set(whole)
    cols = task.prediction_columns(out)
    assert set(cols) >= {"digit", "parity", "ink"} and cols["parity"][0] in ("even", "odd")


def test_multitask_bad_input():
    p = prepare(DataSpec(source="digits_multitask"))
    with pytest.raises(SpecError, match=r"loss.task_weights: \['colour'\] name no head"):
        build_task(p.prep, LossSpec(task_weights={"colour": 1.0}))
    with pytest.raises(SpecError, match="loss.name"):
        build_task(p.prep, LossSpec(name="mse"))
    with pytest.raises(SpecError, match=r"model.heads: \[10, 2\] give 12 outputs but the task's heads need 13"):
        build_model(ModelSpec(name="multitask_cnn", heads=[10, 2]), build_kind(p.prep), 13)


def test_episodes_by_hand_and_the_check():
    z = np.repeat(np.eye(6), 10, axis=0)  # six perfectly separated classes, ten rows each
    y = np.repeat(np.arange(6), 10)
    rng = np.random.default_rng(0)
    assert episode_accuracy(z, y, 5, 1, 5, rng) == 1.0
    noisy = z + np.random.default_rng(1).normal(0, 2.0, z.shape)
    accs = [episode_accuracy(noisy, y, 5, 1, 5, np.random.default_rng(s)) for s in range(20)]
    assert 0.0 < np.mean(accs) < 1.0
    with pytest.raises(DataError, match="--way 7: 'd' has 6 classes"):
        check_episode(y, 7, 1, 5, "d")
    with pytest.raises(DataError, match="needs 11 rows of each of 5 classes"):
        check_episode(y, 5, 6, 5, "d")


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("fs") / "model", source="digits_metric_0to4", model=EMBEDDER,
                     data={"source": "digits_metric_0to4", "standardize": "global"})


def test_fewshot_runs_on_an_embedding_model_dir(embedding_dir, capsys):
    r = fewshot(embedding_dir, way=5, shot=1, queries=5, episodes=30, seed=0)
    again = fewshot(embedding_dir, way=5, shot=1, queries=5, episodes=30, seed=0)
    assert r == again and 0.2 < r.accuracy <= 1.0 and r.ci95 > 0  # seeded episodes, untrained weights
    assert main(["fewshot", str(embedding_dir), "--way", "3", "--shot", "2", "--episodes", "10", "--json"]) == 0
    assert '"way": 3' in capsys.readouterr().out


@pytest.mark.parametrize("args, says", [
    (["--way", "6"], "--way 6: 'digits_5to9' has 5 classes"),
    (["--shot", "200"], "--shot 200 with --queries 15: an episode needs 215 rows"),
    (["--way", "1"], "way must be at least 2"),
])
def test_fewshot_bad_n_or_k_is_one_line_exit_2(embedding_dir, capsys, args, says):
    assert main(["fewshot", str(embedding_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_fewshot_refuses_a_model_that_is_not_an_embedding(tmp_path, capsys):
    mdir = model_dir(tmp_path / "m", source="digits")
    assert main(["fewshot", str(mdir)]) == 2
    assert "is a classification model; this needs an embedding model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    spec = yaml.safe_load((CONFIGS / "transfer_pretrain_digits.yaml").read_text())
    return model_dir(tmp_path_factory.mktemp("tr") / "model", source="digits_0to4", data=spec["data"], model=spec["model"])


@pytest.mark.parametrize("override, says", [
    ("finetune.from={missing}", "finetune.from: '{missing}' does not exist"),
    ("finetune.freeze=[backbone.*]", "finetune.freeze: pattern 'backbone.*' matches no parameter"),
    ("model.channels=[16, 32]", "do not match this model: 1.0.weight has shape (32, 1, 3, 3) in the source, (16, 1, 3, 3) here"),
])
def test_transfer_config_bad_input(pretrained_dir, tmp_path, capsys, override, says):
    missing = str(tmp_path / "nowhere")
    argv = ["validate", str(CONFIGS / "transfer_finetune_digits.yaml"), f"finetune.from={pretrained_dir}",
            override.format(missing=missing)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says.format(missing=missing) in err and len(err.splitlines()) == 1
