"""The vision zoo, fast: models (shapes, parameters, bad input), the shapes data, the segmentation
and detection tasks (additive statistics, IoU/NMS/AP against hand-worked cases) and focal loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydl.batches import FixedShape, build_kind
from raydl.boxes import ap_from_counts, average_precision, box_iou, match, nms, score_bins
from raydl.cli import main
from raydl.data import prepare
from raydl.datasets.shapes import SHAPES, render_shapes
from raydl.errors import SpecError
from raydl.losses import focal_loss
from raydl.models import build_model
from raydl.spec import DataSpec, LossSpec, ModelSpec, spec_from_dict
from raydl.tasks import build_task
from raydl.tasks.detection import N_BINS, Detection, assign
from raydl.tasks.segmentation import Segmentation, iou_counts, mean_iou

IMAGE = FixedShape("image", (1, 8, 8))
TABLE = FixedShape("tabular", (64,))
CLASSIFIERS = ["cnn", "resnet", "mobilenet_v1", "mobilenet_v2"]


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_take_images_and_tabular_rows_that_form_the_declared_image(name):
    x = torch.randn(5, 1, 8, 8)
    torch.manual_seed(0)
    img = build_model(ModelSpec(name=name), IMAGE, 10).eval()
    torch.manual_seed(0)
    tab = build_model(ModelSpec(name=name, input_shape=[1, 8, 8]), TABLE, 10).eval()
    with torch.no_grad():
        out = img({"x": x})
        assert out.shape == (5, 10)
        torch.testing.assert_close(tab({"x": x.reshape(5, 64)}), out)  # same weights, same images


def test_cnn_has_global_average_pooling_and_norm_choices():
    m = build_model(ModelSpec(name="cnn", channels=[8, 16], norm="group"), IMAGE, 3)
    kinds = {type(x).__name__ for x in m.modules()}
    assert {"AdaptiveAvgPool2d", "GroupNorm", "MaxPool2d"} <= kinds and "BatchNorm2d" not in kinds
    none = build_model(ModelSpec(name="cnn", channels=[8, 16], norm="none"), IMAGE, 3)
    assert not {"BatchNorm2d", "GroupNorm"} & {type(x).__name__ for x in none.modules()}


def test_resnet_has_identity_and_projection_shortcuts():
    from raydl.models.cnn import BasicBlock

    m = build_model(ModelSpec(name="resnet", stem=8, widths=[8, 16], blocks=2), IMAGE, 10)
    blocks = [b for b in m.modules() if isinstance(b, BasicBlock)]
    shortcuts = [type(b.shortcut).__name__ for b in blocks]
    assert shortcuts == ["Identity", "Identity", "Sequential", "Identity"]  # the stride-2 stage entry projects
    x = torch.randn(2, 8, 8, 8)
    blk = blocks[0].eval()
    with torch.no_grad():  # the block adds its input back: zeroing the body leaves relu(x)
        for p in blk.body.parameters():
            p.zero_()
        torch.testing.assert_close(blk(x), torch.relu(x))


def test_mobilenets_use_depthwise_convs_and_linear_bottlenecks():
    from raydl.models.mobilenet import InvertedResidual, depthwise_separable

    cnn = build_model(ModelSpec(name="cnn"), IMAGE, 10)
    v1 = build_model(ModelSpec(name="mobilenet_v1"), IMAGE, 10)
    v2 = build_model(ModelSpec(name="mobilenet_v2"), IMAGE, 10)
    assert any(isinstance(c, torch.nn.Conv2d) and c.groups == c.in_channels > 1 for c in v1.modules())
    blocks = [b for b in v2.modules() if isinstance(b, InvertedResidual)]
    assert any(b.residual for b in blocks) and any(not b.residual for b in blocks)
    for b in blocks:  # the projection (last layer of the body) has no activation: a linear bottleneck
        assert not isinstance(list(b.body)[-1], torch.nn.ReLU6 | torch.nn.ReLU)
    assert _n_params(v1) < _n_params(cnn) / 1.5
    # a depthwise-separable block has ~1/9 + 1/c_out of the weights of the 3x3 conv it replaces
    plain = torch.nn.Conv2d(64, 128, 3, padding=1, bias=False)
    assert _n_params(depthwise_separable(64, 128, 1, "none")) < _n_params(plain) / 8


def test_unet_gives_per_pixel_logits_and_uses_its_skips():
    kind = FixedShape("image", (1, 32, 32))
    m = build_model(ModelSpec(name="unet", base=4, depth=3), kind, 4).eval()
    assert m({"x": torch.randn(2, 1, 32, 32)}).shape == (2, 4, 32, 32)
    assert sum(isinstance(x, torch.nn.ConvTranspose2d) for x in m.modules()) == 3
    assert m.fuse[0][0].in_channels == 2 * m.up[0].out_channels  # concatenated skip
    with pytest.raises(SpecError, match="divisible by 16"):
        build_model(ModelSpec(name="unet", depth=4), FixedShape("image", (1, 24, 24)), 4)


def test_grid_detector_decodes_boxes_inside_their_cells():
    kind = FixedShape("image", (1, 32, 32))
    m = build_model(ModelSpec(name="grid_detector", channels=[4, 8, 8], anchors=[[10, 10], [15, 15]]), kind, 5 + 3).eval()
    out = m({"x": torch.randn(2, 1, 32, 32)})
    assert out.shape == (2, 8 * 8 * 2, 12)
    cx, pcx, pw = out[..., 1], out[..., 5], out[..., 7]
    assert ((cx - pcx).abs() <= 2.0 + 1e-5).all()  # centre within its 4-pixel cell
    assert set(pw.unique().tolist()) == {10.0, 15.0}


@pytest.mark.parametrize("model, problem", [
    ({"name": "cnn", "channels": []}, "model.channels"),
    ({"name": "cnn", "kernel_size": 4}, "model.kernel_size: kernel_size must be odd"),
    ({"name": "resnet", "depth": 3}, "model.depth: unknown parameter of model resnet"),
    ({"name": "mobilenet_v2", "blocks": [[6, 16, 1, 3]]}, "model.blocks"),
    ({"name": "grid_detector", "anchors": [[10, -1]]}, "model.anchors"),
    ({"name": "cnn", "input_shape": [8, 8]}, "model.input_shape"),
])
def test_bad_model_parameters_are_listed_with_their_path(model, problem):
    with pytest.raises(SpecError, match=problem.replace("[", r"\[")):
        spec_from_dict({"data": {"source": "digits_images"}, "model": model})


def _validate(tmp_path, capsys, model: str, source: str = "digits") -> tuple[int, str]:
    p = tmp_path / "spec.yaml"
    p.write_text(f"data: {{source: {source}}}\nmodel: {model}\ntracking: none\n")
    code = main(["validate", str(p)])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("model, says", [
    ("{name: cnn, input_shape: [1, 8, 7]}", "model.input_shape: [1, 8, 7] holds 56 values but the data has 64 features"),
    ("{name: resnet}", "model.input_shape: resnet on tabular data needs the image its 64 features form"),
    ("{name: unet}", "model.name: unet takes image data, not tabular data"),
    ("{name: cnn, channels: [8, 8, 8, 8, 8], input_shape: [1, 8, 8]}", "too small"),
])
def test_an_image_model_on_tabular_data_that_does_not_form_its_image_is_one_line_exit_2(tmp_path, capsys, model, says):
    code, err = _validate(tmp_path, capsys, model)
    assert code == 2 and len(err.splitlines()) == 1 and says in err


def test_an_image_model_on_tabular_data_with_the_right_shape_validates(tmp_path, capsys):
    p = tmp_path / "spec.yaml"
    p.write_text("data: {source: digits}\nmodel: {name: cnn, channels: [8, 16], input_shape: [1, 8, 8]}\ntracking: none\n")
    assert main(["validate", str(p)]) == 0


def test_a_classifier_on_detection_or_segmentation_data_fails_with_one_line():
    # The spec checks build the model on the meta device without running it, so this is caught at
    # the first loss (a DataError, which the CLI prints as one line with exit 2).
    from raydl.errors import DataError

    for source, says in (("shapes_detection", "grid_detector"), ("shapes_segmentation", "unet")):
        prep = prepare(DataSpec(source=source, n_samples=40))
        task, kind = build_task(prep.prep, LossSpec()), build_kind(prep.prep)
        model = build_model(ModelSpec(name="cnn", channels=[4]), kind, task.n_outputs())
        batch = kind.collate({k: torch.as_tensor(v[:2]) for k, v in prep.train.cols.items()})
        with pytest.raises(DataError, match=says):
            task.loss(model(batch), batch)


# ---- data --------------------------------------------------------------------------------------


def test_shapes_are_seeded_and_masks_agree_with_boxes():
    x, masks, boxes = render_shapes(40, seed=3, noise=0.3)
    x2, masks2, boxes2 = render_shapes(40, seed=3, noise=0.3)
    assert np.array_equal(x, x2) and np.array_equal(masks, masks2) and np.array_equal(boxes, boxes2)
    assert not np.array_equal(render_shapes(40, seed=4, noise=0.3)[1], masks)
    assert set(np.unique(masks)) == {0, 1, 2, 3}
    for m, bs in zip(masks, boxes):
        rows = bs[bs[:, 0] >= 0]
        assert 1 <= len(rows) <= 3
        for c, x0, y0, x1, y1 in rows:
            inside = m[int(y0) : int(y1), int(x0) : int(x1)]
            assert (inside == c + 1).any() and (m == c + 1).sum() >= (inside == c + 1).sum()
        assert (m > 0).sum() == sum(((m[int(b[2]) : int(b[4]), int(b[1]) : int(b[3])]) > 0).sum() for b in rows)
        ious = box_iou(rows[:, 1:], rows[:, 1:])
        assert np.allclose(ious - np.eye(len(rows)), 0)  # shapes never overlap


def test_shapes_datasets_prepare_into_image_splits():
    seg = prepare(DataSpec(source="shapes_segmentation", n_samples=60))
    assert seg.prep.task == "segmentation" and seg.prep.classes == SHAPES
    assert seg.train.X.shape[1:] == (1, 32, 32) and seg.train.y.shape[1:] == (32, 32)
    det = prepare(DataSpec(source="shapes_detection", n_samples=60))
    assert det.train.y.shape[1:] == (3, 5) and det.prep.classes == SHAPES[1:]
    imb = prepare(DataSpec(source="digits_imbalanced"))
    frac = imb.train.y.mean()
    assert 0.01 < frac < 0.05 and imb.prep.classes == [0, 1]


# ---- segmentation --------------------------------------------------------------------------------


def test_iou_counts_by_hand():
    true = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    inter, union = iou_counts(pred, true, 3)
    assert inter.tolist() == [1, 2, 1] and union.tolist() == [3, 3, 2]
    assert mean_iou(inter, union) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_segmentation_statistics_are_additive_and_perfect_masks_score_one():
    task = Segmentation(SHAPES, build_task_loss())
    _, masks, _ = render_shapes(8, seed=1, noise=0.3)
    y = torch.as_tensor(masks)
    perfect = F.one_hot(y, 4).permute(0, 3, 1, 2).float() * 20
    m = task.summarize(task.stats(perfect, {"y": y}), "val")
    assert m["val_miou"] == pytest.approx(1.0) and m["val_pixel_accuracy"] == 1.0
    noisy = perfect + 30 * torch.randn_like(perfect)
    whole = task.stats(noisy, {"y": y})
    halves = task.stats(noisy[:3], {"y": y[:3]}) + task.stats(noisy[3:], {"y": y[3:]})
    np.testing.assert_allclose(halves[2:], whole[2:])
    assert task.summarize(halves, "v")["v_miou"] == pytest.approx(task.summarize(whole, "v")["v_miou"])
    assert task.summarize(whole, "v")["v_miou"] < 0.9


def build_task_loss():
    from raydl.losses import LOSSES

    return LOSSES.get("cross_entropy")(LossSpec())


# ---- detection ---------------------------------------------------------------------------------


def test_box_iou_nms_and_matching_by_hand():
    a = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    iou = box_iou(a, a)
    assert iou[0, 1] == pytest.approx(50 / 150) and iou[0, 2] == 0 and np.allclose(np.diag(iou), 1)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.5, labels=np.array([0, 1, 0, 0])).tolist() == [3, 1, 2]
    gt = np.array([[0, 0, 10, 10]])
    assert match(boxes[[0, 3]], scores[[0, 3]], gt).tolist() == [False, True]  # the higher score takes the box


def test_average_precision_by_hand_and_binned():
    # 3 ground truths; detections by score: TP, FP, TP, FP, TP -> recall 1/3 @ P=1, 2/3 @ P=2/3, 1 @ P=3/5
    ap = average_precision(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, 1, 0, 1]), 3)
    assert ap == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    assert average_precision(np.array([0.9]), np.array([1]), 2) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    scores, hits = rng.random(300), rng.random(300) < 0.6
    bins = score_bins(scores, N_BINS)
    tp, fp = np.bincount(bins[hits], minlength=N_BINS), np.bincount(bins[~hits], minlength=N_BINS)
    assert ap_from_counts(tp, fp, 250) == pytest.approx(average_precision(scores, hits, 250), abs=0.01)


def _oracle(model, y: torch.Tensor) -> torch.Tensor:
    """Outputs that put each ground-truth box, confidently and with its class, on its assigned anchor."""
    out = model({"x": torch.zeros(len(y), 1, 32, 32)}).detach().clone()
    out[..., 0] = -12.0
    gt = torch.stack([(y[..., 1] + y[..., 3]) / 2, (y[..., 2] + y[..., 4]) / 2, y[..., 3] - y[..., 1], y[..., 4] - y[..., 2]], -1)
    idx = assign(out[..., 5:9], gt)
    for b in range(len(y)):
        for m in range(y.shape[1]):
            if y[b, m, 0] >= 0:
                row = out[b, idx[b, m]]
                row[0], row[1:5], row[9:] = 12.0, gt[b, m], -10.0
                row[9 + int(y[b, m, 0])] = 10.0
    return out


def test_detection_task_scores_an_oracle_perfectly_and_random_outputs_poorly():
    prep = prepare(DataSpec(source="shapes_detection", n_samples=40))
    task = build_task(prep.prep, LossSpec())
    assert isinstance(task, Detection) and task.n_outputs() == 8
    kind = build_kind(prep.prep)
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="grid_detector"), kind, task.n_outputs()).eval()
    batch = kind.collate({k: torch.as_tensor(v) for k, v in prep.train.cols.items()})
    oracle = _oracle(model, batch["y"])
    m = task.summarize(task.stats(oracle, batch), "val")
    assert m["val_map50"] == pytest.approx(1.0) and m["val_recall50"] == 1.0
    with torch.no_grad():
        random = model(batch)
    r = task.summarize(task.stats(random, batch), "val")
    assert r["val_map50"] < 0.2
    assert task.loss(oracle, batch) < task.loss(random, batch)
    half = len(batch["y"]) // 2
    parts = [{k: v[s] for k, v in batch.items()} for s in (slice(0, half), slice(half, None))]
    summed = task.stats(random[:half], parts[0]) + task.stats(random[half:], parts[1])
    np.testing.assert_allclose(summed[1:], task.stats(random, batch)[1:])  # additive across shards
    cols = task.prediction_columns(oracle)
    assert [len(b) for b in cols["boxes"]] == [int((row[:, 0] >= 0).sum()) for row in batch["y"]]
    assert set(sum(cols["labels"], [])) <= {"circle", "square", "triangle"}


def test_detection_refuses_another_loss():
    prep = prepare(DataSpec(source="shapes_detection", n_samples=40))
    with pytest.raises(SpecError, match="own loss"):
        build_task(prep.prep, LossSpec(name="cross_entropy"))


# ---- focal loss ----------------------------------------------------------------------------------


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_down_weights_easy_examples():
    torch.manual_seed(0)
    z, y = torch.randn(50, 4), torch.randint(0, 4, (50,))
    torch.testing.assert_close(focal_loss(z, y, 0.0, None), F.cross_entropy(z, y))
    easy = torch.tensor([[6.0, 0.0]]), torch.tensor([0])
    hard = torch.tensor([[0.0, 0.5]]), torch.tensor([0])
    ratio_easy = focal_loss(*easy, 2.0, None) / F.cross_entropy(*easy)
    ratio_hard = focal_loss(*hard, 2.0, None) / F.cross_entropy(*hard)
    assert ratio_easy < 1e-4 < 0.3 < ratio_hard
    # alpha weighs class > 0 by alpha and class 0 by 1 - alpha; per pixel works too
    one = torch.tensor([[0.0, 0.0]])
    assert focal_loss(one, torch.tensor([1]), 0.0, 0.75) / focal_loss(one, torch.tensor([0]), 0.0, 0.75) == pytest.approx(3.0)
    zp, yp = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 5, 5))
    torch.testing.assert_close(focal_loss(zp, yp, 0.0, None), F.cross_entropy(zp, yp))


def test_focal_loss_is_a_classification_and_segmentation_loss():
    prep = prepare(DataSpec(source="digits_imbalanced"))
    task = build_task(prep.prep, LossSpec(name="focal", focal_gamma=2.0, focal_alpha=0.75))
    assert task.loss_.name == "focal" and task.n_outputs() == 2
    seg = prepare(DataSpec(source="shapes_segmentation", n_samples=40))
    assert build_task(seg.prep, LossSpec(name="focal")).loss_.name == "focal"


# ---- predict / evaluate on segmentation and detection model directories ---------------------------


@pytest.mark.parametrize("source, rows, model, columns, metric", [  # predict regenerates the built-in as trained: 200 rows
    ("shapes_segmentation", 200, {"name": "unet", "base": 4, "depth": 1}, {"mask", "foreground_fraction"}, "eval_miou"),
    ("shapes_detection", 200, {"name": "grid_detector", "channels": [4, 8, 8]}, {"boxes", "scores", "labels"}, "eval_map50"),
])
def test_predict_and_evaluate_run_on_segmentation_and_detection_model_dirs(tmp_path, capsys, source, rows, model, columns, metric):
    import json

    import pyarrow.parquet as pq

    from raydl.model_dir import manifest, write_model_dir

    spec = spec_from_dict({"data": {"source": source, "n_samples": 200}, "model": model, "tracking": "none"})
    prepared = prepare(spec.data)
    task, kind = build_task(prepared.prep, spec.loss), build_kind(prepared.prep)
    torch.manual_seed(0)
    net = build_model(spec.model, kind, task.n_outputs())
    if model["name"] == "grid_detector":  # confident "nothing here" everywhere: few candidates, fast NMS
        torch.nn.init.constant_(net.head[-1].bias, -6.0)
    mdir = write_model_dir(tmp_path / "model", net.state_dict(), spec, prepared.prep, {"final": {}, "history": []},
                           manifest(spec, prepared.fingerprint))
    assert main(["predict", str(mdir), source, "--out", str(tmp_path / "p.parquet")]) == 0
    preds = pq.read_table(tmp_path / "p.parquet")
    assert preds.num_rows == rows and columns <= set(preds.column_names)
    if "mask" in columns:
        assert len(preds.column("mask")[0].as_py()) == 32 * 32
    capsys.readouterr()
    assert main(["evaluate", str(mdir), source, "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metric in m and 0.0 <= m[metric] <= 1.0
