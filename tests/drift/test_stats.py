"""Pure statistics against independent numpy / scipy / scikit-learn computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from sklearn.decomposition import PCA

from raydl.drift import stats


def _smoothed(c: np.ndarray, eps: float) -> np.ndarray:
    p = c / c.sum()
    p = p + eps
    return p / p.sum()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("eps", [1e-4, 1e-6])
def test_divergences_match_scipy(seed: int, eps: float) -> None:
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 50, size=22).astype(float)
    q = rng.integers(0, 50, size=22).astype(float)
    p[3] = 0  # an empty bin on one side
    ps, qs = _smoothed(p, eps), _smoothed(q, eps)
    assert stats.kl_divergence(p, q, eps) == pytest.approx(entropy(ps, qs), abs=1e-9)
    assert stats.js_divergence(p, q, eps) == pytest.approx(
        jensenshannon(ps, qs, base=2) ** 2, abs=1e-9
    )
    assert stats.psi(p, q, eps) == pytest.approx(
        float(np.sum((qs - ps) * np.log(qs / ps))), abs=1e-9
    )


def test_divergences_are_zero_on_equal_and_bounded() -> None:
    p = np.array([1.0, 2.0, 3.0])
    assert stats.js_divergence(p, 2 * p) == pytest.approx(0.0, abs=1e-12)
    assert stats.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    disjoint = stats.js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0]), eps=1e-12)
    assert 0.99 < disjoint <= 1.0  # base 2: disjoint supports reach 1, not ln 2


def test_batched_rows_equal_single() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 10)), rng.random((7, 10))
    many = stats.js_divergence(a, b)
    assert np.allclose(many, [stats.js_divergence(x, y) for x, y in zip(a, b)], atol=1e-12)


def test_bins_cover_under_and_overflow() -> None:
    edges = stats.quantile_edges(np.arange(101.0), 4)
    assert edges.tolist() == [0, 25, 50, 75, 100]
    counts, nan = stats.histogram(np.array([-1, 0, 24.9, 25, 99, 100, 100.5, np.nan]), edges)
    assert counts.tolist() == [1, 2, 1, 0, 2, 1]
    assert nan == 1
    ref_counts, _ = stats.histogram(np.arange(101.0), edges)
    assert ref_counts.sum() == 101 and ref_counts[0] == 0 and ref_counts[-1] == 0


def test_constant_feature_has_three_bins() -> None:
    edges = stats.quantile_edges(np.full(10, 3.0), 20)
    assert edges.tolist() == [3.0]
    counts, _ = stats.histogram(np.array([2.0, 3.0, 3.0, 4.0]), edges)
    assert counts.tolist() == [1, 2, 1]


def test_reconstruction_errors_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    pca = PCA(n_components=0.8, svd_solver="full").fit(x[:400])
    z = x[400:]
    expected = np.linalg.norm(z - pca.inverse_transform(pca.transform(z)), axis=1)
    got = stats.reconstruction_errors(z, pca.components_, pca.mean_)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_bootstrap_null_threshold_grows_when_samples_shrink() -> None:
    ref = np.full(22, 1000)
    small = stats.upper_quantile(stats.bootstrap_null(ref, 200, 2000)["js"], 0.01)
    large = stats.upper_quantile(stats.bootstrap_null(ref, 20000, 2000)["js"], 0.01)
    assert small > large > 0


def test_gamma_tail_matches_empirical_quantile() -> None:
    null = stats.bootstrap_null(np.full(22, 500), 2000, 20000, seed=3)["js"]
    emp = float(np.quantile(null, 0.99))
    assert stats.upper_quantile(null[:1000], 0.01) == pytest.approx(emp, rel=0.15)


def test_exceedance_p_is_calibrated_and_monotone() -> None:
    assert stats.exceedance_p(0, 1000, 0.01, 400) == pytest.approx(1.0)
    assert stats.exceedance_p(10, 1000, 0.01, 400) > 0.3  # exactly the expected share
    assert stats.exceedance_p(60, 1000, 0.01, 400) < stats.exceedance_p(30, 1000, 0.01, 400)


def test_fit_pca_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(800, 8)) @ rng.normal(size=(8, 8))
    for share in (0.5, 0.8, 0.95):
        pca = PCA(n_components=share, svd_solver="full").fit(x)
        comps, center, ratio = stats.fit_pca(x, share)
        assert comps.shape == pca.components_.shape
        np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, atol=1e-10)
        z = rng.normal(size=(50, 8))
        np.testing.assert_allclose(
            stats.reconstruction_errors(z, comps, center),
            np.linalg.norm(z - pca.inverse_transform(pca.transform(z)), axis=1), atol=1e-6)


def test_betabinom_sf_matches_scipy() -> None:
    from scipy.stats import betabinom

    for k, n, a, b in [(5, 100, 2, 30), (60, 1000, 4, 397), (0, 10, 1, 1), (11, 10, 1, 1),
                       (3000, 200000, 10, 990)]:
        assert stats.betabinom_sf(k, n, a, b) == pytest.approx(
            float(betabinom.sf(k - 1, n, a, b)), rel=1e-5, abs=1e-300)


def test_gamma_tail_matches_scipy_gamma() -> None:
    from scipy.stats import gamma

    v = np.random.default_rng(0).gamma(3.0, 0.01, size=5000)
    m, var = v.mean(), v.var(ddof=1)
    assert stats.upper_quantile(v, 0.001) == pytest.approx(
        gamma.ppf(0.999, m * m / var, scale=var / m), rel=1e-9)
