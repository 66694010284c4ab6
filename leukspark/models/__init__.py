"""The model registry and the one-call train-and-score used by the cross-validation fan-out.

Adding a model is adding one module to this package: a :class:`~leukspark.models.base.ModelSpec`
subclass (its defaults, parameter checks, tuning grid and cost) and a module-level
``MODEL = TheSpec()``; every module of the package that has a ``MODEL`` is registered at import.
Code outside the package calls :func:`register`.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from leukspark.errors import ModelError
from leukspark.models.base import LinearProbabilityModel, ModelSpec, Preprocessor
from leukspark.models.random_forest import TreeEnsemble

__all__ = [
    "REGISTRY",
    "FitResult",
    "LinearProbabilityModel",
    "ModelSpec",
    "Preprocessor",
    "TreeEnsemble",
    "fit_and_predict",
    "fit_and_predict_multiclass",
    "fitted_preprocessor",
    "get_model",
    "register",
]

REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    """Add ``spec`` to the registry under ``spec.name``; a clashing name is a ModelError."""
    if not isinstance(spec, ModelSpec):
        raise ModelError(f"can only register ModelSpec instances, got {type(spec).__name__}")
    undeclared = sorted(set(spec.default_params) - set(getattr(spec, "param_checks", {})))
    if undeclared:
        raise ModelError(f"model {spec.name!r} declares no param_checks for {', '.join(undeclared)}")
    existing = REGISTRY.get(spec.name)
    if existing is not None and type(existing) is not type(spec):
        raise ModelError(f"model name {spec.name!r} is already registered by {type(existing).__name__}")
    REGISTRY[spec.name] = spec


def get_model(name: str) -> ModelSpec:
    """The registered spec called ``name``; an unknown name is a ModelError listing the known ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


def _register_package_models() -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if isinstance(getattr(module, "MODEL", None), ModelSpec):
            register(module.MODEL)


_register_package_models()


@dataclass(frozen=True)
class FitResult:
    """What one (model, fold) task produces.

    ``fit_seconds`` is wall-clock time for fitting the preprocessor and the model (not
    for scoring ``X_eval``); ``params`` are the defaults merged with the overrides used.
    """

    probabilities: np.ndarray  # P(AML) for each row of X_eval
    fit_seconds: float
    preprocessor: Preprocessor
    model: Any
    params: dict[str, Any]


def fitted_preprocessor(spec: ModelSpec, X_train: np.ndarray, y_train: np.ndarray | None, scaler: str = "standard",
                        normalize: str = "none", selection: str = "none", selection_k: int = 0) -> Preprocessor:
    """The preprocessor ``spec`` wants, fitted on the training rows only.

    The run's settings are overridden by what the model declares (``ModelSpec.preprocessing``):
    k-TSP reads the order of genes within a sample, which per-gene scaling and imputation would
    change. ``y_train`` (ALL/AML labels) is only read by a gene selection.
    """
    return Preprocessor(**spec.preprocessor_settings(scaler, normalize, selection, selection_k)).fit(X_train, y_train)


def fit_and_predict(
    model_name: str,
    params: Mapping[str, Any] | None,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_eval: np.ndarray,
    seed: int,
    scaler: str = "standard",
    normalize: str = "none",
    selection: str = "none",
    selection_k: int = 0,
) -> FitResult:
    """Fit the preprocessor and the model on the training rows, then score ``X_eval``.

    The preprocessor sees ``X_train`` only: imputation means and scaling never include
    evaluation rows, which would leak their distribution into the fold's score. A gene
    selection (``selection``: variance, t_test, moderated_t; top ``selection_k`` genes) is a
    stage of the preprocessor, so it too is chosen from the training rows only.
    """
    settings = {"scaler": scaler, "normalize": normalize, "selection": selection, "selection_k": selection_k}
    return _fit_and_score(model_name, params, X_train, y_train, X_eval, seed, settings, multiclass=False)


def fit_and_predict_multiclass(
    model_name: str,
    params: Mapping[str, Any] | None,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_eval: np.ndarray,
    seed: int,
    scaler: str = "standard",
    normalize: str = "none",
) -> FitResult:
    """:func:`fit_and_predict` for class codes ``y_train`` (0..K-1): ``probabilities`` is an
    (n_eval, K) matrix. Gene selection is binary (AML vs ALL statistics) and not offered here."""
    settings = {"scaler": scaler, "normalize": normalize}
    return _fit_and_score(model_name, params, X_train, y_train, X_eval, seed, settings, multiclass=True)


def _fit_and_score(model_name: str, params: Mapping[str, Any] | None, X_train: np.ndarray, y_train: np.ndarray,
                   X_eval: np.ndarray, seed: int, settings: Mapping[str, Any], multiclass: bool) -> FitResult:
    spec = get_model(model_name)
    resolved = spec.resolve_params(params)  # fail on a bad key before any work is done
    started = time.perf_counter()
    # Class codes are no ALL/AML labels: a multi-class fit gives a gene selection none to read.
    preprocessor = fitted_preprocessor(spec, X_train, None if multiclass else y_train, **settings)
    fit = spec.fit_multiclass if multiclass else spec.fit
    model = fit(preprocessor.transform(X_train), y_train, resolved, seed)
    fit_seconds = time.perf_counter() - started
    if len(X_eval):
        predict = spec.predict_proba_multiclass if multiclass else spec.predict_proba
        probabilities = predict(model, preprocessor.transform(X_eval))
    else:  # a cross-validation-only run's final fit has nothing to evaluate
        probabilities = np.empty((0, len(model.members)) if multiclass else 0)
    return FitResult(probabilities, fit_seconds, preprocessor, model, resolved)
