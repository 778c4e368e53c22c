"""Box geometry and detection scoring as pure functions: IoU, non-maximum suppression, matching
detections to ground truth at an IoU threshold, and average precision (all-point interpolation,
as PASCAL VOC 2010+). Boxes are [x0, y0, x1, y1] in pixels."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` [n, 4] with every box in `b` [m, 4]: [n, m]."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, labels: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first. A box is
    dropped when it overlaps a kept box of the same label (all one label if None) by more than
    `iou_threshold`."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(boxes, dtype=np.float64)[order]
    iou = box_iou(boxes, boxes)
    if labels is not None:
        lab = np.asarray(labels)[order]
        iou = np.where(lab[:, None] == lab[None, :], iou, 0.0)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)]


def match(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """For detections of one class in one image: True where a detection is a true positive. In
    order of score, each takes the unmatched ground-truth box it overlaps most, if that IoU reaches
    the threshold; later detections of an already matched box are false positives."""
    tp = np.zeros(len(det_boxes), dtype=bool)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return tp
    iou = box_iou(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i in np.argsort(-np.asarray(det_scores), kind="stable"):
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            tp[i], taken[j] = True, True
    return tp


def ap_from_counts(tp: np.ndarray, fp: np.ndarray, n_gt: float) -> float:
    """Average precision from true/false-positive counts per score level, highest level first
    (one detection per level gives the exact AP; histogram bins give it up to ties within a bin).
    All-point interpolation: the area under the precision envelope as recall grows."""
    if n_gt <= 0:
        return float("nan")
    ctp, cfp = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
    seen = (ctp + cfp) > 0
    if not seen.any():
        return 0.0
    recall = np.concatenate([[0.0], ctp[seen] / n_gt])
    precision = np.concatenate([[1.0], ctp[seen] / (ctp[seen] + cfp[seen])])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


def average_precision(scores: np.ndarray, is_tp: np.ndarray, n_gt: int) -> float:
    """Exact AP of one class from every detection's score and whether it matched."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(is_tp, dtype=np.float64)[order]
    return ap_from_counts(tp, 1.0 - tp, n_gt)


def score_bins(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Histogram bin of each score in [0, 1], bin 0 holding the highest scores."""
    return np.clip(((1.0 - np.asarray(scores, dtype=np.float64)) * n_bins).astype(np.int64), 0, n_bins - 1)
