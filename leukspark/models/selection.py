"""In-fold gene selection, fitted on a fold's training rows only (`training.selection`).

* ``variance``: the k genes of largest variance (unsupervised);
* ``t_test``: the k genes of largest |t| of the ordinary two-sample t test (pooled variance,
  d = n - 2 degrees of freedom), AML vs ALL;
* ``moderated_t``: the k genes of largest |moderated t| (limma's empirical Bayes statistic,
  Smyth 2004, Stat. Appl. Genet. Mol. Biol. 3:3): the gene variances s_g^2 are shrunk toward
  a common prior s0^2 with d0 prior degrees of freedom, both estimated from all genes by the
  method of moments on log variances (limma's fitFDist):

      e_g = log s_g^2 - digamma(d / 2) + log(d / 2)
      trigamma(d0 / 2) = mean((e_g - mean e)^2 * G / (G - 1)) - trigamma(d / 2)   (d0 = inf if <= 0)
      s0^2 = exp(mean e + digamma(d0 / 2) - log(d0 / 2))
      moderated s_g^2 = (d0 s0^2 + d s_g^2) / (d0 + d)
      moderated t_g = (mean_AML - mean_ALL) / sqrt(moderated s_g^2 (1/n_AML + 1/n_ALL))

Statistics are computed on the preprocessor's input after per-sample normalisation, with
missing values imputed by the gene's training mean (for ranking only). Ties keep gene order.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.special import digamma, polygamma

from leukspark.errors import ModelError

METHODS = ("none", "variance", "t_test", "moderated_t")


def _trigamma(x):
    return polygamma(1, x)


def trigamma_inverse(value: float) -> float:
    """x with trigamma(x) = value (value > 0)."""
    # trigamma decreases from +inf (x -> 0) to 0 (x -> inf); trigamma(x) ~ 1/x for large x.
    lo, hi = 1e-8, max(1.0, 10.0 / value)
    while _trigamma(hi) > value:
        hi *= 10.0
    return float(brentq(lambda x: _trigamma(x) - value, lo, hi, xtol=1e-12, rtol=1e-12, maxiter=500))


def fit_f_dist(variances: np.ndarray, d: float) -> tuple[float, float]:
    """(d0, s0^2): limma's method-of-moments prior for the gene variances (d0 may be inf)."""
    s2 = np.asarray(variances, dtype=np.float64)
    s2 = s2[np.isfinite(s2) & (s2 > 0)]
    if s2.size < 2:
        return float("inf"), float(np.mean(s2)) if s2.size else 1.0
    e = np.log(s2) - digamma(d / 2) + np.log(d / 2)
    e_mean = e.mean()
    excess = np.mean((e - e_mean) ** 2) * s2.size / (s2.size - 1) - _trigamma(d / 2)
    if excess <= 0:
        return float("inf"), float(np.exp(e_mean))
    d0 = 2 * trigamma_inverse(excess)
    return d0, float(np.exp(e_mean + digamma(d0 / 2) - np.log(d0 / 2)))


def two_group_statistics(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(mean difference AML - ALL, pooled variance, d, 1/n1 + 1/n0) per gene."""
    aml, all_ = X[y == 1], X[y == 0]
    n1, n0 = len(aml), len(all_)
    if n1 < 1 or n0 < 1 or n1 + n0 < 3:
        raise ModelError("gene selection by t statistic needs both classes and at least three samples")
    d = n1 + n0 - 2
    ss = ((aml - aml.mean(axis=0)) ** 2).sum(axis=0) + ((all_ - all_.mean(axis=0)) ** 2).sum(axis=0)
    return aml.mean(axis=0) - all_.mean(axis=0), ss / d, float(d), 1 / n1 + 1 / n0


def gene_scores(method: str, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """Per-gene score, larger = more wanted (NaN-free X)."""
    X = np.asarray(X, dtype=np.float64)
    if method == "variance":
        return X.var(axis=0, ddof=1) if len(X) > 1 else np.zeros(X.shape[1])
    if y is None:
        raise ModelError(f"gene selection by {method} needs the training labels")
    difference, s2, d, factor = two_group_statistics(X, np.asarray(y))
    if method == "moderated_t":
        d0, s0_sq = fit_f_dist(s2, d)
        # d0 = inf: no evidence of variance differences between genes; every gene gets the prior.
        s2 = np.full_like(s2, s0_sq) if np.isinf(d0) else (d0 * s0_sq + d * s2) / (d0 + d)
    elif method != "t_test":
        raise ModelError(f"training.selection must be one of {', '.join(METHODS)}; got {method!r}")
    se = np.sqrt(s2 * factor)
    return np.divide(np.abs(difference), se, out=np.zeros_like(difference), where=se > 0)


def select_genes(method: str, k: int, X: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(ascending indices of the top-k genes, their scores in the same order)."""
    if k < 1:
        raise ModelError(f"training.selection_k must be positive; got {k}")
    X = np.array(X, dtype=np.float64)
    missing = np.isnan(X)
    if missing.any():
        counts = (~missing).sum(axis=0)
        means = np.divide(np.nansum(X, axis=0), counts, out=np.zeros(X.shape[1]), where=counts > 0)
        X[missing] = np.take(means, np.nonzero(missing)[1])
    scores = gene_scores(method, X, y)
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    top = np.sort(np.argsort(-scores, kind="stable")[:min(k, X.shape[1])])
    return top.astype(np.int64), scores[top]
