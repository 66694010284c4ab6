"""A stratified, seeded train/test split with stratified CV folds inside the training set.

The split is stored in the `splits` table so that every model and every rerun sees the same
samples in the same sets; samples that arrive later are split on their own and appended,
leaving earlier assignments untouched.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from .. import schemas
from ..errors import SplitError

TRAIN, TEST = "train", "test"


def stratified_split(labels: pd.DataFrame, test_fraction: float, folds: int, seed: int, *,
                     test_needs_each_class: bool = True) -> pd.DataFrame:
    """(sample, set, fold, label): test rows have fold None; train rows fold 0..folds-1.

    A split that leaves the training set with fewer than 2 samples of a class, or the test set
    without one, is a SplitError naming the counts (`test_needs_each_class` False: samples added
    to a stored split, whose test set has both classes already).

    Samples are sorted first, so the result depends on the set of samples and the seed,
    not on the order rows arrive in.
    """
    frame = labels[["sample", "label"]].drop_duplicates("sample").sort_values("sample").reset_index(drop=True)
    counts = frame["label"].value_counts()
    if len(counts) < 2:
        raise SplitError(f"a split needs both ALL and AML samples; got {counts.to_dict()}")
    if test_fraction == 0:  # cross-validation only: every sample trains, the folds give the estimate
        return _with_folds(frame, frame.iloc[0:0], folds, seed)
    if counts.min() < 3:
        raise SplitError(
            f"too few samples of class {counts.idxmin()} ({counts.min()}) for a test set and folds: "
            "use --test-fraction 0 (cross-validation only)"
        )
    n_test = math.ceil(test_fraction * len(frame))  # how scikit-learn sizes the test set
    if len(frame) - n_test < 2 * len(counts):
        raise SplitError(f"{_fraction_text(test_fraction, counts)} leaves {len(frame) - n_test} sample(s) for the "
                         "training set: each class needs at least 2 training samples; lower --test-fraction "
                         "(split.test_fraction)")
    try:
        train, test = train_test_split(frame, test_size=test_fraction, stratify=frame["label"], random_state=seed)
    except ValueError as error:  # scikit-learn: a set smaller than the number of classes
        raise SplitError(f"{_fraction_text(test_fraction, counts)} cannot be split: "
                         f"{' '.join(str(error).split())}") from None
    _check_sets(train, test, counts, test_fraction, test_needs_each_class)
    return _with_folds(train, test, folds, seed)


def _fraction_text(test_fraction: float, counts: pd.Series) -> str:
    return f"test fraction {test_fraction:g} of {int(counts.sum())} labelled samples ({_counts_text(counts)})"


def _counts_text(counts: pd.Series) -> str:
    return ", ".join(f"{label} {int(counts.get(label, 0))}" for label in ("ALL", "AML"))


def _check_sets(train: pd.DataFrame, test: pd.DataFrame, counts: pd.Series, test_fraction: float,
                test_needs_each_class: bool) -> None:
    """SplitError naming the counts when a set lacks a class: training needs 2 of each for the
    folds, and a test set without one class measures nothing about it."""
    in_train, in_test = train["label"].value_counts(), test["label"].value_counts()
    if min(int(in_train.get(label, 0)) for label in counts.index) < 2:
        raise SplitError(f"{_fraction_text(test_fraction, counts)} leaves the training set with "
                         f"{_counts_text(in_train)}: each class needs at least 2 training samples; "
                         "lower --test-fraction (split.test_fraction)")
    if test_needs_each_class and min(int(in_test.get(label, 0)) for label in counts.index) < 1:
        raise SplitError(f"{_fraction_text(test_fraction, counts)} leaves the test set with "
                         f"{_counts_text(in_test)}: each class needs a test sample; raise --test-fraction, "
                         "or use 0 (cross-validation only)")


def effective_folds(train_labels: pd.Series, folds: int) -> int:
    """`folds`, or fewer when a class has fewer training samples than that (at least 2)."""
    smallest = int(train_labels.value_counts().min()) if len(train_labels) else 0
    if smallest < 2:
        raise SplitError(
            f"cross-validation needs at least 2 training samples of each class; "
            f"got {train_labels.value_counts().to_dict()}"
        )
    return min(folds, smallest)


def given_split(labels: pd.DataFrame, assignment: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    """A user's train/test assignment (columns sample, set); folds are still drawn inside train."""
    merged = labels[["sample", "label"]].merge(assignment[["sample", "set"]], on="sample", how="left")
    missing = merged.loc[merged["set"].isna(), "sample"].tolist()
    if missing:
        raise SplitError(f"the given split has no set for {len(missing)} labelled sample(s), e.g. {missing[:5]}")
    bad = sorted(set(merged["set"]) - {TRAIN, TEST})
    if bad:
        raise SplitError(f"the given split uses set names {bad}; only 'train' and 'test' are allowed")
    merged = merged.sort_values("sample")
    return _with_folds(merged[merged["set"] == TRAIN], merged[merged["set"] == TEST], folds, seed)


def extend_split(stored: pd.DataFrame, labels: pd.DataFrame, test_fraction: float, folds: int,
                 seed: int) -> pd.DataFrame:
    """Keep stored assignments; split only labelled samples that have none yet (reruns on new data)."""
    known = labels[labels["sample"].isin(stored["sample"])]
    kept = stored[stored["sample"].isin(known["sample"])].drop(columns=["label"]).merge(
        known[["sample", "label"]], on="sample")
    fresh = labels[~labels["sample"].isin(stored["sample"])]
    if fresh.empty:
        return kept[["sample", "set", "fold", "label"]].sort_values("sample").reset_index(drop=True)
    folds = n_folds(stored) or folds  # new samples join the folds the stored split has
    if fresh["label"].nunique() < 2 or fresh["label"].value_counts().min() < folds + 1:
        # Too few new samples to stratify on their own: they all go to training, fold by position.
        added = fresh[["sample", "label"]].sort_values("sample").assign(set=TRAIN)
        added["fold"] = np.arange(len(added)) % folds
    else:
        added = stratified_split(fresh, test_fraction, folds, seed + 1, test_needs_each_class=False)
    return (pd.concat([kept[["sample", "set", "fold", "label"]], added[["sample", "set", "fold", "label"]]])
            .sort_values("sample").reset_index(drop=True))


def grouped_folds(split: pd.DataFrame, groups: pd.Series, folds: int, seed: int) -> pd.DataFrame:
    """The split with its training folds drawn again so that no group (series, lab, centre) is split
    over two folds: each fold's score is then a score on groups the fit never saw.

    With at most `folds` groups that is leave-one-group-out; with more, groups are packed into
    `folds` folds that keep the class balance as far as whole groups allow (scikit-learn's
    StratifiedGroupKFold). The test set is kept as it is. `groups` maps sample -> group; a training
    sample without one, or fewer than two groups among the training samples, is a SplitError.
    """
    train = split[split["set"] == TRAIN].sort_values("sample").reset_index(drop=True)
    group_of = train["sample"].map(groups)
    if group_of.isna().any():
        missing = train.loc[group_of.isna(), "sample"].tolist()
        raise SplitError(f"split.group_by: {len(missing)} training sample(s) have no group, e.g. {missing[:5]}")
    n_groups = group_of.nunique()
    if n_groups < 2:
        raise SplitError(f"split.group_by: the training samples form {n_groups} group(s); grouped "
                         "cross-validation needs at least 2 (set split.group_by: none)")
    fold_of = np.full(len(train), -1)
    splitter = StratifiedGroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(train["sample"], train["label"], group_of)):
        fold_of[held_out] = fold
    train = train.assign(fold=fold_of)
    return (pd.concat([train, split[split["set"] != TRAIN]])[["sample", "set", "fold", "label"]]
            .sort_values("sample").reset_index(drop=True))


def group_summary(split: pd.DataFrame, groups: pd.Series) -> str:
    """Which groups each fold holds, and the groups that hold one class only (their fold scores
    that class's calls alone: with Golub's centres, DFCI sent only ALL and CALGB only AML)."""
    train = split[split["set"] == TRAIN].assign(group=lambda f: f["sample"].map(groups))
    lines = ["grouped cross-validation: no group is split over two folds"]
    for fold, part in train.groupby("fold"):
        names = ", ".join(f"{g} ({len(p)})" for g, p in part.groupby("group"))
        lines.append(f"  fold {int(fold)}: {names}")
    single = [f"{g} (only {p['label'].iloc[0]})" for g, p in train.groupby("group") if p["label"].nunique() == 1]
    if single:
        lines.append("  groups of one class, so group and class are confounded there: " + ", ".join(single))
    return "\n".join(lines)


def n_folds(split: pd.DataFrame) -> int:
    """How many CV folds a stored split has (fewer than asked when a class was small)."""
    folds = split.loc[split["set"] == TRAIN, "fold"].dropna()
    return int(folds.max()) + 1 if len(folds) else 0


def split_frame(spark, split: pd.DataFrame) -> DataFrame:
    records = [(r.sample, r.set, None if pd.isna(r.fold) else int(r.fold), r.label)
               for r in split.itertuples(index=False)]
    return spark.createDataFrame(records, schemas.SPLITS)


def split_summary(split: pd.DataFrame) -> str:
    table = split.assign(part=np.where(split["set"] == TEST, "test",
                                       "fold " + split["fold"].astype("float").fillna(-1).astype(int).astype(str)))
    counts = table.groupby(["part", "label"]).size().unstack(fill_value=0)
    lines = [f"train {int((split['set'] == TRAIN).sum())}, test {int((split['set'] == TEST).sum())}, "
             f"{n_folds(split)} cross-validation folds"
             + ("" if (split["set"] == TEST).any() else " (cross-validation only: no test set)")]
    lines += [f"  {part:<7} ALL {row.get('ALL', 0):>5}  AML {row.get('AML', 0):>5}" for part, row in counts.iterrows()]
    return "\n".join(lines)


def _with_folds(train: pd.DataFrame, test: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    train = train.sort_values("sample").reset_index(drop=True)
    fold_of = np.full(len(train), -1)
    splitter = StratifiedKFold(n_splits=effective_folds(train["label"], folds), shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(train["sample"], train["label"])):
        fold_of[held_out] = fold
    train = train.assign(set=TRAIN, fold=fold_of)
    test = test.sort_values("sample").assign(set=TEST, fold=None)
    return (pd.concat([train[["sample", "set", "fold", "label"]], test[["sample", "set", "fold", "label"]]])
            .sort_values("sample").reset_index(drop=True))
