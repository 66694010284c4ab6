"""Probability calibrators fitted on out-of-fold probabilities, kept as plain arrays.

`training.calibration` picks one:

* ``platt``: P' = sigmoid(a * logit(P) + b), a logistic regression of the outcome on the
  logit of the out-of-fold probability (Platt 1999, on probabilities instead of SVM scores);
* ``isotonic``: a monotone step function fitted by scikit-learn's IsotonicRegression,
  stored as its knots (x, y) and applied with linear interpolation clipped at the ends,
  exactly as IsotonicRegression.predict does with ``out_of_bounds="clip"``.

Both are stored in a bundle as float arrays (``calibration.npz``), so loading runs no code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from .errors import ModelError

METHODS = ("none", "platt", "isotonic")
_EPS = 1e-6


@dataclass(frozen=True)
class Calibrator:
    method: str
    x: np.ndarray  # platt: [a, b]; isotonic: knot positions
    y: np.ndarray  # platt: empty; isotonic: knot values

    def apply(self, probabilities) -> np.ndarray:
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if self.method == "platt":
            a, b = self.x
            return expit(a * logit(np.clip(p, _EPS, 1 - _EPS)) + b)
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        raise ModelError(f"unknown calibration method {self.method!r}")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"method": np.array(METHODS.index(self.method), dtype=np.int64),
                "x": np.asarray(self.x, dtype=np.float64), "y": np.asarray(self.y, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays) -> "Calibrator":
        try:
            method = METHODS[int(arrays["method"])]
            x, y = np.asarray(arrays["x"], dtype=np.float64), np.asarray(arrays["y"], dtype=np.float64)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ModelError(f"calibration arrays are malformed: {exc}") from exc
        valid = (method == "platt" and x.shape == (2,)) or (
            method == "isotonic" and x.ndim == 1 and x.shape == y.shape and x.size >= 1
            and bool(np.all(np.diff(x) >= 0)))
        if not valid or not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ModelError(f"calibration arrays do not describe a {method} calibrator")
        return cls(method, x, y)


def effective_method(method: str, n_rows: int, isotonic_min_samples: int) -> str:
    """`method`, except isotonic on fewer than `isotonic_min_samples` rows, which becomes platt.

    Isotonic regression fits a free step function: on 38-48 out-of-fold probabilities of a
    nearly separable cohort its steps are 0 and 1, every calibrated probability is 0 or 1 and
    no band can separate confident from unsure calls. Platt's two parameters are still
    estimable there (Niculescu-Mizil & Caruana 2005 found isotonic worse than Platt below
    about a thousand calibration rows).
    """
    return "platt" if method == "isotonic" and n_rows < isotonic_min_samples else method


def fit_calibrator(method: str, y_true, probabilities) -> Calibrator | None:
    """Fit `method` on (outcome 1 = AML, probability) pairs; None for 'none'."""
    if method == "none":
        return None
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if y.size == 0 or np.unique(y).size < 2:
        raise ModelError("calibration needs out-of-fold probabilities of both classes")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        features = logit(np.clip(p, _EPS, 1 - _EPS)).reshape(-1, 1)
        # A weak penalty: near-separable data would otherwise drive the slope to infinity.
        fit = LogisticRegression(C=100.0, solver="lbfgs", max_iter=1000).fit(features, y)
        return Calibrator("platt", np.array([fit.coef_[0, 0], fit.intercept_[0]]), np.zeros(0))
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return Calibrator("isotonic", np.asarray(fit.X_thresholds_, dtype=np.float64),
                          np.asarray(fit.y_thresholds_, dtype=np.float64))
    raise ModelError(f"training.calibration must be one of {', '.join(METHODS)}; got {method!r}")


def cross_fitted(method: str, y_true, probabilities, folds) -> np.ndarray:
    """Calibrated out-of-fold probabilities: each fold's through a calibrator fitted on the other folds.

    A calibrator fitted on all out-of-fold probabilities and applied to the same ones would be
    scored on its own training data; this keeps CV metrics of the calibrated model honest.
    """
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    folds = np.asarray(folds).reshape(-1)
    out = p.copy()
    for fold in np.unique(folds):
        held = folds == fold
        calibrator = fit_calibrator(method, y[~held], p[~held])
        if calibrator is not None:
            out[held] = calibrator.apply(p[held])
    return out
