"""The fast paths give the same numbers as the straightforward formulas they replace."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydl.drift import build_profile, stats
from raydl.drift import profile as prof_mod
from raydl.drift import synthetic as syn
from raydl.drift.partial import CountPass, ProfilePass, standardise


@pytest.mark.parametrize("seed", range(4))
def test_histogram_equals_bincount_of_bin_index(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=5000)
    edges = np.unique(np.quantile(x[:500], np.linspace(0, 1, 11)))
    x[:50] = edges[rng.integers(0, len(edges), 50)]  # values exactly on edges
    x[50:60] = np.nan
    x[60:62] = [np.inf, -np.inf]
    counts, nan = stats.histogram(x, edges)
    ok = x[~np.isnan(x)]
    want = np.bincount(stats.bin_index(ok, edges), minlength=stats.n_numeric_bins(edges))
    assert nan == 10 and counts.tolist() == want.tolist()
    one = np.array([7.0])  # a constant reference feature: under / exactly / over
    assert stats.histogram(np.array([6.0, 7.0, 7.0, 8.0]), one)[0].tolist() == [1, 2, 1]


def test_recon_errors_match_the_standardise_then_project_formula() -> None:
    t = syn.make_table(3000, seed=2)
    prof = build_profile(t)
    cp = prof.count_pass()
    p = cp.pca
    x = np.column_stack([t.column(f).to_numpy() for f in p["features"]])
    x[::7, 3] = np.nan
    batch = pa.table({f: x[:, j] for j, f in enumerate(p["features"])})
    want = stats.reconstruction_errors(standardise(x, p["mean"], p["scale"]),
                                       p["components"], p["center"])
    got = CountPass(numeric=p["features"], edges=[], categorical=[], categories=[],
                    pca=p).recon_errors(batch)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the two-matmul form the profile's threshold was first defined with
    z = standardise(x, p["mean"], p["scale"]) - p["center"]
    two = np.sqrt((((z @ p["components"].T) @ p["components"] - z) ** 2).sum(axis=1))
    np.testing.assert_allclose(got, two, rtol=1e-12)


def test_key_bound_keeps_the_same_sample() -> None:
    t = syn.make_table(20_000, seed=3)
    names = [f for f in t.column_names if f != "cat"]
    k = 1000
    bound = prof_mod.sample_key_bound(k, t.num_rows)
    assert 0 < bound < 0.1

    def fold(pp: ProfilePass):
        parts = [pp(b) for b in t.to_batches(max_chunksize=3000)]
        acc = parts[0]
        for p in parts[1:]:
            acc = acc.merge(p, k)
        return acc

    a = fold(ProfilePass(names, ["cat"], k, 0))
    b = fold(ProfilePass(names, ["cat"], k, 0, bound))
    assert np.array_equal(a.sample_keys, b.sample_keys) and np.array_equal(a.sample, b.sample)
    assert np.array_equal(a.mean, b.mean) and a.categories == b.categories


def test_too_tight_key_bound_falls_back(monkeypatch, tmp_path) -> None:
    pq.write_table(syn.make_table(5000, seed=4), tmp_path / "r.parquet")
    settings = prof_mod.ProfileSettings(sample_size=1000)
    want = build_profile(tmp_path / "r.parquet", settings=settings)
    monkeypatch.setattr(prof_mod, "sample_key_bound", lambda k, n: 1e-3)  # ~5 rows pass
    got = build_profile(tmp_path / "r.parquet", settings=settings)
    assert got.features == want.features and got.pca == want.pca


@pytest.mark.parametrize("k,n,a,b", [(10500, 1_000_000, 100, 9901), (9000, 1_000_000, 100, 9901),
                                     (130, 10_000, 100, 9901), (12, 1000, 1, 9), (1, 10, 1, 1),
                                     (50_000, 1_000_000, 100, 9901), (5, 5, 3, 2)])
def test_betabinom_sf_matches_scipy_full_sum(k: int, n: int, a: float, b: float) -> None:
    """Windowed sum with math.lgamma vs scipy over every k: log-gamma differences of
    numbers ~1e7 carry ~1e-9 absolute error, hence the tolerance."""
    from scipy.special import betaln, gammaln

    ks = np.arange(k, n + 1, dtype=np.float64)
    logp = (gammaln(n + 1) - gammaln(ks + 1) - gammaln(n - ks + 1)
            + betaln(ks + a, n - ks + b) - betaln(a, b))
    full = min(1.0, float(np.exp(logp.max()) * np.exp(logp - logp.max()).sum()))
    assert stats.betabinom_sf(k, n, a, b) == pytest.approx(full, rel=1e-8)


@pytest.mark.parametrize("a", [0.05, 0.5, 1.0, 2.5, 10.5, 50.0, 300.0, 5000.0, 1e5])
@pytest.mark.parametrize("q", [0.9, 0.5, 0.1, 1e-2, 9.1e-4, 1e-4, 1e-6, 1e-9])
def test_gamma_upper_quantile_matches_scipy(a: float, q: float) -> None:
    from scipy.special import gammaincc, gammaincinv

    x = stats.gamma_upper_quantile(a, q)
    assert x == pytest.approx(float(gammaincinv(a, 1.0 - q)), rel=1e-8)
    assert stats.gamma_q(a, x) == pytest.approx(1.0 - (1.0 - q), rel=1e-9)
    assert float(gammaincc(a, x)) == pytest.approx(1.0 - (1.0 - q), rel=1e-9)


def test_no_heavy_imports_on_the_profile_and_check_path(tmp_path) -> None:
    pq.write_table(syn.make_table(2000, seed=5), tmp_path / "r.parquet")
    pq.write_table(syn.make_table(1000, seed=6, scenario="all"), tmp_path / "c.parquet")
    code = ("import sys\nfrom raydl.drift import build_profile, check\n"
            f"p = build_profile({str(tmp_path / 'r.parquet')!r})\n"
            f"assert check(p, {str(tmp_path / 'c.parquet')!r}).drifted\n"
            "print(sorted(m for m in ('pandas', 'torch', 'ray', 'sklearn', 'scipy', "
            "'pyarrow.dataset') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
