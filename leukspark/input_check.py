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

from dataclasses import dataclass

import numpy as np

from .conformal import conformal_threshold, lower_conformal_threshold, rate_text

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


# -- novelty on what the model sees ------------------------------------------------------------
# The shift/spread check above reads values before per-sample normalisation, so with
# `features.normalize: rank` or `quantile` it flags what normalisation then corrects (every
# Chiaretti sample against a GSEA Leukemia model). The novelty score below is computed on the
# matrix the model is given (transform, normalisation, selection, imputation, scaling;
# novelty_inputs): the rows are projected on the first NOVELTY_COMPONENTS principal
# components of the training rows, and the score is the Mahalanobis distance to the nearest
# class (ALL or AML), each class with a Ledoit-Wolf shrunk covariance (well defined at 20
# samples a class). Class-conditional, because a sample between the classes (mixed lineage,
# another disease) can sit near the pooled centre. The threshold is not a hand margin: it is
# the ceil((n + 1)(1 - flag_rate))-th smallest out-of-fold score of the n training samples
# (each scored by a model and preprocessor fitted without its fold), so a new sample from
# the training population is flagged with probability about flag_rate (the split-conformal
# rank; exactly flag_rate for exchangeable scores).
NOVELTY_COMPONENTS = 5   # more overfits at 40-50 samples: 10 flagged 28 of 95 Chiaretti B-ALL
NOVELTY_KEYS = ("novelty_center", "novelty_components", "novelty_class_means", "novelty_class_precisions")


def novelty_inputs(preprocessor, X: np.ndarray) -> np.ndarray:
    """The rows exactly as the model gets them: transform, per-sample normalisation, gene selection,
    imputation and the per-gene scaling. Measured on GSEA Leukemia -> Chiaretti (rank-normalised):
    before the scaling the check flagged no Chiaretti sample while the models called 58-69 of the 95
    B-ALL AML; after it, every one is flagged: the scaling magnifies genes that barely vary in
    training (ranks tied at a noise floor), which is where the model's input leaves the training
    data and its calls go wrong."""
    if order_only(preprocessor):
        # A model that reads only the order of genes within a sample (ktsp): what it sees is each
        # sample's ranks, and raw log values would flag every other lab's processing. Unmeasured
        # genes sit at the middle rank, where they move no component.
        from .models.base import SampleNormalizer

        ranks = SampleNormalizer("rank").transform(np.asarray(X, dtype=np.float64))
        return np.where(np.isnan(ranks), 0.5, ranks)
    return preprocessor.transform(X).astype(np.float64)


def order_only(preprocessor) -> bool:
    """Whether the model behind `preprocessor` gets the values as they are (no normalisation, scaling
    or imputation): a model of within-sample order."""
    return (preprocessor.scaler == "none" and preprocessor.normalizer.method == "none"
            and not getattr(preprocessor, "impute", True))


def fit_novelty(Z: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The novelty model of preprocessed training rows `Z` with labels `y` (0/1), as plain arrays."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y)
    classes = [c for c in (0, 1) if (y == c).sum() >= 2]
    q = int(max(1, min(NOVELTY_COMPONENTS, Z.shape[0] - 2, Z.shape[1])))
    pca = PCA(n_components=q, svd_solver="randomized" if min(Z.shape) > 200 else "full", random_state=seed).fit(Z)
    scores = pca.transform(Z)
    means, precisions = [], []
    for c in classes:
        fit = LedoitWolf().fit(scores[y == c])
        means.append(fit.location_)
        precisions.append(fit.precision_)
    return {"novelty_center": pca.mean_, "novelty_components": pca.components_,
            "novelty_class_means": np.array(means), "novelty_class_precisions": np.array(precisions)}


def novelty_scores(model: dict[str, np.ndarray], Z: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each preprocessed row to the nearest training class."""
    t = (np.asarray(Z, dtype=np.float64) - model["novelty_center"]) @ model["novelty_components"].T
    distances = []
    for mean, precision in zip(model["novelty_class_means"], model["novelty_class_precisions"]):
        d = t - mean
        distances.append(np.einsum("ij,jk,ik->i", d, precision, d))
    return np.sqrt(np.maximum(np.min(distances, axis=0), 0.0))


def rate_controlled_checks(has_other_disease_check: bool) -> int:
    """How many checks share predict.flag_rate: novelty and low_blast, and other_disease where fitted."""
    return 3 if has_other_disease_check else 2


def per_check_rate(flag_rate: float, has_other_disease_check: bool, n_train: int) -> float:
    """The false-flag rate each rate-controlled check (novelty, low_blast and, where fitted,
    other_disease) gets. `predict.flag_rate` is what a sample like the training ones risks from all of
    them together, so it is split evenly (Bonferroni: the union is at most the sum). Measured before
    the split, each check at 5 % flagged 11-13 of 74 ALL/AML test samples of the 600-sample hard preset.

    n training samples cannot set a threshold rarer than 1 / (n + 1) (the most extreme of them): a
    share below that is raised to it, so that a small cohort keeps its checks (GSEA Leukemia's 38
    training samples: 1/39 for each); below n + 1 = 1 / flag_rate the checks are off, as before."""
    share = flag_rate / rate_controlled_checks(has_other_disease_check)
    return max(share, min(flag_rate, 1.0 / (n_train + 1)))


def fit_blast_check(X_train: np.ndarray, gene_order, flag_rate: float) -> dict:
    """The bundle's blast-program check: the training samples' blast index (reference.blast_index)
    and the threshold below which a sample is flagged. The index is a fixed function of each
    sample's ranks (nothing is fitted), so the training samples' own scores are exchangeable with a
    new sample's and set the threshold directly."""
    from .reference import blast_index

    scores = blast_index(X_train, gene_order)
    finite = scores[np.isfinite(scores)]
    threshold = lower_conformal_threshold(finite, flag_rate)
    return {"threshold": threshold, "flag_rate": float(flag_rate), "n": int(finite.size),
            "training_min": float(finite.min()) if finite.size else None,
            "training_median": float(np.median(finite)) if finite.size else None,
            "training_flagged": float(np.mean(finite < threshold)) if threshold is not None else None}


def blast_message(score: float, threshold: float, rate: float | None = None) -> str:
    return (f"few blast-cell markers for an acute leukemia (blast index {score:.2f}; at most {rate_text(rate)} of the "
            f"training samples score below {threshold:.2f}): a chronic leukemia (CLL, CML), MDS, normal marrow or a "
            "sample with few blasts; the model learned acute leukemias only, so its ALL/AML call is no diagnosis")


def novelty_message(score: float, threshold: float, rate: float | None = None) -> str:
    return (f"unlike the training samples as the model sees them (novelty {score:.2f}; at most {rate_text(rate)} of "
            f"the training samples, scored out of fold, lie beyond {threshold:.2f}): another disease, lineage, tissue "
            "or lab effect; do not act on this call without review")


def conflict_message(call: str, conflict: str, program_scores) -> str:
    from .reference import LINEAGE_PROGRAMS

    scores = ", ".join(f"{p} {v:.2f}" for p, v in zip(LINEAGE_PROGRAMS, program_scores))
    return (f"called {call} but its own markers are {conflict} (lineage scores {scores}): the call contradicts "
            "the sample's lineage; confirm by immunophenotype")


def fit_training_checks(X_train: np.ndarray, y_train: np.ndarray, folds: np.ndarray, final_preprocessor,
                        make_preprocessor, gene_order, flag_rate: float, seed: int = 0) -> tuple[dict, dict]:
    """(arrays for the bundle's input reference, manifest entries) of the novelty check and the
    lineage coverage, from the final fit's training rows.

    `make_preprocessor()` returns an unfitted preprocessor with the run's settings: each CV fold
    gets its own, fitted without the fold, so the out-of-fold scores that set the threshold
    come from rows the preprocessor and the novelty model never saw.
    """
    from .reference import lineage_coverage, lineage_scores

    X_train = np.asarray(X_train)
    y_train = np.asarray(y_train)
    out_of_fold = np.full(len(y_train), np.nan)
    for fold in np.unique(folds):
        held = folds == fold
        if held.all() or np.unique(y_train[~held]).size < 2:
            continue
        preprocessor = make_preprocessor().fit(X_train[~held], y_train[~held])
        model = fit_novelty(novelty_inputs(preprocessor, X_train[~held]), y_train[~held], seed)
        out_of_fold[held] = novelty_scores(model, novelty_inputs(preprocessor, X_train[held]))
    model = fit_novelty(novelty_inputs(final_preprocessor, X_train), y_train, seed)
    threshold = conformal_threshold(out_of_fold, flag_rate)
    labels = np.where(y_train == 1, "AML", "ALL")
    coverage = lineage_coverage(lineage_scores(X_train, gene_order), labels)
    finite = out_of_fold[np.isfinite(out_of_fold)]
    entries = {
        "novelty": {"threshold": threshold if np.isfinite(threshold) else None, "flag_rate": float(flag_rate),
                    "components": int(model["novelty_components"].shape[0]), "n_out_of_fold": int(finite.size),
                    "out_of_fold_flagged": float(np.mean(finite > threshold)) if finite.size else None},
        "lineage_coverage": coverage,
        "blast_check": fit_blast_check(X_train, gene_order, flag_rate),
    }
    return model, entries


@dataclass
class SampleChecks:
    """What the scoring checks found for each row of one matrix (one entry per row)."""

    flags: list            # list of flag names per row
    messages: list         # list of warning texts per row
    novelty: np.ndarray | None
    programs: np.ndarray   # (n, 3) lineage program scores
    blast: np.ndarray      # blast index per row
    other: np.ndarray | None = None   # P(other disease) per row, where the bundle has that check


def check_rows(rows: np.ndarray, gene_order, preprocessor, novelty_model: dict | None, inputs: dict,
               range_check=None, calls=None) -> SampleChecks:
    """The flags a bundle gives `rows` (its genes in `gene_order`): one place, used by `predict` and
    by training's test rows alike.

    * novelty: the preprocessed row lies further from every training class than the threshold set
      from the training samples' out-of-fold scores at predict.flag_rate;
    * unseen_lineage:<program>: it expresses lineage markers no training class did;
    * low_blast: its blast index is below what all but predict.flag_rate of the training samples reach;
    * other_disease: its P(other) is above what predict.flag_rate of the training ALL/AML samples reach
      out of fold (bundles whose training series held other diseases: other_disease.py);
    * input_range: `range_check(i)` (bundles without a novelty model: the older check on raw values);
    * lineage_conflict:<program>: with the ALL/AML `calls` given, a call against the sample's dominant
      lineage program (an AML call on a B- or T-lymphoid sample, an ALL call on a myeloid one).
    """
    from .other_disease import FLAG as OTHER_DISEASE_FLAG
    from .other_disease import message as other_disease_message
    from .other_disease import other_probability
    from .reference import LINEAGE_PROGRAMS, lineage_and_blast_scores, lineage_conflict, unseen_lineages

    rows = np.asarray(rows)
    n = len(rows)
    threshold = (inputs.get("novelty") or {}).get("threshold")
    novelty = (novelty_scores(novelty_model, novelty_inputs(preprocessor, rows))
               if novelty_model is not None and n else None)
    programs, blast = lineage_and_blast_scores(rows, gene_order) if n else (np.zeros((0, 3)), np.zeros(0))
    coverage = inputs.get("lineage_coverage")
    blast_threshold = (inputs.get("blast_check") or {}).get("threshold")
    other_check = inputs.get("other_disease")
    other, closest = (other_probability(other_check, rows) if other_check is not None and n else (None, []))
    other_threshold = (other_check or {}).get("threshold")
    checks = SampleChecks([[] for _ in range(n)], [[] for _ in range(n)], novelty, programs, blast, other)
    for i in range(n):
        flags, messages = checks.flags[i], checks.messages[i]
        if novelty is not None and threshold is not None and novelty[i] > threshold:
            flags.append("novelty")
            messages.append(novelty_message(float(novelty[i]), float(threshold),
                                            (inputs.get("novelty") or {}).get("flag_rate")))
        elif novelty is None and range_check is not None:
            text = range_check(i)
            if text:
                flags.append("input_range")
                messages.append(text)
        for program in unseen_lineages(programs[i], coverage) if coverage else []:
            flags.append(f"unseen_lineage:{program}")
            messages.append(f"expresses {program} markers (score {programs[i][LINEAGE_PROGRAMS.index(program)]:.2f}) "
                            "that no training class did: the model never learned this lineage, so its ALL/AML call is no diagnosis")
        if blast_threshold is not None and np.isfinite(blast[i]) and blast[i] < blast_threshold:
            flags.append("low_blast")
            messages.append(blast_message(float(blast[i]), float(blast_threshold),
                                          (inputs.get("blast_check") or {}).get("flag_rate")))
        if calls is not None and (conflict := lineage_conflict(programs[i], calls[i])) is not None:
            flags.append(f"lineage_conflict:{conflict}")
            messages.append(conflict_message(calls[i], conflict, programs[i]))
        if other is not None and other_threshold is not None and other[i] > other_threshold:
            flags.append(OTHER_DISEASE_FLAG)
            messages.append(other_disease_message(float(other[i]), float(other_threshold), closest[i],
                                                  other_check.get("flag_rate")))
    return checks
