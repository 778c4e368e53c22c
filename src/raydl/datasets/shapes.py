"""Seeded synthetic vision data: shapes on noise with masks and boxes, and an imbalanced digits variant.

`shapes_segmentation`: 1xSxS images of 1-3 filled circles, squares and triangles (random size,
position and brightness) on Gaussian noise (`data.noise`, default 0.35), with a per-pixel mask
(0 background, 1 circle, 2 square, 3 triangle). `shapes_detection`: the same images with each
shape's class and box [x0, y0, x1, y1] (pixels, x1/y1 exclusive), padded to 3 rows with class -1.
Shapes never overlap, so every box and mask pixel belongs to one shape. Everything follows from
`data.seed` and `data.n_samples`; nothing is downloaded.

`digits_imbalanced`: sklearn's digits as 1x8x8 images with a binary label "is it a 9", keeping a
seeded 25% of the nines (about 2.5% positives): the minority class for focal-loss comparisons.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raydl.datasets import DATASETS, Arrays, Builtin
from raydl.spec import DataSpec

SHAPES = ["background", "circle", "square", "triangle"]
SIDE = 32  # image side in pixels
MAX_SHAPES = 3
SIZE = (4, 8)  # half-size of a shape in pixels (inclusive range)


def _place(rng: np.random.Generator, taken: list[tuple[int, int, int, int]], r: int) -> tuple[int, int] | None:
    """A centre for a shape of half-size r whose box (with a 1-pixel margin) overlaps no other, or None."""
    for _ in range(20):
        cx, cy = (int(v) for v in rng.integers(r, SIDE - r, size=2))
        box = (cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1)
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            return cx, cy
    return None


def shape_mask(kind: int, cx: int, cy: int, r: int) -> np.ndarray:
    """Boolean SIDExSIDE mask of one filled shape: 1 circle, 2 square, 3 triangle (apex up)."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    dx, dy = xx - cx, yy - cy
    if kind == 1:
        return dx * dx + dy * dy <= r * r
    if kind == 2:
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    # isosceles triangle: apex at (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
    return (dy >= -r) & (dy <= r) & (2 * np.abs(dx) <= dy + r)


def render_shapes(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [n, 1, SIDE, SIDE] (float32), masks [n, SIDE, SIDE] (int64) and boxes [n, MAX_SHAPES, 5]
    (float32 rows of class, x0, y0, x1, y1; class -1 pads)."""
    rng = np.random.default_rng([seed, 8])
    images = rng.normal(0.0, noise, size=(n, 1, SIDE, SIDE)).astype(np.float32)
    masks = np.zeros((n, SIDE, SIDE), dtype=np.int64)
    boxes = np.full((n, MAX_SHAPES, 5), -1.0, dtype=np.float32)
    for i in range(n):
        taken: list[tuple[int, int, int, int]] = []
        for j in range(int(rng.integers(1, MAX_SHAPES + 1))):
            kind, r = int(rng.integers(1, 4)), int(rng.integers(SIZE[0], SIZE[1] + 1))
            at = _place(rng, taken, r)
            if at is None:
                continue
            m = shape_mask(kind, *at, r)
            images[i, 0][m] += rng.uniform(0.7, 1.3)
            masks[i][m] = kind
            ys, xs = np.nonzero(m)
            boxes[i, j] = (kind - 1, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            taken.append((at[0] - r - 1, at[1] - r - 1, at[0] + r + 1, at[1] + r + 1))
    return images, masks, boxes


def _noise(spec: DataSpec) -> float:
    return 0.35 if spec.noise is None else spec.noise


def _segmentation(spec: DataSpec) -> Arrays:
    x, masks, _ = render_shapes(spec.n_samples or 1500, spec.seed, _noise(spec))
    return Arrays({"x": x, "y": masks}, classes=SHAPES)


def _detection(spec: DataSpec) -> Arrays:
    x, _, boxes = render_shapes(spec.n_samples or 2000, spec.seed, _noise(spec))
    return Arrays({"x": x, "y": boxes}, classes=SHAPES[1:])


def _digits_imbalanced(spec: DataSpec) -> pa.Table:
    from raydl.datasets.bundled import load_digits

    data, target = load_digits()
    keep = (target != 9) | (np.random.default_rng([spec.seed, 9]).random(len(target)) < 0.25)
    X = data[keep]
    if spec.noise:
        X = X + np.random.default_rng([spec.seed, 10]).normal(0.0, spec.noise, size=X.shape)
    cols = {f"pixel_{i}": X[:, i] for i in range(64)}
    cols["is_nine"] = (target[keep] == 9).astype(np.int64)
    return pa.table(cols)


DATASETS.register("shapes_segmentation")(Builtin(_segmentation, "mask", "segmentation", "image", (1, SIDE, SIDE)))
DATASETS.register("shapes_detection")(Builtin(_detection, "boxes", "detection", "image", (1, SIDE, SIDE)))
DATASETS.register("digits_imbalanced")(Builtin(_digits_imbalanced, "is_nine", "classification", "image", (1, 8, 8)))
