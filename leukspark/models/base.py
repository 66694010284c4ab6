"""The model interface shared by every classifier, and the preprocessing in front of it.

Every model sees the same pipeline: raw gene-ordered expression -> :class:`Preprocessor`
(impute NaN with training means, then scale) -> ``ModelSpec.fit`` / ``predict_proba``.
Labels are 1 = AML (the positive class) and 0 = ALL everywhere.

Models are saved in formats that cannot execute code when loaded (``.npz`` read with
``allow_pickle=False``, XGBoost JSON, a torch ``state_dict`` read with
``weights_only=True``), because bundles are files users pass around.
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
from scipy.special import expit

from leukspark import checks
from leukspark.checks import Check
from leukspark.errors import ModelError, PredictionError

SCALERS = ("standard", "minmax", "none")
NORMALIZERS = ("none", "quantile", "rank")

# Parameter checks several models share (scikit-learn's and XGBoost's accepted values).
CLASS_WEIGHT = checks.one_of(None, "balanced", types=(dict,))
N_JOBS = checks.integer(1, special=(-1,))


# --------------------------------------------------------------------------- validation


def as_feature_matrix(
    X: Any, *, n_features: int | None = None, error: type[Exception] = ModelError, what: str = "X"
) -> np.ndarray:
    """Return ``X`` as a 2-D float array (float32/float64 kept as they are, anything else
    becomes float64), checking its shape; NaN is allowed, infinities are not.

    ``error`` picks the exception class so the same check serves training (ModelError)
    and scoring (PredictionError).
    """
    try:
        matrix = np.asarray(X)
        if not np.issubdtype(matrix.dtype, np.floating):
            matrix = matrix.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} is not a numeric matrix: {exc}") from exc
    if matrix.ndim != 2:
        raise error(f"{what} must be a 2-D matrix (samples x genes), got {matrix.ndim} dimension(s)")
    if n_features is not None and matrix.shape[1] != n_features:
        raise error(f"{what} has {matrix.shape[1]} gene columns, expected {n_features}")
    if np.isinf(matrix).any():
        column = int(np.argwhere(np.isinf(matrix))[0][1])
        raise error(f"{what} contains infinite values (first in column {column})")
    return matrix


def check_training_data(X: Any, y: Any, *, allow_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate a preprocessed training set; return (float32 X, finite unless ``allow_nan``, int8 y in {0, 1})."""
    features = as_feature_matrix(X, what="training matrix").astype(np.float32, copy=False)
    if features.shape[0] == 0:
        raise ModelError("training matrix has no samples")
    if not allow_nan and np.isnan(features).any():
        raise ModelError("training matrix contains NaN; preprocess it (Preprocessor) before fitting")
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ModelError(
            f"labels must be a vector with one entry per sample: got shape {labels.shape} "
            f"for {features.shape[0]} samples"
        )
    unknown = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if unknown:
        raise ModelError(f"labels must be 0 (ALL) or 1 (AML), found {unknown[:5]}")
    if np.unique(labels).size < 2:
        raise ModelError("training labels contain a single class; both ALL and AML are needed")
    return features, labels.astype(np.int8)


def check_scoring_matrix(X: Any, n_features: int, *, allow_nan: bool = False) -> np.ndarray:
    """Validate a preprocessed matrix to score; return it as float32 (finite unless ``allow_nan``)."""
    features = as_feature_matrix(X, n_features=n_features, error=PredictionError)
    if not allow_nan and np.isnan(features).any():
        raise PredictionError("matrix to score contains NaN; preprocess it (Preprocessor) first")
    return features.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- preprocessing


class Preprocessor:
    """Impute NaN with training column means, then scale; fit on training rows only.

    ``scaler`` is ``"standard"`` (zero mean, unit variance, like sklearn's StandardScaler
    fitted on the imputed training data), ``"minmax"`` (training range mapped to [0, 1])
    or ``"none"`` (imputation only).

    Edge cases:

    * A constant (zero-variance / zero-range) column gets scale 1, so it maps to 0 instead
      of dividing by zero.
    * A column that is NaN in every training row has no mean to impute and no scale. It
      becomes 0 after scaling, for training and scoring alike, whatever the incoming values:
      0 is where an average training sample lies, and a column the model never saw varying
      must not start driving predictions at scoring time.
    * ``impute=False`` (a model that handles NaN itself, see ``ModelSpec.preprocessing``) leaves
      NaN, and the all-NaN columns, as NaN.
    """

    _ARRAY_KEYS = ("impute_values", "center", "scale", "observed_in_training")

    def __init__(self, scaler: str = "standard", normalize: str = "none", selection: str = "none",
                 selection_k: int = 0, impute: bool = True):
        from leukspark.models.selection import METHODS as SELECTIONS

        if scaler not in SCALERS:
            raise ModelError(f"unknown scaler {scaler!r}; known: {', '.join(SCALERS)}")
        if normalize not in NORMALIZERS:
            raise ModelError(f"unknown normalisation {normalize!r}; known: {', '.join(NORMALIZERS)}")
        if selection not in SELECTIONS:
            raise ModelError(f"unknown gene selection {selection!r}; known: {', '.join(SELECTIONS)}")
        self.scaler = scaler
        self.impute = bool(impute)
        self.normalizer = SampleNormalizer(normalize)
        self.selection, self.selection_k = selection, int(selection_k)
        self.selected_genes: np.ndarray | None = None    # input columns kept (selection on), ascending
        self.selection_scores: np.ndarray | None = None  # their scores (not saved)
        self.n_input_features: int | None = None
        self.impute_values: np.ndarray | None = None  # training means (0 where never observed)
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.observed_in_training: np.ndarray | None = None  # False for all-NaN columns

    def settings(self) -> dict[str, Any]:
        """The constructor arguments: another preprocessor built from them fits the same way (a
        bundle's manifest records them)."""
        return {"scaler": self.scaler, "normalize": self.normalizer.method, "selection": self.selection,
                "selection_k": self.selection_k, "impute": self.impute}

    def unfitted_copy(self) -> "Preprocessor":
        """A new preprocessor with these settings and nothing fitted (e.g. one per cross-validation fold)."""
        return type(self)(**self.settings())

    @property
    def n_features(self) -> int:
        """Number of gene columns the preprocessor takes (all genes, also with a gene selection)."""
        self._require_fitted()
        return int(self.n_input_features if self.selected_genes is not None else self.center.shape[0])

    @property
    def n_outputs(self) -> int:
        """Number of columns the preprocessor hands to the model (the selected genes, if any)."""
        self._require_fitted()
        return int(self.center.shape[0])

    def input_mask(self, output_mask: np.ndarray) -> np.ndarray:
        """The input genes behind a mask over the output columns."""
        if self.selected_genes is None:
            return np.asarray(output_mask, dtype=bool)
        mask = np.zeros(self.n_features, dtype=bool)
        mask[self.selected_genes[np.asarray(output_mask, dtype=bool)]] = True
        return mask

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "Preprocessor":
        """Learn imputation means and scaling from the training matrix ``X`` (NaN allowed).

        With a gene selection, the genes are chosen from these rows (and labels ``y``) only,
        after per-sample normalisation and before imputation and scaling.
        """
        # astype copies, so imputing in place below never touches the caller's array.
        imputed = as_feature_matrix(X, what="training matrix").astype(np.float64)
        if imputed.shape[0] == 0:
            raise ModelError("cannot fit the preprocessor on a training matrix with no samples")
        imputed = self.normalizer.fit(imputed).transform(imputed)
        if self.selection != "none":
            from leukspark.models.selection import select_genes

            self.n_input_features = imputed.shape[1]
            self.selected_genes, self.selection_scores = select_genes(self.selection, self.selection_k, imputed, y)
            imputed = imputed[:, self.selected_genes]
        missing = np.isnan(imputed)
        counts = imputed.shape[0] - missing.sum(axis=0)
        observed = counts > 0
        # Column means over observed values; all-NaN columns get 0 (they are zeroed anyway).
        sums = np.nansum(imputed, axis=0)
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=observed)
        _fill_missing(imputed, missing, means)  # statistics below need values; kept NaN by transform without impute

        if self.scaler == "standard":
            center = imputed.mean(axis=0)
            scale = imputed.std(axis=0)
        elif self.scaler == "minmax":
            center = imputed.min(axis=0)
            scale = imputed.max(axis=0) - center
        else:
            center = np.zeros(imputed.shape[1])
            scale = np.ones(imputed.shape[1])
        # Exact constancy test: a rounding-noise std (1e-17) must not blow a constant up.
        constant = imputed.max(axis=0) == imputed.min(axis=0)
        scale = np.where(constant | ~observed, 1.0, scale)
        center = np.where(observed, center, 0.0)

        self.impute_values, self.center, self.scale = means, center, scale
        self.observed_in_training = observed
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Impute and scale ``X`` with the training statistics; returns float32."""
        self._require_fitted()
        matrix = as_feature_matrix(X, n_features=self.n_features, error=PredictionError)
        values = self.normalizer.transform(matrix.astype(np.float64))  # a copy: steps below work in place
        if self.selected_genes is not None:
            values = values[:, self.selected_genes]
        if self.impute:
            _fill_missing(values, np.isnan(values), self.impute_values)
        values -= self.center
        values /= self.scale
        if self.impute:
            values[:, ~self.observed_in_training] = 0.0
        return values.astype(np.float32)

    def fit_transform(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """``fit(X, y)`` then ``transform(X)``."""
        return self.fit(X, y).transform(X)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as plain numeric arrays (for ``np.savez``)."""
        self._require_fitted()
        arrays = {key: np.array(getattr(self, key)) for key in self._ARRAY_KEYS}
        if self.selected_genes is not None:
            arrays["selected_genes"] = np.asarray(self.selected_genes, dtype=np.int64)
            arrays["n_input_features"] = np.array(self.n_input_features, dtype=np.int64)
        return {**arrays, **self.normalizer.to_arrays()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], scaler: str = "standard", normalize: str = "none",
                    selection: str = "none", selection_k: int = 0, impute: bool = True) -> "Preprocessor":
        """Rebuild a fitted preprocessor from :meth:`to_arrays` output and its :meth:`settings`."""
        missing_keys = [key for key in cls._ARRAY_KEYS if key not in arrays]
        if missing_keys:
            raise ModelError(f"preprocessor arrays lack {', '.join(missing_keys)}")
        preprocessor = cls(scaler, normalize, selection if "selected_genes" in arrays else "none", selection_k,
                           impute=impute)
        if "selected_genes" in arrays:
            selected = np.asarray(arrays["selected_genes"])
            n_inputs = int(np.asarray(arrays.get("n_input_features", -1)))
            if (selected.ndim != 1 or selected.dtype != np.int64 or selected.size == 0
                    or selected.min() < 0 or selected.max() >= n_inputs or np.any(np.diff(selected) <= 0)):
                raise ModelError("preprocessor array 'selected_genes' is not an ascending list of gene columns")
            preprocessor.selected_genes, preprocessor.n_input_features = selected.copy(), n_inputs
        preprocessor.normalizer.load_arrays(arrays)
        n_features = np.asarray(arrays["center"]).shape[0] if np.ndim(arrays["center"]) == 1 else None
        for key in cls._ARRAY_KEYS:
            array = np.asarray(arrays[key])
            expected = bool if key == "observed_in_training" else np.float64
            if n_features is None or array.shape != (n_features,) or array.dtype != expected:
                raise ModelError(
                    f"preprocessor array {key!r} has shape {array.shape} and dtype {array.dtype}, "
                    f"expected ({n_features},) {np.dtype(expected)}"
                )
            if expected is np.float64 and not np.isfinite(array).all():
                raise ModelError(f"preprocessor array {key!r} contains non-finite values")
            setattr(preprocessor, key, array.copy())
        if (preprocessor.scale == 0).any():
            raise ModelError("preprocessor array 'scale' contains zeros")
        return preprocessor

    def _require_fitted(self) -> None:
        if self.center is None:
            raise ModelError("the preprocessor is not fitted; call fit() on the training matrix first")


class SampleNormalizer:
    """Per-sample normalisation that does not depend on the other samples of a batch.

    ``quantile`` maps each sample's values, by rank, onto a reference distribution: the mean
    of the training samples' sorted values (fitted on training rows only and stored in the
    bundle), as frozen quantile normalisation does. ``rank`` maps them to (rank + 0.5) / n.
    Either way a sample scored alone gets exactly the values it gets inside its batch, which
    is what makes scores comparable across labs and platforms. NaN (unmeasured genes) stays
    NaN and is ranked among the measured values only.
    """

    ARRAY_KEY = "quantile_reference"

    def __init__(self, method: str = "none"):
        self.method = method
        self.reference: np.ndarray | None = None  # sorted reference values, one per grid point

    def fit(self, X: np.ndarray) -> "SampleNormalizer":
        if self.method == "quantile":
            grid = _grid(X.shape[1])
            self.reference = np.mean([_sorted_at(row, grid) for row in X], axis=0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.method == "none":
            return X
        if self.method == "quantile" and self.reference is None:
            raise ModelError("the quantile normaliser is not fitted")
        out = np.full(X.shape, np.nan)
        for i, row in enumerate(X):
            measured = ~np.isnan(row)
            if not measured.any():
                continue
            positions = (_average_ranks(row[measured]) + 0.5) / measured.sum()
            if self.method == "rank":
                out[i, measured] = positions
            else:
                out[i, measured] = np.interp(positions, _grid(self.reference.size), self.reference)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {self.ARRAY_KEY: self.reference} if self.method == "quantile" else {}

    def load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if self.method != "quantile":
            return
        if self.ARRAY_KEY not in arrays:
            raise ModelError(f"preprocessor arrays lack {self.ARRAY_KEY} (quantile normalisation)")
        reference = np.asarray(arrays[self.ARRAY_KEY], dtype=np.float64)
        if reference.ndim != 1 or not np.isfinite(reference).all():
            raise ModelError(f"preprocessor array {self.ARRAY_KEY!r} must be a finite vector")
        self.reference = reference.copy()


def _grid(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def _sorted_at(row: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A sample's sorted measured values, read off at the quantile levels of `grid`."""
    values = np.sort(row[~np.isnan(row)])
    if values.size == 0:
        raise ModelError("a training sample has no measured gene: cannot fit quantile normalisation")
    return np.interp(grid, _grid(values.size), values)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing their mean rank (so equal values stay equal)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    first = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size)
    ranks[order] = ((starts + ends - 1) / 2.0)[group]
    return ranks


def _fill_missing(values: np.ndarray, missing: np.ndarray, column_values: np.ndarray) -> None:
    """Replace ``values[missing]`` in place by the value of each entry's column."""
    rows, columns = np.nonzero(missing)
    values[rows, columns] = column_values[columns]


# --------------------------------------------------------------------------- model interface


class ModelSpec(ABC):
    """One classifier family: how to fit, score, save and load it.

    Subclasses set ``name`` (the registry key) and ``default_params`` and implement
    ``_fit``, ``_predict_proba``, ``save`` and ``load``. The public ``fit`` and
    ``predict_proba`` validate inputs and parameters once for every model.
    """

    name: ClassVar[str]
    default_params: ClassVar[dict[str, Any]]
    #: The accepted type and range of every parameter in ``default_params``; config load
    #: checks them, so a bad value fails before Spark starts, not inside a training task.
    param_checks: ClassVar[dict[str, Check]]
    #: The points `training.tuning` searches by default: {parameter: [values]}, crossed. A few
    #: values of the parameters that matter most, so that a grid stays a handful of fits.
    tuning_grid: ClassVar[dict[str, list]] = {}
    #: Rough cost of one fit relative to the others (logistic regression 1, DNN 5): the fan-out
    #: starts the slowest fits first so that the cores stay busy to the end.
    cost: ClassVar[float] = 3.0
    #: Preprocessing this model needs whatever the run configures: Preprocessor arguments (scaler,
    #: normalize, selection, impute) that replace training.scaler, features.normalize and
    #: training.selection for this model only (the fan-out reads them through fit_and_predict).
    #: Empty: the run's settings. ``impute: False`` hands the model NaN for unmeasured genes.
    preprocessing: ClassVar[Mapping[str, Any]] = {}
    #: The field of a `predict --explain` record that holds :meth:`explain_rows`.
    explanation_key: ClassVar[str] = "top_genes"

    def preprocessor_settings(self, scaler: str = "standard", normalize: str = "none", selection: str = "none",
                              selection_k: int = 0) -> dict[str, Any]:
        """Preprocessor arguments for this model: the run's settings overridden by ``preprocessing``."""
        settings = {"scaler": scaler, "normalize": normalize, "selection": selection, "selection_k": selection_k,
                    "impute": True}
        return {**settings, **self.preprocessing}

    @property
    def handles_missing(self) -> bool:
        """True when the model is given NaN (its preprocessing does not impute)."""
        return not self.preprocessing.get("impute", True)

    #: Whether the model can learn more than two classes (``training.target`` lineage or subtype).
    #: Every model can through :meth:`fit_multiclass` (one-vs-rest over its own binary fit); a model
    #: that cannot (e.g. a pairwise rule that only orders two classes) sets this False and config
    #: load refuses it for a multi-class target with one line naming it.
    multiclass: ClassVar[bool] = True

    def param_problem(self, params: Mapping[str, Any] | None) -> tuple[str, str] | None:
        """``(parameter, reason)`` for the first unknown or invalid parameter, or None."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.default_params), key=str)
        if unknown:
            return str(unknown[0]), (f"is not a parameter of model {self.name!r}; "
                                     f"known: {', '.join(sorted(self.default_params))}")
        for key, value in params.items():
            reason = self.param_checks[key].problem(value)
            if reason is not None:
                return key, reason
        return None

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overridden by ``params``; an unknown key or a bad value is a ModelError naming it."""
        problem = self.param_problem(params)
        if problem is not None:
            key, reason = problem
            raise ModelError(f"model {self.name!r}: parameter {key!r} {reason}")
        resolved = copy.deepcopy(self.default_params)
        resolved.update(params or {})
        return resolved

    def fit(self, X: np.ndarray, y: np.ndarray, params: Mapping[str, Any] | None, seed: int) -> Any:
        """Train on preprocessed ``X`` (float32) and ``y`` (1 = AML, 0 = ALL); return the model.

        ``params`` may be partial (defaults fill the rest). The same seed and data give
        the same model. Library errors from bad parameter values become ModelError.
        """
        features, labels = check_training_data(X, y, allow_nan=self.handles_missing)
        resolved = self.resolve_params(params)
        try:
            return self._fit(features, labels, resolved, int(seed))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"model {self.name!r} failed to train: {exc}") from exc

    def predict_proba(self, model: Any, X: np.ndarray) -> np.ndarray:
        """P(AML) for each row of preprocessed ``X``, as a float64 vector of shape (n,)."""
        features = check_scoring_matrix(X, self.n_features(model), allow_nan=self.handles_missing)
        if features.shape[0] == 0:
            return np.zeros(0)
        probabilities = np.asarray(self._predict_proba(model, features), dtype=np.float64)
        return probabilities.reshape(-1)

    def fit_multiclass(self, X: np.ndarray, y: np.ndarray, params: Mapping[str, Any] | None,
                       seed: int) -> "OneVsRestModel":
        """Train on class codes ``y`` (0..K-1, K >= 2): one binary fit of this model per class
        against the rest (scikit-learn's one-vs-rest), so every model gets the same
        multi-class path, saved as K bundles of its own format."""
        if not self.multiclass:
            raise ModelError(f"model {self.name!r} is binary only: it cannot fit a multi-class target")
        codes = np.asarray(y).reshape(-1)
        n_classes = int(codes.max()) + 1 if codes.size else 0
        absent = [k for k in range(n_classes) if not (codes == k).any()]
        if n_classes < 2 or absent:
            raise ModelError(f"a multi-class fit needs samples of every class 0..{n_classes - 1}; "
                             f"none of class(es) {absent}" if absent else "a multi-class fit needs two classes")
        return OneVsRestModel([self.fit(X, (codes == k).astype(np.int64), params, seed) for k in range(n_classes)])

    def predict_proba_multiclass(self, model: "OneVsRestModel", X: np.ndarray) -> np.ndarray:
        """Class probabilities (rows sum to 1) of a :meth:`fit_multiclass` model: the members'
        one-vs-rest probabilities normalised, as OneVsRestClassifier.predict_proba does."""
        scores = np.column_stack([self.predict_proba(member, X) for member in model.members])
        totals = scores.sum(axis=1, keepdims=True)
        uniform = np.full_like(scores, 1.0 / scores.shape[1])
        return np.divide(scores, totals, out=uniform, where=totals > 0)

    def save_multiclass(self, model: "OneVsRestModel", directory: Path) -> list[str]:
        """Each member's files in the model's own safe format, named ``class<k>_<file>``: a bundle
        holds plain files only (no folders), so the members are told apart by the prefix."""
        import tempfile

        written = []
        for k, member in enumerate(model.members):
            with tempfile.TemporaryDirectory(dir=directory) as scratch:
                for name in self.save(member, Path(scratch)):
                    os.replace(Path(scratch) / name, Path(directory) / f"class{k}_{name}")
                    written.append(f"class{k}_{name}")
        return written

    def load_multiclass(self, directory: Path, n_classes: int) -> "OneVsRestModel":
        """Read the members written by :meth:`save_multiclass` (each through the model's own ``load``)."""
        import shutil
        import tempfile

        members = []
        for k in range(n_classes):
            prefix = f"class{k}_"
            with tempfile.TemporaryDirectory() as scratch:
                for path in Path(directory).glob(f"{prefix}*"):
                    shutil.copyfile(path, Path(scratch) / path.name[len(prefix):])
                members.append(self.load(Path(scratch)))
        return OneVsRestModel(members)

    def feature_weights(self, model: Any) -> np.ndarray | None:
        """Per-input-feature weight (linear models), or None when the model has none."""
        return None

    def used_features(self, model: Any) -> np.ndarray:
        """Boolean mask of the input genes the model reads; prediction counts only these as missing."""
        return np.ones(self.n_features(model), dtype=bool)

    def feature_importances(self, model: Any) -> np.ndarray | None:
        """Non-negative per-input-feature importance for ranking genes: |weight| for linear models
        (on standardized genes), a model's own measure for trees; None when the model has none."""
        weights = self.feature_weights(model)
        return None if weights is None else np.abs(np.asarray(weights, dtype=np.float64))

    def explain_rows(self, model: Any, X: np.ndarray, genes: np.ndarray) -> list | None:
        """Per row of preprocessed ``X`` (columns named by ``genes``), what the call rests on, for
        ``predict --explain``; None: the bundle explains linear models from :meth:`feature_weights`."""
        return None

    @abstractmethod
    def _fit(self, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> Any:
        """Train on validated data with fully resolved params."""

    @abstractmethod
    def _predict_proba(self, model: Any, X: np.ndarray) -> np.ndarray:
        """P(AML) for validated, finite float32 ``X``."""

    @abstractmethod
    def n_features(self, model: Any) -> int:
        """Number of input features the model was trained on."""

    @abstractmethod
    def save(self, model: Any, directory: Path) -> list[str]:
        """Write the model into ``directory`` in a safe format; return the file names written."""

    @abstractmethod
    def load(self, directory: Path) -> Any:
        """Read a model written by :meth:`save` (without executing code from the files)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


@dataclass(frozen=True)
class OneVsRestModel:
    """K binary models of one spec, member k trained on "class k" against the rest."""

    members: list


# --------------------------------------------------------------------------- helpers for model modules


def inner_split_center(X_inner_train: np.ndarray) -> np.ndarray:
    """Column means of the rows a model trains on inside its own validation/calibration split.

    ``fit`` receives data standardized on *all* its training rows, including the rows a
    model then holds out internally (SVM calibration folds, DNN early-stopping split).
    With far more genes than samples this leaks: a held-out row is part of the mean it
    was centered with, so its inner product with every inner training row is lowered
    by roughly ``n_genes / n_samples`` compared with a truly unseen row. Held-out scores
    of a weight vector learned from those rows then come out offset, and a Platt sigmoid
    fitted on them misplaces the 0.5 threshold (accuracy 0.5-0.7 at AUC 0.98 in a
    300 x 4,000 test). Re-centering both parts on the inner training rows' own mean
    removes the shared term; the model folds the shift back into its intercept, so the
    fitted model still takes the preprocessor's output unchanged.
    """
    return X_inner_train.mean(axis=0, dtype=np.float64).astype(X_inner_train.dtype)


def top_features_by_t_statistic(X: np.ndarray, y: np.ndarray, count: int | None) -> np.ndarray:
    """Indices (ascending) of the ``count`` columns whose class means differ most.

    Ranked by the absolute Welch t statistic between AML and ALL rows, which does not
    depend on the scaler. ``None`` or a count >= the number of columns keeps all columns.
    Call it on training rows only, inside ``fit``, so a CV fold never ranks on its own
    evaluation rows.
    """
    n_columns = X.shape[1]
    if count is None or count >= n_columns:
        return np.arange(n_columns)
    if count < 1:
        raise ModelError(f"the number of genes to keep must be positive, got {count}")
    aml, all_ = X[y == 1].astype(np.float64), X[y == 0].astype(np.float64)
    standard_error = np.sqrt(aml.var(axis=0) / len(aml) + all_.var(axis=0) / len(all_))
    # Constant columns (standard error 0) rank last instead of dividing by zero.
    t_statistic = np.divide(
        np.abs(aml.mean(axis=0) - all_.mean(axis=0)), standard_error,
        out=np.zeros(n_columns), where=standard_error > 0,
    )  # fmt: skip
    # Stable sort: ties keep column order, so the selection is deterministic.
    return np.sort(np.argsort(-t_statistic, kind="stable")[:count])


# --------------------------------------------------------------------------- safe array files


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write numeric arrays to an uncompressed ``.npz`` (no object arrays, hence no pickle)."""
    for key, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise ModelError(f"refusing to save object array {key!r} to {Path(path).name}")
    with open(path, "wb") as handle:
        np.savez(handle, **{key: np.asarray(array) for key, array in arrays.items()})


def load_arrays(path: Path, required: Iterable[str]) -> dict[str, np.ndarray]:
    """Read an ``.npz`` with ``allow_pickle=False``; a missing key is a ModelError naming it."""
    from leukspark.npz import read_npz  # checks what each member declares before allocating it

    path = Path(path)
    try:
        arrays = read_npz(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ModelError(f"{path.name}: cannot read arrays: {exc}") from exc
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ModelError(f"{path.name}: missing array(s) {', '.join(missing)}")
    return arrays


# --------------------------------------------------------------------------- linear models


class ArraysFile:
    """Mixin for a dataclass of numpy arrays kept as one ``.npz`` named ``FILE_NAME`` (no pickle)."""

    FILE_NAME: ClassVar[str]

    def save(self, directory: Path) -> list[str]:
        """Write every field to ``FILE_NAME``; returns the file name."""
        save_arrays(Path(directory) / self.FILE_NAME, {f.name: getattr(self, f.name) for f in fields(self)})
        return [self.FILE_NAME]

    @classmethod
    def read_arrays(cls, directory: Path) -> dict[str, np.ndarray]:
        """The arrays written by :meth:`save`, one per field (``allow_pickle=False``)."""
        return load_arrays(Path(directory) / cls.FILE_NAME, [f.name for f in fields(cls)])


@dataclass(frozen=True)
class LinearProbabilityModel(ArraysFile):
    """An average of sigmoid-calibrated linear scores, stored as plain arrays.

    ``P(AML) = mean_k sigmoid(slopes[k] * (X @ weights[k] + intercepts[k]) + offsets[k])``.
    Logistic regression is one member with slope 1 and offset 0; a Platt-calibrated
    linear SVM is one member per calibration fold. Holding only arrays means the
    fitted model and the one loaded from disk are the same object type and predict
    bit-identically.
    """

    weights: np.ndarray  # (members, features)
    intercepts: np.ndarray  # (members,)
    slopes: np.ndarray  # (members,)
    offsets: np.ndarray  # (members,)

    FILE_NAME: ClassVar[str] = "linear_model.npz"

    def __post_init__(self) -> None:
        members = self.weights.shape[0] if self.weights.ndim == 2 else -1
        for name in ("intercepts", "slopes", "offsets"):
            if getattr(self, name).shape != (members,):
                raise ModelError(f"linear model: {name} does not match weights of shape {self.weights.shape}")
        if not all(np.isfinite(getattr(self, f.name)).all() for f in fields(self)):
            raise ModelError("linear model contains non-finite coefficients")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(AML) for each row of ``X``."""
        scores = X @ self.weights.T + self.intercepts
        return expit(scores * self.slopes + self.offsets).mean(axis=1)

    def log_odds_weights(self) -> np.ndarray:
        """Per-feature weight on the log-odds scale, averaged over members."""
        return (self.slopes[:, None] * self.weights).mean(axis=0)

    @classmethod
    def load(cls, directory: Path) -> "LinearProbabilityModel":
        """Read arrays written by :meth:`save` (``allow_pickle=False``)."""
        arrays = cls.read_arrays(directory)
        return cls(**{name: values.astype(np.float64) for name, values in arrays.items()})


class LinearModelSpec(ModelSpec):
    """Shared scoring, saving and weights for models fitted into a LinearProbabilityModel."""

    def _predict_proba(self, model: LinearProbabilityModel, X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)

    def n_features(self, model: LinearProbabilityModel) -> int:
        return int(model.weights.shape[1])

    def save(self, model: LinearProbabilityModel, directory: Path) -> list[str]:
        return model.save(directory)

    def load(self, directory: Path) -> LinearProbabilityModel:
        return LinearProbabilityModel.load(directory)

    def used_features(self, model: LinearProbabilityModel) -> np.ndarray:
        return (model.weights != 0).any(axis=0)

    def feature_weights(self, model: LinearProbabilityModel) -> np.ndarray:
        """Log-odds weight of each input (standardized) feature; positive favours AML."""
        return model.log_odds_weights()
