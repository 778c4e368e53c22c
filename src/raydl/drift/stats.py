"""Pure statistics: divergences on shared bins, binning, PCA reconstruction errors, null thresholds.

Every function here is side-effect free and works on numpy arrays; detectors and the
streaming engine call them. Conventions:

* ``p`` is the reference distribution, ``q`` the current one; both may be counts or
  probabilities (they are normalised), and ONE smoothing constant ``eps`` is added to every
  bin probability of both before renormalising, so empty bins never give infinities.
* ``kl_divergence`` is KL(p || q) in nats; ``js_divergence`` is the Jensen-Shannon
  divergence in bits (base 2, so it lies in [0, 1]); ``psi`` is sum((q - p) * ln(q / p)).
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_EPS = 1e-4


def smooth(counts: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Normalise ``counts`` to probabilities, add ``eps`` to each bin, renormalise."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=-1, keepdims=True)
    p = np.divide(c, total, out=np.zeros_like(c), where=total > 0)
    p = p + eps
    return p / p.sum(axis=-1, keepdims=True)


def _kl_smoothed(ps: np.ndarray, qs: np.ndarray) -> np.ndarray:
    return np.sum(ps * np.log(ps / qs), axis=-1)


def _js_smoothed(ps: np.ndarray, qs: np.ndarray) -> np.ndarray:
    m = 0.5 * (ps + qs)
    js = 0.5 * np.sum(ps * np.log2(ps / m), axis=-1) + 0.5 * np.sum(qs * np.log2(qs / m), axis=-1)
    return np.clip(js, 0.0, 1.0)


def _psi_smoothed(ps: np.ndarray, qs: np.ndarray) -> np.ndarray:
    return np.sum((qs - ps) * np.log(qs / ps), axis=-1)


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """KL(p || q) in nats on shared bins (last axis), both smoothed with ``eps``."""
    return _kl_smoothed(smooth(p, eps), smooth(q, eps))


def js_divergence(p: np.ndarray, q: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Jensen-Shannon divergence in bits (in [0, 1]) on shared bins, both smoothed with ``eps``."""
    return _js_smoothed(smooth(p, eps), smooth(q, eps))


def psi(p: np.ndarray, q: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Population stability index sum((q - p) ln(q / p)) on shared bins, smoothed with ``eps``."""
    return _psi_smoothed(smooth(p, eps), smooth(q, eps))


STATISTICS = {"kl": kl_divergence, "js": js_divergence, "psi": psi}
_SMOOTHED = {"kl": _kl_smoothed, "js": _js_smoothed, "psi": _psi_smoothed}


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Unique bin edges at the ``n_bins`` reference quantiles (min and max included)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        raise ValueError("no finite values to take quantiles of")
    return np.unique(np.quantile(v, np.linspace(0.0, 1.0, n_bins + 1)))


def n_numeric_bins(edges: np.ndarray) -> int:
    """Number of bins for ``edges``: underflow + interior bins + overflow."""
    return max(len(edges) - 1, 1) + 2


def _search_edges(edges: np.ndarray) -> np.ndarray:
    """Edges for one right-sided searchsorted that yields ``bin_index``'s bins directly:
    the top edge is nudged up one ulp (the maximum joins the last interior bin), and a
    single edge c becomes [c, c+ulp] (under / exactly c / over)."""
    e = np.array(edges, dtype=np.float64)
    if len(e) == 1:
        e = np.r_[e, e]
    e[-1] = np.nextafter(e[-1], np.inf)
    return e


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: 0 = below edges[0], last = above edges[-1], interior [e_i, e_i+1).

    The last interior bin is closed on the right so the reference maximum falls inside it.
    With a single edge (constant reference feature) the interior bin holds exactly that value.
    NaNs must be removed by the caller.
    """
    return np.searchsorted(_search_edges(edges), np.asarray(values, dtype=np.float64), "right")


def histogram(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Counts per bin (see ``bin_index``) and the number of NaNs skipped.

    Exactly ``np.bincount(bin_index(values[~nan], edges))``, computed without a per-value
    binary search: with right-sided bins, the number of values in bin >= i is the number of
    values >= the i-th search edge, so one vectorised comparison + count per edge (a few
    dozen cheap passes over an L2-resident column) gives every count, ~6x faster than
    ``searchsorted`` on unsorted data. NaN compares False against every edge.
    """
    x = np.asarray(values, dtype=np.float64)
    se = _search_edges(edges)
    nan = int(np.count_nonzero(np.isnan(x)))
    ge = np.empty(len(se) + 2, dtype=np.int64)  # ge[i] = values in bins >= i
    ge[0] = x.size - nan
    for i, e in enumerate(se):
        ge[i + 1] = np.count_nonzero(x >= e)
    ge[-1] = 0
    return ge[:-1] - ge[1:], nan


def reconstruction_errors(
    z: np.ndarray, components: np.ndarray, center: np.ndarray
) -> np.ndarray:
    """Euclidean norm of each row of ``z`` minus its PCA reconstruction.

    ``components`` is [k, d] with orthonormal rows (scikit-learn's ``components_``) and
    ``center`` the PCA mean (``mean_``); ``z`` is the standardised data [n, d].
    """
    zt = np.array(np.asarray(z, dtype=np.float64).T, order="C")  # [d, n] copy
    zt -= np.asarray(center, dtype=np.float64)[:, None]
    return reconstruction_errors_centered_t(zt, components)


def residual_projector(components: np.ndarray) -> np.ndarray:
    """I - V^T V: maps a centred row to its PCA residual (V = ``components``, orthonormal rows)."""
    v = np.asarray(components, dtype=np.float64)
    return np.eye(v.shape[1]) - v.T @ v


def reconstruction_errors_centered_t(
    zct: np.ndarray, components: np.ndarray, projector: np.ndarray | None = None
) -> np.ndarray:
    """``reconstruction_errors`` on centred data laid out feature-major ([d, n]).

    The residual z - z V^T V is (I - V^T V) z: one small [d, d] x [d, n] product instead of
    two, on contiguous rows (the [n, d] form spent most of its time in BLAS overhead).
    """
    p = residual_projector(components) if projector is None else projector
    r = p @ zct
    return np.sqrt(np.einsum("ij,ij->j", r, r))


def fit_pca(x: np.ndarray, variance_share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(components [k, d], center [d], explained-variance ratios [k]) of ``x``.

    k is the fewest components whose cumulative explained variance exceeds
    ``variance_share`` (scikit-learn's rule for ``PCA(n_components=share)``).
    """
    center = x.mean(axis=0)
    xc = x - center
    # The eigenvectors of the [d, d] covariance, largest first: the SVD of x's [n, d] rows gave the same
    # components and variances, with an [n, d] factor and LAPACK's workspace beside them (the driver
    # profiles a 50,000-row sample; its peak memory is bounded for streamed sources, #7).
    var, vecs = np.linalg.eigh(xc.T @ xc / max(len(x) - 1, 1))
    var, vecs = np.clip(var[::-1], 0.0, None), vecs[:, ::-1].T
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    k = min(int(np.searchsorted(np.cumsum(ratio), variance_share, side="right")) + 1, len(var))
    return np.ascontiguousarray(vecs[:k]), center, ratio[:k]


def bootstrap_null(
    ref_counts: np.ndarray,
    n_current: int,
    n_draws: int = 1000,
    eps: float = DEFAULT_EPS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Null distribution of each statistic between two i.i.d. samples of the reference histogram.

    Draws a reference-sized and a current-sized multinomial sample from the reference bin
    probabilities (Laplace-smoothed, so the under/overflow bins keep the ~1/n chance of a new
    extreme value) and returns every statistic of each of ``n_draws`` pairs.
    """
    c = np.asarray(ref_counts, dtype=np.float64)
    n_ref = int(c.sum())
    probs = (c + 1.0) / (c.sum() + len(c))
    rng = np.random.default_rng(seed)
    a = rng.multinomial(max(n_ref, 1), probs, size=n_draws)
    b = rng.multinomial(max(int(n_current), 1), probs, size=n_draws)
    ps, qs = smooth(a, eps), smooth(b, eps)  # once, shared by every statistic
    return {k: fn(ps, qs) for k, fn in _SMOOTHED.items()}


def upper_quantile(null: np.ndarray, alpha: float) -> float:
    """The (1 - alpha) quantile of a gamma fitted (by moments) to a null sample.

    Divergences of two i.i.d. histograms are close to a scaled chi-square, i.e. a gamma;
    the fit reads small tail probabilities (alpha / n_tests) from a thousand draws.
    """
    v = np.asarray(null, dtype=np.float64)
    mean, var = float(v.mean()), float(v.var(ddof=1))
    if mean <= 0 or var <= 0:
        return float(v.max())
    return gamma_upper_quantile(mean * mean / var, alpha) * (var / mean)


_TINY = 1e-300


def gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a) (a > 0, x >= 0):
    the series for P when x < a + 1, else Lentz's continued fraction for Q (relative
    accuracy ~1e-15 either way). Pure Python: scipy.special costs ~0.2 s to import."""
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        n = 0
        while abs(term) > abs(total) * 1e-17 and n < 100_000:
            n += 1
            term *= x / (a + n)
            total += term
        return max(0.0, 1.0 - math.exp(log_front) * total)
    b = x + 1.0 - a
    c, d = 1.0 / _TINY, 1.0 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-16:
            break
    return math.exp(log_front) * h


def gamma_upper_quantile(a: float, q: float) -> float:
    """x with Q(a, x) = q for a unit-scale gamma of shape ``a`` (scipy's
    ``gammaincinv(a, 1 - q)``): Wilson-Hilferty start, then Newton on log Q."""
    from statistics import NormalDist

    q = 1.0 - (1.0 - q)  # the tail scipy's gammaincinv(a, 1 - q) sees (same rounding)
    if not 0.0 < q < 1.0:
        return 0.0 if q >= 1.0 else math.inf
    z = NormalDist().inv_cdf(1.0 - q)
    w = 1.0 / (9.0 * a)
    x = a * max(1.0 - w + z * math.sqrt(w), 0.05) ** 3
    log_q = math.log(q)
    for _ in range(200):
        qx = gamma_q(a, x)
        if qx <= 0.0:  # far out in the tail: step back towards the body
            x *= 0.5
            continue
        pdf = math.exp(-x + (a - 1.0) * math.log(x) - math.lgamma(a))
        if pdf <= 0.0:
            break
        dx = (math.log(qx) - log_q) * qx / pdf  # Newton on log Q(a, x) - log q
        new = x + dx
        if new <= 0.0:
            new = x * 0.5
        if abs(new - x) <= 1e-15 * max(abs(x), 1e-300):
            x = new
            break
        x = new
    return float(x)


def normal_upper_p(z: float) -> float:
    """One-sided p-value P(Z >= z) of a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_sample_mean_z(
    mean_cur: float, mean_ref: float, var_ref: float, n_cur: int, n_ref: int
) -> float:
    """z statistic of a mean that grew from reference to current (reference variance pooled)."""
    se = math.sqrt(max(var_ref, 1e-300) * (1.0 / max(n_cur, 1) + 1.0 / max(n_ref, 1)))
    return (mean_cur - mean_ref) / se


def exceedance_p(n_above: int, n_cur: int, expected: float, n_ref: int) -> float:
    """P(at least ``n_above`` of ``n_cur`` i.i.d. rows pass a threshold read from ``n_ref`` rows).

    The threshold is an order statistic of the reference with ``j = expected * n_ref`` rows
    beyond it, so its true exceedance probability is Beta(j, n_ref - j + 1) and the count of
    current rows beyond it is beta-binomial: exact, however small ``n_ref`` is.
    """
    j = min(max(round(expected * n_ref), 1), max(n_ref, 1))
    return betabinom_sf(n_above, max(n_cur, 1), j, max(n_ref - j + 1, 1))


def betabinom_sf(k: int, n: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ BetaBinomial(n, a, b), summed in log space.

    The pmf is unimodal in k (a, b >= 1 here), so the sum walks up from k in blocks and stops
    once past the mode and 60 nats (e^-60 ~ 1e-26) below the largest term: the rest cannot
    change the float64 sum (a million such terms add < 1e-19 of it), and with a million
    current rows the walk covers thousands of terms, not a million.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    const = (math.lgamma(n + 1) - math.lgamma(n + a + b)
             - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))
    parts, top, start, block = [], -np.inf, k, 8192
    while start <= n:
        ks = np.arange(start, min(start + block, n + 1), dtype=np.float64)
        # log C(n, k) + log B(k + a, n - k + b) - log B(a, b); the constant terms first
        logp = (const - _lgamma(ks + 1) - _lgamma(n - ks + 1)
                + _lgamma(ks + a) + _lgamma(n - ks + b))
        parts.append(logp)
        top = max(top, float(logp.max()))
        start += block
        if len(logp) > 1 and logp[-1] <= logp[-2] and logp[-1] < top - 60.0:
            break  # past the mode, decreasing, and negligible from here on
    logp = np.concatenate(parts)
    return float(min(1.0, np.exp(top) * np.exp(logp - top).sum()))


_LGAMMA = np.frompyfunc(math.lgamma, 1, 1)


def _lgamma(x: np.ndarray) -> np.ndarray:
    """Elementwise log-gamma (math.lgamma) of a float array."""
    return _LGAMMA(x).astype(np.float64)
