"""Detectors (fit on reference, score current) and the DETECTORS registry.

The statistics come from ``stats``; counting runs through ``engine`` (local or Ray).
Every verdict is a one-sided test at ``alpha / n_tests`` (Bonferroni over all features and
checks), so an i.i.d. current sample alarms at most ``alpha`` of the time overall when
thresholds are calibrated; a calibrated threshold never falls below ``MIN_EFFECT``.
``threshold="fixed"`` uses fixed cut-offs instead (JS 0.1 bits).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from raydl.drift import data as dd
from raydl.drift import engine as eng
from raydl.drift import stats
from raydl.drift.errors import DriftError
from raydl.drift.partial import CountPartial
from raydl.drift.profile import Profile, ProfileSettings, build_profile
from raydl.registry import Registry

FIXED_THRESHOLDS = {"js": 0.1, "kl": 0.1, "psi": 0.2}
# Smallest effect a calibrated verdict reports (JS 0.001 bits; KL and PSI at the same
# chi-square scale): with a million rows a side the bootstrap threshold falls to ~1e-5 bits,
# where statistically significant differences are too small to matter.
MIN_EFFECT = {"js": 1e-3, "kl": 2.8e-3, "psi": 5.5e-3}


@dataclass(frozen=True)
class CheckSettings:
    """How verdicts are reached."""

    threshold: str = "calibrated"  # or "fixed"
    method: str = "js"  # the statistic that decides a feature's verdict
    fixed: dict[str, float] = field(default_factory=lambda: dict(FIXED_THRESHOLDS))
    min_effect: dict[str, float] = field(default_factory=lambda: dict(MIN_EFFECT))
    alpha: float = 0.02  # overall false-alarm rate of an i.i.d. sample (<= 5% asked)
    eps: float = stats.DEFAULT_EPS
    n_draws: int = 4000
    max_missing_increase: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if self.threshold not in ("calibrated", "fixed"):
            raise DriftError(f"threshold={self.threshold!r} (allowed: calibrated, fixed)")
        if self.method not in stats.STATISTICS:
            raise DriftError(f"method={self.method!r} (allowed: {', '.join(stats.STATISTICS)})")
        if not 0 < self.alpha < 0.5:
            raise DriftError(f"alpha={self.alpha} (allowed 0 < alpha < 0.5)")
        if not 0 < self.eps < 0.01:
            raise DriftError(f"eps={self.eps} (allowed 0 < eps < 0.01)")


@dataclass
class FeatureResult:
    name: str
    kind: str
    status: str  # ok | all_missing
    drifted: bool
    stats: dict[str, float | None]
    thresholds: dict[str, float]
    verdicts: dict[str, bool]
    bins: list[str]
    reference_counts: list[int]
    current_counts: list[int]
    missing_share: dict[str, float]
    unseen_share: float = 0.0
    unseen_examples: list[str] = field(default_factory=list)


@dataclass
class MultivariateResult:
    drifted: bool
    n_components: int
    threshold: float
    percentile: float
    reference_mean: float
    current_mean: float
    expected_share: float
    share_above: float
    p_mean: float
    p_share: float
    alpha: float
    js_errors: float
    edges: list[float]
    reference_counts: list[int]
    current_counts: list[int]


@dataclass
class ScoreResult:
    name: str
    drifted: bool
    direction: int
    threshold: float
    expected_share: float
    share_flagged: float
    reference_mean: float
    current_mean: float
    p_value: float
    js: float
    edges: list[float]
    reference_counts: list[int]
    current_counts: list[int]


@dataclass
class DriftResult:
    drifted: bool
    n_rows: int
    n_tests: int
    settings: dict[str, Any]
    features: list[FeatureResult]
    multivariate: MultivariateResult | None = None
    output: list[ScoreResult] | None = None
    mc_dropout: dict[str, Any] | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-safe (NaN/inf -> None), most drifted features first."""
        d = asdict(self)
        d["drifted_features"] = self.drifted_features
        d["features"].sort(key=lambda f: (not f["drifted"], -(f["stats"]["js"] or 2.0)))
        return _json_safe(d)


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def n_tests_for(profile: Profile, with_model: bool) -> int:
    """Number of one-sided tests a check makes (the Bonferroni divisor)."""
    n = len(profile.features) + (2 if profile.pca else 0)
    return n + (3 if with_model and profile.model else 0)


def score_features(
    profile: Profile, state: CountPartial, s: CheckSettings, n_tests: int
) -> list[FeatureResult]:
    """Per-feature KL / JS / PSI with verdicts against fixed or calibrated thresholds."""
    out = []
    num = {f["name"]: j for j, f in enumerate(profile.numeric)}
    cat = {f["name"]: j for j, f in enumerate(profile.categorical)}
    nulls = _bootstrap_nulls(profile, state, s, num, cat) if s.threshold == "calibrated" else {}
    for i, f in enumerate(profile.features):
        ref = np.asarray(f["counts"], dtype=np.int64)
        if f["kind"] == dd.NUMERIC:
            cur, miss = state.num_counts[num[f["name"]]], int(state.num_missing[num[f["name"]]])
            e = f["edges"]
            bins = ["< min"] + [f"[{e[k]:.4g}, {e[k + 1]:.4g})" for k in range(len(e) - 1)]
            bins = bins if len(e) > 1 else ["< min", f"= {e[0]:.4g}"]
            bins.append("> max")
            unseen, examples = 0.0, []
        else:
            j = cat[f["name"]]
            cur, miss = state.cat_counts[j], int(state.cat_missing[j])
            bins = list(f["categories"]) + ["(unseen)"]
            unseen = float(cur[-1] / max(cur.sum(), 1))
            examples = sorted(state.unseen_examples[j])
        n_cur = int(cur.sum())
        ref_miss = f["missing"] / max(ref.sum() + f["missing"], 1)
        cur_miss = miss / max(n_cur + miss, 1)
        missing = {"reference": ref_miss, "current": cur_miss}
        common = dict(name=f["name"], kind=f["kind"], bins=bins, reference_counts=ref.tolist(),
                      current_counts=cur.tolist(), missing_share=missing,
                      unseen_share=unseen, unseen_examples=examples)
        if n_cur == 0:
            out.append(FeatureResult(status="all_missing", drifted=True,
                                     stats=dict.fromkeys(stats.STATISTICS), thresholds={},
                                     verdicts={}, **common))
            continue
        values, thresholds, verdicts = {}, {}, {}
        null = nulls[i].result() if s.threshold == "calibrated" else None
        for k, fn in stats.STATISTICS.items():
            values[k] = float(fn(ref, cur, s.eps))
            if null is None:
                thresholds[k] = float(s.fixed[k])
            else:
                thresholds[k] = max(stats.upper_quantile(null[k], s.alpha / n_tests),
                                    s.min_effect[k])
            verdicts[k] = values[k] > thresholds[k]
        verdicts["missing"] = cur_miss - ref_miss > s.max_missing_increase
        drifted = verdicts[s.method] or verdicts["missing"]
        out.append(FeatureResult(status="ok", drifted=bool(drifted), stats=values,
                                 thresholds=thresholds, verdicts=verdicts, **common))
    return out


def _bootstrap_nulls(profile: Profile, state: CountPartial, s: CheckSettings,
                     num: dict[str, int], cat: dict[str, int]) -> dict[int, Any]:
    """Future of each feature's ``bootstrap_null`` (seed ``s.seed + i``), two at a time:
    numpy's multinomial sampler releases the GIL. Same draws as one after another."""
    from concurrent.futures import Future, ThreadPoolExecutor

    jobs = {}
    for i, f in enumerate(profile.features):
        cur = (state.num_counts[num[f["name"]]] if f["kind"] == dd.NUMERIC
               else state.cat_counts[cat[f["name"]]])
        n_cur = int(cur.sum())
        if n_cur > 0:
            jobs[i] = (np.asarray(f["counts"], dtype=np.int64), n_cur)
    workers = min(os.cpu_count() or 1, 4, len(jobs))
    if workers <= 1:
        out: dict[int, Any] = {}
        for i, (ref, n_cur) in jobs.items():
            fut: Future = Future()
            fut.set_result(stats.bootstrap_null(ref, n_cur, s.n_draws, s.eps, s.seed + i))
            out[i] = fut
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {i: pool.submit(stats.bootstrap_null, ref, n_cur, s.n_draws, s.eps, s.seed + i)
                for i, (ref, n_cur) in jobs.items()}


def score_reconstruction(
    profile: Profile, state: CountPartial, s: CheckSettings, n_tests: int
) -> MultivariateResult | None:
    """Mean PCA reconstruction error and share above the reference percentile, each z-tested."""
    p, r = profile.pca, state.recon
    if p is None or r is None or r["n"] == 0:
        return None
    n = r["n"]
    mean = r["sum"] / n
    share = r["above"] / n
    expected = 1.0 - p["percentile"] / 100.0
    p_mean = stats.normal_upper_p(
        stats.two_sample_mean_z(mean, p["error_mean"], p["error_var"], n, p["n_holdout"]))
    p_share = stats.exceedance_p(r["above"], n, expected, p["n_holdout"])
    level = s.alpha / n_tests
    return MultivariateResult(
        drifted=bool(min(p_mean, p_share) < level), n_components=len(p["components"]),
        threshold=p["threshold"], percentile=p["percentile"], reference_mean=p["error_mean"],
        current_mean=mean, expected_share=expected, share_above=share, p_mean=p_mean,
        p_share=p_share, alpha=level,
        js_errors=float(stats.js_divergence(p["error_counts"], r["counts"], s.eps)),
        edges=p["error_edges"], reference_counts=p["error_counts"],
        current_counts=r["counts"].tolist(),
    )


def score_output(
    profile: Profile, state: CountPartial, s: CheckSettings, n_tests: int
) -> list[ScoreResult] | None:
    """Share of rows past each OOD-score threshold vs the reference share, z-tested."""
    if profile.model is None or not state.scores:
        return None
    out = []
    for name, ref in profile.model["scores"].items():
        a = state.scores[name]
        n = max(a["n"], 1)
        share = a["above"] / n
        pv = stats.exceedance_p(a["above"], n, ref["expected_share"], profile.model["n"])
        out.append(ScoreResult(
            name=name, drifted=bool(pv < s.alpha / n_tests), direction=ref["direction"],
            threshold=ref["threshold"], expected_share=ref["expected_share"],
            share_flagged=share, reference_mean=ref["mean"], current_mean=a["sum"] / n,
            p_value=pv, js=float(stats.js_divergence(ref["counts"], a["counts"], s.eps)),
            edges=ref["edges"], reference_counts=ref["counts"],
            current_counts=a["counts"].tolist()))
    return out


def check(
    profile: Profile,
    source: str | os.PathLike | pa.Table,
    model: Any = None,
    settings: CheckSettings | None = None,
    engine: str = "local",
) -> DriftResult:
    """One streaming pass over ``source`` against ``profile``; every verdict and number."""
    s = settings or CheckSettings()
    s.validate()
    if model is not None and profile.model is None:
        raise DriftError("a model was given but the profile has no model scores; "
                         "rebuild it with --model")
    dd.check_schema(dd.schema_of(source), profile.kinds)
    cols = list(profile.kinds)
    if model is not None:
        cols += [f for f in profile.model["features"] if f not in profile.kinds]
    state = eng.run(source, cols, profile.count_pass(model), lambda a, b: a.merge(b), engine)
    if state.n_rows == 0:
        raise DriftError(f"current data {source if not isinstance(source, pa.Table) else ''!s}"
                         " has no rows; nothing to check")
    n_tests = n_tests_for(profile, model is not None)
    feats = score_features(profile, state, s, n_tests)
    mv = score_reconstruction(profile, state, s, n_tests)
    outp = score_output(profile, state, s, n_tests) if model is not None else None
    drifted = (any(f.drifted for f in feats) or bool(mv and mv.drifted)
               or bool(outp and any(o.drifted for o in outp)))
    return DriftResult(drifted=drifted, n_rows=state.n_rows, n_tests=n_tests,
                       settings=asdict(s), features=feats, multivariate=mv, output=outp)


DETECTORS: Registry[type] = Registry("detector")


class _Detector:
    """fit(reference) -> self builds the profile; score(current) -> a result."""

    def __init__(self, settings: CheckSettings | None = None,
                 profile_settings: ProfileSettings | None = None, engine: str = "local",
                 features: list[str] | None = None, model: Any = None) -> None:
        self.settings = settings or CheckSettings()
        self.profile_settings = profile_settings or ProfileSettings()
        self.engine = engine
        self.feature_names = features
        self.model = model
        self.profile_: Profile | None = None

    def fit(self, reference: Any) -> _Detector:
        if isinstance(reference, Profile):
            self.profile_ = reference
        else:
            self.profile_ = build_profile(reference, self.feature_names, self.model,
                                          settings=self.profile_settings, engine=self.engine)
        return self

    def _check(self, current: Any) -> DriftResult:
        if self.profile_ is None:
            raise DriftError(f"{type(self).__name__}.score called before fit")
        return check(self.profile_, current, self.model, self.settings, self.engine)


@DETECTORS.register("univariate")
class UnivariateDetector(_Detector):
    """Per-feature KL / JS / PSI on the reference-quantile bins."""

    def score(self, current: Any) -> list[FeatureResult]:
        return self._check(current).features


@DETECTORS.register("reconstruction")
class ReconstructionDetector(_Detector):
    """PCA reconstruction-error drift (multivariate; catches correlation changes)."""

    def score(self, current: Any) -> MultivariateResult | None:
        return self._check(current).multivariate


@DETECTORS.register("output")
class OutputDetector(_Detector):
    """Model-output OOD scores (needs ``model``: raw features -> logits)."""

    def fit(self, reference: Any) -> OutputDetector:
        if self.model is None:
            raise DriftError("the output detector needs a model (logits function)")
        super().fit(reference)
        return self

    def score(self, current: Any) -> list[ScoreResult] | None:
        return self._check(current).output


@DETECTORS.register("all")
class DriftMonitor(_Detector):
    """Every check at once: the overall verdict the CLI reports."""

    def score(self, current: Any) -> DriftResult:
        return self._check(current)
