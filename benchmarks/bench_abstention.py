"""Knowing when not to call: right calls, wrong calls, abstentions and flags on other cohorts.

Every cohort is trained and scored through the real pipeline (`Pipeline.run`, then
`predict_file` on the other cohort's file), as in bench_cross_cohort.py:

* Golub 1999 train (38) -> Golub independent (34), Hu6800, probes as genes (no lineage scores:
  no gene symbols);
* GSEA Leukemia (48, B-ALL and AML) -> Chiaretti 2004 (128 ALL: 95 B, 33 T; lineage from
  tests/data/real/chiaretti_all_labels.csv, subtype B* or T*);
* synthetic demo series (leukspark/data/demo, 120 samples): trained with `training.ood_check`,
  so its CLL, CML, MDS and non-leukemia samples are scored by the final models (fold `ood`);
  its ALL/AML test set is the in-distribution comparison.

Fixed settings here: `predict.abstain_band: auto` (conformal, `predict.max_error_rate` 0.05),
models logistic_regression and linear_svm, and on GSEA Leukemia `training.calibration: isotonic`
(falls back to Platt below `training.isotonic_min_samples`); each is run with `features.normalize` none and rank.
Extra overrides (the lead's final defaults, say) go on the command line as dotted keys; naming
features.normalize runs that setting only (half the time: each training is 1-4 minutes on the
shared 2-core machine, most of it Spark start-up of the small fits):

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_abstention.py [--defaults] [--only=golub,gsea,demo,hard] [features.transform=auto ...]

--defaults: the shipped configuration with only predict.abstain_band=auto fixed, every model of each
run scored (writes abstention_defaults.md); --only picks directions (hard: a 600-sample --preset hard
series generated at full GPL570 width).

A call is "confident wrong" when it is wrong, not `unclassified` and carries no flag.
Writes benchmarks/results/abstention.md and risk-coverage curves abstention_risk_coverage.png.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from measure import RESULTS, WORK, header, write_results  # noqa: E402

REAL = ROOT / "tests" / "data" / "real"
DEMO = ROOT / "leukspark" / "data" / "demo"
OUT = WORK / "abstention"
MODELS = ["logistic_regression", "linear_svm"]
NORMALIZE = ("none", "rank")
FIXED = {"predict.abstain_band": "auto", "training.models": MODELS}
# The 48-sample cohort also asks for isotonic calibration, to show the fall-back to Platt (its nested
# fits cost minutes on the shared machine, so the other cohorts go without).
GSEA_EXTRA = {"training.calibration": "isotonic"}


def overrides_from(argv: list[str]) -> dict:
    return {key: yaml.safe_load(value) for key, value in (a.split("=", 1) for a in argv if not a.startswith("--"))}


def options_from(argv: list[str]) -> tuple[bool, list[str]]:
    """(--defaults given, the directions of --only=a,b)."""
    only = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("--only=")), list(DIRECTIONS))
    unknown = set(only) - set(DIRECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown direction(s) {sorted(unknown)}; choose from {list(DIRECTIONS)}")
    return "--defaults" in argv, only


def use_defaults() -> None:
    """--defaults: the shipped configuration (every default model, default calibration), with only
    `predict.abstain_band: auto` fixed so that abstention is measured; every model of the run is scored."""
    global FIXED, GSEA_EXTRA, MODELS
    FIXED, GSEA_EXTRA, MODELS = {"predict.abstain_band": "auto"}, {}, None


def scored_models(lake, run) -> list[str]:
    if MODELS is not None:
        return MODELS
    results = lake.read("results").where(f"run = '{run.run_id}' AND fold = 'test'").toPandas()
    return sorted(set(results["model"])) or [run.best_model]


def settings(extra: dict) -> tuple:
    """The features.normalize settings to run: both, the one the command line fixes, or under
    --defaults the configured default."""
    if "features.normalize" in extra:
        return (extra["features.normalize"],)
    if MODELS is None:  # --defaults
        from leukspark.config import load_config

        return (load_config()["features"]["normalize"],)
    return NORMALIZE


def train(spark, name: str, normalize: str, inputs: list, extra: dict, **run_args):
    from leukspark.config import load_config
    from leukspark.lake import Lake
    from leukspark.pipeline import Pipeline

    config = load_config(overrides={**FIXED, **extra, "features.normalize": normalize})
    lake = Lake.from_config(spark, OUT / f"lake-{name}-{normalize}", config)
    notes: list[str] = []
    started = time.perf_counter()
    outcome = Pipeline(spark, lake, config, echo=notes.append).run([str(p) for p in inputs], **run_args)
    print(f"{name} normalize={normalize}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    return lake, outcome["train"], config, [n for n in notes if n.startswith("WARNING")]


def scored_frame(lake, run, path: Path, truth: dict, lineage: dict, annotation: Path, config) -> pd.DataFrame:
    from leukspark.predict import ScoringPolicy, predict_file

    frames = []
    for model in scored_models(lake, run):
        scored = predict_file(path, lake.root, run_id=run.run_id, model=model, annotation=annotation,
                              policy=ScoringPolicy.from_config(config))
        frames.append(pd.DataFrame([{
            "model": model, "sample": s.sample, "truth": truth[s.sample], "lineage": lineage.get(s.sample, "-"),
            "prediction": s.prediction, "probability_AML": s.probability_AML, "flags": ",".join(s.flags),
            "dominant_lineage": s.dominant_lineage, "novelty": s.novelty} for s in scored if s.sample in truth]))
    return pd.concat(frames, ignore_index=True)


def counts(frame: pd.DataFrame) -> dict:
    called = frame["prediction"].isin(["ALL", "AML"])
    right = called & (frame["prediction"] == frame["truth"])
    wrong = called & (frame["prediction"] != frame["truth"])
    flagged = frame["flags"] != ""
    unseen = frame["flags"].str.contains("unseen_lineage")
    return {"n": len(frame), "right": int(right.sum()), "wrong": int(wrong.sum()),
            "abstained": int((frame["prediction"] == "unclassified").sum()), "flagged": int(flagged.sum()),
            "right_flagged": int((right & flagged).sum()), "confident_wrong": int((wrong & ~flagged).sum()),
            "unseen_lineage": int(unseen.sum()),
            "called_ALL_or_unseen": int(((frame["prediction"] == "ALL") | unseen).sum())}


def golub(spark, extra: dict) -> list[tuple]:
    labels = pd.concat([pd.read_csv(REAL / f"golub_{p}_labels.csv", dtype=str) for p in ("train", "independent")])
    independent = pd.read_csv(REAL / "golub_independent_labels.csv", dtype=str)
    labels[["sample", "label"]].to_csv(OUT / "golub_labels.csv", index=False)
    split = labels.assign(set=np.where(labels["sample"].isin(independent["sample"]), "test", "train"))
    split[["sample", "set"]].to_csv(OUT / "golub_split.csv", index=False)
    probes = pd.read_csv(REAL / "golub_train.gct.gz", sep="\t", skiprows=2, usecols=[0]).iloc[:, 0]
    annotation = OUT / "Hu6800_probe_ids.csv"
    pd.DataFrame({"probe_id": probes, "gene": probes}).to_csv(annotation, index=False)
    truth = dict(zip(independent["sample"], independent["label"]))
    rows = []
    for normalize in settings(extra):
        lake, run, config, notes = train(spark, "golub", normalize, [REAL / "golub_train.gct.gz",
                                                                    REAL / "golub_independent.gct.gz"], extra,
                                         label_file=str(OUT / "golub_labels.csv"),
                                         split_file=str(OUT / "golub_split.csv"), annotation=str(annotation))
        frame = scored_frame(lake, run, REAL / "golub_independent.gct.gz", truth, {}, annotation, config)
        rows.append(("Golub train -> Golub independent", normalize, frame, _pooled(lake, run), notes))
    return rows


def gsea_to_chiaretti(spark, extra: dict) -> list[tuple]:
    annotation = REAL / "GPL8300_hgu95av2_annotation.csv.gz"
    labels = pd.read_csv(REAL / "chiaretti_all_labels.csv", dtype=str)
    truth = dict(zip(labels["sample"], labels["label"]))
    lineage = dict(zip(labels["sample"], labels["subtype"].str[0].map({"B": "B-ALL", "T": "T-ALL"})))
    rows = []
    for normalize in settings(extra):
        lake, run, config, notes = train(spark, "gsea", normalize, [REAL / "gsea_leukemia_hgu95av2.gct.gz"],
                                         {**GSEA_EXTRA, **extra},
                                         label_file=str(REAL / "gsea_leukemia_hgu95av2.cls"),
                                         annotation=str(annotation), test_fraction=0.0)
        frame = scored_frame(lake, run, REAL / "chiaretti_all.gct.gz", truth, lineage, annotation, config)
        rows.append(("GSEA Leukemia -> Chiaretti ALL", normalize, frame, _pooled(lake, run), notes))
    return rows


def synthetic(spark, extra: dict) -> list[tuple]:
    return _synthetic(spark, extra, "demo", DEMO / "GSE13159_family.soft.gz", "synthetic demo series")


def synthetic_hard(spark, extra: dict) -> list[tuple]:
    """A 600-sample `--preset hard` series at full GPL570 width (all 18 MILE classes)."""
    from leukspark.synth import preset_options, write_synthetic_series

    series = write_synthetic_series(OUT / "hard600", n_samples=600, seed=7, **preset_options("hard"))
    return _synthetic(spark, extra, "hard600", series.family_soft, "synthetic hard preset, 600 samples")


def _synthetic(spark, extra: dict, name: str, soft: Path, title: str) -> list[tuple]:
    rows = []
    for normalize in settings(extra):
        lake, run, config, notes = train(spark, name, normalize, [soft], {"training.ood_check": True, **extra})
        stored = lake.read("predictions").where(f"run = '{run.run_id}'").toPandas()
        stored = stored[stored["fold"].isin(["test", "ood"])]
        frame = pd.DataFrame({
            "model": stored["model"], "sample": stored["sample"],
            "truth": np.where(stored["fold"] == "ood", "other", stored["truth"]),
            "lineage": np.where(stored["fold"] == "ood", stored["truth"], stored["truth"]),
            "prediction": stored["predicted"], "probability_AML": stored["probability_AML"],
            "flags": stored["flags"].fillna(""), "dominant_lineage": stored["dominant_lineage"],
            "novelty": stored["novelty"]})
        rows.append((f"{title} (test ALL/AML; other diseases via ood_check)", normalize, frame,
                     _pooled(lake, run), notes))
    return rows


def _pooled(lake, run) -> pd.DataFrame:
    results = lake.read("results").where(f"run = '{run.run_id}' AND fold = 'cv_pooled'").toPandas()
    wanted = ["coverage", "accuracy_on_calls", "abstain_band_lo", "abstain_band_hi", "abstain_max_error_rate",
              "band_withholds_all", "calibration_fallback"]
    return results[results["metric"].isin(wanted)].pivot_table(index="model", columns="metric", values="value")


def table_lines(rows: list[tuple]) -> list[str]:
    lines = []
    for direction, normalize, frame, pooled, notes in rows:
        lines += [f"\n### {direction}, features.normalize: {normalize}\n",
                  "| model | group | n | right | wrong | abstained | flagged | right flagged | confident wrong "
                  "| unseen lineage | called ALL or unseen |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: | ---: | ---: |"]
        for model, part in frame.groupby("model", sort=False):
            for group, sub in [("all", part)] + list(part.groupby("lineage")):
                c = counts(sub)
                lines.append(f"| {model} | {group} | {c['n']} | {c['right']} | {c['wrong']} | {c['abstained']} | "
                             f"{c['flagged']} | {c['right_flagged']} | {c['confident_wrong']} | "
                             f"{c['unseen_lineage']} | {c['called_ALL_or_unseen']} |")
        lines += ["", "Training cohort, out-of-fold (cv_pooled): " + "; ".join(
            f"{m}: band [{r.get('abstain_band_lo', np.nan):.3f}, {r.get('abstain_band_hi', np.nan):.3f}], coverage "
            f"{r.get('coverage', np.nan):.3f}, accuracy on calls {r.get('accuracy_on_calls', np.nan):.3f} "
            f"(guarantee: P(wrong call) <= {r.get('abstain_max_error_rate', np.nan):.2f}), calibration fell back "
            f"to Platt: {bool(r.get('calibration_fallback', 0))}, band withholds all: "
            f"{bool(r.get('band_withholds_all', 0))}" for m, r in pooled.iterrows())]
        lines += [f"- training said: {n}" for n in notes]
    return lines


def plot_curves(rows: list[tuple], name: str = "abstention_risk_coverage.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leukspark.metrics import risk_coverage_curve

    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.6), squeeze=False)
    for axis, (direction, normalize, frame, _, _) in zip(axes[0], rows):
        for model, part in frame.groupby("model", sort=False):
            part = part[part["truth"].isin(["ALL", "AML"]) & part["probability_AML"].notna()]
            if part.empty:
                continue
            curve = risk_coverage_curve((part["truth"] == "AML").astype(int), part["probability_AML"])
            axis.step(curve["coverage"], curve["risk"], where="post", label=model)
            unflagged = part[part["flags"] == ""]
            if len(unflagged):
                c = risk_coverage_curve((unflagged["truth"] == "AML").astype(int), unflagged["probability_AML"])
                axis.step(c["coverage"] * len(unflagged) / len(part), c["risk"], where="post", linestyle=":",
                          label=f"{model}, unflagged only")
        axis.set_title(f"{direction.split(' (')[0]}\nnormalize {normalize}", fontsize=8)
        axis.set_xlabel("coverage")
        axis.set_ylabel("error rate on calls")
        axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=90)


def main() -> None:
    from leukspark.config import load_config
    from leukspark.spark import build_session

    extra = overrides_from(sys.argv[1:])
    defaults, only = options_from(sys.argv[1:])
    if defaults:
        use_defaults()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    spark = build_session(load_config())
    started = time.perf_counter()
    rows = [row for name in only for row in DIRECTIONS[name](spark, extra)]
    elapsed = time.perf_counter() - started
    for direction, normalize, frame, _, _ in rows:
        frame.to_csv(OUT / f"{direction.split(' ')[0]}-{normalize}.csv", index=False)
    figure = "abstention_defaults_risk_coverage.png" if defaults else "abstention_risk_coverage.png"
    plot_curves(rows, figure)
    command = "PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_abstention.py " + " ".join(sys.argv[1:])
    lines = [header("Abstention and flags across cohorts", command.strip()),
             f"Fixed settings: {json.dumps(FIXED)} (GSEA Leukemia also {json.dumps(GSEA_EXTRA)}); overrides: "
             f"{json.dumps(extra)}; total {elapsed:.0f} s. "
             "`flagged`: any flag (novelty, unseen_lineage, low_blast, other_disease, lineage_conflict); `confident wrong`: wrong, called and not flagged; "
             "`called ALL or unseen`: called ALL or flagged as an unseen lineage (the T-ALL goal). Groups: "
             "Chiaretti by lineage (subtype B*/T*), the demo series by truth (ALL/AML test rows, or the MILE class "
             f"of an excluded sample). Risk-coverage curves: {figure}."]
    write_results("abstention_defaults.md" if defaults else "abstention.md", lines + table_lines(rows))


DIRECTIONS = {"golub": golub, "gsea": gsea_to_chiaretti, "demo": synthetic, "hard": synthetic_hard}

if __name__ == "__main__":
    main()
