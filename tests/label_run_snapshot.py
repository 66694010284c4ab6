"""A small ALL/AML training run through the task code, without Spark: the snapshot that
tests/test_subtypes.py compares today's code against (tests/data/regression/label_run.csv was
written by this script with the code of main at e2a9f42, before training.target existed):

    PYTHONPATH=<old checkout> python tests/label_run_snapshot.py tests/data/regression/label_run.csv
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = ("logistic_regression", "linear_svm", "random_forest", "xgboost")
PARAMS = {"random_forest": {"n_estimators": 30}, "xgboost": {"n_estimators": 20}}


def label_run(workdir: Path) -> pd.DataFrame:
    """Prediction rows joined with their fold's metrics, of 4 models x 3 CV folds + test."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from leukspark.stages import train as train_stage

    rng = np.random.default_rng(11)
    n, genes = 48, 40
    y = np.array(["AML" if i % 3 == 0 else "ALL" for i in range(n)])
    matrix = rng.normal(0, 1, (n, genes)) + np.where(y == "AML", 0.8, 0.0)[:, None] * (np.arange(genes) < 8)
    samples = [f"S{i:02d}" for i in range(n)]
    path = workdir / "features.parquet"
    pq.write_table(pa.table({"sample": samples, "features": [list(map(float, row)) for row in matrix]}), path)
    assignments = {s: ("test", None, label) if i % 6 == 5 else ("train", (i // 3) % 3, label)
                   for i, (s, label) in enumerate(zip(samples, y))}
    context = train_stage.TrainingContext(run_id="r", feature_files=(str(path),),
                                          gene_order=tuple(f"G{i}" for i in range(genes)),
                                          assignments=assignments, seed=42, scaler="standard", bundle_root=None)
    tasks = train_stage.plan_tasks(list(MODELS), 3, PARAMS)
    rows, _ = train_stage.split_task_rows(train_stage.run_tasks_sequentially(tasks, context))
    metrics = train_stage.metric_rows(rows).drop(columns="fit_seconds")
    return (rows.drop(columns=["fit_seconds", "run"]).merge(metrics, on=["model", "fold"])
            .sort_values(["model", "fold", "sample"]).reset_index(drop=True))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        label_run(Path(scratch)).to_csv(sys.argv[1], index=False, float_format="%.17g")
