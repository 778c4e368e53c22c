"""scikit-learn's bundled digits, read from the file scikit-learn ships, without importing it.

`sklearn.datasets.load_digits()` costs about 1 s of a core, nearly all of it importing
scikit-learn; the file itself reads in about 20 ms. `raydl train` reads its data before Ray
starts, so that second is on the path to every digits run's first step.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """What `sklearn.datasets.load_digits()` gives: 1797 images as rows of 64 pixels (float64,
    0-16) and their digits (int64)."""
    found = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(found.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if found else None
    if path is None or not path.is_file():  # a layout this reader does not know: scikit-learn's own loader
        from sklearn.datasets import load_digits as sklearn_digits

        d = sklearn_digits()
        return d.data.astype(np.float64), d.target.astype(np.int64)
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)
