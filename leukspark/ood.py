"""Out-of-distribution check with the study's own other diseases (`training.ood_check`).

The samples label extraction excluded (MILE's CLL, CML, MDS, non-leukemia and so on: the
`excluded_samples` table) are neither ALL nor AML. After training they are collapsed to the
run's genes exactly as the training samples were (same Spark feature functions) and scored by
every final model through the prediction path (calibration, abstention band, input check).
A trustworthy model should abstain on many of them or flag them as unlike its training data;
a model that calls them all ALL or AML with confidence is over-confident outside its domain.

Rows go to `predictions` with fold ``ood`` and the MILE class in ``truth`` (the column holds
ALL/AML for the other folds), and per class to `results` with fold ``ood:<class>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from .stages.train import OOD_FOLD

OOD_METRICS = ("n", "scored", "errors", "abstained", "flagged", "called_ALL", "called_AML", "abstained_fraction",
               "flagged_fraction", "mean_probability_AML", "flagged_or_unclassified",
               "flagged_or_unclassified_fraction")


def excluded_matrix(lake, excluded: pd.DataFrame, genes: list[str], feature_cfg: dict):
    """(samples, matrix in `genes` order, platform per sample, value scale per sample) of the excluded samples."""
    from .stages.collapse import collapse, probe_gene_map
    from .stages.features import feature_vectors

    spark = lake.spark
    wanted = spark.createDataFrame([(s,) for s in excluded["sample"]], "sample string")
    samples = lake.read("samples").select("sample", "platform", "value_scale").join(F.broadcast(wanted), "sample")
    info = {r["sample"]: (r["platform"], r["value_scale"]) for r in samples.collect()}
    positions = spark.createDataFrame([(i, g) for i, g in enumerate(genes)], "position int, gene string")
    probe_map = probe_gene_map(lake.read("platform_probes"), feature_cfg["multi_gene"])
    positioned = probe_map.join(F.broadcast(positions), "gene")
    values = collapse(lake.read("expression"), samples, positioned, feature_cfg, key="position")
    vectors = feature_vectors(values, len(genes)).toPandas().sort_values("sample")
    names = list(vectors["sample"])
    matrix = (np.vstack([np.asarray(v, dtype=np.float64) for v in vectors["features"]]) if names
              else np.zeros((0, len(genes))))
    return (names, matrix, {s: info[s][0] for s in names}, {s: info[s][1] for s in names})


def score_excluded(bundle_dir: Path, excluded: pd.DataFrame, samples: list[str], matrix: np.ndarray,
                   platforms: dict, scales: dict, policy, run_id: str,
                   other_scores: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(prediction rows with fold 'ood', per-class long results rows) of one final model.

    `other_scores`: the out-of-fold P(other) of the samples the bundle's other-disease check was
    fitted on; the fitted check has seen them, so their `other_disease` flag is decided by the
    check fitted without their fold instead (cross-fitting), and the counts stay honest."""
    from .bundle import load_bundle
    from .predict import ScoredSample, score_matrix

    bundle = load_bundle(bundle_dir)
    scored = score_matrix(bundle, samples, matrix, policy, platforms=platforms, scales=scales)
    check = bundle.training_inputs.get("other_disease")
    if check is not None and other_scores:
        _cross_fitted(scored, other_scores, check.get("threshold"), check.get("flag_rate"))
    subtype = excluded.set_index("sample")["subtype"].fillna("(no subtype)").to_dict()
    predictions = pd.DataFrame({
        "run": run_id, "model": bundle.model_name, "fold": OOD_FOLD, "sample": [s.sample for s in scored],
        "probability_AML": [s.probability_AML for s in scored], "predicted": [s.prediction for s in scored],
        "truth": [subtype.get(s.sample) for s in scored], "warning": [s.warning for s in scored],
        "error": [s.error for s in scored], "fit_seconds": np.nan,
    })
    predictions = pd.concat([predictions, pd.DataFrame([s.flag_columns() for s in scored],
                                                       columns=list(ScoredSample.FLAG_COLUMNS))], axis=1)
    rows = []
    for mile_class, part in predictions.groupby("truth"):
        rows += _class_rows(bundle.model_name, f"{OOD_FOLD}:{mile_class}", part)
    if len(predictions):
        rows += _class_rows(bundle.model_name, OOD_FOLD, predictions)
    return predictions, pd.DataFrame(rows, columns=["model", "fold", "metric", "value"])


def _cross_fitted(scored: list, other_scores: dict, threshold: float | None, check_rate: float | None = None) -> None:
    """Replace the in-sample P(other) and `other_disease` flag of the check's own training samples by
    their out-of-fold values, in place."""
    from .other_disease import FLAG, message, without_message

    for result in scored:
        if result.error is not None or result.sample not in other_scores:
            continue
        result.probability_other = float(other_scores[result.sample])
        result.flags = [f for f in result.flags if f != FLAG]
        result.warning = without_message(result.warning)
        if threshold is not None and result.probability_other > threshold:
            result.flags.append(FLAG)
            text = message(result.probability_other, threshold, None, check_rate)
            result.warning = f"{result.warning}; {text}" if result.warning else text


def _class_rows(model: str, fold: str, part: pd.DataFrame) -> list[tuple]:
    scored = part["error"].isna()
    n_scored = int(scored.sum())
    values = {
        "n": len(part), "scored": n_scored, "errors": int((~scored).sum()),
        "abstained": int((part["predicted"] == "unclassified").sum()),
        "flagged": int(part["flags"].notna().sum()),
        "called_ALL": int((part["predicted"] == "ALL").sum()), "called_AML": int((part["predicted"] == "AML").sum()),
        # Neither a call nor trusted: withheld or flagged (what a user should not act on).
        "flagged_or_unclassified": int(((part["predicted"] == "unclassified") | part["flags"].notna()).sum()),
    }
    values["abstained_fraction"] = values["abstained"] / n_scored if n_scored else np.nan
    values["flagged_fraction"] = values["flagged"] / n_scored if n_scored else np.nan
    values["flagged_or_unclassified_fraction"] = (values["flagged_or_unclassified"] / n_scored if n_scored
                                                  else np.nan)
    values["mean_probability_AML"] = float(part.loc[scored, "probability_AML"].mean()) if n_scored else np.nan
    return [(model, fold, name, float(values[name])) for name in OOD_METRICS]
