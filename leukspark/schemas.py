"""Schemas of the lake's tables: one place, used by stages, writers and validators."""

from pyspark.sql.types import (
    ArrayType, BooleanType, DoubleType, IntegerType, LongType, MapType, StringType, StructField,
    StructType, TimestampType,
)


def _schema(*fields: tuple) -> StructType:
    return StructType([StructField(name, dtype, nullable) for name, dtype, nullable in fields])


SERIES = _schema(
    ("series", StringType(), False),
    ("title", StringType(), True),
    ("summary", StringType(), True),
    ("platforms", ArrayType(StringType()), True),
    ("n_samples", LongType(), True),
    ("value_scale", StringType(), True),
    ("source_file", StringType(), True),
    ("ingested_at", TimestampType(), True),
)

SAMPLES = _schema(
    ("sample", StringType(), False),
    ("series", StringType(), True),
    ("platform", StringType(), True),
    ("title", StringType(), True),
    ("source", StringType(), True),
    ("characteristics", MapType(StringType(), StringType()), True),
    ("characteristics_raw", ArrayType(StringType()), True),
    ("description", ArrayType(StringType()), True),
    ("n_values", LongType(), True),
    ("n_missing", LongType(), True),
    ("values_checksum", StringType(), True),
    ("value_scale", StringType(), True),
    ("value_quantiles", ArrayType(DoubleType()), True),
    ("source_file", StringType(), True),
    ("ingested_at", TimestampType(), True),
)

EXPRESSION = _schema(
    ("series", StringType(), True),
    ("sample", StringType(), False),
    ("platform", StringType(), True),
    ("probe_id", StringType(), False),
    ("value", DoubleType(), True),
)

PLATFORM_PROBES = _schema(
    ("platform", StringType(), False),
    ("probe_id", StringType(), False),
    ("gene_symbols", ArrayType(StringType()), True),
    ("entrez_ids", ArrayType(StringType()), True),
)

LABELS = _schema(
    ("sample", StringType(), False),
    ("label", StringType(), False),
    ("subtype", StringType(), True),
    ("rule", StringType(), True),
    # AML, B-ALL, T-ALL (labels.lineage_rules or the label file); added later: older lakes get it
    # when the labels step next rewrites the table (Pipeline.labels).
    ("lineage", StringType(), True),
)

EXCLUDED_SAMPLES = _schema(
    ("sample", StringType(), False),
    ("subtype", StringType(), True),
    ("reason", StringType(), False),
)

GENES = _schema(
    ("position", IntegerType(), False),
    ("gene", StringType(), False),
    ("n_probes", IntegerType(), True),
)

GENE_FEATURES = _schema(
    ("sample", StringType(), False),
    ("features", ArrayType(DoubleType()), False),
)

SPLITS = _schema(
    ("sample", StringType(), False),
    ("set", StringType(), False),
    ("fold", IntegerType(), True),
    ("label", StringType(), True),
)

RESULTS = _schema(
    ("run", StringType(), False),
    ("run_time", TimestampType(), True),
    ("config_hash", StringType(), True),
    ("code_version", StringType(), True),
    ("model", StringType(), False),
    ("params", StringType(), True),
    ("fold", StringType(), False),
    ("metric", StringType(), False),
    ("value", DoubleType(), True),
)

# What the scoring checks found, per scored sample (null where not scored, and in rows of older
# versions): comma-separated flags (novelty, unseen_lineage:<program>, low_blast, input_range), the
# novelty score, the three lineage program scores, the dominant program and the blast index.
SCORING_FLAGS = (
    ("flags", StringType(), True),
    ("novelty", DoubleType(), True),
    ("lineage_b", DoubleType(), True),
    ("lineage_t", DoubleType(), True),
    ("lineage_myeloid", DoubleType(), True),
    ("dominant_lineage", StringType(), True),
    ("blast_index", DoubleType(), True),
    # P(another disease than ALL/AML): the other_disease check of runs whose training series held
    # CLL, CML, MDS or non-leukemia samples (leukspark/other_disease.py); null otherwise.
    ("probability_other", DoubleType(), True),
)

PREDICTIONS = _schema(
    ("run", StringType(), False),
    ("model", StringType(), False),
    ("fold", StringType(), False),
    ("sample", StringType(), False),
    ("probability_AML", DoubleType(), True),
    ("predicted", StringType(), True),
    ("truth", StringType(), True),
    *SCORING_FLAGS,
)

# Out-of-fold (and test) probability of every class of a multi-class run (training.target lineage or
# subtype), long: one row per (model, fold, sample, class). Its own table, so that `predictions`
# keeps its schema and older lakes keep working.
CLASS_PREDICTIONS = _schema(
    ("run", StringType(), False),
    ("model", StringType(), False),
    ("fold", StringType(), False),
    ("sample", StringType(), False),
    ("class", StringType(), False),
    ("probability", DoubleType(), True),
    ("truth_class", StringType(), True),
)

SELECTED_GENES = _schema(
    ("run", StringType(), False),
    ("model", StringType(), False),
    ("fold", StringType(), False),
    ("position", IntegerType(), False),
    ("gene", StringType(), False),
    ("score", DoubleType(), True),
)

# Nested tuning: every candidate of every search (outer fold, or 'test' for the final fit).
TUNING = _schema(
    ("run", StringType(), False),
    ("model", StringType(), False),
    ("outer_fold", StringType(), False),
    ("candidate", LongType(), False),
    ("params", StringType(), True),
    ("metric", StringType(), False),
    ("inner_score", DoubleType(), True),
    ("inner_score_std", DoubleType(), True),
    ("inner_brier", DoubleType(), True),
    ("n_inner", LongType(), True),
    ("chosen", BooleanType(), False),
)

SCORED_SAMPLES = _schema(
    ("scored_at", TimestampType(), True),
    ("run", StringType(), False),
    ("model", StringType(), False),
    ("sample", StringType(), False),
    ("source", StringType(), True),
    ("probability_AML", DoubleType(), True),
    ("prediction", StringType(), True),
    ("missing_genes", IntegerType(), True),
    ("error", StringType(), True),
    ("input_scale", StringType(), True),
    ("warning", StringType(), True),
    *SCORING_FLAGS,
    # A multi-class bundle's calls (training.target lineage or subtype), 'unclassified' below the
    # class's threshold; null from an ALL/AML bundle. Added later: older tables get them on the next write.
    ("lineage", StringType(), True),
    ("lineage_probability", DoubleType(), True),
    ("subtype", StringType(), True),
    ("subtype_probability", DoubleType(), True),
)

FEATURE_BUILDS = _schema(   # one row per features build: what `gene_features` was built from
    ("fingerprint", StringType(), False),
    ("built_at", TimestampType(), True),
    ("n_samples", LongType(), True),
    ("n_genes", LongType(), True),
    # The build's id and the versions of gene_features and genes its commits made: a reader of
    # those versions knows which build (settings, samples) it reads; an append to a build would
    # record its new versions under the same id. Null in rows of older versions.
    ("build", StringType(), True),
    ("vectors_version", LongType(), True),
    ("genes_version", LongType(), True),
    # full: every sample's vector rebuilt (gene_features and genes overwritten); incremental: the new
    # samples' vectors appended to the stored ones in one commit (genes unchanged). n_built: vectors
    # this build wrote. The digests decide whether the next build may be incremental
    # (stages.features.incremental_refusal). Null in rows of older versions.
    ("kind", StringType(), True),
    ("n_built", LongType(), True),
    ("settings_digest", StringType(), True),
    ("universe_digest", StringType(), True),
    ("samples_digest", StringType(), True),
)

RUNS = _schema(
    ("run", StringType(), False),
    ("started_at", TimestampType(), True),
    ("finished_at", TimestampType(), True),
    ("status", StringType(), True),
    ("config_hash", StringType(), True),
    ("data_fingerprint", StringType(), True),
    ("code_version", StringType(), True),
    ("n_train", LongType(), True),
    ("n_test", LongType(), True),
    ("n_genes", LongType(), True),
    ("best_model", StringType(), True),
    ("bundle_dir", StringType(), True),    # relative to the lake root (absolute in rows of older versions)
    ("trained", BooleanType(), True),
    ("owner_host", StringType(), True),    # the process that runs it: host, pid, start token
    ("owner_pid", LongType(), True),
    ("owner_token", StringType(), True),
    ("heartbeat_at", TimestampType(), True),
)


def ensure_columns(lake, table: str, schema: StructType) -> None:
    """A table written by an older version gets the columns `schema` added since (null in its
    rows), in one rewrite before the first write that carries them; a newer table is left alone."""
    if not lake.exists(table):
        return
    if set(schema.fieldNames()) - set(lake.schema(table).fieldNames()):
        from .lake import with_missing_columns

        lake.rewrite(table, lambda frame: with_missing_columns(frame, schema), operation=f"add columns to {table}")
