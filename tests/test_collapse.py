"""The probe-to-gene rules: exact values on a tiny input, and the Spark and pandas forms equal for every setting."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from leukspark import schemas
from leukspark.errors import FeatureError
from leukspark.stages import collapse as C
from leukspark.stages.features import ProbeMapSummary, build_features, summarize_probe_map, summarize_probe_map_pd

# Probe annotations with every case the rules treat: padded and empty symbols, no symbol, multi-gene.
PROBES = [
    ("GPL1", "p1", ["TP53"]),
    ("GPL1", "p2", [" TP53 "]),          # trimmed: counts toward TP53
    ("GPL1", "p3", ["MPO", "CD33"]),     # multi-gene
    ("GPL1", "p4", []),                  # no symbol
    ("GPL1", "p5", None),                # no symbol
    ("GPL1", "p6", ["", "CD19"]),        # an empty symbol is not a gene: single-gene CD19
    ("GPL1", "p7", ["CD33"]),
    ("GPL1", "p8", ["MPO"]),
]
VALUES = {  # S1 log2, S2 linear (one value under the floor, one negative), S3 log2 with missing values
    "S1": {"p1": 5.0, "p2": 7.0, "p3": 9.0, "p4": 3.0, "p5": 1.0, "p6": 4.0, "p7": 6.0, "p8": 8.0},
    "S2": {"p1": 100.0, "p2": 10.0, "p3": 4000.0, "p6": 250.0, "p7": -5.0, "p8": 60000.0},
    "S3": {"p1": None, "p2": 6.0, "p3": 2.0, "p6": None, "p7": None, "p8": 11.0},
}
SCALES = {"S1": "log2", "S2": "linear", "S3": "log2"}
SCALINGS = {
    "none": {"transform": "none", "scale_per_sample": False},
    "log2": {"transform": "log2", "scale_per_sample": False},
    "auto": {"transform": "auto", "scale_per_sample": False},
    "auto+minmax": {"transform": "auto", "scale_per_sample": True},
    # rank features: linear values logged without the floor (log_floor auto), so S2's -5 and 10 keep their order
    "auto+rank": {"transform": "auto", "scale_per_sample": False, "normalize": "rank", "log_floor": "auto"},
}


def _expression_rows():
    return [("GSE1", sample, "GPL1", probe, value) for sample, values in VALUES.items() for probe, value in values.items()]


@pytest.fixture(scope="module")
def spark_inputs(spark):
    expression = spark.createDataFrame(_expression_rows(), schemas.EXPRESSION).cache()
    probes = spark.createDataFrame([(p, i, s, None) for p, i, s in PROBES], schemas.PLATFORM_PROBES).cache()
    samples = spark.createDataFrame([(s, "GPL1", SCALES[s]) for s in VALUES], "sample string, platform string, value_scale string")
    return expression, probes, samples


def _pandas_inputs():
    expression = pd.DataFrame(_expression_rows(), columns=schemas.EXPRESSION.fieldNames())
    expression["value"] = expression["value"].astype(float)
    probes = pd.DataFrame([(p, i, s, None) for p, i, s in PROBES], columns=schemas.PLATFORM_PROBES.fieldNames())
    return expression, probes


def _settings(aggregate: str, scaling: str) -> dict:
    return {"aggregate": aggregate, "log_floor": 20.0, **SCALINGS[scaling]}


def _as_dict(rows: pd.DataFrame) -> dict:
    return {(r.sample, r.gene): (None if pd.isna(r.value) else float(r.value)) for r in rows.itertuples()}


def _spark_genes(spark_inputs, multi_gene: str, settings: dict) -> dict:
    expression, probes, samples = spark_inputs
    rows = C.collapse(expression, samples, C.probe_gene_map(probes, multi_gene), settings).toPandas()
    return _as_dict(rows)


def _pandas_genes(multi_gene: str, settings: dict) -> dict:
    expression, probes = _pandas_inputs()
    return _as_dict(C.collapse_pd(expression, SCALES, C.probe_gene_map_pd(probes, multi_gene), settings))


def test_the_rules_give_these_exact_gene_values():
    # multi_gene drop, mean, no transform: p3 (multi) and p4/p5 (no symbol) are left out.
    genes = _pandas_genes("drop", _settings("mean", "none"))
    assert genes[("S1", "TP53")] == 6.0 and genes[("S1", "CD19")] == 4.0
    assert genes[("S1", "CD33")] == 6.0 and genes[("S1", "MPO")] == 8.0
    assert genes[("S3", "TP53")] == 6.0            # the missing probe is ignored, not counted as 0
    assert genes[("S3", "CD19")] is None           # every probe missing: the gene stays missing
    assert set(g for _, g in genes) == {"TP53", "CD19", "CD33", "MPO"}
    # each: p3 counts toward MPO and CD33; max picks the larger probe.
    each = _pandas_genes("each", _settings("max", "none"))
    assert each[("S1", "MPO")] == 9.0 and each[("S1", "CD33")] == 9.0
    # first: p3 counts toward MPO only.
    first = _pandas_genes("first", _settings("median", "none"))
    assert first[("S1", "MPO")] == 8.5 and first[("S1", "CD33")] == 6.0
    # auto: only the linear sample S2 is logged, each probe floored at 20 before the mean.
    auto = _pandas_genes("drop", _settings("mean", "auto"))
    assert auto[("S2", "TP53")] == pytest.approx((math.log2(100) + math.log2(20)) / 2)
    assert auto[("S2", "CD33")] == pytest.approx(math.log2(20))   # -5 floored
    assert auto[("S1", "TP53")] == 6.0                             # log2 sample untouched
    # mean_signal: the log2 of the mean signal 2**value, after the same scale step.
    signal = _pandas_genes("drop", _settings("mean_signal", "auto"))
    assert signal[("S2", "TP53")] == pytest.approx(math.log2((100 + 20) / 2))
    assert signal[("S1", "TP53")] == pytest.approx(math.log2((2 ** 5 + 2 ** 7) / 2))
    assert signal[("S3", "TP53")] == pytest.approx(6.0) and signal[("S3", "CD19")] is None
    # a linear sample kept as it is (transform none) is capped, not overflowed
    assert _pandas_genes("drop", _settings("mean_signal", "none"))[("S2", "MPO")] == pytest.approx(C.SIGNAL_CAP)
    # min-max per sample: S1's genes span 4..8; a missing gene stays missing.
    scaled = _pandas_genes("drop", _settings("mean", "auto+minmax"))
    assert scaled[("S1", "CD19")] == 0.0 and scaled[("S1", "MPO")] == 1.0 and scaled[("S1", "TP53")] == 0.5
    assert scaled[("S3", "CD19")] is None


@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("multi_gene", C.MULTI_GENE)
@pytest.mark.parametrize("aggregate", list(C.AGGREGATES))
def test_spark_and_pandas_forms_agree(spark_inputs, aggregate, multi_gene, scaling):
    settings = _settings(aggregate, scaling)
    from_spark, from_pandas = _spark_genes(spark_inputs, multi_gene, settings), _pandas_genes(multi_gene, settings)
    assert set(from_spark) == set(from_pandas) and from_spark
    for key, value in from_pandas.items():
        if value is None:
            assert from_spark[key] is None or math.isnan(from_spark[key]), key
        else:
            assert from_spark[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("read_files", [False, True], ids=["relational", "per-sample"])
def test_the_feature_stage_vectors_are_the_pandas_matrix(spark, spark_inputs, expression_files, config, read_files):
    expression, probes, samples = spark_inputs
    settings = {**config["features"], "multi_gene": "each", "aggregate": "mean", "min_genes": 1}
    build = build_features(expression, probes, samples, settings,
                           expression_files=expression_files if read_files else None)
    vectors, genes = build.vectors, build.genes
    # p4 and p5 have no symbol, p3 names two genes (p6's empty symbol is not a second gene)
    assert build.summary == ProbeMapSummary(probes_in=8, probes_without_symbol=2, probes_multi_gene=1,
                                            probes_used=6, genes_out=4, genes_unmeasured=0)
    assert (build.n_samples, build.platforms) == (3, ["GPL1"])
    gene_rows = list(genes.sort_values("position").itertuples(index=False, name=None))
    # alphabetical; every gene has a value somewhere; p3 (MPO /// CD33) counts toward both
    assert gene_rows == [(0, "CD19", 1), (1, "CD33", 2), (2, "MPO", 2), (3, "TP53", 2)]
    gene_order = [g for _, g, _ in gene_rows]
    stored = {r["sample"]: np.asarray(r["features"], dtype=float) for r in vectors.collect()}
    expression_pd, probes_pd = _pandas_inputs()
    expected = C.gene_matrix(C.collapse_pd(expression_pd, SCALES, C.probe_gene_map_pd(probes_pd, "each"), settings),
                             list(VALUES), gene_order)
    np.testing.assert_allclose(np.vstack([stored[s] for s in VALUES]), expected, rtol=1e-12)


def test_a_bad_setting_is_a_feature_error_in_both_forms(spark_inputs):
    _, probes, _ = spark_inputs
    _, probes_pd = _pandas_inputs()
    with pytest.raises(FeatureError, match="multi_gene"):
        C.probe_gene_map(probes, "all")
    with pytest.raises(FeatureError, match="multi_gene"):
        C.probe_gene_map_pd(probes_pd, "all")
    with pytest.raises(FeatureError, match="aggregate"):
        C.gene_values_pd(_pandas_inputs()[0], C.probe_gene_map_pd(probes_pd, "drop"), "sum")


@pytest.fixture(scope="module")
def expression_files(tmp_path_factory):
    """The tiny expression as Parquet files the way ingest writes them (a row group per sample),
    with S2 split over two files, as a rewrite can leave a sample."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("expression")
    frame = _pandas_inputs()[0]
    first = pd.concat([frame[frame["sample"] == "S1"], frame[frame["sample"] == "S2"].iloc[:3]])
    second = pd.concat([frame[frame["sample"] == "S2"].iloc[3:], frame[frame["sample"] == "S3"]])
    paths = []
    for index, part in enumerate((first, second)):
        path = folder / f"part-{index}.parquet"
        with pq.ParquetWriter(path, pa.Schema.from_pandas(part, preserve_index=False)) as writer:
            for _, rows in part.groupby("sample", sort=False):
                writer.write_table(pa.Table.from_pandas(rows, preserve_index=False))
        paths.append(str(path))
    return tuple(paths)


@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("multi_gene", C.MULTI_GENE)
@pytest.mark.parametrize("aggregate", C.PER_SAMPLE_AGGREGATES)
def test_the_per_sample_form_over_files_gives_the_pandas_vectors(spark, expression_files, aggregate, multi_gene,
                                                                  scaling):
    settings = _settings(aggregate, scaling)
    expression_pd, probes_pd = _pandas_inputs()
    probe_map = C.probe_gene_map_pd(probes_pd, multi_gene)
    gene_order = sorted(probe_map["gene"].unique())
    positioned = probe_map.merge(pd.DataFrame({"gene": gene_order, "position": range(len(gene_order))}), on="gene")
    # S1 and S3 lie whole in one row group (finished in their task); S2's parts are combined by the groupBy.
    samples = pd.DataFrame({"sample": list(SCALES), "value_scale": list(SCALES.values()),
                            "n_values": [len(VALUES[s]) for s in SCALES]})
    plan = C.vector_plan(positioned, samples, settings, len(gene_order))
    frame, measured = C.collapse_files(spark, expression_files, plan, n_tasks=2)
    vectors = frame.collect()
    got = np.vstack([np.asarray(r["features"], dtype=float) for r in sorted(vectors, key=lambda r: r["sample"])])
    expected = C.gene_matrix(C.collapse_pd(expression_pd, SCALES, probe_map, settings), sorted(SCALES), gene_order)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.isnan(got).sum() == np.isnan(expected).sum() > 0  # S3's CD19 stays unmeasured
    np.testing.assert_array_equal(measured, np.flatnonzero(np.isfinite(expected).any(axis=0)))


def test_a_task_finishes_the_samples_it_sees_whole_and_leaves_split_ones_to_the_groupby(expression_files):
    import pyarrow as pa

    _, probes_pd = _pandas_inputs()
    probe_map = C.probe_gene_map_pd(probes_pd, "drop")
    positioned = probe_map.assign(position=probe_map["gene"].map({g: i for i, g in enumerate(sorted(probe_map["gene"].unique()))}))
    samples = pd.DataFrame({"sample": list(SCALES), "value_scale": list(SCALES.values()),
                            "n_values": [len(VALUES[s]) for s in SCALES]})
    plan = C.vector_plan(positioned, samples, _settings("mean", "none"), positioned["position"].nunique())
    batches = C.read_partials(plan)(iter([pa.RecordBatch.from_pydict({"path": list(expression_files)})]))
    emitted = [(s, c) for batch in batches for s, c in zip(batch.column("sample").to_pylist(),
                                                           batch.column("complete").to_pylist())]
    assert sorted(emitted) == [("S1", True), ("S2", False), ("S2", False), ("S3", True)]


@pytest.mark.parametrize("multi_gene", C.MULTI_GENE)
def test_the_probe_map_summary_is_the_same_in_both_forms(spark_inputs, multi_gene):
    _, probes, _ = spark_inputs
    _, probes_pd = _pandas_inputs()
    from_spark = summarize_probe_map(probes, C.probe_gene_map(probes, multi_gene), ["GPL1"])
    from_pandas = summarize_probe_map_pd(probes_pd, C.probe_gene_map_pd(probes_pd, multi_gene))
    assert from_spark == from_pandas
    # counted from PROBES by hand: every probe with a symbol is used unless it is multi-gene under drop
    used = {"drop": 5, "first": 6, "each": 6}[multi_gene]
    assert (from_pandas.probes_in, from_pandas.probes_used, from_pandas.genes_out) == (8, used, 4)


def test_a_gene_no_sample_measures_is_left_out_and_counted(spark, spark_inputs, expression_files, config):
    expression, probes, samples = spark_inputs
    settings = {**config["features"], "multi_gene": "drop", "aggregate": "mean", "min_genes": 1}
    only_s3 = samples.where("sample = 'S3'")  # S3 has no CD19 (p6) and no CD33 (p7) value
    build = build_features(expression, probes, only_s3, settings, expression_files=expression_files)
    assert build.genes.sort_values("position")["gene"].tolist() == ["MPO", "TP53"]
    assert build.genes["position"].tolist() == [0, 1]
    assert (build.summary.genes_out, build.summary.genes_unmeasured, build.n_samples) == (2, 2, 1)
    assert "2 annotated genes without a value in any sample left out" in build.summary.text()


def test_row_groups_of_unwanted_samples_are_not_read(expression_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    groups = [(path, g) for path in expression_files for g in range(pq.ParquetFile(path).num_row_groups)]
    held = {(path, g): pq.ParquetFile(path).read_row_group(g, columns=["sample"]).column(0)[0].as_py()
            for path, g in groups}
    wanted = ["S1", "S3"]
    for (path, g), sample in held.items():
        metadata = pq.ParquetFile(path).metadata
        assert C.sample_column_index(metadata) == metadata.schema.names.index("sample")
        assert C._may_hold_wanted(metadata.row_group(g), wanted, C.sample_column_index(metadata)) == (sample in wanted)
    _, probes_pd = _pandas_inputs()
    probe_map = C.probe_gene_map_pd(probes_pd, "drop")
    positioned = probe_map.assign(position=probe_map["gene"].map({g: i for i, g in enumerate(sorted(probe_map["gene"].unique()))}))
    samples = pd.DataFrame({"sample": wanted, "value_scale": "log2", "n_values": [len(VALUES[s]) for s in wanted]})
    plan = C.vector_plan(positioned, samples, _settings("mean", "none"), positioned["position"].nunique())
    batches = C.read_partials(plan)(iter([pa.RecordBatch.from_pydict({"path": list(expression_files)})]))
    assert sorted(s for batch in batches for s in batch.column("sample").to_pylist()) == wanted


def _vectors_in(folder, names) -> dict:
    import pyarrow.parquet as pq

    rows = {}
    for name in names:
        table = pq.read_table(folder / name)
        for sample, vector in zip(table.column("sample").to_pylist(), table.column("features").to_pylist()):
            assert sample not in rows, f"{sample} written twice"
            rows[sample] = np.asarray(vector, dtype=float)
    return rows


@pytest.mark.parametrize("aggregate", C.PER_SAMPLE_AGGREGATES)
def test_tasks_that_write_their_own_vector_files_give_the_per_sample_vectors(spark, expression_files, aggregate,
                                                                             tmp_path):
    expression_pd, probes_pd = _pandas_inputs()
    probe_map = C.probe_gene_map_pd(probes_pd, "each")
    gene_order = sorted(probe_map["gene"].unique())
    positioned = probe_map.merge(pd.DataFrame({"gene": gene_order, "position": range(len(gene_order))}), on="gene")
    samples = pd.DataFrame({"sample": list(SCALES), "value_scale": list(SCALES.values()),
                            "n_values": [len(VALUES[s]) for s in SCALES]})
    settings = _settings(aggregate, "auto+minmax")
    plan = C.vector_plan(positioned, samples, settings, len(gene_order))
    names, measured = C.collapse_files_to(spark, expression_files, plan, tmp_path)
    # every file in the folder is one the step names, and no half-written one is left
    assert names == sorted(names) and sorted(p.name for p in tmp_path.iterdir()) == names
    written = _vectors_in(tmp_path, names)
    assert sorted(written) == sorted(SCALES)   # S2, split over two files, written once by the combining step
    expected = C.gene_matrix(C.collapse_pd(expression_pd, SCALES, probe_map, settings), sorted(SCALES), gene_order)
    np.testing.assert_allclose(np.vstack([written[s] for s in sorted(SCALES)]), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(measured, np.flatnonzero(np.isfinite(expected).any(axis=0)))


def test_written_vectors_lose_the_genes_no_sample_measures(spark, spark_inputs, expression_files, config, tmp_path):
    expression, probes, samples = spark_inputs
    settings = {**config["features"], "multi_gene": "drop", "aggregate": "mean", "min_genes": 1}
    only_s3 = samples.where("sample = 'S3'")  # S3 has no CD19 (p6) and no CD33 (p7) value
    build = build_features(expression, probes, only_s3, settings, expression_files=expression_files,
                           vectors_to=tmp_path)
    assert build.genes["gene"].tolist() == ["MPO", "TP53"] and build.genes["position"].tolist() == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(build.vector_files)
    assert all(name.startswith("kept-") for name in build.vector_files)
    written = _vectors_in(tmp_path, build.vector_files)
    # S3: MPO is p8 alone (p3 is multi-gene, dropped) = 11.0; TP53 is p2 alone (p1 missing) = 6.0
    np.testing.assert_allclose(written["S3"], [11.0, 6.0])
    assert [r["features"] for r in build.vectors.collect()] == [[11.0, 6.0]]
