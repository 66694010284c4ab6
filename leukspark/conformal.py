"""Thresholds with a stated false-flag rate from a sample of scores (split-conformal ranks).

A score computed the same way for the n training samples (out of fold, or by a fixed function
that fits nothing) and for a new sample of the same population is exchangeable with them, so
the rank of the new sample's score among the n + 1 is uniform: the thresholds below flag it with
probability at most `rate` (exactly rate when scores do not tie and (n + 1) rate is whole).
"""

from __future__ import annotations

import numpy as np


def conformal_threshold(scores: np.ndarray, rate: float) -> float:
    """The ceil((n + 1)(1 - rate))-th smallest score; +inf when n is too small for that rate."""
    values = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    k = int(np.ceil((values.size + 1) * (1 - rate) - 1e-9))   # (1e-9: a rate of exactly 1/(n+1) gives k = n)
    return float(values[k - 1]) if 1 <= k <= values.size else float("inf")


def lower_conformal_threshold(scores: np.ndarray, rate: float) -> float | None:
    """The floor((n + 1) rate)-th smallest score: a new sample of the same population falls strictly
    below it with probability at most `rate`; None when n is too small for that rate."""
    values = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    k = int(np.floor((values.size + 1) * rate + 1e-9))
    return float(values[k - 1]) if 1 <= k <= values.size else None


def rate_text(rate: float | None) -> str:
    """How a flag message states its check's false-flag rate ("a few" where the bundle did not store it)."""
    return "a few" if rate is None else f"{rate:.1%}"
