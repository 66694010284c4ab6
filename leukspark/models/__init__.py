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
    spec = get_model(model_name)
    resolved = spec.resolve_params(params)  # fail on a bad key before any work is done
    started = time.perf_counter()
    # A model may declare the preprocessing it needs (ModelSpec.preprocessing): k-TSP reads the
    # order of genes within a sample, which per-gene scaling and imputation would change.
    preprocessor = Preprocessor(**spec.preprocessor_settings(scaler, normalize, selection, selection_k))
    preprocessor.fit(X_train, y_train)
    model = spec.fit(preprocessor.transform(X_train), y_train, resolved, seed)
    fit_seconds = time.perf_counter() - started
    # A cross-validation-only run's final fit has nothing to evaluate.
    probabilities = (spec.predict_proba(model, preprocessor.transform(X_eval)) if len(X_eval)
                     else np.empty(0))
    return FitResult(probabilities, fit_seconds, preprocessor, model, resolved)


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
    spec = get_model(model_name)
    resolved = spec.resolve_params(params)
    started = time.perf_counter()
    preprocessor = Preprocessor(scaler, normalize).fit(X_train)
    model = spec.fit_multiclass(preprocessor.transform(X_train), y_train, resolved, seed)
    fit_seconds = time.perf_counter() - started
    n_classes = len(model.members)
    probabilities = (spec.predict_proba_multiclass(model, preprocessor.transform(X_eval)) if len(X_eval)
                     else np.empty((0, n_classes)))
    return FitResult(probabilities, fit_seconds, preprocessor, model, resolved)
