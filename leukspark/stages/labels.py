"""Labels: ALL or AML per sample from configured rules, or from a label file.

Every sample ends up in exactly one of two tables: `labels` (sample, label, subtype, rule,
lineage) or `excluded_samples` (sample, subtype, reason). Nothing is dropped silently. The
lineage (AML, B-ALL, T-ALL) comes from `labels.lineage_rules` applied to the subtype text, or
from a label file's `lineage` column.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import schemas
from ..errors import LabelError
from ..matrix import text_encoding
from ..subtypes import LINEAGES

CHARACTERISTIC_PREFIX = "characteristics."
PLAIN_FIELDS = {"title", "source", "series", "platform"}
LABEL_VALUES = ("ALL", "AML")
# A label file has one short line per sample: 100,000 samples fit in a few MB.
MAX_LABEL_FILE_BYTES = 64 * 1024 * 1024


def field_column(field: str) -> Column:
    """The samples-table column a rule looks at: a characteristic key, title or source."""
    if field.startswith(CHARACTERISTIC_PREFIX):
        return F.col("characteristics").getItem(field[len(CHARACTERISTIC_PREFIX):])
    if field in PLAIN_FIELDS:
        return F.col(field)
    raise LabelError(
        f"label rule field {field!r} is not one of {', '.join(sorted(PLAIN_FIELDS))} "
        f"or '{CHARACTERISTIC_PREFIX}<key>'"
    )


def lineage_column(subtype: Column, lineage_rules: list) -> Column:
    """The lineage of the first rule whose pattern matches `subtype` (null when none does)."""
    if not lineage_rules:
        return F.lit(None).cast("string")
    return F.coalesce(*[F.when(F.coalesce(subtype.rlike(rule["pattern"]), F.lit(False)), F.lit(rule["lineage"]))
                        for rule in lineage_rules])


def assign_labels(samples: DataFrame, label_config: dict) -> tuple[DataFrame, DataFrame]:
    """Apply the rules to `samples`; return (labels, excluded_samples)."""
    rules = label_config["rules"]
    subtype = field_column(label_config["subtype_field"])
    matches = [
        F.when(F.coalesce(field_column(rule["field"]).rlike(rule["pattern"]), F.lit(False)),
               F.struct(F.lit(rule["label"]).alias("label"), F.lit(f"rule {i}: {rule['field']} ~ {rule['pattern']}").alias("rule")))
        for i, rule in enumerate(rules)
    ]
    matched = (samples
               .select("sample", subtype.alias("subtype"),
                       F.filter(F.array(*matches), lambda m: m.isNotNull()).alias("matches"))
               .withColumn("labels", F.array_distinct(F.transform("matches", lambda m: m["label"]))))
    labels = (matched.where(F.size("labels") == 1)
              .select("sample", F.col("labels")[0].alias("label"), "subtype", F.col("matches")[0]["rule"].alias("rule"),
                      lineage_column(F.col("subtype"), label_config.get("lineage_rules", [])).alias("lineage")))
    excluded = (matched.where(F.size("labels") != 1)
                .select("sample", "subtype",
                        F.when(F.size("labels") == 0, F.lit("no label rule matched"))
                        .otherwise(F.concat(F.lit("rules of both labels matched: "),
                                            F.array_join(F.transform("matches", lambda m: m["rule"]), "; ")))
                        .alias("reason")))
    return labels, excluded


def read_label_file(spark: SparkSession, path: str | Path, *, sample_order: list[str] | None = None) -> DataFrame:
    """Labels from a CSV/TSV (sample, label[, lineage][, subtype]) or a GSEA .cls file (needs the matrix's
    sample order)."""
    return spark.createDataFrame(read_label_rows(path, sample_order=sample_order), schemas.LABELS)


def read_label_rows(path: str | Path, *, sample_order: list[str] | None = None) -> list[tuple]:
    """(sample, label, subtype, rule, lineage) rows of a label file (lineage None unless the file has a
    `lineage` column); a malformed file is a LabelError naming it."""
    path, text = Path(path), _label_text(path)
    return _read_cls(path, text, sample_order) if path.suffix.lower() == ".cls" else _read_label_table(path, text)


def label_file_column(path: str | Path, column: str) -> dict[str, str]:
    """sample -> value of another column of a CSV/TSV label file (e.g. the centre a sample came from,
    for `split.group_by`); a missing column, or a sample without a value, is a LabelError naming it."""
    path = Path(path)
    if path.suffix.lower() == ".cls":
        raise LabelError(f"{path}: a GSEA .cls file has no column {column!r}; give groups in a CSV label file")
    lines = _label_text(path).splitlines()
    reader = csv.DictReader(lines, dialect="excel-tab" if "\t" in lines[0] else "excel")
    fields = {name.lower().strip(): name for name in (reader.fieldnames or [])}
    if column.lower() not in fields or "sample" not in fields:
        raise LabelError(f"{path}: no column {column!r} to group samples by; found {reader.fieldnames}")
    values = {}
    for line_number, record in enumerate(reader, start=2):
        sample = (record[fields["sample"]] or "").strip()
        value = (record[fields[column.lower()]] or "").strip()
        if not value:
            raise LabelError(f"{path}: line {line_number}: sample {sample} has no {column!r} to group it by")
        values[sample] = value
    return values


def _label_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: label file does not exist")
    if (size := path.stat().st_size) > MAX_LABEL_FILE_BYTES:
        raise LabelError(f"{path}: {size:,} bytes, larger than any label table ({MAX_LABEL_FILE_BYTES // 2**20} MiB "
                         "holds millions of samples): is it the expression matrix?")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode(text_encoding(data))
    except UnicodeDecodeError as error:
        raise LabelError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}): save it as UTF-8") from None
    if not text.strip():
        raise LabelError(f"{path}: the label file is empty")
    return text


def check_label_samples(samples: DataFrame, given: DataFrame, path: str | Path, strict: bool) -> str | None:
    """Samples the label file names that the data lacks: a note to print, or a LabelError when strict."""
    unknown = [r["sample"] for r in given.select("sample").join(samples.select("sample"), "sample", "left_anti")
               .orderBy("sample").collect()]
    if not unknown:
        return None
    shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    message = f"{path}: {len(unknown)} labelled sample(s) are not in the data: {shown}"
    if strict:
        raise LabelError(f"{message} (labels.strict is true)")
    return f"{message}; ignored (set labels.strict: true to fail instead)"


NO_MEASURED_VALUE = "no measured value: every value of the sample is missing"


def exclude_unmeasured(samples: DataFrame, labels: DataFrame, excluded: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Labelled samples without a single measured value move to `excluded` (with that reason):
    training would see only the means it imputes, and count a call on them; predict refuses them."""
    unmeasured = samples.where(F.col("n_values").isNotNull()
                               & (F.col("n_values") - F.coalesce(F.col("n_missing"), F.lit(0)) <= 0)).select("sample")
    moved = labels.join(unmeasured, "sample").select("sample", "subtype", F.lit(NO_MEASURED_VALUE).alias("reason"))
    return (labels.join(unmeasured, "sample", "left_anti"),
            excluded.select("sample", "subtype", "reason").unionByName(moved))


def labels_from_table(samples: DataFrame, given: DataFrame, lineage_rules: list | None = None) -> tuple[DataFrame, DataFrame]:
    """Join user-given labels to the stored samples: unknown labels and unlabeled samples are excluded.
    A lineage the file does not give comes from `lineage_rules` applied to the subtype."""
    joined = (samples.select("sample").join(given, "sample", "left")
              .withColumn("lineage", F.coalesce(F.col("lineage"), lineage_column(F.col("subtype"), lineage_rules or []))))
    labels = joined.where(F.col("label").isin(*LABEL_VALUES)).select(*schemas.LABELS.fieldNames())
    excluded = (joined.where(~F.coalesce(F.col("label").isin(*LABEL_VALUES), F.lit(False)))
                .select("sample", "subtype",
                        F.when(F.col("label").isNull(), F.lit("no label in the label file"))
                        .otherwise(F.concat(F.lit("label is neither ALL nor AML: "), F.col("label")))
                        .alias("reason")))
    return labels, excluded


def label_summary(labels: DataFrame, excluded: DataFrame) -> list[tuple[str, str, int]]:
    """(subtype, ALL|AML|excluded, count) rows, for the printed summary."""
    kept = labels.groupBy("subtype", "label").count().collect()
    dropped = excluded.groupBy("subtype").count().collect()
    rows = [(r["subtype"] or "-", r["label"], r["count"]) for r in kept]
    rows += [(r["subtype"] or "-", "excluded", r["count"]) for r in dropped]
    return sorted(rows, key=lambda r: (r[1], r[0]))


def format_label_summary(rows: list[tuple[str, str, int]]) -> str:
    width = max([len(r[0]) for r in rows] + [7])
    lines = [f"{'subtype':<{width}}  {'label':<8}  {'samples':>7}"]
    totals: dict[str, int] = {}
    for subtype, label, count in rows:
        lines.append(f"{subtype:<{width}}  {label:<8}  {count:>7}")
        totals[label] = totals.get(label, 0) + count
    lines.append("-" * (width + 19))
    for label in ("ALL", "AML", "excluded"):
        lines.append(f"{'total':<{width}}  {label:<8}  {totals.get(label, 0):>7}")
    return "\n".join(lines)


def _read_label_table(path: Path, text: str) -> list[tuple]:
    lines = text.splitlines()
    dialect = "excel-tab" if "\t" in lines[0] else "excel"
    reader = csv.DictReader(lines, dialect=dialect)
    try:
        return _label_table_rows(path, reader)
    except csv.Error as error:  # a cell beyond csv's field limit, a NUL byte
        raise LabelError(f"{path}: line {reader.line_num}: not a readable label table: {error}") from None


def _label_table_rows(path: Path, reader: csv.DictReader) -> list[tuple]:
    """(sample, label, subtype, rule) rows read from a label table's `reader`."""
    fields = {name.lower().strip(): name for name in (reader.fieldnames or [])}
    if "sample" not in fields or "label" not in fields:
        raise LabelError(f"{path}: a label file needs columns 'sample' and 'label'; found {reader.fieldnames}")
    rows, seen = [], set()
    for line_number, record in enumerate(reader, start=2):
        sample = (record[fields["sample"]] or "").strip()
        label = (record[fields["label"]] or "").strip().upper()
        if not sample:
            raise LabelError(f"{path}: line {line_number}: empty sample id")
        if sample in seen:
            raise LabelError(f"{path}: line {line_number}: sample {sample} is labelled twice")
        seen.add(sample)
        subtype = (record.get(fields.get("subtype", ""), "") or "").strip() or label
        lineage = (record.get(fields.get("lineage", ""), "") or "").strip() or None
        if lineage is not None and lineage not in LINEAGES:
            raise LabelError(f"{path}: line {line_number}: lineage {lineage!r} of sample {sample} is not one of "
                             f"{', '.join(LINEAGES)}")
        rows.append((sample, label, subtype, f"label file {path.name}", lineage))
    if not rows:
        raise LabelError(f"{path}: no labels below the header line")
    return rows


def _read_cls(path: Path, text: str, sample_order: list[str] | None) -> list[tuple]:
    """GSEA categorical .cls: line 1 'N K 1', line 2 '# names', line 3 one class per sample."""
    if sample_order is None:
        raise LabelError(f"{path}: a .cls file labels samples by position; it needs the matrix it belongs to")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 3 or not lines[1].startswith("#"):
        raise LabelError(f"{path}: not a categorical GSEA .cls file (expected 3 lines: counts, '# names', classes)")
    header = lines[0].split()
    if len(header) != 3 or not all(part.isdigit() for part in header):
        raise LabelError(f"{path}: line 1: a .cls file starts with three integers (samples, classes, 1); "
                         f"got {lines[0][:40]!r}")
    classes = lines[2].split()
    if len(classes) != len(sample_order) or int(header[0]) != len(classes):
        raise LabelError(f"{path}: {len(classes)} class entries for {len(sample_order)} samples in the matrix")
    names = lines[1].lstrip("#").split()
    rows = []
    for sample, value in zip(sample_order, classes):
        label = names[int(value)] if value.isdigit() and names and int(value) < len(names) else value
        rows.append((sample, label.upper(), label, f"label file {path.name}", None))
    return rows
