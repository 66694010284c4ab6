"""Linear SVM with Platt-scaled probabilities (LinearSVC + CalibratedClassifierCV)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import LinearSVC

from leukspark.models.base import LinearModelSpec, LinearProbabilityModel


class LinearSvmSpec(LinearModelSpec):
    """LinearSVC whose decision values are mapped to P(AML) by sigmoid (Platt) calibration.

    CalibratedClassifierCV (``cv=calibration_folds``, ``ensemble=True``) trains one SVM per
    fold on the other folds and fits the sigmoid on the held-out fold's decision values, so
    the calibration never sees scores of its own training rows. The fitted pairs are kept
    as plain arrays (one member per fold: SVM coef/intercept and sigmoid slope/offset).
    """

    name = "linear_svm"
    default_params = {
        "C": 0.01,
        "max_iter": 10000,
        "tol": 1e-4,
        "class_weight": None,
        "calibration_folds": 3,
    }

    def _fit(self, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> LinearProbabilityModel:
        # random_state matters: liblinear's dual solver visits samples in random order.
        svm = LinearSVC(
            C=params["C"],
            max_iter=params["max_iter"],
            tol=params["tol"],
            class_weight=params["class_weight"],
            random_state=seed,
        )
        calibrated = CalibratedClassifierCV(
            svm, method="sigmoid", cv=params["calibration_folds"], ensemble=True
        ).fit(X, y)
        members = calibrated.calibrated_classifiers_
        # sklearn's sigmoid is expit(-(a * score + b)) = expit((-a) * score + (-b)).
        return LinearProbabilityModel(
            weights=np.vstack([m.estimator.coef_[0] for m in members]).astype(np.float64),
            intercepts=np.array([m.estimator.intercept_[0] for m in members], dtype=np.float64),
            slopes=np.array([-m.calibrators[0].a_ for m in members], dtype=np.float64),
            offsets=np.array([-m.calibrators[0].b_ for m in members], dtype=np.float64),
        )
