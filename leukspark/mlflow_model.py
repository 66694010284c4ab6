"""A leukspark model bundle as an MLflow pyfunc model (the optional `mlflow` extra).

The pyfunc is a thin wrapper: its artifacts are the bundle directory as training saved it and the
probe-to-gene annotation of the training platforms; `load_context` loads the bundle with the same
verifying loader as `leukspark predict` (`bundle.load_bundle`: checksums, no pickle) and `predict`
calls the same scoring code (`predict.score_values`). It is logged "from code"
(`mlflow_entry.py`), so MLflow pickles nothing either.

Input: one row per sample, the probe matrix plus the platform: `sample` and `platform` (optional
strings; without `platform` a model trained on one platform assumes it) and one double column per
probe of the training platforms, NaN where a sample has no value. A model trained on a matrix of
gene symbols (platform GENE_SYMBOLS) takes gene columns. Values come as the sample's file gives
them (linear or log2): the scale is detected per sample and handled as `predict` does.
Output: one row per input row with the fields of `leukspark predict`'s records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SAMPLE, PLATFORM = "sample", "platform"
OUTPUT_COLUMNS = ("sample", "prediction", "probability_AML", "missing_genes", "input_scale",
                  "shared_gene_fraction", "warning", "error", "run", "model")
# The pyfunc's output as a Spark type, for `mlflow.pyfunc.spark_udf(..., result_type=SPARK_RESULT_TYPE)`.
SPARK_RESULT_TYPE = ("sample string, prediction string, probability_AML double, missing_genes bigint, "
                     "input_scale string, shared_gene_fraction double, warning string, error string, "
                     "run string, model string")
ENTRY_FILE = Path(__file__).with_name("mlflow_entry.py")
ANNOTATION_FILE = "platform_probes.parquet"


def samples_frame(values: pd.DataFrame) -> pd.DataFrame:
    """Long probe values (sample, platform, probe_id, value) as the pyfunc's input: one row per sample
    (in order of first appearance), `sample`, `platform`, then one column per probe in the order met."""
    samples = list(dict.fromkeys(values[SAMPLE]))
    probes = list(dict.fromkeys(values["probe_id"]))
    matrix = np.full((len(samples), len(probes)), np.nan)
    matrix[pd.Index(samples).get_indexer(values[SAMPLE]),
           pd.Index(probes).get_indexer(values["probe_id"])] = values["value"].to_numpy(dtype=float)
    platform_of = values.drop_duplicates(SAMPLE).set_index(SAMPLE)[PLATFORM]
    head = pd.DataFrame({SAMPLE: samples, PLATFORM: platform_of.reindex(samples).to_numpy()})
    return pd.concat([head, pd.DataFrame(matrix, columns=probes)], axis=1)


def long_values(frame: pd.DataFrame, default_platform: str | None) -> tuple[pd.DataFrame, list[str]]:
    """The pyfunc's input back as long probe values, keyed by row position (a sample named twice
    stays two rows), and the sample names to report."""
    probe_columns = [c for c in frame.columns if c not in (SAMPLE, PLATFORM)]
    n_rows = len(frame)
    names = ([str(s) for s in frame[SAMPLE]] if SAMPLE in frame.columns
             else [f"row {i}" for i in range(n_rows)])
    platforms = (frame[PLATFORM].astype(object).where(frame[PLATFORM].notna(), default_platform).to_numpy()
                 if PLATFORM in frame.columns else np.full(n_rows, default_platform, dtype=object))
    keys = np.array([f"{i}" for i in range(n_rows)], dtype=object)
    values = pd.DataFrame({
        SAMPLE: np.repeat(keys, len(probe_columns)),
        PLATFORM: np.repeat(platforms, len(probe_columns)),
        "probe_id": np.tile(np.asarray(probe_columns, dtype=object), n_rows),
        "value": frame[probe_columns].to_numpy(dtype=float).ravel(),
    })
    return values, names


def records_frame(scored: list, names: list[str], run_id: str, model: str) -> pd.DataFrame:
    """ScoredSample objects (keyed by row position) as the output frame, in input row order."""
    by_key = {s.sample: s for s in scored}
    rows = []
    for key, name in enumerate(names):
        s = by_key[str(key)]
        rows.append((name, s.prediction, s.probability_AML, s.missing_genes, s.input_scale,
                     s.shared_gene_fraction, s.warning, s.error, run_id, model))
    frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    frame["probability_AML"] = frame["probability_AML"].astype(float)
    frame["shared_gene_fraction"] = frame["shared_gene_fraction"].astype(float)
    frame["missing_genes"] = frame["missing_genes"].astype("int64")
    return frame


def _python_model_base():
    try:
        from mlflow.pyfunc import PythonModel
    except ImportError:  # the class is still importable (for docs and tests) without the extra
        return object
    return PythonModel


class LeukSparkModel(_python_model_base()):
    """pyfunc wrapper of one bundle; see the module docstring for its input and output."""

    def load_context(self, context) -> None:
        from .bundle import load_bundle
        from .predict import ScoringPolicy

        self.bundle = load_bundle(Path(context.artifacts["bundle"]))
        self.probes = pd.read_parquet(context.artifacts["annotation"])
        policy = dict(context.model_config or {})
        self.policy = ScoringPolicy(float(policy["max_missing_gene_fraction"]),
                                    float(policy["min_shared_gene_fraction"]), float(policy["range_margin"]))
        platforms = self.bundle.training_inputs.get("platforms") or []
        self.default_platform = platforms[0] if len(platforms) == 1 else None

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from .predict import score_values

        frame = pd.DataFrame(model_input)
        values, names = long_values(frame, self.default_platform)
        scored = score_values(self.bundle, values, self.probes, self.policy) if len(frame) else []
        return records_frame(scored, names, self.bundle.run_id, self.bundle.model_name)
