"""Calibration: metrics of how far a classifier's confidence is from its accuracy, and
post-hoc calibrators (temperature scaling, Platt scaling, isotonic regression).

    raydl.calibration.metrics       pure functions: additive per-bin statistics -> ECE, MCE,
                                    Brier, NLL; adaptive-binning ECE (numpy only: tasks use it)
    raydl.calibration.calibrators   fit a calibrator on logits and labels; apply it; plain JSON
    raydl.calibration.api           `calibrate_model_dir`: fit on a model directory's validation
                                    split (or given data), store it, report before/after
    raydl.calibration.report        reliability diagram (PNG) and HTML report
    raydl.calibration.cli           `raydl calibrate`

This module stays light (no torch, no sklearn): `raydl.tasks` imports the metrics.
"""

from __future__ import annotations

from raydl.errors import RaydlError


class CalibrationError(RaydlError):
    """A model cannot be calibrated as asked (a regression model, too few rows, a bad calibrator file)."""
