"""Value scale of microarray samples: linear (MAS5-style) or log2 (RMA-style), and the transform.

Public series mix both: MAS5 signals are linear (negatives possible, up to ~60,000), RMA and
GCRMA values are log2 (~2-14). A model trained on one scale calls every sample of the other
scale the same class, so the scale is detected per sample and linear samples are log2-transformed
before probes collapse to genes.

The test is GEO2R's (`LogC` in its R script): a sample is linear when its 99th percentile is
above 100, or when it spans more than 50 units with a positive lower quartile. It is applied per
sample, not per series, so that a pooled series and a sample scored alone get the same decision.

Linear values are floored before the log (default 20, the MAS5 noise floor used since Golub's
data): values at or below zero have no logarithm, and values near it are noise that the log
would blow up into large negative numbers.
"""

from __future__ import annotations

import numpy as np

from .errors import FeatureError

QUANTILE_LEVELS = (0.0, 0.25, 0.5, 0.75, 0.99, 1.0)
LINEAR, LOG2, UNKNOWN = "linear", "log2", "unknown"
TRANSFORMS = ("auto", "log2", "none")


def value_quantiles(values: np.ndarray) -> list[float]:
    """The quantiles GEO2R looks at, over the finite values (empty list for an empty sample)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return []
    return [float(q) for q in np.quantile(finite, QUANTILE_LEVELS)]


def detect_scale(quantiles: list[float] | None) -> str:
    """'linear', 'log2', or 'unknown' for a sample without values."""
    if not quantiles:
        return UNKNOWN
    q_min, q25, _, _, q99, q_max = quantiles
    linear = q99 > 100 or (q_max - q_min > 50 and q25 > 0)
    return LINEAR if linear else LOG2


def needs_log(scale: str, transform: str) -> bool:
    """Whether a sample of `scale` is log2-transformed under `features.transform`."""
    if transform not in TRANSFORMS:
        raise FeatureError(f"features.transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
    if transform == "log2":
        return True
    return transform == "auto" and scale == LINEAR


def model_scale(scale: str, transform: str) -> str:
    """The scale a sample's values end up on after `features.transform`."""
    return LOG2 if needs_log(scale, transform) else scale


def transform_settings(feature_settings: dict) -> tuple[str, float]:
    """(transform, log floor) of a run's feature settings; bundles from before scale detection
    recorded neither and were trained on the values as they were."""
    return feature_settings.get("transform", "none"), float(feature_settings.get("log_floor", 20.0))


def to_log2(values: np.ndarray, floor: float) -> np.ndarray:
    """log2 of values floored at `floor`; NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.log2(np.where(np.isnan(values), np.nan, np.maximum(values, floor)))


def series_scale(scales: list[str]) -> str:
    """One word for a series: its samples' common scale, or 'mixed'."""
    known = {s for s in scales if s != UNKNOWN}
    if not known:
        return UNKNOWN
    return known.pop() if len(known) == 1 else "mixed"
