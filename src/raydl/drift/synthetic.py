"""Seeded synthetic drift suite shared by tests and the benchmark.

Reference: ``n_features`` numeric columns (``x00`` ...) driven by a few latent factors, an
independent correlated pair (``pair_a``, ``pair_b``, correlation +0.8) and a categorical
column ``cat``. Each scenario changes one thing on its own feature(s):

* ``mean_shift``  - ``x00`` shifted by one standard deviation
* ``variance``    - ``x01`` spread doubled about its mean
* ``bimodal``     - ``x02`` replaced by a two-mode mixture with the same mean and variance
* ``category``    - ``cat`` frequencies reversed (0.5/0.3/0.2 -> 0.2/0.3/0.5)
* ``corr_flip``   - correlation of ``pair_a`` / ``pair_b`` flipped to -0.8 (marginals unchanged)
* ``all``         - every change at once; ``iid`` - no change.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

CHANGED = {
    "iid": [],
    "mean_shift": ["x00"],
    "variance": ["x01"],
    "bimodal": ["x02"],
    "category": ["cat"],
    "corr_flip": [],  # marginals unchanged: only the multivariate check may alarm
}
CHANGED["all"] = [f for v in CHANGED.values() for f in v]
SCENARIOS = tuple(CHANGED)
CATS = np.array(["a", "b", "c"])


def feature_names(n_features: int = 20) -> list[str]:
    """Numeric factor features, the pair, then ``cat`` (n_features columns in all)."""
    return [f"x{i:02d}" for i in range(n_features - 3)] + ["pair_a", "pair_b", "cat"]


def make_table(
    n_rows: int, seed: int, scenario: str = "iid", n_features: int = 20, n_factors: int = 3
) -> pa.Table:
    """One seeded sample of the reference distribution with ``scenario`` applied."""
    if scenario not in CHANGED:
        raise ValueError(f"unknown scenario {scenario!r} (valid: {', '.join(SCENARIOS)})")
    if n_features < 6:
        raise ValueError("n_features must be at least 6")
    changes = set(CHANGED[scenario]) | ({"corr_flip"} if scenario in ("corr_flip", "all") else set())
    rng = np.random.default_rng(seed)
    n_x = n_features - 3
    loadings = np.random.default_rng(12345).normal(size=(n_factors, n_x))
    loadings /= np.linalg.norm(loadings, axis=0, keepdims=True) / 0.9  # factor var 0.81
    z = rng.normal(size=(n_rows, n_factors))
    x = z @ loadings + rng.normal(scale=np.sqrt(1 - 0.81), size=(n_rows, n_x))
    x = x * 2.0 + 10.0  # every x: mean 10, std 2
    if "x00" in changes:
        x[:, 0] += 2.0
    if "x01" in changes:
        x[:, 1] = 10.0 + (x[:, 1] - 10.0) * 2.0
    if "x02" in changes:
        mode = rng.choice([-1.0, 1.0], size=n_rows)
        x[:, 2] = 10.0 + 2.0 * (0.9 * mode + np.sqrt(1 - 0.81) * rng.normal(size=n_rows))
    rho = -0.8 if "corr_flip" in changes else 0.8
    a = rng.normal(size=n_rows)
    b = rho * a + np.sqrt(1 - rho**2) * rng.normal(size=n_rows)
    probs = [0.2, 0.3, 0.5] if "cat" in changes else [0.5, 0.3, 0.2]
    cat = CATS[rng.choice(3, size=n_rows, p=probs)]
    cols = {f"x{i:02d}": x[:, i] for i in range(n_x)}
    cols.update(pair_a=a, pair_b=b, cat=cat)
    return pa.table(cols)


def shifted_digits(x: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Shifted 8x8 digits (raw 0..16 pixels, [n, 64]): ``noise`` (Gaussian sd 4, clipped),
    ``inverted`` (16 - x) or ``rotated`` (90 degrees)."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return np.clip(x + rng.normal(scale=4.0, size=x.shape), 0, 16)
    if kind == "inverted":
        return 16.0 - x
    if kind == "rotated":
        return np.rot90(x.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(-1, 64).copy()
    raise ValueError(f"unknown shift {kind!r} (valid: noise, inverted, rotated)")
