"""Post-hoc calibrators: fitted on a classifier's logits and true labels, applied to its logits.

Each method is a pair of pure functions registered in `METHODS`:

    fit(logits [n, C], y [n]) -> params (plain JSON: floats and lists)
    log_probs(params, logits [n, C]) -> calibrated log-probabilities [n, C]

- temperature: one T > 0 minimising the NLL of softmax(logits / T) (any number of classes;
  the predicted class never changes).
- platt: p(y=1) = sigmoid(a * z + b) on a binary model's logit z = l1 - l0, fitted by maximum
  likelihood on Platt's smoothed targets (as scikit-learn's sigmoid calibration).
- isotonic: scikit-learn's IsotonicRegression of 1[y = k] on p_k, per class (one-vs-rest) and
  renormalised; for two classes one curve on p_1. Stored as its breakpoints and applied with
  linear interpolation, clipped at the ends (what IsotonicRegression.predict does).

A fitted calibrator is stored as plain JSON (`Calibrator.to_dict`), never as a pickle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raydl.calibration import CalibrationError
from raydl.registry import Registry

FORMAT_VERSION = 1
ISOTONIC_MIN_ROWS = 100  # fewer and the step function mostly memorises the rows
ISOTONIC_MIN_PER_CLASS = 5
MIN_ROWS = 10
EPS = 1e-6  # isotonic probabilities are kept >= EPS (then renormalised), so the NLL stays finite


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _log_sigmoid(t: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -t)


@dataclass(frozen=True)
class Method:
    fit: Callable[[np.ndarray, np.ndarray], dict]
    log_probs: Callable[[dict, np.ndarray], np.ndarray]
    binary_only: bool = False
    min_rows: int = MIN_ROWS
    min_per_class: int = 0


METHODS: Registry[Method] = Registry("calibration method")


# ---- temperature -------------------------------------------------------------------------------

def _nll(logits: np.ndarray, y: np.ndarray) -> float:
    return float(-log_softmax(logits)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> dict:
    """T in [0.01, 100] minimising the validation NLL. The NLL is convex in 1/T, so a bounded
    scalar search over log T finds the optimum."""
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    res = minimize_scalar(lambda lt: _nll(z / np.exp(lt), y), bounds=(np.log(0.01), np.log(100.0)),
                          method="bounded", options={"xatol": 1e-7})
    return {"temperature": float(np.exp(res.x))}


def temperature_log_probs(params: dict, logits: np.ndarray) -> np.ndarray:
    return log_softmax(np.asarray(logits, dtype=np.float64) / params["temperature"])


METHODS.register("temperature")(Method(fit_temperature, temperature_log_probs))


# ---- platt -------------------------------------------------------------------------------------

def _binary_logit(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    return z[:, 1] - z[:, 0]


def fit_platt(logits: np.ndarray, y: np.ndarray) -> dict:
    """(a, b) of sigmoid(a z + b), by maximum likelihood on Platt's targets
    (N+ + 1) / (N+ + 2) and 1 / (N- + 2)."""
    from scipy.optimize import minimize

    z, y = _binary_logit(logits), np.asarray(y, dtype=np.int64)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    t = np.where(y == 1, (pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0))

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        u = ab[0] * z + ab[1]
        value = -np.sum(t * _log_sigmoid(u) + (1 - t) * _log_sigmoid(-u))
        g = 1.0 / (1.0 + np.exp(-u)) - t  # d loss / d u
        return float(value), np.array([np.sum(g * z), np.sum(g)])

    res = minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return {"a": float(res.x[0]), "b": float(res.x[1])}


def platt_log_probs(params: dict, logits: np.ndarray) -> np.ndarray:
    u = params["a"] * _binary_logit(logits) + params["b"]
    return np.stack([_log_sigmoid(-u), _log_sigmoid(u)], axis=1)


METHODS.register("platt")(Method(fit_platt, platt_log_probs, binary_only=True))


# ---- isotonic ----------------------------------------------------------------------------------

def _isotonic_curve(p: np.ndarray, target: np.ndarray) -> dict:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, target)
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def fit_isotonic(logits: np.ndarray, y: np.ndarray) -> dict:
    probs = np.exp(log_softmax(logits))
    y = np.asarray(y, dtype=np.int64)
    if probs.shape[1] == 2:
        return {"curves": [_isotonic_curve(probs[:, 1], (y == 1).astype(np.float64))]}
    return {"curves": [_isotonic_curve(probs[:, k], (y == k).astype(np.float64)) for k in range(probs.shape[1])]}


def isotonic_log_probs(params: dict, logits: np.ndarray) -> np.ndarray:
    probs = np.exp(log_softmax(logits))
    curves = params["curves"]
    if len(curves) == 1:  # binary: one curve for p_1
        p1 = np.clip(np.interp(probs[:, 1], curves[0]["x"], curves[0]["y"]), EPS, 1 - EPS)
        return np.log(np.stack([1 - p1, p1], axis=1))
    q = np.stack([np.interp(probs[:, k], c["x"], c["y"]) for k, c in enumerate(curves)], axis=1)
    q = np.maximum(q, EPS)
    return np.log(q / q.sum(axis=1, keepdims=True))


METHODS.register("isotonic")(Method(fit_isotonic, isotonic_log_probs, min_rows=ISOTONIC_MIN_ROWS,
                                    min_per_class=ISOTONIC_MIN_PER_CLASS))


# ---- the fitted calibrator -----------------------------------------------------------------------

@dataclass(frozen=True)
class Calibrator:
    method: str
    n_classes: int
    params: dict
    fitted_on: dict = field(default_factory=dict)  # where it was fitted: source, rows, fingerprint

    def log_probs(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated log-probabilities of `logits` ([n, C], as `Classification.logits` gives)."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2 or logits.shape[1] != self.n_classes:
            raise CalibrationError(f"calibration: the {self.method} calibrator was fitted for {self.n_classes} classes, "
                                   f"got logits of shape {list(logits.shape)}")
        return METHODS.get(self.method).log_probs(self.params, logits)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "method": self.method, "n_classes": self.n_classes,
                "params": self.params, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Calibrator:
        """A calibrator read back from JSON; anything else is one CalibrationError line."""
        try:
            if d["format_version"] > FORMAT_VERSION:
                raise CalibrationError(f"{where}: calibrator format {d['format_version']} is newer than this raydl "
                                       f"reads (up to {FORMAT_VERSION}); upgrade raydl")
            cal = cls(method=str(d["method"]), n_classes=int(d["n_classes"]), params=dict(d["params"]),
                      fitted_on=dict(d.get("fitted_on") or {}))
            if cal.method not in METHODS:
                raise CalibrationError(f"{where}: unknown calibration method {cal.method!r}; valid: {', '.join(METHODS.names())}")
            cal.log_probs(np.zeros((1, cal.n_classes)))  # the params fit the method
        except CalibrationError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CalibrationError(f"{where}: not a raydl calibrator ({type(e).__name__}: {e}); "
                                   "run `raydl calibrate` again to rewrite it") from None
        return cal


def check_fit(method: str, y: np.ndarray | None, n_classes: int, where: str, flag: str = "--method") -> None:
    """One line, before fitting, when `method` cannot be fitted on these labels (`y` None: on a
    model of `n_classes` classes, rows unknown yet). `flag`: the option that asked for it
    (`--method`, or `training.calibration` in a spec)."""
    m = METHODS.get(method, flag)
    said, cli = f"{flag} {method}" if flag.startswith("--") else f"{flag}: {method}", flag.startswith("--")
    n = len(y)
    if m.binary_only and n_classes != 2:
        other = "--method temperature or --method isotonic" if cli else f"{flag}: temperature or isotonic"
        raise CalibrationError(f"{said}: Platt scaling is for binary classifiers and this model has "
                               f"{n_classes} classes; use {other}")
    if y is None:
        return
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    short = [k for k in range(n_classes) if counts[k] < m.min_per_class]
    if n < m.min_rows or short:
        need = f"at least {m.min_rows} rows" + (f" and {m.min_per_class} of every class" if m.min_per_class else "")
        detail = f"; classes with fewer: {short[:10]}" if short and n >= m.min_rows else ""
        more = "give more labelled rows with --data" if cli else "add data or raise data.split.val"
        hint = more if method == "temperature" else \
            f"use {'--method temperature' if cli else flag + ': temperature'}, or {more}"
        raise CalibrationError(f"{said}: {where} has {n} row(s); {method} calibration needs {need}{detail}; {hint}")
    if m.binary_only and (counts == 0).any():
        raise CalibrationError(f"{said}: {where} holds only one class; Platt scaling needs both")


def fit(method: str, logits: np.ndarray, y: np.ndarray, fitted_on: dict | None = None) -> Calibrator:
    """Fit `method` on `logits` ([n, C]) and class ids `y`."""
    logits = np.asarray(logits, dtype=np.float64)
    check_fit(method, y, logits.shape[1], (fitted_on or {}).get("source", "the data"))
    params = METHODS.get(method, "--method").fit(logits, np.asarray(y, dtype=np.int64))
    return Calibrator(method, int(logits.shape[1]), params, dict(fitted_on or {}))
