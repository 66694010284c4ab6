"""Linear SVM with Platt-scaled probabilities (LinearSVC, sigmoid fitted on held-out folds)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from leukspark import checks
from leukspark.models.base import CLASS_WEIGHT, LinearModelSpec, LinearProbabilityModel, inner_split_center


def fit_platt_sigmoid(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt (2000) scaling: ``(slope, offset)`` with ``P(AML) = sigmoid(slope * score + offset)``.

    Maximum likelihood on the held-out scores with Platt's smoothed targets
    ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``, which keep the sigmoid finite when the
    scores separate the classes perfectly (the usual case on these data).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_positive = int(np.sum(y == 1))
    n_negative = y.size - n_positive
    targets = np.where(y == 1, (n_positive + 1.0) / (n_positive + 2.0), 1.0 / (n_negative + 2.0))
    # Large scores make the optimisation ill-conditioned; fit on scaled scores, unscale after.
    unit = max(1.0, float(np.max(np.abs(scores))))
    scaled = scores / unit

    def loss_and_gradient(slope_offset: np.ndarray) -> tuple[float, np.ndarray]:
        logits = slope_offset[0] * scaled + slope_offset[1]
        loss = np.sum(np.logaddexp(0.0, logits) - targets * logits)
        residual = expit(logits) - targets
        return float(loss), np.array([residual @ scaled, residual.sum()])

    prior_logit = np.log((n_positive + 1.0) / (n_negative + 1.0))
    result = minimize(loss_and_gradient, x0=np.array([0.0, prior_logit]), jac=True, method="L-BFGS-B")
    return float(result.x[0] / unit), float(result.x[1])


class LinearSvmSpec(LinearModelSpec):
    """LinearSVC whose decision values are mapped to P(AML) by sigmoid (Platt) calibration.

    For each of ``calibration_folds`` stratified folds an SVM is trained on the other
    folds and a sigmoid is fitted to its decision values on the held-out fold, so the
    calibration never sees scores of the SVM's own training rows. P(AML) is the mean of
    the calibrated members (as sklearn's CalibratedClassifierCV with ``ensemble=True``,
    plus the inner re-centering explained in :func:`inner_split_center`). Each member is
    kept as arrays: SVM coef/intercept and sigmoid slope/offset.
    """

    name = "linear_svm"
    cost = 2.0
    default_params = {
        "C": 0.01,
        "max_iter": 10000,
        "tol": 1e-4,
        "class_weight": None,
        "calibration_folds": 3,
    }
    param_checks = {
        "C": checks.positive(),
        "max_iter": checks.integer(1),
        "tol": checks.positive(),
        "class_weight": CLASS_WEIGHT,
        "calibration_folds": checks.integer(2),
    }
    tuning_grid = {"C": [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]}

    def _fit(self, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> LinearProbabilityModel:
        folds = StratifiedKFold(n_splits=params["calibration_folds"], shuffle=True, random_state=seed)
        weights, intercepts, slopes, offsets = [], [], [], []
        for train_rows, calibration_rows in folds.split(X, y):
            center = inner_split_center(X[train_rows])
            # random_state matters: liblinear's dual solver visits samples in random order.
            svm = LinearSVC(
                C=params["C"],
                max_iter=params["max_iter"],
                tol=params["tol"],
                class_weight=params["class_weight"],
                random_state=seed,
            ).fit(X[train_rows] - center, y[train_rows])
            slope, offset = fit_platt_sigmoid(svm.decision_function(X[calibration_rows] - center), y[calibration_rows])
            coef = svm.coef_[0].astype(np.float64)
            weights.append(coef)
            intercepts.append(svm.intercept_[0] - coef @ center)  # w.(x - c) + b = w.x + (b - w.c)
            slopes.append(slope)
            offsets.append(offset)
        return LinearProbabilityModel(
            weights=np.vstack(weights),
            intercepts=np.array(intercepts, dtype=np.float64),
            slopes=np.array(slopes, dtype=np.float64),
            offsets=np.array(offsets, dtype=np.float64),
        )


# Found by the registry (leukspark.models): this line is what makes the model available.
MODEL = LinearSvmSpec()
