"""Drift and OOD detection: reference profiles, per-feature divergences, PCA reconstruction
drift and model-output OOD scores, computed in-process or on Ray Data.

    prof = build_profile("ref.parquet")            # or: raydl drift profile ref.parquet --out p.json
    result = check(prof, "current.parquet")        # or: raydl drift check --profile p.json cur.parquet
"""

from __future__ import annotations

from raydl.drift.detectors import (
    DETECTORS,
    CheckSettings,
    DriftMonitor,
    DriftResult,
    OutputDetector,
    ReconstructionDetector,
    UnivariateDetector,
    check,
)
from raydl.drift.errors import DriftError, ProfileError
from raydl.drift.profile import (
    Profile,
    ProfileSettings,
    build_profile,
    load_profile,
    write_reference_profile,
)
from raydl.drift.stats import js_divergence, kl_divergence, psi, reconstruction_errors

__all__ = [
    "DETECTORS",
    "CheckSettings",
    "DriftError",
    "DriftMonitor",
    "DriftResult",
    "OutputDetector",
    "Profile",
    "ProfileError",
    "ProfileSettings",
    "ReconstructionDetector",
    "UnivariateDetector",
    "build_profile",
    "check",
    "js_divergence",
    "kl_divergence",
    "load_profile",
    "psi",
    "reconstruction_errors",
    "write_reference_profile",
]
