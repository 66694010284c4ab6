"""Value scale of microarray samples: linear (MAS5-style) or log2 (RMA-style), and the transform.

Public series mix both: MAS5 signals are linear (negatives possible, up to ~60,000), RMA and
GCRMA values are log2 (~2-14). A model trained on one scale calls every sample of the other
scale the same class, so the scale is detected per sample and linear samples are log2-transformed
before probes collapse to genes.

The test is GEO2R's (`LogC` in its R script): a sample is linear when its 99th percentile is
above 100, or when it spans more than 50 units with a positive lower quartile. It is applied per
sample, not per series, so that a pooled series and a sample scored alone get the same decision.

Linear values are floored before the log (20, the MAS5 noise floor used since Golub's data):
values at or below zero have no logarithm, and values near it are noise that the log would blow
up into large negative numbers. Models on within-sample ranks (`features.normalize: rank`) take
no floor (`log_floor: auto`): a floor ties every value below it (29 % of GSEA Leukemia's MAS
values at 20) and the order among them is what carries across labs (benchmarks/results/
cross_cohort.md). Their linear values go through asinh(x / 2) / ln 2 instead, which is strictly
monotone over every real number (negatives included) and within 0.01 of log2(x) above x = 8.
"""

from __future__ import annotations

import numpy as np

from .errors import FeatureError

QUANTILE_LEVELS = (0.0, 0.25, 0.5, 0.75, 0.99, 1.0)
LINEAR, LOG2, UNKNOWN = "linear", "log2", "unknown"
TRANSFORMS = ("auto", "log2", "none")
DEFAULT_LOG_FLOOR = 20.0
LOG_FLOOR_WORDS = ("auto", "none")


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


def transform_settings(feature_settings: dict) -> tuple[str, float | None]:
    """(transform, log floor) of a run's feature settings; bundles from before scale detection
    recorded neither and were trained on the values as they were."""
    return feature_settings.get("transform", "none"), log_floor_of(feature_settings)


def log_floor_of(feature_settings: dict) -> float | None:
    """The floor linear values are clipped at before the log, or None for the floor-free log.

    `log_floor` is a number, `none`, or `auto`: no floor under `normalize: rank`, 20 otherwise.
    Bundles written before `auto` existed recorded a number (or nothing: 20)."""
    floor = feature_settings.get("log_floor", DEFAULT_LOG_FLOOR)
    if floor is None or floor == "none":
        return None
    if floor == "auto":
        return None if feature_settings.get("normalize") == "rank" else DEFAULT_LOG_FLOOR
    return float(floor)


def to_log2(values: np.ndarray, floor: float | None) -> np.ndarray:
    """log2 of values floored at `floor`; with no floor, the strictly monotone asinh(x / 2) / ln 2.
    NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    if floor is None:
        return monotone_log2(values)
    with np.errstate(invalid="ignore"):
        return np.log2(np.where(np.isnan(values), np.nan, np.maximum(values, floor)))


def monotone_log2(values: np.ndarray) -> np.ndarray:
    """asinh(x / 2) / ln 2 = log2((x + sqrt(x^2 + 4)) / 2): log2(x) for large x, defined and strictly
    increasing for every real x, so no two distinct values of a sample tie after it."""
    return np.arcsinh(np.asarray(values, dtype=np.float64) / 2.0) / np.log(2.0)


def series_scale(scales: list[str]) -> str:
    """One word for a series: its samples' common scale, or 'mixed'."""
    known = {s for s in scales if s != UNKNOWN}
    if not known:
        return UNKNOWN
    return known.pop() if len(known) == 1 else "mixed"
