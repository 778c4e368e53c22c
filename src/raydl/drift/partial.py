"""Mergeable partial states: one per batch, merged associatively into one per dataset.

``ProfilePartial`` (first pass over the reference) holds moments, category counts and a
bottom-k uniform row sample; ``CountPartial`` (reference histograms and every check) holds
bin counts, reconstruction-error and OOD-score aggregates. Memory is O(features x bins)
(+ the fixed-size sample), whatever the number of rows. ``merge`` is associative and
commutative, so the order in which Ray hands batches back does not matter.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydl.drift import stats
from raydl.drift.data import category_column, int_values, numeric_block, string_array

MAX_UNSEEN_EXAMPLES = 10
_SCRATCH = threading.local()


def _batch_block(batch: pa.RecordBatch | pa.Table, names: list[str]) -> np.ndarray:
    """``numeric_block`` in a per-thread buffer reused from batch to batch: a fresh 10 MB
    array per batch is page-faulted in every time. Only for blocks that do not outlive the
    call that built them (every pass below reduces or copies out of it)."""
    need = len(names) * batch.num_rows
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < need:
        buf = np.empty(need, dtype=np.float64)
        _SCRATCH.buf = buf
    return numeric_block(batch, names, buf)


def numeric_matrix(batch: pa.RecordBatch | pa.Table, names: list[str]) -> np.ndarray:
    """[rows, len(names)] float64 matrix with NaN for nulls."""
    return numeric_block(batch, names).T


@dataclass
class ProfilePartial:
    """First-pass state: moments, min/max, category counts, bottom-k sample."""

    n_rows: int
    count: np.ndarray  # [F] non-NaN values per numeric feature
    mean: np.ndarray
    m2: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    categories: dict[str, dict[str, int]]
    cat_missing: dict[str, int]
    sample_keys: np.ndarray  # [k]
    sample: np.ndarray  # [F, k] (feature-major; ``rows()`` gives [k, F])

    def rows(self) -> np.ndarray:
        """The sample as a C-contiguous [k, F] matrix, rows in key order."""
        return np.ascontiguousarray(self.sample.T)

    def merge(self, o: ProfilePartial, k: int) -> ProfilePartial:
        """Chan's parallel moments + summed counts + bottom-k of both samples."""
        n = self.count + o.count
        delta = o.mean - self.mean
        safe = np.where(n > 0, n, 1)
        mean = np.where(n > 0, self.mean + delta * o.count / safe, 0.0)
        m2 = self.m2 + o.m2 + delta**2 * self.count * o.count / safe
        cats = {f: dict(c) for f, c in self.categories.items()}
        for f, c in o.categories.items():
            d = cats.setdefault(f, {})
            for v, cnt in c.items():
                d[v] = d.get(v, 0) + cnt
        keys = np.concatenate([self.sample_keys, o.sample_keys])
        rows = np.concatenate([self.sample, o.sample], axis=1)
        keep = np.argsort(keys, kind="stable")[:k]
        return ProfilePartial(
            n_rows=self.n_rows + o.n_rows,
            count=n,
            mean=mean,
            m2=m2,
            vmin=np.fmin(self.vmin, o.vmin),
            vmax=np.fmax(self.vmax, o.vmax),
            categories=cats,
            cat_missing={f: self.cat_missing[f] + o.cat_missing[f] for f in self.cat_missing},
            sample_keys=keys[keep],
            sample=np.take(rows, keep, axis=1),
        )


@dataclass(frozen=True)
class ProfilePass:
    """Batch -> ProfilePartial for given numeric / categorical features (picklable)."""

    numeric: list[str]
    categorical: list[str]
    sample_size: int
    seed: int
    # Rows whose key is >= key_bound are dropped at once: when at least sample_size rows of
    # the whole data have smaller keys, the bottom-k sample is unchanged (the caller checks
    # and reruns without a bound otherwise), and each batch sorts and copies ~k/N of its rows
    # instead of k. 1.0 = no bound.
    key_bound: float = 1.0

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> ProfilePartial:
        xt = _batch_block(batch, self.numeric)  # [F, rows]: reductions run on contiguous rows
        nan = np.isnan(xt)
        count = (xt.shape[1] - np.count_nonzero(nan, axis=1)).astype(np.float64)
        # without NaNs the nan-functions are the plain ones (same sums), minus their copies
        has_nan = bool(nan.any())
        total = np.nansum(xt, axis=1) if has_nan else xt.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
            m2 = np.empty(len(xt))
            for j, row in enumerate(xt):  # one row-sized temporary, not a batch-sized one
                d = row - mean[j]
                np.square(d, out=d)
                m2[j] = np.nansum(d) if has_nan else d.sum()  # NaN adds nothing
        # fmin / fmax skip NaN; an all-NaN feature gives NaN, as the count > 0 guard wants
        vmin = np.where(count > 0, np.fmin.reduce(xt, axis=1, initial=np.inf), np.nan)
        vmax = np.where(count > 0, np.fmax.reduce(xt, axis=1, initial=-np.inf), np.nan)
        cats, missing = {}, {}
        for f in self.categorical:
            col = category_column(batch.column(f))
            missing[f] = col.null_count
            vc = pc.value_counts(col.drop_null())
            cats[f] = {
                str(v): int(c)
                for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())
            }
        # Bottom-k sampling: uniform keys per row; the k smallest keys overall form a uniform
        # sample without replacement, and keeping the k smallest is associative.
        # seed from the first 64 rows, row-major (the same bytes as a [rows, F] matrix)
        crc = (zlib.crc32(np.ascontiguousarray(xt[:, :64].T).tobytes()) if xt.size
               else batch.num_rows)
        rng = np.random.default_rng([self.seed, crc, batch.num_rows])
        keys = rng.random(batch.num_rows)
        if self.key_bound < 1.0:
            cand = np.flatnonzero(keys < self.key_bound)
            keep = cand[np.argsort(keys[cand])][: self.sample_size]
        else:
            keep = np.argsort(keys)[: self.sample_size]
        return ProfilePartial(
            n_rows=batch.num_rows,
            count=count,
            mean=mean,
            m2=m2,
            vmin=vmin,
            vmax=vmax,
            categories=cats,
            cat_missing=missing,
            sample_keys=keys[keep],
            sample=np.take(xt, keep, axis=1),  # [F, k]
        )


@dataclass
class CountPartial:
    """Second-pass / check state: bin counts, error and score aggregates."""

    n_rows: int
    num_counts: list[np.ndarray]
    num_missing: np.ndarray
    cat_counts: list[np.ndarray]  # known categories + unseen bucket (last)
    cat_missing: np.ndarray
    unseen_examples: list[set[str]]
    recon: dict[str, Any] | None = None  # n, sum, sumsq, above, counts
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)

    def merge(self, o: CountPartial) -> CountPartial:
        """Sum every count; union (capped) the unseen examples."""
        recon = None
        if self.recon is not None:
            recon = {k: self.recon[k] + o.recon[k] for k in self.recon}
        scores = {
            s: {k: v + o.scores[s][k] for k, v in agg.items()} for s, agg in self.scores.items()
        }
        return CountPartial(
            n_rows=self.n_rows + o.n_rows,
            num_counts=[a + b for a, b in zip(self.num_counts, o.num_counts)],
            num_missing=self.num_missing + o.num_missing,
            cat_counts=[a + b for a, b in zip(self.cat_counts, o.cat_counts)],
            cat_missing=self.cat_missing + o.cat_missing,
            unseen_examples=[
                set(sorted(a | b)[:MAX_UNSEEN_EXAMPLES])
                for a, b in zip(self.unseen_examples, o.unseen_examples)
            ],
            recon=recon,
            scores=scores,
        )


def _aggregate(values: np.ndarray, edges: np.ndarray, threshold: float, direction: int) -> dict:
    counts, _ = stats.histogram(values, edges)
    above = values > threshold if direction > 0 else values < threshold
    return {
        "n": int(values.size),
        "sum": float(values.sum()),
        "sumsq": float((values**2).sum()),
        "above": int(above.sum()),
        "counts": counts,
    }


@dataclass(frozen=True)
class CountPass:
    """Batch -> CountPartial against a profile's bins, PCA and score thresholds (picklable)."""

    numeric: list[str]
    edges: list[np.ndarray]
    categorical: list[str]
    categories: list[list[str]]
    pca: dict[str, Any] | None = None  # features, mean, scale, center, components, threshold, edges
    model: Any = None  # callable raw features -> logits
    model_features: list[str] = field(default_factory=list)
    score_specs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> CountPartial:
        xt = _batch_block(batch, self.numeric)  # [F, rows]
        num_counts, num_missing = [], []
        for j, e in enumerate(self.edges):
            c, m = stats.histogram(xt[j], e)
            num_counts.append(c)
            num_missing.append(m)
        cat_counts, cat_missing, unseen = [], [], []
        for f, cats in zip(self.categorical, self.categories):
            col = category_column(batch.column(f))
            idx = pc.index_in(col, value_set=string_array(cats))
            nulls = col.is_null()
            known = int_values(idx.drop_null())
            c = np.bincount(known, minlength=len(cats) + 1).astype(np.int64)
            new_mask = pc.and_(pc.is_null(idx), pc.invert(nulls))
            c[len(cats)] = int(pc.sum(new_mask).as_py() or 0)
            ex = set(pc.unique(col.filter(new_mask)).to_pylist()[:MAX_UNSEEN_EXAMPLES])
            cat_counts.append(c)
            cat_missing.append(col.null_count)
            unseen.append({str(v) for v in ex})
        recon = None
        if self.pca is not None:
            recon = _aggregate(
                self.recon_errors(batch, xt), self.pca["error_edges"], self.pca["threshold"], 1
            )
        scores = {}
        if self.model is not None and self.score_specs:
            from raydl.drift.ood import output_scores

            xm = numeric_matrix(batch, self.model_features)
            all_scores = output_scores(self.model(xm)) if len(xm) else {
                s: np.empty(0) for s in self.score_specs
            }
            for s, spec in self.score_specs.items():
                scores[s] = _aggregate(
                    all_scores[s], spec["edges"], spec["threshold"], spec["direction"]
                )
        return CountPartial(
            n_rows=batch.num_rows,
            num_counts=num_counts,
            num_missing=np.asarray(num_missing, dtype=np.int64),
            cat_counts=cat_counts,
            cat_missing=np.asarray(cat_missing, dtype=np.int64),
            unseen_examples=unseen,
            recon=recon,
            scores=scores,
        )

    def recon_errors(self, batch: pa.RecordBatch | pa.Table,
                     xt: np.ndarray | None = None) -> np.ndarray:
        """Per-row PCA reconstruction errors (NaN imputed by the reference mean).

        ``xt`` is this batch's ``numeric_block`` of ``self.numeric`` when already built.
        """
        p = self.pca
        if xt is None or p["features"] != self.numeric:
            xt = numeric_block(batch, p["features"])
        a, c = p.get("residual_map") or residual_map(p)
        mean = p["mean"][:, None]
        n = xt.shape[1]
        out = np.empty(n)
        # residual = (I - V^T V) ((x - mean) / scale - center), with 1/scale folded into the
        # [d, d] map: one small matmul, no standardised copy. In column blocks of RECON_BLOCK
        # rows, so the temporaries stay in cache and are reused instead of page-faulted in
        # (3x faster than whole-batch temporaries; the same numbers, row by row).
        for s in range(0, n, RECON_BLOCK):
            z = xt[:, s:s + RECON_BLOCK] - mean
            nan = np.isnan(z)
            if nan.any():
                z[nan] = 0.0  # impute the reference mean
            r = a @ z
            r -= c[:, None]
            out[s:s + RECON_BLOCK] = np.sqrt(np.einsum("ij,ij->j", r, r))
        return out


RECON_BLOCK = 16_384


def residual_map(pca: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with A (x - mean) - c = the PCA residual of a raw row x (see ``recon_errors``)."""
    proj = stats.residual_projector(pca["components"])
    return proj / np.asarray(pca["scale"], dtype=np.float64)[None, :], proj @ pca["center"]


def standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - mean) / scale with NaN replaced by 0 (the reference mean): one new array, the rest in place."""
    z = x - mean
    z /= scale
    z[np.isnan(z)] = 0.0
    return z


MergeFn = Callable[[Any, Any], Any]
