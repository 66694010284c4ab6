"""L2-regularised logistic regression (scikit-learn, lbfgs)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from leukspark import checks
from leukspark.models.base import CLASS_WEIGHT, LinearModelSpec, LinearProbabilityModel


class LogisticRegressionSpec(LinearModelSpec):
    """Logistic regression with an L2 penalty on standardized genes.

    With ~20,000 standardized genes and ~1,000 samples the classes are close to
    separable, so an unpenalised fit would chase infinite weights; C = 0.1 keeps the
    weights small and lbfgs converges in a few hundred iterations.
    """

    name = "logistic_regression"
    cost = 1.0
    default_params = {"C": 0.1, "max_iter": 2000, "tol": 1e-4, "class_weight": None}
    param_checks = {"C": checks.positive(), "max_iter": checks.integer(1), "tol": checks.positive(),
                    "class_weight": CLASS_WEIGHT}
    # Regularisation strength is what matters with ~20,000 genes and ~1,000 samples.
    tuning_grid = {"C": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]}

    def _fit(self, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> LinearProbabilityModel:
        # l1_ratio=0 is the L2 penalty (the `penalty` argument is deprecated in sklearn 1.8).
        classifier = LogisticRegression(
            C=params["C"],
            l1_ratio=0.0,
            solver="lbfgs",
            max_iter=params["max_iter"],
            tol=params["tol"],
            class_weight=params["class_weight"],
            random_state=seed,
        ).fit(X, y)
        return LinearProbabilityModel(
            weights=classifier.coef_.astype(np.float64),
            intercepts=classifier.intercept_.astype(np.float64),
            slopes=np.ones(1),
            offsets=np.zeros(1),
        )


# Found by the registry (leukspark.models): this line is what makes the model available.
MODEL = LogisticRegressionSpec()
