"""Cross-cohort table: train on cohort A, score cohort B, per model, per setting, split by lineage.

This is the measurement the defaults are chosen from (`features.normalize`, `features.log_floor`,
`training.models`, `training.prefer` / `best_within`): in-cohort CV cannot see portability.

Real cohorts (tests/data/real, provenance there):

* Golub 1999 train (38) -> Golub independent (34): Hu6800, MAS-style linear values, the
  original protocol. No Hu6800 annotation is reachable here, so probes stand for genes.
* Golub leave-one-centre-out: all 72 samples, `split.group_by: Source` (DFCI, CALGB, St-Jude,
  CCG) read from a label-file column; centre and class are nearly confounded there.
* GSEA Leukemia (48, HG-U95Av2, linear) -> Chiaretti 2004 (128 ALL, HG-U95Av2, RMA log2,
  another lab), split by lineage (95 B-ALL, 33 T-ALL; GSEA's ALL are B-lineage).
* GSEA Leukemia's own 48 samples given again as log2 (values clipped at 1) and as within-sample
  ranks: how many calls change against the samples as shipped.

Synthetic (leukspark synth --preset hard: 11 labs, batch strength 1.5, lab confounding 0.5,
3 % ambiguous samples, signal 0.25; 420 samples x 5,000 probes, seed 7): labs L1-L6 -> L7-L11,
on the log2 scale and written linear (MAS5-style).

Settings (`features.transform / features.normalize`, log floor as `features.log_floor: auto`
resolves it): auto/none and auto/quantile floor linear values at 20; auto/rank takes them
without a floor. Every model of the registry is scored; the `best` column is the run's best
model under the configured rule, `top CV` the model with the highest CV accuracy alone.

Oracles written plainly here, on the same files, without leukspark: a LinearSVC on standardised
within-sample ranks of the raw values of the shared probes, and k-TSP (Tan et al. 2005; k = 9,
disjoint pairs by |P(i>j|AML) - P(i>j|ALL)| with the rank-difference tie-break, 1,000 genes
prefiltered by mean rank difference).

    .venv/bin/python benchmarks/bench_cross_cohort.py [--only golub,loco,gsea,invariance,synthetic]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from measure import WORK, header, write_results  # noqa: E402

REAL = ROOT / "tests" / "data" / "real"
SETTINGS = {"auto/none": ("auto", "none"), "auto/quantile": ("auto", "quantile"), "auto/rank": ("auto", "rank")}
OUT = WORK / "cross_cohort"
HU95 = REAL / "GPL8300_hgu95av2_annotation.csv.gz"


def read_gct(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", skiprows=2, index_col=0, dtype={"Name": str}).drop(columns="Description")


def train(spark, name: str, setting: str, inputs: list[Path], overrides: dict | None = None, **run_args):
    from leukspark.config import load_config
    from leukspark.lake import Lake
    from leukspark.pipeline import Pipeline

    transform, normalize, *features = SETTINGS[setting]
    config = load_config(overrides={"features.transform": transform, "features.normalize": normalize,
                                    **(features[0] if features else {}), **(overrides or {})})
    lake = Lake.from_config(spark, OUT / f"lake-{name}-{setting.replace('/', '-').replace('+', '-').replace('=', '-')}",
                            config)
    started = time.perf_counter()
    outcome = Pipeline(spark, lake, config, echo=lambda _: None).run([str(p) for p in inputs], **run_args)
    print(f"{name} {setting}: trained in {time.perf_counter() - started:.0f} s (best {outcome['train'].best_model})",
          flush=True)
    return lake, outcome["train"]


def top_cv_model(run) -> str:
    from leukspark.stages.train import leaderboard

    return str(leaderboard(run.metrics, "accuracy").index[0])


def calls(lake, run, path: Path, annotation: Path | None) -> dict[str, dict[str, object]]:
    """model -> sample -> the scored sample (prediction None when refused)."""
    from leukspark.models import REGISTRY
    from leukspark.predict import predict_file

    trained = set(run.metrics["model"])
    return {model: {s.sample: s for s in predict_file(path, lake.root, run_id=run.run_id, model=model,
                                                        annotation=annotation)}
            for model in sorted(REGISTRY) if model in trained}


def tally(scored: dict[str, object], truth: dict[str, str], groups: dict[str, str]) -> dict[str, dict]:
    """Per lineage group (and 'all'): n, right, wrong, refused, abstained (`unclassified`), warned (any
    flag), and the flags split by outcome: right_flagged, wrong_flagged, wrong_unflagged."""
    out: dict[str, dict] = {}
    for sample, label in truth.items():
        s = scored.get(sample)
        for group in ["all"] + ([groups[sample]] if sample in groups else []):
            row = out.setdefault(group, {key: 0 for key in ("n", "right", "wrong", "refused", "abstained", "warned",
                                                            "right_flagged", "wrong_flagged", "wrong_unflagged")})
            row["n"] += 1
            if s is None or not s.prediction:
                row["refused"] += 1
                continue
            flagged = bool(s.warning)
            row["warned"] += flagged
            if s.prediction == "unclassified":
                row["abstained"] += 1
            elif s.prediction == label:
                row["right"] += 1
                row["right_flagged"] += flagged
            else:
                row["wrong"] += 1
                row["wrong_flagged" if flagged else "wrong_unflagged"] += 1
    return out


def direction_rows(direction: str, setting: str, lake, run, path: Path, truth: dict, groups: dict,
                   annotation: Path | None) -> list[dict]:
    per_model = calls(lake, run, path, annotation)
    top = top_cv_model(run)
    return [{"direction": direction, "setting": setting, "model": model, "best": model == run.best_model,
             "top_cv": model == top, "groups": tally(scored, truth, groups)}
            for model, scored in per_model.items()]


# --------------------------------------------------------------------------- oracles (plain numpy)


def within_sample_ranks(frame: pd.DataFrame) -> np.ndarray:
    """samples x features: (rank - 0.5) / n of each sample's raw values (ties averaged)."""
    values = frame.T.to_numpy(dtype=float)
    return np.vstack([(rankdata(np.nan_to_num(row, nan=np.nanmin(row))) - 0.5) / row.size for row in values])


def rank_svm(train_x, train_y, test_x) -> np.ndarray:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    model = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=20000))
    return model.fit(train_x, train_y).predict(test_x)


def ktsp_oracle(train_x, train_y, test_x, k: int = 9, prefilter: int = 1000) -> np.ndarray:
    """k-TSP as Tan et al. (2005) describe it, in the plainest numpy: labels 1 = AML."""
    difference = np.abs(train_x[train_y == 1].mean(0) - train_x[train_y == 0].mean(0))
    keep = np.argsort(-difference, kind="stable")[:prefilter]
    z = train_x[:, keep]
    weight = np.where(train_y == 1, 1 / (train_y == 1).sum(), -1 / (train_y == 0).sum())
    score = np.vstack([weight @ (z[:, [i]] > z).astype(float) for i in range(z.shape[1])])
    mean_rank = weight @ z
    gamma = np.abs(mean_rank[:, None] - mean_rank[None, :])
    key = np.triu(np.abs(score) * 1e6 + gamma, 1)
    order = np.argsort(-key, axis=None, kind="stable")
    pairs, used = [], set()
    for flat in order:
        i, j = divmod(int(flat), key.shape[1])
        if i in used or j in used or i == j:
            continue
        pairs.append((keep[i], keep[j], score[i, j] > 0))
        used |= {i, j}
        if len(pairs) == k:
            break
    votes = np.array([(test_x[:, i] > test_x[:, j]) == aml_if_greater for i, j, aml_if_greater in pairs])
    return (votes.mean(axis=0) > 0.5).astype(int)


def oracle_rows(direction: str, train_frame, train_labels, test_frame, truth: dict, groups: dict) -> list[dict]:
    shared = train_frame.index.intersection(test_frame.index)
    train_x, test_x = within_sample_ranks(train_frame.loc[shared]), within_sample_ranks(test_frame.loc[shared])
    y = (pd.Series(train_labels)[train_frame.columns] == "AML").to_numpy(dtype=int)
    rows = []
    for name, predicted in (("oracle: rank LinearSVC", rank_svm(train_x, y, test_x)),
                            ("oracle: k-TSP (k=9)", ktsp_oracle(train_x, y, test_x))):
        scored = {s: _Called("AML" if p else "ALL") for s, p in zip(test_frame.columns, predicted)}
        rows.append({"direction": direction, "setting": "plain numpy", "model": name, "best": False,
                     "top_cv": False, "groups": tally(scored, truth, groups)})
    return rows


class _Called:
    def __init__(self, prediction: str):
        self.prediction, self.warning = prediction, None


# --------------------------------------------------------------------------- directions


def golub(spark) -> list[dict]:
    labels = pd.concat([pd.read_csv(REAL / f"golub_{p}_labels.csv", dtype=str) for p in ("train", "independent")])
    independent = pd.read_csv(REAL / "golub_independent_labels.csv", dtype=str)
    labels[["sample", "label"]].to_csv(OUT / "golub_labels.csv", index=False)
    split = labels.assign(set=np.where(labels["sample"].isin(independent["sample"]), "test", "train"))
    split[["sample", "set"]].to_csv(OUT / "golub_split.csv", index=False)
    annotation = golub_annotation()
    truth = dict(zip(independent["sample"], independent["label"]))
    lineage = {s: ("AML" if lab == "AML" else f"{sub[0]}-ALL") for s, lab, sub in independent[["sample", "label", "subtype"]].values}
    direction = "Golub train -> Golub independent (Hu6800, linear)"
    rows = []
    for setting in SETTINGS:
        lake, run = train(spark, "golub", setting, [REAL / "golub_train.gct.gz", REAL / "golub_independent.gct.gz"],
                          label_file=str(OUT / "golub_labels.csv"), split_file=str(OUT / "golub_split.csv"),
                          annotation=str(annotation))
        rows += direction_rows(direction, setting, lake, run, REAL / "golub_independent.gct.gz", truth, lineage,
                               annotation)
    y = labels.set_index("sample")["label"]
    rows += oracle_rows(direction, read_gct(REAL / "golub_train.gct.gz"), y, read_gct(REAL / "golub_independent.gct.gz"),
                        truth, lineage)
    return rows


def golub_annotation() -> Path:
    annotation = OUT / "Hu6800_probe_ids.csv"
    probes = read_gct(REAL / "golub_train.gct.gz").index
    pd.DataFrame({"probe_id": probes, "gene": probes}).to_csv(annotation, index=False)
    return annotation


def golub_centres(spark) -> list[dict]:
    """Leave-one-centre-out on all 72 samples: the grouped CV score per model (no test set)."""
    pheno = pd.read_csv(REAL / "golub_pheno.csv", dtype=str)
    labels = pheno.rename(columns={"ALL.AML": "label"})[["sample", "label", "Source"]]
    labels.to_csv(OUT / "golub_centres.csv", index=False)
    annotation = golub_annotation()
    rows = []
    for setting in SETTINGS:
        lake, run = train(spark, "golub-centres", setting,
                          [REAL / "golub_train.gct.gz", REAL / "golub_independent.gct.gz"],
                          overrides={"split.group_by": "Source"}, label_file=str(OUT / "golub_centres.csv"),
                          annotation=str(annotation), test_fraction=0.0)
        predictions = lake.read("predictions").where(f"run = '{run.run_id}'").toPandas()
        centre = dict(zip(labels["sample"], labels["Source"]))
        top = top_cv_model(run)
        for model, part in predictions[predictions["fold"].str.isdigit()].groupby("model"):
            groups = {}
            for sample, predicted, truth in part[["sample", "predicted", "truth"]].values:
                for group in ("all", centre[sample]):
                    row = groups.setdefault(group, {"n": 0, "right": 0, "wrong": 0, "refused": 0, "warned": 0})
                    row["n"] += 1
                    row["right" if predicted == truth else "wrong"] += 1
            rows.append({"direction": "Golub leave-one-centre-out (72, CV folds = centres)", "setting": setting,
                         "model": model, "best": model == run.best_model, "top_cv": model == top, "groups": groups})
    return rows


def gsea_to_chiaretti(spark) -> list[dict]:
    labels = pd.read_csv(REAL / "chiaretti_all_labels.csv", dtype=str)
    truth = dict(labels[["sample", "label"]].values)
    lineage = {s: ("B-ALL" if sub.startswith("B") else "T-ALL") for s, sub in labels[["sample", "subtype"]].values}
    direction = "GSEA Leukemia (HG-U95Av2, linear) -> Chiaretti ALL (HG-U95Av2, RMA log2)"
    rows = []
    for setting in SETTINGS:
        lake, run = gsea_lake(spark, setting)
        rows += direction_rows(direction, setting, lake, run, REAL / "chiaretti_all.gct.gz", truth, lineage, HU95)
    gsea = read_gct(REAL / "gsea_leukemia_hgu95av2.gct.gz")
    gsea_y = pd.Series([c.split("_")[0] for c in gsea.columns], index=gsea.columns)
    rows += oracle_rows(direction, gsea, gsea_y, read_gct(REAL / "chiaretti_all.gct.gz"), truth, lineage)
    return rows


_GSEA_LAKES: dict = {}


def gsea_lake(spark, setting: str):
    if setting not in _GSEA_LAKES:
        _GSEA_LAKES[setting] = train(spark, "gsea", setting, [REAL / "gsea_leukemia_hgu95av2.gct.gz"],
                                     label_file=str(REAL / "gsea_leukemia_hgu95av2.cls"), annotation=str(HU95),
                                     test_fraction=0.0)
    return _GSEA_LAKES[setting]


def gsea_invariance(spark) -> list[dict]:
    """GSEA's samples as shipped, as log2 (clipped at 1) and as ranks: calls that change, per model."""
    gsea = read_gct(REAL / "gsea_leukemia_hgu95av2.gct.gz")
    forms = {"log2": np.log2(gsea.clip(lower=1.0)), "ranks": gsea.rank(axis=0)}
    paths = {}
    for form, frame in forms.items():
        paths[form] = OUT / f"gsea_as_{form}.csv"
        frame.to_csv(paths[form], index_label="probe_id")
    rows = []
    for setting in SETTINGS:
        lake, run = gsea_lake(spark, setting)
        shipped = calls(lake, run, REAL / "gsea_leukemia_hgu95av2.gct.gz", HU95)
        for form, path in paths.items():
            again = calls(lake, run, path, HU95)
            for model in shipped:
                changed = sum(shipped[model][s].prediction != again[model][s].prediction for s in shipped[model])
                delta = max(abs((shipped[model][s].probability_AML or 0) - (again[model][s].probability_AML or 0))
                            for s in shipped[model])
                rows.append({"direction": "GSEA Leukemia given again (calls that change)", "setting": setting,
                             "model": model, "form": form, "changed": changed, "max_delta": delta,
                             "n": len(shipped[model]), "best": model == run.best_model})
    return rows


def synthetic(spark) -> list[dict]:
    from leukspark.synth import preset_options, write_synthetic_series

    options = preset_options("hard")
    log_series = write_synthetic_series(OUT / "hard_log2", n_samples=420, n_probes=5000, seed=7, **options)
    linear_series = write_synthetic_series(OUT / "hard_linear", n_samples=420, n_probes=5000, seed=7,
                                           **{**options, "scale": "linear"})
    labs = dict(zip(log_series.sample_ids, log_series.sample_labs))
    test_labs = {f"L{k}" for k in range(7, 12)}
    pd.DataFrame({"sample": list(labs), "set": ["test" if labs[s] in test_labs else "train" for s in labs]}).to_csv(
        OUT / "lab_split.csv", index=False)
    rows = []
    for setting in SETTINGS:
        lake, run = train(spark, "hard", setting, [log_series.family_soft], split_file=str(OUT / "lab_split.csv"))
        truth = {r["sample"]: r["label"] for r in lake.read("labels").collect() if labs[r["sample"]] in test_labs}
        for form, series in (("GPL570, log2", log_series), ("written linear, MAS5-style", linear_series)):
            rows += direction_rows(f"synthetic hard, labs L1-L6 -> L7-L11 ({form})", setting, lake, run,
                                   series.series_matrix, truth, {}, log_series.annotation_csv)
    return rows


# --------------------------------------------------------------------------- tables


def table_lines(rows: list[dict]) -> list[str]:
    lines = []
    scored = [r for r in rows if "groups" in r]
    for direction in dict.fromkeys(r["direction"] for r in scored):
        part = [r for r in scored if r["direction"] == direction]
        groups = [g for g in dict.fromkeys(g for r in part for g in r["groups"]) if g != "all"]
        lines += [f"\n### {direction}\n",
                  "| setting | model | accuracy | wrong | refused | warned |" + "".join(f" {g} right / n |" for g in groups),
                  "| --- | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(groups)]
        for r in part:
            total = r["groups"]["all"]
            mark = " **(best)**" if r["best"] else ""
            mark += " (top CV)" if r["top_cv"] else ""
            cells = [f"{r['groups'][g]['right']} / {r['groups'][g]['n']}" if g in r["groups"] else "-" for g in groups]
            lines.append(f"| {r['setting']} | {r['model']}{mark} | {total['right'] / total['n']:.4f} | {total['wrong']} | "
                         f"{total['refused']} | {total['warned']} |" + "".join(f" {c} |" for c in cells))
    lines += flag_lines(scored)
    invariance = [r for r in rows if "changed" in r]
    if invariance:
        lines += ["\n### GSEA Leukemia's 48 samples given again: calls that change against the file as shipped\n",
                  "| setting | model | as log2 (clipped at 1): changed / max dP | as ranks: changed / max dP |",
                  "| --- | --- | ---: | ---: |"]
        for (setting, model), part in pd.DataFrame(invariance).groupby(["setting", "model"], sort=False):
            cells = {f: f"{int(p.changed.iloc[0])} / {p.max_delta.iloc[0]:.3g}" for f, p in part.groupby("form")}
            mark = " **(best)**" if part["best"].iloc[0] else ""
            lines.append(f"| {setting} | {model}{mark} | {cells.get('log2', '-')} | {cells.get('ranks', '-')} |")
    return lines


def flag_lines(scored: list[dict]) -> list[str]:
    """Per direction, model and lineage: what the flags and abstentions did with the calls."""
    lines = ["\n### Flags and abstentions by outcome (right calls flagged; wrong calls flagged or abstained; "
             "wrong calls neither)\n", "| direction | setting | model | group | right | right flagged | wrong flagged "
             "| abstained | wrong, not flagged |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in scored:
        for group, g in r["groups"].items():
            if "right_flagged" not in g:
                continue
            lines.append(f"| {r['direction'].split(' (')[0]} | {r['setting']} | {r['model']} | {group} | {g['right']} | "
                         f"{g['right_flagged']} | {g['wrong_flagged']} | {g['abstained']} | {g['wrong_unflagged']} |")
    return lines


DIRECTIONS = {"golub": golub, "loco": golub_centres, "gsea": gsea_to_chiaretti, "invariance": gsea_invariance,
              "synthetic": synthetic}


def main() -> None:
    from leukspark.config import load_config
    from leukspark.spark import build_session

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(DIRECTIONS), help="comma-separated directions")
    parser.add_argument("--out", default="cross_cohort.md")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated transform/normalize settings, each optionally +key=value (features.key)")
    args = parser.parse_args()
    chosen = args.settings.split(",")
    for name in chosen:  # "auto/rank+aggregate=mean_signal": a base setting with features.* overrides
        base, *extras = name.split("+")
        if base not in SETTINGS:
            raise SystemExit(f"--settings: unknown setting {base!r}; known: {', '.join(SETTINGS)}")
        SETTINGS[name] = (*SETTINGS[base][:2], {f"features.{k}": v for k, v in (e.split("=", 1) for e in extras)})
    for name in [n for n in SETTINGS if n not in chosen]:
        SETTINGS.pop(name)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    spark = build_session(load_config())
    started = time.perf_counter()
    rows = [row for name in args.only.split(",") for row in DIRECTIONS[name](spark)]
    (OUT / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
    config = load_config()
    lines = [header("Cross-cohort benchmark: train on cohort A, score cohort B",
                    f".venv/bin/python benchmarks/bench_cross_cohort.py --only {args.only} --settings {args.settings}"),
             f"Wall time {time.perf_counter() - started:.0f} s. Defaults at this commit: models "
             f"{config['training']['models']}, prefer {config['training']['prefer']}, best_within "
             f"{config['training']['best_within']}. `accuracy` counts a refused sample as wrong; `warned` = "
             "scored samples the input check flagged. **(best)** is the run's best model under the configured "
             "rule (what `predict` uses without --model); (top CV) the model with the highest CV accuracy alone. "
             "The best model is chosen on cohort A only; cohort B is never seen in training."]
    write_results(args.out, lines + table_lines(rows))


if __name__ == "__main__":
    main()
