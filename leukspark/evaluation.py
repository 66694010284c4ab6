"""What the driver computes from the fan-out's prediction rows after training.

Inputs are the long prediction rows of every task: outer CV folds '0'..'k-1', the final fit
('test') and, when calibration or stacking is on, the nested folds 'k/j' (fitted on the
training folds other than k and j, predicting fold j). From them:

* **calibration** (`training.calibration`): fold k's out-of-fold probabilities go through a
  calibrator fitted on the nested rows 'k/j' (j != k), which come from models that never saw
  fold k; the test (final) probabilities go through one fitted on all out-of-fold rows. That
  last calibrator is the one saved in the model's bundle.
* **ensembles** (`training.ensembles`), evaluated on the same folds as the base models:
  ``soft_voting``, the mean of the base models' (calibrated) probabilities, and ``stacking``, a
  logistic regression on the logits of the base models' uncalibrated probabilities. Stacking's
  meta-learner for outer fold k is fitted on the nested rows 'k/j': every feature and label it
  sees comes from folds other than k, produced by base models that did not train on fold k; it
  is then applied to fold k's ordinary out-of-fold probabilities. For the test set it is fitted
  on all out-of-fold probabilities of the training set and applied to the final fits' test
  probabilities.
* **abstention** (`predict.abstain_band`): with ``auto``, the narrowest symmetric band around
  0.5 whose calls reach `predict.target_accuracy`, chosen for outer fold k from the other
  folds' out-of-fold probabilities (so a fold's coverage is measured on rows that did not pick
  its band) and, for the final model, from all of them.
* McNemar tests of each ensemble against the best single model, gene-selection stability
  (mean pairwise Jaccard of the folds' selected genes), calibration before and after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import logit

from . import NEGATIVE_CLASS, POSITIVE_CLASS
from .calibration import effective_method, fit_calibrator
from .metrics import (
    abstains, brier_score, choose_abstain_band, conformal_abstain_band, expected_calibration_error, mcnemar_exact,
    mean_pairwise_jaccard, withholds_everything,
)
from .stages.train import POOLED_FOLD, TEST_FOLD, best_model, is_cv_fold, metric_rows

ENSEMBLES = ("soft_voting", "stacking")
UNCLASSIFIED = "unclassified"
_EPS = 1e-6


@dataclass
class Evaluation:
    predictions: pd.DataFrame            # CV and test rows of base models and ensembles (final probabilities)
    metrics: pd.DataFrame                # wide, per (model, fold)
    extra_results: pd.DataFrame          # long: model, fold, metric, value, params
    calibrators: dict = field(default_factory=dict)   # base model -> final Calibrator or None
    bands: dict = field(default_factory=dict)         # model -> final band (lo, hi) or None
    selected: pd.DataFrame | None = None              # model, fold, position, gene, score
    ensemble_params: dict = field(default_factory=dict)
    best_single: str | None = None
    notes: list = field(default_factory=list)         # what training must say on the console and in the report


def needs_nested_folds(training_cfg: dict) -> bool:
    return training_cfg.get("calibration", "none") != "none" or "stacking" in training_cfg.get("ensembles", [])


def _y(frame: pd.DataFrame) -> np.ndarray:
    return (frame["truth"] == POSITIVE_CLASS).astype(int).to_numpy()


def calibrate(rows: pd.DataFrame, nested: pd.DataFrame, method: str) -> tuple[pd.DataFrame, dict]:
    """Calibrated `probability_AML` (the raw one kept in `probability_raw`), and each model's final calibrator."""
    rows = rows.assign(probability_raw=rows["probability_AML"])
    calibrators: dict = {}
    if method == "none":
        return rows, {model: None for model in rows["model"].unique()}
    out = rows.copy()
    for model, part in rows.groupby("model", sort=False):
        cv = part[part["fold"].map(is_cv_fold)]
        for fold in cv["fold"].unique():
            inner = nested[(nested["model"] == model) & nested["fold"].str.startswith(f"{fold}/")]
            calibrator = fit_calibrator(method, _y(inner), inner["probability_AML"])
            index = part.index[part["fold"] == fold]
            out.loc[index, "probability_AML"] = calibrator.apply(rows.loc[index, "probability_AML"])
        final = fit_calibrator(method, _y(cv), cv["probability_AML"])
        index = part.index[part["fold"] == TEST_FOLD]
        if len(index):
            out.loc[index, "probability_AML"] = final.apply(rows.loc[index, "probability_AML"])
        calibrators[model] = final
    return out, calibrators


def _wide(rows: pd.DataFrame, column: str, models: list[str]) -> pd.DataFrame:
    wide = rows.pivot_table(index=["fold", "sample", "truth"], columns="model", values=column, aggfunc="first")
    return wide[models].dropna()


def _meta_learner(features: pd.DataFrame):
    from sklearn.linear_model import LogisticRegression

    y = (features.index.get_level_values("truth") == POSITIVE_CLASS).astype(int)
    X = logit(np.clip(features.to_numpy(dtype=np.float64), _EPS, 1 - _EPS))
    return LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(X, y)


def _meta_predict(fit, features: pd.DataFrame) -> np.ndarray:
    X = logit(np.clip(features.to_numpy(dtype=np.float64), _EPS, 1 - _EPS))
    return fit.predict_proba(X)[:, 1]


def ensemble_rows(rows: pd.DataFrame, nested: pd.DataFrame, models: list[str], ensembles: list[str],
                  run_id: str) -> tuple[pd.DataFrame, dict]:
    """Prediction rows of the ensembles on every CV fold and the test set, and their fitted parameters."""
    frames, params = [], {}
    if "soft_voting" in ensembles:
        wide = _wide(rows, "probability_AML", models)
        frames.append(wide.mean(axis=1).rename("probability_AML").reset_index().assign(model="soft_voting"))
        params["soft_voting"] = {"base_models": models}
    if "stacking" in ensembles:
        raw = _wide(rows, "probability_raw", models)
        inner = _wide(nested.assign(probability_raw=nested["probability_AML"]), "probability_raw", models)
        parts = []
        for fold in [f for f in raw.index.get_level_values("fold").unique() if is_cv_fold(f)]:
            train = inner[inner.index.get_level_values("fold").str.startswith(f"{fold}/")]
            target = raw[raw.index.get_level_values("fold") == fold]
            parts.append(pd.Series(_meta_predict(_meta_learner(train), target), index=target.index))
        cv = raw[raw.index.get_level_values("fold").map(is_cv_fold)]
        final = _meta_learner(cv)
        test = raw[raw.index.get_level_values("fold") == TEST_FOLD]
        if len(test):
            parts.append(pd.Series(_meta_predict(final, test), index=test.index))
        frames.append(pd.concat(parts).rename("probability_AML").reset_index().assign(model="stacking"))
        params["stacking"] = {"base_models": models, "meta_learner": "logistic regression on logit(P), C=1",
                              "coefficients": [round(float(c), 6) for c in final.coef_[0]],
                              "intercept": round(float(final.intercept_[0]), 6)}
    if not frames:
        return rows.iloc[0:0], params
    out = pd.concat(frames, ignore_index=True)
    out = out.assign(run=run_id, fit_seconds=0.0, probability_raw=out["probability_AML"])
    return out[rows.columns.intersection(out.columns).tolist()], params


def band_rule(predict_cfg: dict):
    """The `abstain_band: auto` rule of the configuration: (y, P(AML)) -> band or None."""
    if predict_cfg.get("abstain_rule", "conformal") == "conformal":
        alpha = float(predict_cfg.get("max_error_rate", 0.05))
        return lambda y, p: conformal_abstain_band(y, p, alpha)
    target = float(predict_cfg.get("target_accuracy", 0.995))
    return lambda y, p: choose_abstain_band(y, p, target)


def choose_bands(rows: pd.DataFrame, band_setting, target_accuracy) -> tuple[dict, dict]:
    """({model: {fold: band}}, {model: final band}) for `predict.abstain_band` (auto, [lo, hi] or none).

    `target_accuracy` is the auto rule: a number (the target-accuracy rule) or a function of
    (y, P(AML)) returning a band (`band_rule`)."""
    rule = target_accuracy if callable(target_accuracy) else (
        lambda y, p: choose_abstain_band(y, p, float(target_accuracy)))
    per_fold, final = {}, {}
    for model, part in rows.groupby("model", sort=False):
        folds = part["fold"].unique()
        cv = part[part["fold"].map(is_cv_fold)]
        if band_setting == "none":
            chosen = {fold: None for fold in folds}
            final[model] = None
        elif band_setting == "auto":
            chosen = {}
            for fold in folds:
                basis = cv if fold == TEST_FOLD else cv[cv["fold"] != fold]
                chosen[fold] = rule(_y(basis), basis["probability_AML"])
            final[model] = rule(_y(cv), cv["probability_AML"])
        else:
            band = (float(band_setting[0]), float(band_setting[1]))
            chosen = {fold: band for fold in folds}
            final[model] = band
        per_fold[model] = chosen
    return per_fold, final


def called(probabilities, band) -> np.ndarray:
    """ALL / AML / unclassified for each probability."""
    p = np.asarray(probabilities, dtype=np.float64)
    calls = np.where(p >= 0.5, POSITIVE_CLASS, NEGATIVE_CLASS).astype(object)
    calls[abstains(p, band)] = UNCLASSIFIED
    return calls


def _long(model, fold, values: dict, params: str | None = None) -> list[tuple]:
    return [(model, fold, name, float(value), params) for name, value in values.items()]


def evaluate(raw_rows: pd.DataFrame, task_info: pd.DataFrame, training_cfg: dict, predict_cfg: dict,
             gene_order: list[str], run_id: str) -> Evaluation:
    rows = raw_rows[raw_rows["fold"].map(is_cv_fold) | (raw_rows["fold"] == TEST_FOLD)]
    nested = raw_rows[raw_rows["fold"].str.contains("/")]
    models = list(dict.fromkeys(rows["model"]))
    requested = training_cfg.get("calibration", "none")
    n_out_of_fold = int(rows[(rows["model"] == models[0]) & rows["fold"].map(is_cv_fold)].shape[0]) if models else 0
    method = effective_method(requested, n_out_of_fold, training_cfg.get("isotonic_min_samples", 100))
    notes = []
    if method != requested:
        notes.append(f"calibration: isotonic on {n_out_of_fold} out-of-fold rows (fewer than "
                     f"training.isotonic_min_samples = {training_cfg.get('isotonic_min_samples', 100)}) "
                     "would give steps of 0 and 1; Platt scaling used instead")
    rows, calibrators = calibrate(rows, nested, method)
    ensembles = [e for e in training_cfg.get("ensembles", []) if e in ENSEMBLES]
    ensemble, ensemble_params = ensemble_rows(rows, nested, models, ensembles, run_id)
    everything = pd.concat([rows, ensemble], ignore_index=True)

    band_setting = predict_cfg.get("abstain_band", "none")
    per_fold, final_bands = choose_bands(everything, band_setting, band_rule(predict_cfg))
    predicted = everything["predicted"].copy()
    for (model, fold), part in everything.groupby(["model", "fold"], sort=False):
        predicted.loc[part.index] = called(part["probability_AML"], per_fold[model][fold])
    everything = everything.assign(predicted=predicted)
    metrics = metric_rows(everything, per_fold if band_setting != "none" else None)

    bands = (per_fold, final_bands) if band_setting != "none" else None
    extra = _pooled_rows(everything, calibrators if method != "none" else {}, bands)
    extra += _abstention_rows(everything, final_bands if band_setting != "none" else {}, predict_cfg,
                              method != requested, models, notes)
    base_metrics = metrics[metrics["model"].isin(models)]
    best_single = best_model(base_metrics, training_cfg)
    extra += _mcnemar_rows(everything, list(ensemble_params), best_single)
    selected, selection_rows = _selected_genes(task_info, gene_order)
    extra_frame = pd.DataFrame(extra + selection_rows, columns=["model", "fold", "metric", "value", "params"])
    return Evaluation(everything, metrics, extra_frame, calibrators, final_bands, selected, ensemble_params,
                      best_single, notes)


def _pooled_rows(everything: pd.DataFrame, calibrators: dict, bands: tuple[dict, dict] | None) -> list[tuple]:
    """Per model, over all out-of-fold rows at once: Brier and ECE (before calibration too, for the
    calibrated models: pooled and on the test set) and, with abstention, coverage and accuracy of
    each fold's calls under its own band, and the final band."""
    extra: list[tuple] = []
    for model, part in everything.groupby("model", sort=False):
        cv = part[part["fold"].map(is_cv_fold)]
        pooled = {"brier": brier_score(_y(cv), cv["probability_AML"]),
                  "ece": expected_calibration_error(_y(cv), cv["probability_AML"], 10)}
        if model in calibrators:
            pooled["brier_uncalibrated"] = brier_score(_y(cv), cv["probability_raw"])
            pooled["ece_uncalibrated"] = expected_calibration_error(_y(cv), cv["probability_raw"], 10)
            test = part[part["fold"] == TEST_FOLD]
            if len(test):
                extra += _long(model, TEST_FOLD, {
                    "brier_uncalibrated": brier_score(_y(test), test["probability_raw"]),
                    "ece_uncalibrated": expected_calibration_error(_y(test), test["probability_raw"], 10)})
        if bands is not None:
            per_fold, final_bands = bands
            by_fold = list(cv.groupby("fold", sort=False))
            fold_called = np.concatenate([~abstains(p["probability_AML"], per_fold[model][f]) for f, p in by_fold])
            y_cv = np.concatenate([_y(p) for _, p in by_fold])
            p_cv = np.concatenate([p["probability_AML"].to_numpy() for _, p in by_fold])
            correct = (p_cv >= 0.5) == y_cv
            pooled["coverage"] = fold_called.mean()
            pooled["accuracy_on_calls"] = correct[fold_called].mean() if fold_called.any() else np.nan
            band = final_bands[model]
            pooled["abstain_band_lo"] = band[0] if band else 0.5
            pooled["abstain_band_hi"] = band[1] if band else 0.5
        extra += _long(model, POOLED_FOLD, pooled)
    return extra


def _abstention_rows(everything: pd.DataFrame, final_bands: dict, predict_cfg: dict, fell_back: bool,
                     models: list[str], notes: list) -> list[tuple]:
    """Per model @ cv_pooled: whether calibration fell back to Platt, the auto band's guarantee, and
    whether the saved band withholds every out-of-fold sample (also added to `notes`)."""
    extra: list[tuple] = []
    for model in models:
        values = {"calibration_fallback": float(fell_back)}
        if model in final_bands:
            cv = everything[(everything["model"] == model) & everything["fold"].map(is_cv_fold)]
            band = final_bands[model]
            withheld = withholds_everything(cv["probability_AML"], band)
            values["band_withholds_all"] = float(withheld)
            if predict_cfg.get("abstain_band") == "auto" and predict_cfg.get("abstain_rule", "conformal") == "conformal":
                values["abstain_max_error_rate"] = float(predict_cfg.get("max_error_rate", 0.05))
            if withheld:
                notes.append(f"{model}: the abstention band [{band[0]:.3f}, {band[1]:.3f}] withholds every one of "
                             f"its {len(cv)} out-of-fold samples: this model will call nothing (too few samples "
                             "for the rule, or no reliable probabilities); use a fixed band, another rule or more data")
        extra += _long(model, POOLED_FOLD, values)
    return extra


def _mcnemar_rows(everything: pd.DataFrame, ensembles: list[str], best_single: str) -> list[tuple]:
    """Exact McNemar tests of each ensemble against the best single model, on the test set and
    pooled over the CV folds."""
    extra: list[tuple] = []
    for name in ensembles:
        for fold, where in ((TEST_FOLD, everything["fold"] == TEST_FOLD),
                            (POOLED_FOLD, everything["fold"].map(is_cv_fold))):
            pair = everything[where & everything["model"].isin([name, best_single])]
            wide = pair.pivot_table(index=["fold", "sample", "truth"], columns="model", values="probability_AML",
                                    aggfunc="first").dropna()
            if wide.empty:
                continue
            y = (wide.index.get_level_values("truth") == POSITIVE_CLASS).astype(int)
            result = mcnemar_exact(y, (wide[name] >= 0.5).astype(int), (wide[best_single] >= 0.5).astype(int))
            extra += _long(name, fold, result, json.dumps({"versus": best_single}))
    return extra


def _selected_genes(task_info: pd.DataFrame, gene_order: list[str]) -> tuple[pd.DataFrame | None, list[tuple]]:
    """The genes each CV and final fit selected (model, fold, position, gene, score), and the
    stability of the CV folds' sets (mean pairwise Jaccard)."""
    with_selection = task_info[task_info["info"].map(lambda i: "selected" in i)]
    if with_selection.empty:
        return None, []
    records = []
    for row in with_selection.itertuples(index=False):
        if not (is_cv_fold(row.fold) or row.fold == TEST_FOLD):
            continue
        for position, score in zip(row.info["selected"], row.info.get("selection_scores", [])):
            records.append((row.model, row.fold, int(position), gene_order[int(position)], float(score)))
    selected = pd.DataFrame(records, columns=["model", "fold", "position", "gene", "score"])
    extra: list[tuple] = []
    for model, part in selected[selected["fold"].map(is_cv_fold)].groupby("model", sort=False):
        sets = [set(p["position"]) for _, p in part.groupby("fold")]
        extra += _long(model, POOLED_FOLD, {"selection_jaccard": mean_pairwise_jaccard(sets),
                                            "selection_k": float(np.mean([len(s) for s in sets]))})
    return selected, extra


def group_rows(predictions: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """Per model and group: accuracy and n of the out-of-fold calls on that group, fold 'group:<name>'.

    Under `split.group_by` every out-of-fold call on a group comes from a fit that never saw the group,
    so these are across-group scores; the test set (drawn from the same groups) is the in-group one."""
    oof = predictions[predictions["fold"].map(is_cv_fold)]
    oof = oof.assign(group=oof["sample"].map(groups)).dropna(subset=["group"])
    rows = []
    for (model, group), part in oof.groupby(["model", "group"]):
        right = float((part["predicted"] == part["truth"]).mean())
        rows += [(model, f"group:{group}", "accuracy", right, None), (model, f"group:{group}", "n", float(len(part)), None)]
    return pd.DataFrame(rows, columns=["model", "fold", "metric", "value", "params"])
