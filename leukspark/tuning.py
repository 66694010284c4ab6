"""Nested hyperparameter tuning inside the training fan-out (`training.tuning`).

Every outer fold k (and the final fit, 'test') gets its own search: each candidate parameter
set is cross-validated on fold k's training rows only, split into `inner_folds` stratified
inner folds. Every (model, outer fold, candidate, inner fold) is one task of the same Spark
fan-out as the ordinary fits, named ``tune:<outer>:<candidate>:<inner>``. The candidate with
the best mean inner score becomes the parameters of outer fold k's fit; the one chosen on the
whole training set becomes the final model's. Outer fold k's score is then an honest estimate
of the whole procedure (search included), and the optimism gap (inner score of the chosen
candidate minus its outer score) says how much the search flattered itself.

Inner folds depend on the training rows' ids and labels and the seed only: the test rows,
and the rows of outer fold k, never take part in choosing fold k's parameters.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import POSITIVE_CLASS
from .errors import ConfigError
from .folds import POOLED_FOLD, TEST_FOLD, task_costs

PREFIX = "tune"
METRICS = ("roc_auc", "accuracy", "brier", "log_loss")
LOWER_IS_BETTER = {"brier", "log_loss"}


@dataclass(frozen=True)
class TuningFold:
    outer: str       # an outer CV fold '0'..'k-1', or 'test' for the final fit's search
    candidate: int
    inner: int

    @property
    def name(self) -> str:
        return f"{PREFIX}:{self.outer}:{self.candidate}:{self.inner}"


def parse_tuning_fold(fold: str) -> TuningFold | None:
    """The parts of a tuning task's fold name, or None for any other fold."""
    parts = str(fold).split(":")
    if len(parts) != 4 or parts[0] != PREFIX:
        return None
    return TuningFold(parts[1], int(parts[2]), int(parts[3]))


def is_tuning_fold(fold) -> bool:
    return parse_tuning_fold(fold) is not None


def candidates(spec, tuning_cfg: dict, overrides: dict, seed: int) -> list[dict]:
    """The parameter sets searched for one model: its base parameters (defaults merged with the
    run's overrides) with each point of the grid on top.

    The grid is `tuning.grids.<model>` or else the model's own `tuning_grid`. `grid` searches
    every point, `random` draws `n_candidates` distinct points (seeded). Every candidate is
    validated here, before any task starts.
    """
    grid = tuning_cfg["grids"].get(spec.name) or dict(spec.tuning_grid)
    base = spec.resolve_params(overrides)
    if not grid:
        return [base]
    keys = sorted(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    if tuning_cfg["method"] == "random" and len(points) > tuning_cfg["n_candidates"]:
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(points), size=tuning_cfg["n_candidates"], replace=False))
        points = [points[i] for i in chosen]
    out = []
    for point in points:
        problem = spec.param_problem({**overrides, **point})
        if problem is not None:
            raise ConfigError(f"training.tuning.grids.{spec.name}.{problem[0]} {problem[1]}")
        out.append(spec.resolve_params({**overrides, **point}))
    return out


def plan_tuning_tasks(models: list[str], outer_folds: list[str], tuning_cfg: dict, param_overrides: dict,
                      seed: int) -> pd.DataFrame:
    """One row per (model, outer fold, candidate, inner fold): model, fold, params, candidate."""
    from .models import get_model

    rows = []
    for model in models:
        spec = get_model(model)
        for index, params in enumerate(candidates(spec, tuning_cfg, param_overrides.get(model, {}), seed)):
            text = json.dumps(params, sort_keys=True, default=str)
            for outer in outer_folds:
                for inner in range(tuning_cfg["inner_folds"]):
                    rows.append({"model": model, "fold": TuningFold(outer, index, inner).name, "params": text})
    tasks = pd.DataFrame(rows, columns=["model", "fold", "params"])
    return tasks.iloc[np.argsort(-task_costs(tasks), kind="stable")].reset_index(drop=True)


def inner_fold_ids(samples: np.ndarray, labels: np.ndarray, in_outer_train: np.ndarray, n_inner: int,
                   seed: int) -> np.ndarray:
    """Inner fold (0..n_inner-1) of each outer-training row, -1 elsewhere: stratified by label,
    from the rows' ids (sorted) and labels only, so every task of a search agrees on them."""
    from sklearn.model_selection import StratifiedKFold

    ids = np.full(len(samples), -1, dtype=np.int64)
    rows = np.flatnonzero(in_outer_train)
    rows = rows[np.argsort(samples[rows], kind="stable")]
    y = labels[rows]
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2 or counts.min() < n_inner:
        raise ConfigError(f"training.tuning.inner_folds = {n_inner} needs at least {n_inner} training samples "
                          f"of each class in every outer fold; the smallest class has {int(counts.min())}")
    splitter = StratifiedKFold(n_splits=n_inner, shuffle=True, random_state=seed)
    for index, (_, held_out) in enumerate(splitter.split(np.zeros(len(rows)), y)):
        ids[rows[held_out]] = index
    return ids


def tuning_rows(samples: np.ndarray, sets: np.ndarray, folds: np.ndarray, labels: np.ndarray,
                fold: TuningFold, n_inner: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, eval) of one tuning task over `samples`."""
    in_train = sets == "train"
    outer_train = in_train if fold.outer == TEST_FOLD else in_train & (folds != int(fold.outer))
    inner = inner_fold_ids(samples, labels, outer_train, n_inner, seed)
    return outer_train & (inner != fold.inner), inner == fold.inner


def _score(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

    if metric == "roc_auc":
        return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    if metric == "accuracy":
        return float(accuracy_score(y, p >= 0.5))
    if metric == "brier":
        return float(brier_score_loss(y, p, pos_label=1))
    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


def score(metric: str, truth, probabilities) -> float:
    """`metric` of P(AML) against the truth labels (ALL/AML)."""
    y = (np.asarray(truth) == POSITIVE_CLASS).astype(int)
    return _score(metric, y, np.asarray(probabilities, dtype=np.float64))


def candidate_scores(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (model, outer, candidate): mean and std over the inner folds of `metric`, and the mean
    Brier score (the tie-break), from the tuning tasks' prediction rows."""
    parsed = rows["fold"].map(parse_tuning_fold)
    frame = rows.assign(outer=parsed.map(lambda f: f.outer), candidate=parsed.map(lambda f: f.candidate),
                        inner=parsed.map(lambda f: f.inner))
    per_inner = (frame.groupby(["model", "outer", "candidate", "inner"], sort=False)
                 .apply(lambda part: pd.Series({
                     "score": score(metric, part["truth"], part["probability_AML"]),
                     "brier": score("brier", part["truth"], part["probability_AML"]),
                     "params": part["params"].iloc[0] if "params" in part else None}), include_groups=False)
                 .reset_index())
    return (per_inner.groupby(["model", "outer", "candidate"], sort=False)
            .agg(inner_score=("score", "mean"), inner_score_std=("score", "std"), inner_brier=("brier", "mean"),
                 params=("params", "first"), n_inner=("inner", "nunique"))
            .reset_index())


def choose(scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`scores` with a `chosen` column: per (model, outer), the best mean inner score; ties go to
    the lower Brier score, then to the earlier candidate (the grid's order)."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    ordered = scores.assign(_key=sign * scores["inner_score"].fillna(-sign * np.inf))
    ordered = ordered.sort_values(["model", "outer", "_key", "inner_brier", "candidate"], kind="stable")
    first = ~ordered.duplicated(["model", "outer"])
    return scores.assign(chosen=first.reindex(scores.index))


def chosen_params(choices: pd.DataFrame) -> dict[tuple[str, str], str]:
    """{(model, outer fold): params JSON} of the chosen candidates."""
    chosen = choices[choices["chosen"]]
    return {(r.model, r.outer): r.params for r in chosen.itertuples(index=False)}


def fold_params(chosen: dict[tuple[str, str], str], model: str, fold: str) -> str | None:
    """The tuned parameters of an ordinary task: outer fold k's own, 'test' for the final fit,
    and outer k's for a nested task 'k/j' (it stands in for fold k's model)."""
    outer = fold.split("/")[0] if "/" in fold else fold
    return chosen.get((model, outer))


def result_rows(choices: pd.DataFrame, metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Long (model, fold, metric, value, params) rows: per outer fold the chosen candidate's inner
    score, the fold's outer score with the same metric and their difference (the optimism gap);
    for the final fit the inner score on the whole training set; pooled, the mean gap and the
    number of candidates searched."""
    outer_metric = {"roc_auc": "roc_auc", "accuracy": "accuracy", "brier": "brier"}.get(metric)
    rows = []
    for record in choices[choices["chosen"]].itertuples(index=False):
        rows.append((record.model, record.outer, f"tuning_inner_{metric}", float(record.inner_score), record.params))
        if outer_metric is None:
            continue
        measured = metrics[(metrics["model"] == record.model) & (metrics["fold"] == record.outer)]
        if len(measured) and record.outer != TEST_FOLD:
            outer = float(measured[outer_metric].iloc[0])
            rows.append((record.model, record.outer, f"tuning_outer_{metric}", outer, record.params))
            rows.append((record.model, record.outer, "optimism_gap", float(record.inner_score) - outer, record.params))
    frame = pd.DataFrame(rows, columns=["model", "fold", "metric", "value", "params"])
    pooled = []
    for model, part in choices.groupby("model", sort=False):
        gaps = frame[(frame["model"] == model) & (frame["metric"] == "optimism_gap")]["value"]
        pooled.append((model, POOLED_FOLD, "tuning_candidates", float(part["candidate"].nunique()), None))
        if len(gaps):
            pooled.append((model, POOLED_FOLD, "optimism_gap", float(gaps.mean()), None))
    return pd.concat([frame, pd.DataFrame(pooled, columns=frame.columns)], ignore_index=True)


def tuning_table(choices: pd.DataFrame, run_id: str, metric: str) -> pd.DataFrame:
    """Rows of the `tuning` table: every candidate of every search, with its inner scores."""
    out = choices.rename(columns={"outer": "outer_fold"}).assign(run=run_id, metric=metric)
    out["candidate"] = out["candidate"].astype("int64")
    out["n_inner"] = out["n_inner"].astype("int64")
    columns = ["run", "model", "outer_fold", "candidate", "params", "metric", "inner_score", "inner_score_std",
               "inner_brier", "n_inner", "chosen"]
    return out[columns].sort_values(["model", "outer_fold", "candidate"], kind="stable").reset_index(drop=True)


def search_choices(predictions: pd.DataFrame, tasks: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every candidate's inner scores with the chosen one marked, from the tuning tasks' rows."""
    with_params = predictions.merge(tasks[["model", "fold", "params"]], on=["model", "fold"], how="left")
    return choose(candidate_scores(with_params, metric), metric)


def with_fold_params(results: pd.DataFrame, chosen: dict[tuple[str, str], str]) -> pd.DataFrame:
    """`results` whose rows of a tuned (model, outer fold) name the parameters chosen for that fold."""
    keys = list(zip(results["model"], results["fold"]))
    tuned = pd.Series([chosen.get(key) for key in keys], index=results.index)
    return results.assign(params=tuned.where(tuned.notna(), results["params"]))
