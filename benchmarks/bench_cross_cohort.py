"""Cross-cohort table: train on cohort A, score cohort B, per model and per setting.

Real cohorts (tests/data/real, provenance there):

* Golub 1999 train (38) -> Golub independent (34): Hu6800, MAS-style linear values, the
  original protocol. No Hu6800 annotation is reachable here, so probes stand for genes.
* GSEA Leukemia (48, HG-U95Av2, linear) -> Chiaretti 2004 (128 ALL, HG-U95Av2, RMA log2,
  another lab): a cross-lab, cross-scale direction; the score is the share of ALL called ALL.

Synthetic (leukspark synth --preset hard: 11 labs, batch strength 1.5, lab confounding 0.5,
3 % ambiguous samples, signal 0.25; 420 samples x 5,000 probes, seed 7):

* labs L1-L6 -> labs L7-L11 (a split file by lab);
* the same model scoring labs L7-L11 written on the linear (MAS5-style) scale;
* the same model scoring labs L7-L11 through the GPL96 probes only (another platform).

Settings compared: `transform none / normalize none` (the pipeline before scale handling),
`transform auto / normalize none`, `transform auto / normalize quantile`. A plain scikit-learn
pipeline (log2 floored at 20, StandardScaler, LinearSVC C=0.01 / LogisticRegression C=0.1) on
the same matrices is the baseline, computed in this script from the files.

    .venv/bin/python benchmarks/bench_cross_cohort.py
"""

from __future__ import annotations

import json
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
GPL96 = ROOT / "tests" / "data" / "geo" / "GPL96.txt.gz"
SETTINGS = {"none/none": ("none", "none"), "auto/none": ("auto", "none"), "auto/quantile": ("auto", "quantile")}
OUT = WORK / "cross_cohort"


def read_gct(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", skiprows=2, index_col=0, dtype={"Name": str}).drop(columns="Description")


def train(spark, name: str, setting: str, inputs: list[Path], **run_args):
    from leukspark.config import load_config
    from leukspark.lake import Lake
    from leukspark.pipeline import Pipeline

    transform, normalize = SETTINGS[setting]
    config = load_config(overrides={"features.transform": transform, "features.normalize": normalize})
    lake = Lake.from_config(spark, OUT / f"lake-{name}-{setting.replace('/', '-')}", config)
    started = time.perf_counter()
    outcome = Pipeline(spark, lake, config, echo=lambda _: None).run([str(p) for p in inputs], **run_args)
    print(f"{name} {setting}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    return lake, outcome["train"]


def score(lake, run, path: Path, truth: dict[str, str], annotation: Path) -> dict[str, dict]:
    """Per model: accuracy, errors, n, refused, warned on the samples of `path` that are in `truth`."""
    from leukspark.predict import predict_file
    from leukspark.models import REGISTRY

    rows = {}
    for model in sorted(REGISTRY):
        scored = [s for s in predict_file(path, lake.root, run_id=run.run_id, model=model, annotation=annotation)
                  if s.sample in truth]
        called = [s for s in scored if s.prediction]
        errors = sum(s.prediction != truth[s.sample] for s in called)
        rows[model] = {"n": len(scored), "scored": len(called), "errors": errors,
                       "accuracy": (len(called) - errors) / len(scored) if scored else float("nan"),
                       "warned": sum(bool(s.warning) for s in called)}
    return rows


def sklearn_baseline(train_x: pd.DataFrame, train_y: pd.Series, test_x: pd.DataFrame,
                     test_y: pd.Series) -> dict[str, dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    shared = train_x.index.intersection(test_x.index)
    prepare = lambda x: np.log2(np.maximum(x.loc[shared].T.fillna(x.loc[shared].T.mean()), 20.0))  # noqa: E731
    rows = {}
    for name, model in (("sklearn LinearSVC", LinearSVC(C=0.01, max_iter=20000)),
                        ("sklearn LogisticRegression", LogisticRegression(C=0.1, max_iter=5000))):
        fitted = make_pipeline(StandardScaler(), model).fit(prepare(train_x), train_y)
        predicted = fitted.predict(prepare(test_x))
        errors = int((predicted != test_y.to_numpy()).sum())
        rows[name] = {"n": len(test_y), "scored": len(test_y), "errors": errors,
                      "accuracy": 1 - errors / len(test_y), "warned": 0}
    return rows


def golub(spark) -> list[tuple]:
    labels = pd.concat([pd.read_csv(REAL / f"golub_{p}_labels.csv", dtype=str) for p in ("train", "independent")])
    independent = pd.read_csv(REAL / "golub_independent_labels.csv", dtype=str)
    labels[["sample", "label"]].to_csv(OUT / "golub_labels.csv", index=False)
    split = labels.assign(set=np.where(labels["sample"].isin(independent["sample"]), "test", "train"))
    split[["sample", "set"]].to_csv(OUT / "golub_split.csv", index=False)
    train_x, test_x = read_gct(REAL / "golub_train.gct.gz"), read_gct(REAL / "golub_independent.gct.gz")
    annotation = OUT / "Hu6800_probe_ids.csv"
    pd.DataFrame({"probe_id": train_x.index, "gene": train_x.index}).to_csv(annotation, index=False)
    truth = dict(zip(independent["sample"], independent["label"]))
    rows = []
    for setting in SETTINGS:
        lake, run = train(spark, "golub", setting, [REAL / "golub_train.gct.gz", REAL / "golub_independent.gct.gz"],
                          label_file=str(OUT / "golub_labels.csv"), split_file=str(OUT / "golub_split.csv"),
                          annotation=str(annotation))
        rows.append(("Golub train -> Golub independent (Hu6800, linear)", setting,
                     score(lake, run, REAL / "golub_independent.gct.gz", truth, annotation), run.best_model))
    y = labels.set_index("sample")["label"]
    rows.append(("Golub train -> Golub independent (Hu6800, linear)", "scikit-learn baseline",
                 sklearn_baseline(train_x, y[train_x.columns], test_x, y[test_x.columns]), "-"))
    return rows


def gsea_to_chiaretti(spark) -> list[tuple]:
    annotation = REAL / "GPL8300_hgu95av2_annotation.csv.gz"
    truth = dict(pd.read_csv(REAL / "chiaretti_all_labels.csv", dtype=str)[["sample", "label"]].values)
    rows = []
    for setting in SETTINGS:
        lake, run = train(spark, "gsea", setting, [REAL / "gsea_leukemia_hgu95av2.gct.gz"],
                          label_file=str(REAL / "gsea_leukemia_hgu95av2.cls"), annotation=str(annotation),
                          test_fraction=0.0)
        rows.append(("GSEA Leukemia (HG-U95Av2, linear) -> Chiaretti ALL (HG-U95Av2, RMA log2)", setting,
                     score(lake, run, REAL / "chiaretti_all.gct.gz", truth, annotation), run.best_model))
    gsea_x = read_gct(REAL / "gsea_leukemia_hgu95av2.gct.gz")
    gsea_y = pd.Series([c.split("_")[0] for c in gsea_x.columns], index=gsea_x.columns)
    chiaretti = read_gct(REAL / "chiaretti_all.gct.gz")
    rows.append(("GSEA Leukemia (HG-U95Av2, linear) -> Chiaretti ALL (HG-U95Av2, RMA log2)",
                 "scikit-learn baseline (log2 of both)",
                 sklearn_baseline(gsea_x, gsea_y, chiaretti, pd.Series(truth)[chiaretti.columns]), "-"))
    return rows


def synthetic(spark) -> list[tuple]:
    from leukspark.geo.annotation import read_platform_annotation
    from leukspark.synth import preset_options, write_synthetic_series

    options = preset_options("hard")
    log_series = write_synthetic_series(OUT / "hard_log2", n_samples=420, n_probes=5000, seed=7, **options)
    linear_series = write_synthetic_series(OUT / "hard_linear", n_samples=420, n_probes=5000, seed=7,
                                           **{**options, "scale": "linear"})
    labs = dict(zip(log_series.sample_ids, log_series.sample_labs))
    test_labs = {f"L{k}" for k in range(7, 12)}
    pd.DataFrame({"sample": list(labs), "set": ["test" if labs[s] in test_labs else "train" for s in labs]}).to_csv(
        OUT / "lab_split.csv", index=False)
    gpl96 = set(read_platform_annotation(GPL96).column("probe_id").to_pylist())
    rows = []
    for setting in ("none/none", "auto/quantile"):
        lake, run = train(spark, "hard", setting, [log_series.family_soft], split_file=str(OUT / "lab_split.csv"))
        truth = {r["sample"]: r["label"] for r in lake.read("labels").collect() if labs[r["sample"]] in test_labs}
        name = "synthetic hard, labs L1-L6 -> L7-L11"
        rows.append((f"{name} (GPL570, log2)", setting,
                     score(lake, run, log_series.series_matrix, truth, log_series.annotation_csv), run.best_model))
        rows.append((f"{name} written linear (MAS5-style)", setting,
                     score(lake, run, linear_series.series_matrix, truth, log_series.annotation_csv), run.best_model))
        subset = _matrix_of(log_series.series_matrix)
        subset = subset[subset.index.isin(gpl96)]
        subset_file = OUT / "hard_gpl96_subset.csv"
        subset.to_csv(subset_file, index_label="ID_REF")
        rows.append((f"{name} through GPL96 probes only ({len(subset)} of 5,000)", setting,
                     score(lake, run, subset_file, truth, GPL96), run.best_model))
    return rows


def _matrix_of(series_matrix: Path) -> pd.DataFrame:
    import gzip

    lines = gzip.open(series_matrix, "rt").read().splitlines()
    body = lines[lines.index("!series_matrix_table_begin") + 1:lines.index("!series_matrix_table_end")]
    table = pd.DataFrame([[c.strip('"') for c in line.split("\t")] for line in body])
    table.columns = table.iloc[0]
    return table.iloc[1:].set_index(table.columns[0]).replace({"null": np.nan}).astype(float)


def table_lines(rows: list[tuple]) -> list[str]:
    lines = []
    for direction in dict.fromkeys(r[0] for r in rows):
        lines += [f"\n### {direction}\n", "| setting | model | accuracy | errors | scored / n | warned |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for _, setting, per_model, best in (r for r in rows if r[0] == direction):
            for model, m in per_model.items():
                star = " (best by CV)" if model == best else ""
                lines.append(f"| {setting} | {model}{star} | {m['accuracy']:.4f} | {m['errors']} | "
                             f"{m['scored']} / {m['n']} | {m['warned']} |")
    return lines


def main() -> None:
    from leukspark.config import load_config
    from leukspark.spark import build_session

    import shutil

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    spark = build_session(load_config())
    rows = golub(spark) + gsea_to_chiaretti(spark) + synthetic(spark)
    (OUT / "rows.json").write_text(json.dumps(rows, indent=1))
    lines = [header("Cross-cohort benchmark: train on cohort A, score cohort B",
                    ".venv/bin/python benchmarks/bench_cross_cohort.py"),
             "Accuracy counts a refused sample (error) as wrong; `warned` = scored samples flagged by the "
             "input check. Settings: `features.transform / features.normalize`; `none/none` is the pipeline "
             "before scale handling. Models with default parameters (conf/default.yaml); the best model "
             "is chosen by cross-validation on cohort A only."]
    write_results("cross_cohort.md", lines + table_lines(rows))


if __name__ == "__main__":
    main()
