"""Is a sample to score like the samples the model was trained on?

A model applied to values of another scale, another normalisation or a broken array still
returns a confident probability. Each bundle therefore keeps the training distribution of
its genes (per-gene mean and standard deviation, on the model's scale) and the range that
the training samples' two summaries span:

* shift: the median over genes of (value - training mean) / training std: a whole-sample
  offset (another scale, an unnormalised batch);
* spread: the median absolute deviation of those z-scores around the shift: a sample that
  is compressed or blown up relative to the training data (linear vs log values).

A sample outside the training range is scored but flagged with a `warning`; the range is
widened by `predict.range_margin`: of its width (at least that many z-units) for the shift,
as a factor (1 + margin) for the spread, which is a ratio. Both summaries are medians over the genes a sample has,
so a sample of another platform that shares only part of the genes is judged fairly.
"""

from __future__ import annotations

import numpy as np

ARRAY_KEYS = ("gene_mean", "gene_std")


def fit_reference(X_train: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """(per-gene arrays, {"shift": [lo, hi], "spread": [lo, hi]}) of the training rows."""
    X = np.asarray(X_train, dtype=np.float64)
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as quiet:
        quiet.filter(RuntimeWarning)
        mean = np.nanmean(X, axis=0)
        std = np.nanstd(X, axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, np.nan)
    arrays = {"gene_mean": mean, "gene_std": std}
    stats = np.array([sample_summary(row, arrays) for row in X])
    ranges = {name: [float(np.nanmin(stats[:, i])), float(np.nanmax(stats[:, i]))]
              for i, name in enumerate(("shift", "spread"))}
    return arrays, ranges


def sample_summary(values: np.ndarray, reference: dict[str, np.ndarray]) -> tuple[float, float]:
    """(shift, spread) of one sample's z-scores over the genes it and the training data share."""
    z = (np.asarray(values, dtype=np.float64) - reference["gene_mean"]) / reference["gene_std"]
    z = z[np.isfinite(z)]
    if z.size == 0:
        return float("nan"), float("nan")
    shift = float(np.median(z))
    return shift, float(np.median(np.abs(z - shift)))


def out_of_range(values: np.ndarray, reference: dict[str, np.ndarray], ranges: dict[str, list[float]],
                 margin: float) -> str | None:
    """A warning naming what lies outside the training range, or None."""
    shift, spread = sample_summary(values, reference)
    limits = {
        # An offset: the range widened by the margin of its width, and by at least margin z-units.
        "shift": (ranges["shift"][0] - max(margin * np.ptp(ranges["shift"]), margin),
                  ranges["shift"][1] + max(margin * np.ptp(ranges["shift"]), margin)),
        # A ratio: a sample is compressed or stretched by a factor.
        "spread": (ranges["spread"][0] / (1 + margin), ranges["spread"][1] * (1 + margin)),
    }
    problems = []
    for name, value in (("shift", shift), ("spread", spread)):
        lo, hi = ranges[name]
        if not np.isfinite(value) or not limits[name][0] <= value <= limits[name][1]:
            problems.append(f"{name} {value:.2f} outside the training range [{lo:.2f}, {hi:.2f}]")
    if not problems:
        return None
    return ("unlike the training samples (" + "; ".join(problems) + "): check the scale, normalisation "
            "and platform of this input before trusting its score")
