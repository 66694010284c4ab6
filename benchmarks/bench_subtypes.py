"""Beyond ALL vs AML: lineage and subtype calls, per model, against a plain scikit-learn baseline.

Every leukspark model is fitted multi-class through its one-vs-rest path
(`leukspark.models.fit_and_predict_multiclass`: the same preprocessing as the pipeline, standard
scaler fitted on training rows only); the baseline is a plain scikit-learn multinomial
LogisticRegression (default C = 1) after a StandardScaler, on the same matrices, computed here.

* Golub: train (38) -> independent (34), three classes AML / B-ALL / T-ALL from golub_pheno.csv
  (`ALL.AML`, `T.B.cell`); values log2 of max(x, 20) (MAS-style linear input), probes as genes.
  The best model is the one with the highest 5-fold CV accuracy on the training set.
* Chiaretti (128 ALL, RMA log2), 5-fold stratified CV (seed 42): B vs T (`BT`), and the molecular
  classes of `mol.biol` (NEG, BCR/ABL, ALL1/AF4, E2A/PBX1; p15/p16 and NUP-98 have one sample
  each, fewer than the folds, and are left out: the stated rule of `merge_rare_classes` would
  merge them into their lineage, which is not a molecular class).
* Synthetic: a GSE13159-shaped `hard`-preset series at reduced size (600 samples x 5,000 probes,
  seed 7): the MILE class of every sample (18 classes, CLL/CML/MDS/non-leukemia included), classes
  with fewer than 5 samples merged into their lineage; 5-fold CV. Logistic regression and linear
  SVM only (18 one-vs-rest fits per fold; the tree models and the DNN would take past the
  8-minute budget on this shared 2-core machine). The full-size run (2,096 x 54,675) is not done.

Thresholds of the fallback calls are cross-fitted: the thresholds applied to fold k are chosen on
the out-of-fold probabilities of the other folds, so the coverage shown is not optimistic.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_subtypes.py --part golub|chiaretti|synthetic [--models ...]

Each part is run on its own (each within a few minutes on an idle 2-core machine) and writes
results/subtypes_<part>.md; results/subtypes.md sums them up against the goals.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from measure import WORK, header, write_results  # noqa: E402

REAL = ROOT / "tests" / "data" / "real"
FOLDS, SEED = 5, 42
LIGHT = {"random_forest": {"n_estimators": 300}, "xgboost": {"n_estimators": 200}}
ALL_MODELS = ("logistic_regression", "linear_svm", "random_forest", "xgboost", "dnn")


def read_gct(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", skiprows=2, index_col=0, dtype={"Name": str}).drop(columns="Description")


def ours(model: str):
    from leukspark.models import fit_and_predict_multiclass

    def fit(X_train, y_train, X_eval):
        return fit_and_predict_multiclass(model, LIGHT.get(model, {}), X_train, y_train, X_eval, seed=SEED).probabilities
    return fit


def baseline(X_train, y_train, X_eval):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Mean imputation as leukspark's Preprocessor does (the synthetic series has a few missing values).
    fitted = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=5000)).fit(X_train, y_train)
    return fitted.predict_proba(X_eval)


BASELINE = "sklearn multinomial LogisticRegression"


def out_of_fold(fit, X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold probabilities, fold of each row) of a stratified k-fold CV."""
    from sklearn.model_selection import StratifiedKFold

    probabilities, fold_of = np.zeros((len(y), n_classes)), np.zeros(len(y), dtype=int)
    for k, (train, held_out) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(X, y)):
        probabilities[held_out] = fit(X[train], y[train], X[held_out])
        fold_of[held_out] = k
    return probabilities, fold_of


def cross_fitted_calls(probabilities, fold_of, truth, classes, lineage_of) -> pd.DataFrame:
    """Fallback calls of each fold with thresholds chosen on the other folds' OOF probabilities."""
    from leukspark.subtypes import choose_thresholds, hierarchical_calls

    lineages = sorted(set(lineage_of.values()))
    by_lineage = np.column_stack([probabilities[:, [i for i, c in enumerate(classes) if lineage_of[c] == name]].sum(1)
                                  for name in lineages])
    truth_lineage = np.array([lineage_of[t] for t in truth], dtype=object)
    parts = []
    for k in np.unique(fold_of):
        other = fold_of != k
        thresholds = choose_thresholds(truth[other], probabilities[other], classes)
        lineage_thresholds = choose_thresholds(truth_lineage[other], by_lineage[other], lineages)
        calls = hierarchical_calls(probabilities[~other], classes, lineage_of, thresholds, lineage_thresholds)
        parts.append(calls.set_index(np.flatnonzero(~other)))
    return pd.concat(parts).sort_index()


def per_class_lines(truth, calls, classes) -> list[str]:
    from leukspark.metrics import multiclass_metrics

    _, per_class, _ = multiclass_metrics(truth, calls, classes)
    lines = ["| class | n | sensitivity | specificity | precision |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['class']} | {r['support']} | {r['sensitivity']:.3f} | {r['specificity']:.3f} | "
              f"{r['precision']:.3f} |" for r in per_class.to_dict("records")]
    return lines


def summary_row(name: str, truth, probabilities, classes, seconds: float, extra: str = "") -> str:
    from leukspark.metrics import multiclass_metrics

    calls = np.array(classes, dtype=object)[probabilities.argmax(axis=1)]
    overall, _, _ = multiclass_metrics(truth, calls, classes)
    errors = int((calls != truth).sum())
    return (f"| {name} | {overall['accuracy']:.4f} | {errors} / {len(truth)} | {overall['balanced_accuracy']:.4f} | "
            f"{overall['macro_f1']:.4f} |{extra} {seconds:.0f} |")


def golub(models) -> list[str]:
    pheno = pd.read_csv(REAL / "golub_pheno.csv", dtype=str)
    pheno["class"] = np.where(pheno["ALL.AML"] == "AML", "AML",
                              np.where(pheno["T.B.cell"] == "T-cell", "T-ALL", "B-ALL"))
    classes = ["AML", "B-ALL", "T-ALL"]
    truth_of = dict(zip(pheno["sample"], pheno["class"]))
    train, test = read_gct(REAL / "golub_train.gct.gz"), read_gct(REAL / "golub_independent.gct.gz")
    y_train = np.array([classes.index(truth_of[s]) for s in train.columns])
    truth = np.array([truth_of[s] for s in test.columns], dtype=object)
    lines = ["\n## Golub train (38) -> Golub independent (34): AML / B-ALL / T-ALL\n",
             "Training set: 11 AML, 19 B-ALL, 8 T-ALL; independent: 14 AML, 19 B-ALL, 1 T-ALL."]
    raw_train, raw_test = train.T.to_numpy(dtype=np.float64), test.loc[train.index].T.to_numpy(dtype=np.float64)
    lines += _golub_setting("log2 of max(x, 20), all 7,129 probes (the pipeline's linear-scale transform)",
                            np.log2(np.maximum(raw_train, 20.0)), np.log2(np.maximum(raw_test, 20.0)),
                            y_train, truth, classes, models)
    # Dudoit, Fridlyand & Speed (2002)'s published preprocessing of these data: floor 100, ceiling
    # 16,000, keep probes with max/min > 5 and max - min > 500 (on the training set), log.
    floor_train, floor_test = np.clip(raw_train, 100, 16000), np.clip(raw_test, 100, 16000)
    keep = (floor_train.max(0) / floor_train.min(0) > 5) & (floor_train.max(0) - floor_train.min(0) > 500)
    lines += _golub_setting(f"Dudoit et al. 2002 filter (floor 100, ceiling 16,000, {int(keep.sum()):,} probes "
                            "varying on the training set), log2", np.log2(floor_train[:, keep]),
                            np.log2(floor_test[:, keep]), y_train, truth, classes, models)
    return lines


def _golub_setting(title, X_train, X_test, y_train, truth, classes, models) -> list[str]:
    lines = [f"\n### {title}\n",
             "| model | accuracy | errors | balanced accuracy | macro-F1 | CV accuracy (train) | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    best, best_cv, results = None, -1.0, {}
    for name, fit in [(m, ours(m)) for m in models] + [(BASELINE, baseline)]:
        started = time.perf_counter()
        cv_probabilities, _ = out_of_fold(fit, X_train, y_train, 3)
        cv_accuracy = float((cv_probabilities.argmax(1) == y_train).mean())
        probabilities = fit(X_train, y_train, X_test)
        seconds = time.perf_counter() - started
        results[name] = probabilities
        lines.append(summary_row(name, truth, probabilities, classes, seconds, f" {cv_accuracy:.4f} |"))
        if name != BASELINE and cv_accuracy > best_cv:
            best, best_cv = name, cv_accuracy
        print(lines[-1], flush=True)
    calls = np.array(classes, dtype=object)[results[best].argmax(1)]
    lines += [f"\nBest model by CV accuracy on the training set: **{best}**, "
              f"{int((calls != truth).sum())} errors of {len(truth)} on the independent set. Per class:\n"]
    lines += per_class_lines(truth, calls, classes)
    return lines


def chiaretti(models) -> list[str]:
    pheno = pd.read_csv(REAL / "chiaretti_all_pheno.csv.gz", dtype=str).set_index("sample")
    matrix = read_gct(REAL / "chiaretti_all.gct.gz")
    X_all = matrix.T.to_numpy(dtype=np.float64)
    pheno = pheno.loc[matrix.columns]
    lines = []
    tasks = {
        "B vs T (`BT`)": (pheno["BT"].str[0].map({"B": "B-ALL", "T": "T-ALL"}), {"B-ALL": "B-ALL", "T-ALL": "T-ALL"}),
        "molecular class (`mol.biol`)": (pheno["mol.biol"].where(pheno["mol.biol"].isin(
            ["NEG", "BCR/ABL", "ALL1/AF4", "E2A/PBX1"])), None),
    }
    for title, (target, lineage_of) in tasks.items():
        keep = target.notna().to_numpy()
        classes = sorted(target[keep].unique())
        truth = target[keep].to_numpy(dtype=object)
        X, y = X_all[keep], np.array([classes.index(t) for t in truth])
        counts = ", ".join(f"{c} {int((truth == c).sum())}" for c in classes)
        lines += [f"\n## Chiaretti ALL, {title}: 5-fold CV\n", f"{len(truth)} samples: {counts}.\n",
                  "| model | accuracy | errors | balanced accuracy | macro-F1 | " +
                  " | ".join(f"sens. {c}" for c in classes) + " | seconds |",
                  "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in classes) + " | ---: |"]
        for name, fit in [(m, ours(m)) for m in models] + [(BASELINE, baseline)]:
            started = time.perf_counter()
            probabilities, _ = out_of_fold(fit, X, y, len(classes))
            calls = np.array(classes, dtype=object)[probabilities.argmax(1)]
            sensitivity = " | ".join(f"{float((calls[truth == c] == c).mean()):.3f}" for c in classes)
            lines.append(summary_row(name, truth, probabilities, classes, time.perf_counter() - started,
                                     f" {sensitivity} |"))
            print(lines[-1], flush=True)
        if lineage_of is None:   # BCR/ABL vs NEG alone, the known hard pair
            pair = np.isin(truth, ["BCR/ABL", "NEG"])
            lines += ["\nBCR/ABL vs NEG alone (two classes, 5-fold CV):\n",
                      "| model | accuracy | errors | balanced accuracy | macro-F1 | seconds |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            pair_classes = ["BCR/ABL", "NEG"]
            y_pair = np.array([pair_classes.index(t) for t in truth[pair]])
            for name, fit in [(m, ours(m)) for m in models] + [(BASELINE, baseline)]:
                started = time.perf_counter()
                probabilities, _ = out_of_fold(fit, X[pair], y_pair, 2)
                lines.append(summary_row(name, truth[pair], probabilities, pair_classes,
                                         time.perf_counter() - started))
                print(lines[-1], flush=True)
    return lines


def synthetic(models, n_samples: int, n_probes: int) -> list[str]:
    from leukspark.reference import load_mile_samples
    from leukspark.subtypes import UNCLASSIFIED, merge_rare_classes
    from leukspark.synth import preset_options, write_synthetic_series

    out = WORK / f"subtypes_hard_{n_samples}_{n_probes}"
    series = write_synthetic_series(out, n_samples=n_samples, n_probes=n_probes, seed=7, **preset_options("hard"))
    matrix = _matrix_of(series.series_matrix)
    mile = load_mile_samples().set_index("gsm")
    rules = __import__("leukspark.config", fromlist=["load_config"]).load_config()["labels"]["lineage_rules"]
    import re
    lineage_of_mile = {c: next(r["lineage"] for r in rules if re.search(r["pattern"], c))
                       for c in mile["mile_class"].unique()}
    mile_class = mile.loc[matrix.columns, "mile_class"]
    target, merged = merge_rare_classes(mile_class.reset_index(drop=True),
                                        mile_class.map(lineage_of_mile).reset_index(drop=True), FOLDS)
    lineage_of = {**lineage_of_mile, **{c: c for c in set(merged.values())}}
    classes = sorted(target.unique())
    truth = target.to_numpy(dtype=object)
    X, y = matrix.T.to_numpy(dtype=np.float64), np.array([classes.index(t) for t in truth])
    lines = [f"\n## Synthetic `hard` preset, {n_samples} samples x {n_probes:,} probes (seed 7): "
             f"{len(classes)} classes, 5-fold CV\n",
             "Merged into their lineage (fewer samples than folds): "
             + (", ".join(f"{c} -> {p}" for c, p in merged.items()) or "none") + ".\n",
             "| model | accuracy | errors | balanced accuracy | macro-F1 | subtype called (fallback) | "
             "accuracy of called subtypes | lineage accuracy | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    best, best_accuracy, oof = None, -1.0, {}
    for name, fit in [(m, ours(m)) for m in models] + [(BASELINE, baseline)]:
        started = time.perf_counter()
        probabilities, fold_of = out_of_fold(fit, X, y, len(classes))
        seconds = time.perf_counter() - started
        calls = cross_fitted_calls(probabilities, fold_of, truth, classes, lineage_of)
        called = (calls["subtype"] != UNCLASSIFIED).to_numpy()
        lineage_truth = np.array([lineage_of[t] for t in truth], dtype=object)
        extra = (f" {called.mean():.3f} | {float((calls['subtype'].to_numpy()[called] == truth[called]).mean()):.4f} | "
                 f"{float((calls['lineage'].to_numpy() == lineage_truth).mean()):.4f} |")
        lines.append(summary_row(name, truth, probabilities, classes, seconds, extra))
        print(lines[-1], flush=True)
        accuracy = float((probabilities.argmax(1) == y).mean())
        oof[name] = probabilities
        if name != BASELINE and accuracy > best_accuracy:
            best, best_accuracy = name, accuracy
    calls = np.array(classes, dtype=object)[oof[best].argmax(1)]
    lines += [f"\nPer class, {best} (top class, out of fold):\n"] + per_class_lines(truth, calls, classes)
    return lines


def _matrix_of(series_matrix: Path) -> pd.DataFrame:
    import gzip

    lines = gzip.open(series_matrix, "rt").read().splitlines()
    body = lines[lines.index("!series_matrix_table_begin") + 1:lines.index("!series_matrix_table_end")]
    table = pd.DataFrame([[c.strip('"') for c in line.split("\t")] for line in body])
    table.columns = table.iloc[0]
    return table.iloc[1:].set_index(table.columns[0]).replace({"null": np.nan}).astype(float)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", nargs="+", default=["golub", "chiaretti", "synthetic"])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--probes", type=int, default=5000)
    parser.add_argument("--models", nargs="+", default=list(ALL_MODELS))
    parser.add_argument("--synthetic-models", nargs="+", default=["logistic_regression", "linear_svm"])
    parser.add_argument("--out", help="results file (default: subtypes_<parts>.md)")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    from threadpoolctl import threadpool_limits

    command = "PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_subtypes.py " + " ".join(sys.argv[1:])
    lines = [header("Lineage and subtype calls (multi-class)", command.strip()),
             "Models: leukspark's one-vs-rest multi-class path (random forest 300 trees, XGBoost 200 rounds "
             "here, other parameters the defaults); baseline: " + BASELINE + " (StandardScaler, C = 1). "
             "All fits single-threaded (threadpoolctl), in this one process."]
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        if "golub" in args.part:
            lines += golub(args.models)
        if "chiaretti" in args.part:
            lines += chiaretti(args.models)
        if "synthetic" in args.part:
            lines += synthetic(args.synthetic_models, args.samples, args.probes)
    lines.append(f"\nTotal wall time: {time.perf_counter() - started:.0f} s.")
    write_results(args.out or f"subtypes_{'_'.join(args.part)}.md", lines)


if __name__ == "__main__":
    main()
