"""k top-scoring pairs (k-TSP; Tan, Naiman, Xu, Winslow & Geman 2005): a vote of gene-pair orderings.

Each chosen pair (i, j) votes AML when gene i is above gene j *in the same sample*, ALL when
below; the call is the majority of k (odd) pairs. Nothing but the order of genes within one
sample is read, so the model needs no normalisation across samples, labs or platforms: any
strictly increasing transform of a sample (linear or log2 values, another scanner's gain,
a per-sample affine map) leaves its calls and probabilities exactly unchanged. For that the
spec declares its own preprocessing (``preprocessing``): no per-gene scaling or selection,
and no imputation. An unmeasured gene is NaN for the model and its pair abstains (votes 0);
training estimates each pair's probabilities over the rows where both genes are measured.

Training (scores in :mod:`leukspark.pairs`), on the training rows only:

1. Within-sample ranks; prefilter to ``prefilter_genes`` candidates (half ranked higher in AML,
   half in ALL, by the Welch t of the ranks). The search is O(genes^2 x samples): the 21,000
   genes of GSE13159 are 2.2e8 pairs x 1,033 samples, about half an hour on one core, against a
   few seconds for 1,000 candidates (benchmarks/results/ktsp.md); a pair of genes that are both unremarkable on their own
   rarely makes a top pair, as switchBox's default Wilcoxon filter also assumes.
2. Greedy choice of disjoint pairs by |delta| (ties: Tan's rank-difference score).
3. P(AML) = sigmoid(slope x signed vote share), the signed share being (AML votes - ALL votes) / k,
   with the slope fitted on inner-CV out-of-fold shares (Platt's smoothed targets keep it finite on
   separable data). The call is the majority vote: the sigmoid has no offset, because an offset is
   a threshold learned inside one cohort and it did not travel: on GSEA Leukemia -> Chiaretti a
   fitted offset of 0.3-0.6 called 6-21 of 95 B-ALL AML where the majority vote called 2-3. Only
   when the inner CV shows the majority vote failing by more than one sample (a one-sided signal:
   a gene above its partner in AML, a coin flip in ALL, where the bare majority calls half the ALL
   samples AML) is a full Platt sigmoid, offset included, fitted and stored.
4. k from the odd numbers up to ``max_k`` (or the fixed ``k``) by an inner stratified
   cross-validation of the training rows (each fold prefilters and searches its own rows):
   the largest k whose out-of-fold majority-vote accuracy is within one sample (1 / n) of the best
   k's (a one-sample difference is noise at a few dozen rows), because more voting pairs make a
   call depend less on any one gene when the model travels to another lab or platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.special import expit
from sklearn.model_selection import StratifiedKFold

from leukspark import checks
from leukspark.errors import ModelError
from leukspark.models.base import ArraysFile, ModelSpec
from leukspark.models.linear_svm import fit_platt_sigmoid
from leukspark.pairs import (pair_votes, prefilter_genes, scores_from_ranks, top_disjoint_pairs,
                                    within_sample_ranks)


@dataclass(frozen=True)
class KtspModel(ArraysFile):
    """The chosen pairs and the sigmoid on their vote share, as plain arrays.

    ``pairs[p] = (i, j)``: input columns, oriented so that x[i] > x[j] is a vote for AML.
    """

    pairs: np.ndarray        # (k, 2) int64
    pair_scores: np.ndarray  # (k,) |delta| on the training rows
    tie_scores: np.ndarray   # (k,) |gamma| (rank-difference score)
    calibration: np.ndarray  # (2,) slope, offset
    k_grid: np.ndarray       # (G,) int64 the k the inner CV compared
    cv_accuracy: np.ndarray  # (G,) its inner-CV accuracy (NaN without an inner CV)
    n_features: int

    FILE_NAME: ClassVar[str] = "ktsp.npz"

    def __post_init__(self) -> None:
        pairs = self.pairs
        if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
            raise ModelError(f"k-TSP model: pairs must be a (k, 2) array, got shape {pairs.shape}")
        if pairs.min() < 0 or pairs.max() >= self.n_features or np.unique(pairs).size != pairs.size:
            raise ModelError("k-TSP model: pairs must be distinct genes inside the input")
        if self.pair_scores.shape != (len(pairs),) or self.tie_scores.shape != (len(pairs),):
            raise ModelError("k-TSP model: pair scores do not match the pairs")
        if self.calibration.shape != (2,) or not np.isfinite(self.calibration).all():
            raise ModelError("k-TSP model: calibration must be two finite numbers (slope, offset)")

    def vote_share(self, X: np.ndarray) -> np.ndarray:
        """(AML votes - ALL votes) / k per row; a tie or a missing gene abstains."""
        return pair_votes(X, self.pairs).sum(axis=1, dtype=np.float64) / len(self.pairs)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        slope, offset = self.calibration
        return expit(slope * self.vote_share(X) + offset)

    @classmethod
    def load(cls, directory: Path) -> "KtspModel":
        arrays = cls.read_arrays(directory)
        return cls(
            pairs=arrays["pairs"].astype(np.int64), k_grid=arrays["k_grid"].astype(np.int64),
            **{name: arrays[name].astype(np.float64) for name in ("pair_scores", "tie_scores", "calibration",
                                                                   "cv_accuracy")},
            n_features=int(arrays["n_features"]),
        )


def search_pairs(ranks: np.ndarray, labels: np.ndarray, prefilter: int | None, max_pairs: int):
    """(pairs, |delta|, |gamma|) of the greedy k-TSP choice on these rows (see pairs.top_disjoint_pairs)."""
    candidates = prefilter_genes(ranks, labels, prefilter)
    return top_disjoint_pairs(scores_from_ranks(ranks, labels, candidates), max_pairs)


def share_of_first(votes: np.ndarray, k: int) -> np.ndarray:
    """Signed vote share of the first k pairs (all of them when fewer were found)."""
    used = min(k, votes.shape[1])
    return votes[:, :used].sum(axis=1, dtype=np.float64) / used


def inner_cv_shares(ranks: np.ndarray, labels: np.ndarray, grid: list[int], prefilter: int | None,
                    folds: int, seed: int) -> np.ndarray | None:
    """Out-of-fold signed vote shares (samples x grid), each fold searched on its own training rows;
    None when a class has fewer than two rows (no stratified split)."""
    n_splits = min(folds, int(np.bincount(labels, minlength=2).min()))
    if n_splits < 2:
        return None
    shares = np.zeros((len(labels), len(grid)))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(np.zeros(len(labels)), labels):
        pairs, _, _ = search_pairs(ranks[fit_rows], labels[fit_rows], prefilter, max(grid))
        votes = pair_votes(ranks[held_rows], pairs)
        shares[held_rows] = np.column_stack([share_of_first(votes, k) for k in grid])
    return shares


def vote_accuracy(shares: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per column of out-of-fold shares: the accuracy of the majority-vote calls (a tied vote counts
    half, as a coin would)."""
    truth = np.where(labels[:, None] == 1, 1.0, -1.0)
    return (np.sign(shares) * truth + 1.0).mean(axis=0) / 2.0


def fit_vote_slope(shares: np.ndarray, labels: np.ndarray) -> float:
    """The slope a of P(AML) = sigmoid(a x share) with the least log loss against Platt's smoothed
    targets: a sigmoid through 0.5 at a tied vote, so calibration scales confidence but never moves
    the majority-vote call."""
    from scipy.optimize import minimize_scalar

    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    target = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(slope: float) -> float:
        logit = slope * shares
        return float(np.mean(np.logaddexp(0, logit) - target * logit))

    return float(minimize_scalar(loss, bounds=(0.0, 50.0), method="bounded").x)


class KtspSpec(ModelSpec):
    """k top-scoring pairs; see the module docstring for the method and its choices."""

    name = "ktsp"
    cost = 3.0  # one pair search per inner fold and one final, a few seconds each at 1,000 candidates
    default_params = {"k": None, "max_k": 25, "inner_folds": 5, "prefilter_genes": 1000}
    param_checks = {
        "k": checks.odd_integer(1, special=(None,)),  # None: chosen by the inner CV
        "max_k": checks.integer(1),
        "inner_folds": checks.integer(2),
        "prefilter_genes": checks.integer(2, special=(None,)),  # None: every gene (slow at full size)
    }
    # k is already tuned inside fit; the candidate set is what an outer search can usefully vary.
    tuning_grid = {"prefilter_genes": [250, 1000, 2000]}
    # Only the order of genes within a sample: no per-gene affine map, selection or imputation.
    preprocessing = {"scaler": "none", "normalize": "none", "selection": "none", "impute": False}
    explanation_key = "pairs"
    multiclass = False  # a pair votes for one of two classes

    def _fit(self, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> KtspModel:
        grid = [params["k"]] if params["k"] is not None else list(range(1, params["max_k"] + 1, 2))
        labels = np.asarray(y, dtype=np.int64)
        ranks = within_sample_ranks(X)
        shares = inner_cv_shares(ranks, labels, grid, params["prefilter_genes"], params["inner_folds"], seed)
        one_sample = 1.0 / len(labels) + 1e-12
        if shares is None:  # too few rows of a class to hold any out: the largest k, calibrated in-sample
            accuracy, chosen, offsets = np.full(len(grid), np.nan), len(grid) - 1, None
        else:
            accuracy, offsets = vote_accuracy(shares, labels), None
            sigmoids = np.array([fit_platt_sigmoid(column, labels) for column in shares.T])
            shifted = ((expit(shares * sigmoids[:, 0] + sigmoids[:, 1]) >= 0.5) == (labels[:, None] == 1)).mean(axis=0)
            if shifted.max() > accuracy.max() + one_sample:  # a one-sided signal: the majority vote fails
                accuracy, offsets = shifted, sigmoids[:, 1]
            # The largest k within one sample of the best: at a few dozen rows a one-sample difference is
            # noise, and more voting pairs make a call depend less on any one gene in another lab.
            chosen = int(np.flatnonzero(accuracy >= accuracy.max() - one_sample)[-1])
        pairs, scores, ties = search_pairs(ranks, labels, params["prefilter_genes"], grid[chosen])
        fitted_on = shares[:, chosen] if shares is not None else share_of_first(pair_votes(ranks, pairs), grid[chosen])
        if offsets is None:
            calibration = np.array([fit_vote_slope(fitted_on, labels), 0.0])
        else:
            calibration = np.asarray(fit_platt_sigmoid(fitted_on, labels), dtype=np.float64)
        return KtspModel(pairs=pairs, pair_scores=scores, tie_scores=ties, calibration=calibration,
                         k_grid=np.asarray(grid, dtype=np.int64), cv_accuracy=np.asarray(accuracy, dtype=np.float64),
                         n_features=int(X.shape[1]))

    def _predict_proba(self, model: KtspModel, X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)

    def n_features(self, model: KtspModel) -> int:
        return model.n_features

    def used_features(self, model: KtspModel) -> np.ndarray:
        mask = np.zeros(model.n_features, dtype=bool)
        mask[model.pairs.ravel()] = True
        return mask

    def feature_importances(self, model: KtspModel) -> np.ndarray:
        """Each pair gene gets its pair's |delta|; the others 0."""
        importance = np.zeros(model.n_features)
        importance[model.pairs[:, 0]] = model.pair_scores
        importance[model.pairs[:, 1]] = model.pair_scores
        return importance

    def explain_rows(self, model: KtspModel, X: np.ndarray, genes: np.ndarray) -> list[list[dict]]:
        """Per row, every pair as {"gene_i", "gene_j", "vote"}: the pair votes AML when gene_i is
        above gene_j in the sample, ALL when below, null on a tie or a missing gene."""
        votes = pair_votes(np.asarray(X), model.pairs)
        named = [(str(genes[i]), str(genes[j])) for i, j in model.pairs]
        verdict = {1: "AML", -1: "ALL", 0: None}
        return [[{"gene_i": gene_i, "gene_j": gene_j, "vote": verdict[int(v)]} for (gene_i, gene_j), v in zip(named, row)]
                for row in votes]

    def save(self, model: KtspModel, directory: Path) -> list[str]:
        return model.save(directory)

    def load(self, directory: Path) -> KtspModel:
        return KtspModel.load(directory)


# Found by the registry (leukspark.models): this line is what makes the model available.
MODEL = KtspSpec()
