"""Reference profiles: build from DATA, save/load a small versioned JSON file.

A profile holds, per numeric feature, bin edges at reference quantiles (plus underflow and
overflow bins) with counts; per categorical feature, category counts plus an ``unseen``
bucket; a PCA on the standardised reference with the distribution of held-out
reconstruction errors; and, with a model, the reference distribution of its OOD scores.
Its size depends on features x bins, never on the number of rows.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raydl.drift import data as dd
from raydl.drift import engine as eng
from raydl.drift import stats
from raydl.drift.errors import DataError, DriftError, ProfileError
from raydl.drift.ood import DIRECTION, SCORES, output_scores
from raydl.drift.partial import (
    CountPartial,
    CountPass,
    ProfilePartial,
    ProfilePass,
    residual_map,
    standardise,
)
from raydl.paths import write_atomic  # the one atomic writer

FORMAT = "raydl.drift.profile"
VERSION = 1


@dataclass(frozen=True)
class ProfileSettings:
    """How a profile is built (all stored in the profile)."""

    n_bins: int = 20
    variance_share: float = 0.9
    percentile: float = 99.0
    ood_percentile: float = 95.0
    sample_size: int = 50_000
    holdout_share: float = 0.2
    max_categories: int = 100
    score_bins: int = 20
    seed: int = 0

    def validate(self) -> None:
        problems = []
        if not 1 <= self.n_bins <= 1000:
            problems.append(f"n_bins={self.n_bins} (allowed 1..1000)")
        if not 0 < self.variance_share < 1:
            problems.append(f"variance_share={self.variance_share} (allowed 0 < v < 1)")
        if not 50 <= self.percentile < 100:
            problems.append(f"percentile={self.percentile} (allowed 50 <= p < 100)")
        if not 50 <= self.ood_percentile < 100:
            problems.append(f"ood_percentile={self.ood_percentile} (allowed 50 <= p < 100)")
        if self.sample_size < 100:
            problems.append(f"sample_size={self.sample_size} (allowed >= 100)")
        if problems:
            raise DriftError("bad profile settings: " + "; ".join(problems))


@dataclass
class Profile:
    """A loaded reference profile (the JSON document, with typed accessors)."""

    doc: dict[str, Any]

    @property
    def features(self) -> list[dict[str, Any]]:
        return self.doc["features"]

    @property
    def kinds(self) -> dict[str, str]:
        return {f["name"]: f["kind"] for f in self.features}

    @property
    def numeric(self) -> list[dict[str, Any]]:
        return [f for f in self.features if f["kind"] == dd.NUMERIC]

    @property
    def categorical(self) -> list[dict[str, Any]]:
        return [f for f in self.features if f["kind"] == dd.CATEGORICAL]

    @property
    def pca(self) -> dict[str, Any] | None:
        return self.doc.get("pca")

    @property
    def model(self) -> dict[str, Any] | None:
        return self.doc.get("model")

    def count_pass(self, model: Any = None, with_pca: bool = True) -> CountPass:
        """The batch function that counts data on this profile's bins."""
        pca = None
        if with_pca and self.pca is not None:
            p = self.pca
            pca = {k: np.asarray(p[k], dtype=np.float64) for k in ("mean", "scale", "center")}
            pca["components"] = np.asarray(p["components"], dtype=np.float64).reshape(
                -1, len(p["features"])
            )
            pca.update(features=p["features"], threshold=p["threshold"],
                       error_edges=np.asarray(p["error_edges"]))
            pca["residual_map"] = residual_map(pca)
        specs = {}
        if model is not None and self.model is not None:
            specs = {
                s: {"edges": np.asarray(v["edges"]), "threshold": v["threshold"],
                    "direction": v["direction"]}
                for s, v in self.model["scores"].items()
            }
        return CountPass(
            numeric=[f["name"] for f in self.numeric],
            edges=[np.asarray(f["edges"], dtype=np.float64) for f in self.numeric],
            categorical=[f["name"] for f in self.categorical],
            categories=[f["categories"] for f in self.categorical],
            pca=pca,
            model=model if specs else None,
            model_features=self.model["features"] if specs else [],
            score_specs=specs,
        )

    def save(self, out: str | os.PathLike) -> Path:
        """Write the profile atomically; returns its path."""
        return write_atomic(out, json.dumps(self.doc, indent=1, allow_nan=False))


def load_profile(path: str | os.PathLike) -> Profile:
    """Read and validate a profile file (local, or an object-store URI); ProfileError when missing,
    corrupt or too new."""
    from raydl import storage

    p = Path(path) if not storage.is_uri(str(path)) else str(path)
    if isinstance(p, Path) and not p.is_file() or isinstance(p, str) and not storage.exists(p):
        raise ProfileError(f"profile {str(p)!r} does not exist")
    try:
        doc = json.loads(p.read_text(encoding="utf-8") if isinstance(p, Path) else storage.read_bytes(p).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileError(f"profile {str(p)!r} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProfileError(f"{str(p)!r} is not a raydl drift profile (format != {FORMAT!r})")
    v = doc.get("version")
    if not isinstance(v, int) or v < 1:
        raise ProfileError(f"profile {str(p)!r} has a bad version {v!r} (expected {VERSION})")
    if v > VERSION:
        raise ProfileError(
            f"profile {str(p)!r} has format version {v}, newer than this raydl reads "
            f"({VERSION}); upgrade raydl or rebuild the profile"
        )
    try:
        for f in doc["features"]:
            if f["kind"] == dd.NUMERIC:
                ok = len(f["counts"]) == stats.n_numeric_bins(np.asarray(f["edges"]))
            else:
                ok = len(f["counts"]) == len(f["categories"]) + 1
            if not ok:
                raise ValueError(f"feature {f['name']!r}: counts do not match its bins")
        if not doc["features"]:
            raise ValueError("no features")
    except (KeyError, TypeError, ValueError) as e:
        raise ProfileError(f"profile {str(p)!r} is corrupt: {e}") from None
    return Profile(doc)


def _fit_pca(sample: np.ndarray, names: list[str], mean, scale, s: ProfileSettings) -> dict | None:
    """PCA on the fit part of the sample, held-out reconstruction-error distribution."""
    n = len(sample)
    n_hold = int(round(n * s.holdout_share))
    if len(names) < 2 or n_hold < 20 or n - n_hold < len(names) + 1:
        return None
    rng = np.random.default_rng(s.seed)
    order = rng.permutation(n)
    # Each part standardised from its own rows: one standardised copy of the sample, not two (the
    # driver's peak memory while profiling a streamed source, #7).
    fit = standardise(sample[order[n_hold:]], mean, scale)
    hold = standardise(sample[order[:n_hold]], mean, scale)
    components, center, ratio = stats.fit_pca(fit, s.variance_share)
    err = stats.reconstruction_errors(hold, components, center)
    edges = stats.quantile_edges(err, s.score_bins)
    counts, _ = stats.histogram(err, edges)
    return {
        "features": names,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "center": center.tolist(),
        "components": components.tolist(),
        "explained_variance_ratio": ratio.tolist(),
        "n_fit": int(len(fit)),
        "n_holdout": int(n_hold),
        "percentile": s.percentile,
        "threshold": float(np.percentile(err, s.percentile)),
        "error_mean": float(err.mean()),
        "error_var": float(err.var(ddof=1)),
        "error_edges": edges.tolist(),
        "error_counts": counts.tolist(),
    }


def _score_profile(model: Any, feats: list[str], sample: np.ndarray, s: ProfileSettings) -> dict:
    """Reference distribution of the model's OOD scores on the row sample."""
    sc = output_scores(np.asarray(model(sample)))
    out = {}
    for name in SCORES:
        v = sc[name]
        d = DIRECTION[name]
        q = s.ood_percentile if d > 0 else 100.0 - s.ood_percentile
        edges = stats.quantile_edges(v, s.score_bins)
        counts, _ = stats.histogram(v, edges)
        out[name] = {
            "direction": d,
            "percentile": q,
            "threshold": float(np.percentile(v, q)),
            "expected_share": float(np.mean(v > np.percentile(v, q)) if d > 0
                                    else np.mean(v < np.percentile(v, q))),
            "mean": float(v.mean()),
            "edges": edges.tolist(),
            "counts": counts.tolist(),
        }
    return {"features": feats, "n": int(len(sample)), "scores": out}


def build_profile(
    source: str | os.PathLike | pa.Table,
    features: list[str] | None = None,
    model: Any = None,
    model_dir: str | None = None,
    settings: ProfileSettings | None = None,
    engine: str = "local",
) -> Profile:
    """Two streaming passes over ``source``: moments + sample, then exact bin counts.

    ``model`` is a ``raw features -> logits`` callable (with ``.features`` when it has them).
    """
    s = settings or ProfileSettings()
    s.validate()
    schema = dd.schema_of(source)
    if features is None and model is not None and hasattr(model, "features"):
        features = list(model.features)
    kinds = dd.column_kinds(schema, features)
    numeric = [f for f, k in kinds.items() if k == dd.NUMERIC]
    categorical = [f for f, k in kinds.items() if k == dd.CATEGORICAL]
    model_feats: list[str] = []
    if model is not None:
        model_feats = list(getattr(model, "features", numeric))
        bad = [f for f in model_feats if kinds.get(f) != dd.NUMERIC]
        if bad:
            raise DriftError(f"model features {bad} are not numeric profiled features")
    cols = numeric + categorical
    n_known = dd.count_rows(source)
    bound = sample_key_bound(s.sample_size, n_known)
    first = eng.run(
        source, cols, ProfilePass(numeric, categorical, s.sample_size, s.seed, bound),
        lambda a, b: a.merge(b, s.sample_size), engine,
    )
    if bound < 1.0 and len(first.sample_keys) < min(s.sample_size, first.n_rows):
        # fewer than k keys under the bound (never seen: ~12 sd of margin): do it unbounded
        first = eng.run(
            source, cols, ProfilePass(numeric, categorical, s.sample_size, s.seed),
            lambda a, b: a.merge(b, s.sample_size), engine,
        )
    return finish_profile(
        first, kinds, model_feats, _name(source), s,
        lambda cp: eng.run(source, numeric, cp, lambda a, b: a.merge(b), engine),
        model=model, model_dir=model_dir,
    )


def finish_profile(
    first: ProfilePartial,
    kinds: dict[str, str],
    model_feats: list[str],
    source_name: str,
    s: ProfileSettings,
    count: Callable[[CountPass], CountPartial],
    model: Any = None,
    model_dir: str | None = None,
) -> Profile:
    """A profile from the merged first pass (moments, categories, the bottom-k sample) and a
    second pass, `count(pass) -> merged CountPartial`, that counts every row into the bins."""
    numeric = [f for f, k in kinds.items() if k == dd.NUMERIC]
    categorical = [f for f, k in kinds.items() if k == dd.CATEGORICAL]
    if first.n_rows == 0:
        raise DataError(f"reference data {source_name} has no rows")
    empty = [f for f, c in zip(numeric, first.count) if c == 0]
    empty += [f for f in categorical if not first.categories.get(f)]
    if empty:
        raise DataError(
            f"reference columns {empty} have no non-missing values; drop them with --features"
        )
    mean = first.mean
    std = np.sqrt(first.m2 / np.maximum(first.count - 1, 1))
    scale = np.where(std > 0, std, 1.0)
    feats_doc: list[dict[str, Any]] = []
    edges = []
    inner = np.linspace(0, 1, s.n_bins + 1)[1:-1]
    for j in range(len(numeric)):
        col = first.sample[j]
        col = col[~np.isnan(col)]
        qs = np.quantile(col, inner) if col.size else np.empty(0)
        e = np.unique(np.clip(np.r_[first.vmin[j], qs, first.vmax[j]], first.vmin[j], first.vmax[j]))
        edges.append(e)
    cats = {}
    for f in categorical:
        vc = sorted(first.categories[f].items(), key=lambda kv: (-kv[1], kv[0]))
        cats[f] = [v for v, _ in vc[: s.max_categories]]
    second = count(CountPass(numeric=numeric, edges=edges, categorical=[], categories=[]))
    for j, f in enumerate(numeric):
        feats_doc.append({
            "name": f, "kind": dd.NUMERIC, "edges": edges[j].tolist(),
            "counts": second.num_counts[j].tolist(), "missing": int(second.num_missing[j]),
            "mean": float(mean[j]), "std": float(std[j]),
            "min": float(first.vmin[j]), "max": float(first.vmax[j]),
        })
    for f in categorical:
        known = set(cats[f])
        counts = [first.categories[f][c] for c in cats[f]]
        other = sum(c for v, c in first.categories[f].items() if v not in known)
        feats_doc.append({
            "name": f, "kind": dd.CATEGORICAL, "categories": cats[f],
            "counts": counts + [other], "missing": int(first.cat_missing[f]),
        })
    by_name = {d["name"]: d for d in feats_doc}
    rows = first.rows()  # one [k, F] copy of the sample for the PCA and the model's scores
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source_name,
        "n_rows": int(first.n_rows),
        "settings": s.__dict__,
        "features": [by_name[f] for f in kinds],
        "pca": _fit_pca(rows, numeric, mean, scale, s),
        "model": None,
    }
    if model is not None:
        idx = [numeric.index(f) for f in model_feats]
        sample = rows if idx == list(range(rows.shape[1])) else rows[:, idx]  # no copy when the model reads every feature
        missing = np.isnan(sample).any(axis=1)
        if missing.any():
            sample = sample[~missing]
        doc["model"] = _score_profile(model, model_feats, sample, s)
        doc["model"]["dir"] = model_dir
    return Profile(doc)


def sample_key_bound(k: int, n_rows: int | None) -> float:
    """A key bound that the k-th smallest of ``n_rows`` uniform keys stays under (it has mean
    ~k/n and sd ~sqrt(k)/n; the bound is 12 sd above), or 1.0 (no bound)."""
    if not n_rows or n_rows <= k:
        return 1.0
    return min(1.0, (k + 12.0 * np.sqrt(k) + 64.0) / n_rows)


def _name(source: Any) -> str:
    return "<in-memory table>" if isinstance(source, pa.Table) else str(source)


def write_reference_profile(
    data: pa.Table,
    out: str | os.PathLike,
    features: list[str] | None = None,
    model_dir: str | os.PathLike | None = None,
) -> Path:
    """Build a profile of ``data`` (raw features; the train split) and write it to ``out``."""
    model = None
    if model_dir is not None:
        from raydl.drift.ood import ModelScorer

        model = ModelScorer(model_dir)
    prof = build_profile(data, features=features, model=model,
                         model_dir=None if model_dir is None else str(model_dir))
    return prof.save(out)
