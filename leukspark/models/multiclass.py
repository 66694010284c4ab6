"""A registered model seen through its one-vs-rest multi-class fit (``training.target`` lineage or
subtype), with the interface bundles and scoring use: ``predict_proba`` is still P(AML), the sum
over the classes whose label is AML, so everything that reads a binary bundle reads this one too;
``predict_class_proba`` gives the per-class probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from leukspark.models.base import ModelSpec, OneVsRestModel

#: Keys of a bundle's manifest `extra` that make it a multi-class bundle.
CLASSES_KEY = "target_classes"


class MulticlassView:
    """`base` fitted on `classes` (one-vs-rest); `aml_classes` are summed into P(AML)."""

    def __init__(self, base: ModelSpec, classes: Sequence[str], aml_classes: Sequence[str]):
        self.base, self.classes, self.aml_classes = base, list(classes), set(aml_classes)
        self.name = base.name
        self.multiclass = True

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        return self.base.resolve_params(params)

    def n_features(self, model: OneVsRestModel) -> int:
        return self.base.n_features(model.members[0])

    def save(self, model: OneVsRestModel, directory: Path) -> list[str]:
        return self.base.save_multiclass(model, directory)

    def load(self, directory: Path) -> OneVsRestModel:
        return self.base.load_multiclass(directory, len(self.classes))

    def predict_class_proba(self, model: OneVsRestModel, X: np.ndarray) -> np.ndarray:
        return self.base.predict_proba_multiclass(model, X)

    def predict_proba(self, model: OneVsRestModel, X: np.ndarray) -> np.ndarray:
        """P(AML): the summed probability of the AML classes."""
        columns = [i for i, c in enumerate(self.classes) if c in self.aml_classes]
        return self.predict_class_proba(model, X)[:, columns].sum(axis=1)

    def used_features(self, model: OneVsRestModel) -> np.ndarray:
        return np.any([self.base.used_features(member) for member in model.members], axis=0)

    def feature_weights(self, model: OneVsRestModel) -> None:
        return None  # one weight vector per class: no single AML-vs-ALL direction to explain with

    def feature_importances(self, model: OneVsRestModel) -> np.ndarray | None:
        per_member = [self.base.feature_importances(member) for member in model.members]
        return None if any(v is None for v in per_member) else np.mean(per_member, axis=0)

    def __repr__(self) -> str:
        return f"MulticlassView({self.base!r}, {len(self.classes)} classes)"


def view_for(spec: ModelSpec, extra: Mapping[str, Any]):
    """`spec` itself for a binary bundle; its MulticlassView for a bundle whose `extra` lists classes."""
    if CLASSES_KEY not in extra:
        return spec
    return MulticlassView(spec, extra[CLASSES_KEY], extra.get("aml_classes", []))
