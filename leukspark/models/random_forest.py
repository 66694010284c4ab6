"""Random forest (scikit-learn), kept and saved as flat node arrays.

A fitted sklearn forest can only be persisted by pickling it (or with skops). Instead
the trees are flattened into numeric arrays right after training and scored with a
small numpy traversal; the fitted model and the loaded model are then the same thing,
and the file on disk is a plain ``.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from leukspark.errors import ModelError
from leukspark import checks
from leukspark.models.base import CLASS_WEIGHT, N_JOBS, ArraysFile, ModelSpec

LEAF = -1  # sklearn's TREE_LEAF marker in children_left / children_right


@dataclass(frozen=True)
class TreeEnsemble(ArraysFile):
    """All trees of a forest in one flat node table.

    Node ``i`` splits on ``feature[i] <= threshold[i]`` (left) or goes right; a leaf has
    ``left[i] == right[i] == -1`` and predicts ``p_aml[i]``. Tree ``t`` starts at
    ``roots[t]``. P(AML) is the mean of the trees' leaf values, as in sklearn.
    """

    left: np.ndarray  # int64 child indices into the flat table, -1 at leaves
    right: np.ndarray
    feature: np.ndarray  # int64 column index, 0 (unused) at leaves
    threshold: np.ndarray  # float64
    p_aml: np.ndarray  # float64 fraction of AML training samples in the node
    roots: np.ndarray  # int64, one per tree
    max_depth: int
    n_features: int

    FILE_NAME: ClassVar[str] = "random_forest.npz"

    def __post_init__(self) -> None:
        n_nodes = self.left.shape[0]
        for name in ("right", "feature", "threshold", "p_aml"):
            if getattr(self, name).shape != (n_nodes,):
                raise ModelError(f"random forest: {name} does not have one entry per node")
        internal = self.left != LEAF
        for name in ("left", "right", "roots"):
            indices = getattr(self, name)
            valid = indices[internal] if name != "roots" else indices
            if valid.size and (valid.min() < 0 or valid.max() >= n_nodes):
                raise ModelError(f"random forest: {name} points outside the node table")
        if not np.array_equal(internal, self.right != LEAF):
            raise ModelError("random forest: a node has exactly one child")
        if n_nodes and (self.feature.min() < 0 or self.feature.max() >= self.n_features):
            raise ModelError("random forest: a split uses a feature outside the input")

    @classmethod
    def from_sklearn(cls, forest: RandomForestClassifier) -> "TreeEnsemble":
        """Flatten a fitted binary sklearn forest (classes 0 = ALL, 1 = AML)."""
        parts: dict[str, list[np.ndarray]] = {"left": [], "right": [], "feature": [], "threshold": [], "p_aml": []}
        roots, offset = [], 0
        aml_column = int(np.flatnonzero(forest.classes_ == 1)[0])
        for estimator in forest.estimators_:
            tree = estimator.tree_
            internal = tree.children_left != LEAF
            parts["left"].append(np.where(internal, tree.children_left + offset, LEAF))
            parts["right"].append(np.where(internal, tree.children_right + offset, LEAF))
            # sklearn marks leaves with feature -2; 0 keeps the (masked) leaf lookups in bounds.
            parts["feature"].append(np.where(internal, tree.feature, 0))
            parts["threshold"].append(tree.threshold)
            counts = tree.value[:, 0, :]  # per-class (weighted) fractions of the node's samples
            parts["p_aml"].append(counts[:, aml_column] / counts.sum(axis=1))
            roots.append(offset)
            offset += tree.node_count
        return cls(
            left=np.concatenate(parts["left"]).astype(np.int64),
            right=np.concatenate(parts["right"]).astype(np.int64),
            feature=np.concatenate(parts["feature"]).astype(np.int64),
            threshold=np.concatenate(parts["threshold"]).astype(np.float64),
            p_aml=np.concatenate(parts["p_aml"]).astype(np.float64),
            roots=np.asarray(roots, dtype=np.int64),
            max_depth=max(estimator.tree_.max_depth for estimator in forest.estimators_),
            n_features=int(forest.n_features_in_),
        )

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Walk every (sample, tree) pair down to its leaf at once; average the leaf values."""
        rows = np.arange(X.shape[0])[:, None]
        nodes = np.broadcast_to(self.roots, (X.shape[0], self.roots.size)).copy()
        # A tree of depth d needs d steps; the bound also stops a malformed (cyclic) table.
        for _ in range(self.max_depth):
            internal = self.left[nodes] != LEAF
            if not internal.any():
                break
            # float32 X vs float64 threshold compares in float64, exactly as sklearn does.
            go_left = X[rows, self.feature[nodes]] <= self.threshold[nodes]
            nodes = np.where(internal, np.where(go_left, self.left[nodes], self.right[nodes]), nodes)
        if (self.left[nodes] != LEAF).any():
            raise ModelError("random forest: a tree is deeper than its recorded max_depth")
        return self.p_aml[nodes].mean(axis=1)

    @classmethod
    def load(cls, directory: Path) -> "TreeEnsemble":
        """Read a node table written by :meth:`save` (``allow_pickle=False``)."""
        arrays = cls.read_arrays(directory)
        integer_fields = ("left", "right", "feature", "roots")
        return cls(
            **{name: arrays[name].astype(np.int64) for name in integer_fields},
            threshold=arrays["threshold"].astype(np.float64),
            p_aml=arrays["p_aml"].astype(np.float64),
            max_depth=int(arrays["max_depth"]),
            n_features=int(arrays["n_features"]),
        )


class RandomForestSpec(ModelSpec):
    """RandomForestClassifier; ``n_jobs`` defaults to 1 because each Spark task owns one core."""

    name = "random_forest"
    cost = 4.0
    default_params = {
        "n_estimators": 300,
        "max_features": "sqrt",
        "max_depth": None,
        "min_samples_leaf": 1,
        "class_weight": None,
        "n_jobs": 1,
    }
    param_checks = {
        "n_estimators": checks.integer(1),
        # scikit-learn: a count of genes, a fraction of them, or a rule.
        "max_features": checks.any_of(checks.integer(1), checks.Check((float,), 0, 1, low_open=True),
                                      checks.one_of("sqrt", "log2", None)),
        "max_depth": checks.integer(1, special=(None,)),
        "min_samples_leaf": checks.integer(1),
        "class_weight": CLASS_WEIGHT,
        "n_jobs": N_JOBS,
    }
    # How many genes a split may look at, and how deep the trees may split the minority class.
    tuning_grid = {"max_features": ["sqrt", 0.01, 0.05], "min_samples_leaf": [1, 3]}

    def _fit(self, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> TreeEnsemble:
        forest = RandomForestClassifier(**params, random_state=seed).fit(X, y)
        return TreeEnsemble.from_sklearn(forest)

    def _predict_proba(self, model: TreeEnsemble, X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)

    def n_features(self, model: TreeEnsemble) -> int:
        return model.n_features

    def used_features(self, model: TreeEnsemble) -> np.ndarray:
        mask = np.zeros(model.n_features, dtype=bool)
        mask[model.feature[model.left != LEAF]] = True
        return mask

    def feature_importances(self, model: TreeEnsemble) -> np.ndarray:
        """Share of the forest's splits made on each gene (the bundle keeps no node sample counts,
        so impurity decrease cannot be recomputed from it)."""
        internal = model.left != LEAF
        counts = np.bincount(model.feature[internal], minlength=model.n_features).astype(np.float64)
        return counts / max(1.0, counts.sum())

    def save(self, model: TreeEnsemble, directory: Path) -> list[str]:
        return model.save(directory)

    def load(self, directory: Path) -> TreeEnsemble:
        return TreeEnsemble.load(directory)


# Found by the registry (leukspark.models): this line is what makes the model available.
MODEL = RandomForestSpec()
