"""Gradient-boosted trees (XGBoost, histogram method), saved as XGBoost JSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukspark.models.base import ModelSpec

if TYPE_CHECKING:  # xgboost is imported lazily: see _xgboost()
    from xgboost import XGBClassifier


def _xgboost():
    # Imported on first use so that importing the registry (done by every Spark Python
    # worker, whichever model its task trains) does not pay for loading xgboost.
    import xgboost

    return xgboost


class XGBoostSpec(ModelSpec):
    """XGBClassifier with shallow trees and row/column subsampling.

    Depth-4 trees on a random half of the genes per tree keep 300 rounds cheap on
    ~20,000 features and stop a handful of genes from dominating every tree.
    """

    name = "xgboost"
    default_params = {
        "n_estimators": 300,
        "learning_rate": 0.1,
        "max_depth": 4,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
        "min_child_weight": 1.0,
        "reg_lambda": 1.0,
        "max_bin": 256,
        "n_jobs": 1,
    }
    FILE_NAME = "xgboost_model.json"

    def _fit(self, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> "XGBClassifier":
        classifier = _xgboost().XGBClassifier(
            **params,
            tree_method="hist",
            objective="binary:logistic",
            eval_metric="logloss",
            random_state=seed,
        )
        return classifier.fit(X, y)

    def _predict_proba(self, model: "XGBClassifier", X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)[:, 1]

    def n_features(self, model: "XGBClassifier") -> int:
        return int(model.n_features_in_)

    def save(self, model: "XGBClassifier", directory: Path) -> list[str]:
        """Write the booster as XGBoost JSON (data only; loading it runs no code)."""
        model.save_model(Path(directory) / self.FILE_NAME)
        return [self.FILE_NAME]

    def load(self, directory: Path) -> "XGBClassifier":
        classifier = _xgboost().XGBClassifier(n_jobs=1)
        classifier.load_model(Path(directory) / self.FILE_NAME)
        return classifier
