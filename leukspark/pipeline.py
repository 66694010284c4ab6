"""The pipeline's steps as table-to-table operations on a lake.

Each step reads its input tables, calls the pure stage functions in `leukspark.stages`,
and writes its output tables (one commit each). Jobs and the CLI call these; they hold no
logic of their own.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import __version__, schemas
from .config import RANGES, config_hash
from .errors import (ConfigError, FeaturesReplacedError, InputError, LabelError, SplitError, TableError,
                     storage_error)
from .lake import Lake, local_path, stored_path, with_missing_columns
from .runs import LiveRun, RunLedger, RunLog
from .stages import features as feature_stage
from .stages import labels as label_stage
from .stages import split as split_stage
from .stages import train as train_stage
from .stages.ingest import IngestReport, ingest_sources
from . import evaluation, tuning

log = logging.getLogger(__name__)

STAGES = ("ingest", "labels", "features", "split", "train", "report")


@dataclass
class TrainingOutcome:
    run_id: str
    metrics: pd.DataFrame
    leaderboard_text: str
    best_model: str
    bundle_dir: str


@dataclass
class Pipeline:
    spark: SparkSession
    lake: Lake
    config: dict
    echo: Callable[[str], None] = print
    timings: dict = field(default_factory=dict)
    groups: pd.Series | None = None   # sample -> group, set by a grouped split step
    # The features this run trains on: {"build": id, "fingerprint": ...} of its own features step,
    # or {"fingerprint": ...} when the step found the stored build current; None before (train then
    # asks for the fingerprint of its own samples, labels and settings).
    own_features: dict | None = None
    # How long train waits for another writer's features build that is between its commits.
    feature_build_wait_s: float = 30.0

    # -- steps ----------------------------------------------------------------------------
    def ingest(self, sources: list[str], *, annotation: str | None = None,
               platform: str | None = None) -> IngestReport:
        report = ingest_sources(self.spark, self.lake, sources, self.config, annotation=annotation,
                                platform=platform)
        self.echo(report.summary())
        return report

    def labels(self, label_file: str | None = None, *, sample_order: list[str] | None = None) -> tuple[int, int]:
        samples = self.lake.read("samples")
        if label_file:
            given = label_stage.read_label_file(self.spark, label_file, sample_order=sample_order)
            if note := label_stage.check_label_samples(samples, given, label_file, self.config["labels"]["strict"]):
                self.echo(note)
            labels, excluded = label_stage.labels_from_table(samples, given, self.config["labels"]["lineage_rules"])
        else:
            labels, excluded = label_stage.assign_labels(samples, self.config["labels"])
        labels, excluded = label_stage.exclude_unmeasured(samples, labels, excluded)
        labels, excluded = labels.localCheckpoint(), excluded.localCheckpoint()
        unmeasured = sorted(r["sample"] for r in excluded.where(F.col("reason") == label_stage.NO_MEASURED_VALUE)
                            .select("sample").collect())
        if unmeasured:
            self.echo(f"excluded {len(unmeasured)} labelled sample(s) with no measured value (every value "
                      f"missing): {', '.join(unmeasured[:20])}{' ...' if len(unmeasured) > 20 else ''}")
        summary = label_stage.label_summary(labels, excluded)
        if not any(row[1] in ("ALL", "AML") for row in summary):
            raise LabelError("no sample got a label: check labels.rules in the configuration or pass --labels")
        self._add_missing_columns("labels", schemas.LABELS)
        self._overwrite_if_changed("labels", labels.select(*schemas.LABELS.fieldNames()), "labels")
        self._overwrite_if_changed("excluded_samples", excluded.select(*schemas.EXCLUDED_SAMPLES.fieldNames()),
                                   "labels")
        self.echo(label_stage.format_label_summary(summary))
        kept = sum(r[2] for r in summary if r[1] != "excluded")
        return kept, sum(r[2] for r in summary if r[1] == "excluded")

    def features(self, *, only_if_changed: bool = False) -> feature_stage.ProbeMapSummary | None:
        """Build `gene_features` and `genes` for the labelled samples: only the new samples' vectors,
        appended in one commit, when the stored build's settings, gene universe and samples still hold
        (`feature_stage.incremental_refusal`); otherwise every vector, saying why in one line."""
        fingerprint = self.fingerprint(("samples", "labels"))
        if only_if_changed and self.run_log.features_built_from() == fingerprint:
            self.own_features = {"fingerprint": fingerprint}
            self.echo("features are up to date with samples, labels and settings: nothing to do")
            return None
        self.own_features, build_id = None, uuid.uuid4().hex[:12]   # a failed build leaves none of its own
        if not self.lake.exists("platform_probes"):
            raise TableError("no platform annotation in the lake: ingest a family SOFT or pass --annotation")
        labelled = (self.lake.read("samples").select("sample", "platform", "value_scale", "n_values", "values_checksum")
                    .join(self.lake.read("labels").select("sample"), "sample"))
        # The files are read as they are only where no deletion vector can hide rows in them; the
        # tasks then write the vectors into the table's staging folder themselves.
        files = self.lake.active_files("expression") if self.lake.engine == "delta-rs" else None
        rows = labelled.toPandas()
        appended = self._incremental_features(build_id, fingerprint, rows, files, only_if_changed)
        if appended is not None:
            return appended
        return self._full_features(build_id, fingerprint, labelled, rows, files)

    def _full_features(self, build_id: str, fingerprint: str, labelled: DataFrame, rows: pd.DataFrame,
                       files: tuple[str, ...] | None) -> feature_stage.ProbeMapSummary:
        operation = f"features {build_id}"
        staged = self.lake.new_staging("gene_features") if files else None
        try:
            build = feature_stage.build_features(self.lake.read("expression"), self.lake.read("platform_probes"),
                                                 labelled.drop("values_checksum"), self.config["features"],
                                                 expression_files=files,
                                                 vectors_to=staged.directory if staged else None)
            held = (_vector_samples([staged.directory / n for n in build.vector_files])
                    if build.vector_files and build.universe else None)
            # Vectors first: the big commit is the one that can lose to other writers or fail, and
            # then `genes` still describes the vectors that are stored.
            if build.vector_files:
                vectors = self.lake.commit_staged(staged, schemas.GENE_FEATURES, overwrite=True, operation=operation)
                staged = None   # committed: its files are the table's now
            else:  # an aggregate the per-sample form does not make (median), or no vector at all
                if staged is not None:
                    self.lake.discard_staged(staged)
                    staged = None
                vectors = self.lake.overwrite("gene_features", build.vectors, operation=operation)
            genes = self.lake.overwrite_small("genes", build.genes, schemas.GENES, operation=operation)
        except BaseException:
            if staged is not None:
                self.lake.discard_staged(staged)
            raise
        checksums = dict(zip(rows["sample"], rows["values_checksum"]))
        self._record_feature_build(fingerprint, build_id, (len(rows), build.summary.genes_out), vectors.version,
                                   genes.version, kind="full", n_built=len(held) if held is not None else len(rows),
                                   universe=build.universe,
                                   samples=None if held is None else {s: checksums[s] for s in held})
        self.echo(build.summary.text())
        return build.summary

    def _record_feature_build(self, fingerprint: str, build_id: str, sizes: tuple[int, int], vectors_version: int,
                              genes_version: int, *, kind: str, n_built: int, universe: str | None,
                              samples: dict | None) -> None:
        """Recorded last: a build that fails half-way leaves the previous record, so it is rebuilt."""
        record = pd.DataFrame([(fingerprint, datetime.now(timezone.utc), sizes[0], sizes[1], build_id, vectors_version,
                                genes_version, kind, n_built, feature_stage.settings_digest(self.config["features"]),
                                universe, None if samples is None else feature_stage.samples_digest(samples))],
                              columns=schemas.FEATURE_BUILDS.fieldNames())
        self._ensure_feature_builds_schema()
        self.lake.append_small("feature_builds", record, schemas.FEATURE_BUILDS, operation=f"features {build_id}")
        self.own_features = {"build": build_id, "fingerprint": fingerprint}

    def _stored_build(self) -> tuple[feature_stage.StoredBuild | None, dict | None]:
        """The stored finished build (its digests and the samples its vectors hold) and its record."""
        record = self.run_log.current_build()
        if record is None:
            return None, None
        version, files = self.lake.snapshot_files("gene_features")
        if version != record["vectors_version"]:   # another writer committed meanwhile
            return None, None
        text = {k: record.get(k) if isinstance(record.get(k), str) else None
                for k in ("settings_digest", "universe_digest", "samples_digest")}
        return feature_stage.StoredBuild(text["settings_digest"], text["universe_digest"], text["samples_digest"],
                                         _vector_samples([local_path(f) for f in files])), record

    def _incremental_features(self, build_id: str, fingerprint: str, rows: pd.DataFrame,
                              files: tuple[str, ...] | None, only_if_changed: bool
                              ) -> feature_stage.ProbeMapSummary | None:
        """Append the new samples' vectors to a stored build that still holds; None (having said why
        in one line) when every vector must be rebuilt. With no new sample, only a rerun
        (`only_if_changed`: labels changed) keeps the stored vectors; the features step asked for
        explicitly rebuilds them."""
        cfg = self.config["features"]
        per_sample = bool(files) and cfg["aggregate"] in feature_stage.PER_SAMPLE_AGGREGATES
        stored, record = self._stored_build() if per_sample else (None, None)
        checksums = dict(zip(rows["sample"], rows["values_checksum"]))
        reason = feature_stage.incremental_refusal(stored, cfg, checksums, per_sample)
        if reason is None and not only_if_changed and set(checksums) <= stored.vector_samples:
            reason = "no new sample to append (the features step asked for rebuilds every vector)"
        if reason is None:
            platforms = sorted(p for p in rows["platform"].dropna().unique())
            universe = feature_stage.gene_universe(self.lake.read("platform_probes"), platforms, cfg)
            reason = (None if universe.digest == stored.universe else
                      "the gene universe changed (the labelled samples' platforms or their annotation)")
        if reason is None:
            reason = self._append_increment(build_id, fingerprint, stored, record, universe, rows, files)
        if reason is None:
            return universe.summary.measured(self.lake.read_small("genes", columns=["gene"]).shape[0])
        self.echo(f"features: rebuilding every sample's vector: {reason}")
        return None

    def _append_increment(self, build_id: str, fingerprint: str, stored, record: dict, universe, rows: pd.DataFrame,
                          files: tuple[str, ...]) -> str | None:
        """Build the new samples' vectors and append them in one commit (genes unchanged); a reason
        when they cannot be appended (nothing committed then)."""
        genes_version, stored_genes = self.lake.read_small_versioned("genes")
        if genes_version != record["genes_version"]:
            return "the genes table moved since the stored build"
        new_rows = rows[~rows["sample"].isin(stored.vector_samples)]
        staged = self.lake.new_staging("gene_features")
        try:
            increment = (feature_stage.build_increment(self.spark, files, universe, new_rows, stored_genes,
                                                       self.config["features"], staged.directory)
                         if len(new_rows) else feature_stage.Increment((), 0))
            if increment.refusal is not None:
                return increment.refusal
            held = _vector_samples([staged.directory / n for n in increment.vector_files])
            version = record["vectors_version"]
            if increment.vector_files:   # one commit, on top of the version the stored samples were read from
                version = self.lake.commit_staged(staged, schemas.GENE_FEATURES, operation=f"features {build_id}",
                                                  based_on=version).version
                staged = None
        finally:
            if staged is not None:
                self.lake.discard_staged(staged)
        checksums = dict(zip(rows["sample"], rows["values_checksum"]))
        self._record_feature_build(fingerprint, build_id, (len(rows), len(stored_genes)), version, genes_version,
                                   kind="incremental", n_built=len(held), universe=universe.digest,
                                   samples={s: checksums[s] for s in stored.vector_samples | held})
        self.echo(f"features: appended the vectors of {len(held)} new sample(s) to the {len(stored.vector_samples)} "
                  f"stored in one commit ({len(stored_genes):,} genes unchanged)" if held else
                  f"features: no new sample; the {len(stored.vector_samples)} stored vectors are kept (labels changed)")
        return None

    def _ensure_feature_builds_schema(self) -> None:
        """A feature_builds table of an older version gets the build columns (null in its rows), once."""
        if self.lake.exists("feature_builds") and (set(schemas.FEATURE_BUILDS.fieldNames())
                                                   - set(self.lake.schema("feature_builds").fieldNames())):
            self.lake.rewrite("feature_builds", lambda frame: with_missing_columns(frame, schemas.FEATURE_BUILDS),
                              operation="add feature build columns")

    def check_feature_build(self, vectors_version: int, genes_version: int) -> None:
        """FeaturesReplacedError unless `gene_features` at `vectors_version` and `genes` at
        `genes_version` are one finished build, and that build is this run's own (its features
        step's build, or one of its own samples, labels and features settings)."""
        where = f"gene_features at {self.lake.path('gene_features')} (version {vectors_version})"
        build = self.run_log.build_of_vectors(vectors_version)
        if build is None:
            raise _BuildInProgress(
                f"{where} was not recorded by a finished features build (another run is rebuilding the "
                "features, or a build stopped half-way): run the features step again")
        if build["genes_version"] != genes_version:
            raise _BuildInProgress(
                f"{where} and genes (version {genes_version}) come from different features builds (another "
                "run rebuilt the features meanwhile): run again")
        own = self.own_features or {"fingerprint": self.fingerprint(("samples", "labels"))}
        # Another build of the same samples, labels and settings holds the same vectors: two runs of
        # one configuration may rebuild at once and both train.
        if build["build"] != own.get("build") and build["fingerprint"] != own["fingerprint"]:
            if self.own_features is None:
                raise FeaturesReplacedError(
                    f"{where} was built with other samples, labels or features settings than this run's "
                    f"(features: {json.dumps(self.config['features'], sort_keys=True)}): run the features step")
            raise FeaturesReplacedError(
                f"another run rebuilt the features with other samples, labels or settings: {where} is build "
                f"{build['build']}, not this run's {own.get('build') or 'build of ' + own['fingerprint']}; run again")

    def split(self, *, test_fraction: float | None = None, split_file: str | None = None,
              label_file: str | None = None) -> pd.DataFrame:
        if self.own_features is not None:   # within a run: stop before training on another run's features
            self._settled_feature_build(lambda: (self.lake.version("gene_features"), self.lake.version("genes"), None))
        split = self.planned_split(test_fraction=test_fraction, split_file=split_file, label_file=label_file)
        self._overwrite_if_changed("splits", split_stage.split_frame(self.spark, split), "split")
        self.echo(split_stage.split_summary(split))
        if self.groups is not None:
            self.echo(split_stage.group_summary(split, self.groups))
        return split

    def planned_split(self, *, test_fraction: float | None = None, split_file: str | None = None,
                      label_file: str | None = None) -> pd.DataFrame:
        """The split the split step would store, from the labels table; writes nothing. A split that
        leaves a set or a class empty is a SplitError naming the counts. Under `split.group_by` the
        training folds are grouped (and `self.groups` kept for the train step's per-group rows)."""
        split = self._drawn_split(test_fraction, split_file)
        group_by = self.config["split"]["group_by"]
        if group_by != "none":
            self.groups = self.sample_groups(group_by, label_file)
            split = split_stage.grouped_folds(split, self.groups, self.config["split"]["folds"],
                                              self.config["split"]["seed"])
        return split

    def _drawn_split(self, test_fraction: float | None, split_file: str | None) -> pd.DataFrame:
        cfg = self.config["split"]
        fraction = cfg["test_fraction"] if test_fraction is None else test_fraction
        labels = self.lake.read("labels").select("sample", "label").toPandas()
        label_of = dict(zip(labels["sample"], labels["label"]))
        if self.config["training"]["target"] != "label":   # folds stratified on the classes learnt
            labels = labels.assign(label=labels["sample"].map(self._target()["target_of"]))
        if split_file:
            assignment = _read_split_file(split_file)
            split = split_stage.given_split(labels, assignment, cfg["folds"], cfg["seed"])
        elif self.lake.exists("splits"):
            stored = self.lake.read("splits").toPandas()
            split = split_stage.extend_split(stored, labels, fraction, cfg["folds"], cfg["seed"])
        else:
            split = split_stage.stratified_split(labels, fraction, cfg["folds"], cfg["seed"])
        return split.assign(label=split["sample"].map(label_of))   # the table keeps ALL/AML

    def sample_groups(self, group_by: str, label_file: str | None = None) -> pd.Series:
        """sample -> group under `split.group_by`: a samples field (series, title, source,
        characteristics.<key>) or a column of the label file."""
        samples_field = group_by in label_stage.PLAIN_FIELDS or group_by.startswith(label_stage.CHARACTERISTIC_PREFIX)
        if samples_field:
            rows = (self.lake.read("samples").select("sample", label_stage.field_column(group_by).alias("group"))
                    .toPandas())
            return rows.dropna().set_index("sample")["group"]
        if label_file is None:
            raise SplitError(f"split.group_by {group_by!r} is not a samples field (series, title, source, "
                             "characteristics.<key>) and no --labels file was given to read it from")
        return pd.Series(label_stage.label_file_column(label_file, group_by))

    def train(self, run_id: str | None = None, *, previous_run: str | None = None) -> TrainingOutcome:
        """Fan out every (model, fold) fit; append predictions, results (and the change against
        `previous_run`), then mark the run's row (written at its start) succeeded."""
        self.discard_incomplete_runs()
        run_id = run_id or new_run_id()
        live = self.ledger.begin(run_id, datetime.now(timezone.utc), {
            "config_hash": config_hash(self.config), "code_version": __version__,
            "bundle_dir": stored_path(self.lake.root, Path(self.lake.path("models")) / run_id)})
        with self.ledger.tracked(live):
            outcome = self._train(live, previous_run)
        if self._tracked():  # an optional copy in MLflow; a failure there only warns
            from .tracking import log_training_run

            log_training_run(self.config, self.lake, outcome.run_id, previous_run=previous_run, echo=self.echo)
        return outcome

    def _check_genes_match_vectors(self, n_genes: int) -> None:
        """TableError when `genes` and `gene_features` come from different builds (one whose second
        commit failed): positions would name the wrong genes."""
        first = self.lake.read("gene_features").select(F.size("features").alias("n")).first()
        if first is not None and first["n"] != n_genes:
            raise TableError(f"gene_features holds vectors of {first['n']} genes but the genes table lists "
                             f"{n_genes}: the last features build did not finish; run the features step again")

    def _train(self, live: LiveRun, previous_run: str | None) -> TrainingOutcome:
        run_id, started = live.run_id, live.started
        cfg = self.config["training"]
        genes, feature_files = self._features_to_train_on()
        splits = self.lake.read("splits").toPandas()
        if splits.empty:
            raise SplitError("the splits table is empty: run the split step first")
        bundle_dir = str(Path(self.lake.path("models")) / run_id)
        context = self._training_context(run_id, genes, feature_files, splits, bundle_dir)
        excluded = self._excluded_vectors(genes)
        other_check, other_scores = self._other_disease_check(excluded, genes, feature_files, splits)
        if other_check is not None:   # every bundle carries it; the fits' test rows are flagged by it
            context.training_inputs["other_disease"] = other_check
        context = replace(context, flag_rate=self._per_check_flag_rate(splits, other_check is not None))
        folds = split_stage.n_folds(splits)
        nested = evaluation.needs_nested_folds(cfg)
        choices = self._tune(context, folds, cfg) if cfg["tuning"]["method"] != "none" else None
        chosen = tuning.chosen_params(choices) if choices is not None else {}
        tasks = train_stage.plan_tasks(cfg["models"], folds, cfg["params"], nested=nested, tuned=chosen)
        self.echo(f"training {len(tasks)} fits ({len(cfg['models'])} models x {folds} folds + final"
                  + (f" + {folds * (folds - 1)} nested" if nested else "") + ") as Spark tasks")
        task_rows = train_stage.run_task_rows(self.spark, tasks, context)
        collected = task_rows.toPandas()
        class_rows = (train_stage.class_probability_rows(collected, context.target_classes, context.target_of)
                      if context.target_classes else None)
        raw_rows, task_info = train_stage.split_task_rows(collected)
        outcome = evaluation.evaluate(raw_rows, task_info, cfg, self.config["predict"], genes, run_id)
        predictions, metrics = outcome.predictions, outcome.metrics
        for note in outcome.notes:
            self.echo(f"WARNING {note}")
        params = dict(zip(tasks["model"], tasks["params"]))
        params.update({model: text for (model, fold), text in chosen.items() if fold == train_stage.TEST_FOLD})
        params.update({name: json.dumps(p, sort_keys=True) for name, p in outcome.ensemble_params.items()})
        best = outcome.best_single  # ensembles are reported, not deployed: the best model has a bundle
        self._finish_bundles(bundle_dir, cfg, outcome)
        extra = self._evaluation_results(outcome, class_rows, choices, bundle_dir, context)
        marker_rows = self._marker_enrichment(bundle_dir, cfg)
        ood_predictions, ood_rows = (self._score_excluded(bundle_dir, run_id, excluded, other_scores)
                                     if cfg["ood_check"] else (None, None))
        results = self._results_table(metrics, [extra, marker_rows, ood_rows], run_id, started, params, chosen,
                                      previous_run)
        stored = predictions if ood_predictions is None else pd.concat([predictions, ood_predictions],
                                                                       ignore_index=True)
        self._store_training_tables(run_id, stored, results, outcome.selected, choices)
        if class_rows is not None:
            self.lake.append("class_predictions", self.spark.createDataFrame(
                class_rows.assign(run=run_id)[schemas.CLASS_PREDICTIONS.fieldNames()], schemas.CLASS_PREDICTIONS),
                operation=f"train {run_id}")
        self._record_run(live, splits, len(genes), best, {"predictions": len(stored), "results": len(results)})
        text = train_stage.format_leaderboard(metrics, cfg["best_by"], best)
        self.echo(text)
        return TrainingOutcome(run_id, metrics, text, best, bundle_dir)

    def _results_table(self, metrics: pd.DataFrame, extra_frames: list, run_id: str, started, params: dict,
                       chosen: dict, previous_run: str | None) -> pd.DataFrame:
        """The run's `results` rows: the metrics, the extra long frames, tuned parameters per fold and
        the change against `previous_run`."""
        results = train_stage.results_rows(metrics, run_id=run_id, run_time=started,
                                           config_hash=config_hash(self.config), code_version=__version__,
                                           params=params)
        results = pd.concat([results] + [self._extra_results(frame, results, params) for frame in extra_frames
                                         if frame is not None and not frame.empty], ignore_index=True)
        results = tuning.with_fold_params(results, chosen)
        if previous_run:
            results = pd.concat([results, self._change_rows(results, previous_run)], ignore_index=True)
        return results

    def _evaluation_results(self, outcome, class_rows, choices, bundle_dir: str, context) -> pd.DataFrame:
        """The evaluation's own extra rows, with the multi-class, tuning and per-group rows where they apply."""
        frames = [outcome.extra_results]
        if class_rows is not None:
            frames.append(self._class_results(class_rows, bundle_dir, context, outcome))
        if choices is not None:
            frames.append(tuning.result_rows(choices, outcome.metrics, self.config["training"]["tuning"]["metric"]))
        if self.groups is not None:
            frames.append(evaluation.group_rows(outcome.predictions, self.groups))
        return pd.concat(frames, ignore_index=True)

    def _settled_feature_build(self, read: Callable[[], tuple[int, int, object]]):
        """`read()` -> (vectors version, genes version, what was read), checked by
        `check_feature_build`; while another writer's build is between its commits, read again
        (for `feature_build_wait_s` at most) rather than fail a run whose build follows."""
        deadline = time.monotonic() + self.feature_build_wait_s
        while True:
            vectors_version, genes_version, payload = read()
            try:
                self.check_feature_build(vectors_version, genes_version)
                return payload
            except _BuildInProgress:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _features_to_train_on(self) -> tuple[list[str], tuple[str, ...]]:
        """The gene order and the vectors' files, each read from one version, checked to be one
        finished build and this run's own: the tasks read exactly these files."""
        def read():
            vectors_version, files = self.lake.snapshot_files("gene_features")
            genes_version, genes = self.lake.read_small_versioned("genes")
            return vectors_version, genes_version, (files, genes)

        files, genes = self._settled_feature_build(read)
        names = genes.sort_values("position")["gene"].tolist()
        self._check_genes_match_vectors(len(names))
        return names, files

    def _training_context(self, run_id: str, genes: list[str], feature_files: tuple[str, ...],
                          splits: pd.DataFrame, bundle_dir: str) -> train_stage.TrainingContext:
        cfg = self.config["training"]
        return train_stage.TrainingContext(
            run_id=run_id,
            feature_files=feature_files,
            gene_order=tuple(genes),
            assignments=train_stage.split_assignments(splits),
            seed=cfg["seed"], scaler=cfg["scaler"], bundle_root=bundle_dir,
            feature_settings=dict(self.config["features"]),
            training_inputs=self._training_inputs(splits),
            selection=cfg["selection"], selection_k=cfg["selection_k"], inner_folds=cfg["tuning"]["inner_folds"],
            flag_rate=self.config["predict"]["flag_rate"],
            **self._target_context(),
        )

    def _target(self) -> dict:
        """The classes of training.target lineage/subtype, from the labels table (subtypes.target_classes)."""
        from .subtypes import min_class_size, target_classes

        labels = self.lake.read("labels")
        if "lineage" not in labels.columns:
            raise TableError("the labels table has no lineage column (an older lake): run the labels step again")
        return target_classes(labels.select("sample", "label", "lineage", "subtype").toPandas(),
                              self.config["training"]["target"],
                              min_class_size(self.config["split"]["folds"], self.config["split"]["test_fraction"]))

    def _target_context(self) -> dict:
        if self.config["training"]["target"] == "label":
            return {}
        target = self._target()
        if target["merged"]:
            self.echo("classes too small for the folds, merged into their lineage: "
                      + ", ".join(f"{c} -> {p}" for c, p in target["merged"].items()))
        return {"target_classes": target["classes"], "target_of": target["target_of"],
                "aml_classes": target["aml_classes"], "lineage_of": target["lineage_of"]}

    def _class_results(self, class_rows: pd.DataFrame, bundle_dir: str, context, outcome) -> pd.DataFrame:
        """Multi-class metrics (results rows) of every model, and per-class thresholds chosen on the
        pooled out-of-fold probabilities, saved in each model's bundle for `predict`."""
        from .bundle import attach_postprocessing
        from .subtypes import class_result_rows, fallback_thresholds

        classes = list(context.target_classes)
        for model, rows in class_rows.groupby("model"):
            thresholds = fallback_thresholds(rows[rows["fold"].map(train_stage.is_cv_fold)], classes,
                                             context.lineage_of)
            attach_postprocessing(Path(bundle_dir) / model, abstain_band=outcome.bands.get(model),
                                  extra=thresholds)
        return class_result_rows(class_rows, classes)

    def _store_training_tables(self, run_id: str, predictions: pd.DataFrame, results: pd.DataFrame,
                               selected: pd.DataFrame | None, choices: pd.DataFrame | None) -> None:
        operation = f"train {run_id}"
        schemas.ensure_columns(self.lake, "predictions", schemas.PREDICTIONS)
        predictions = predictions.reindex(columns=schemas.PREDICTIONS.fieldNames())
        predictions = predictions.astype(object).where(predictions.notna(), None)
        self.lake.append("predictions", self.spark.createDataFrame(
            predictions[schemas.PREDICTIONS.fieldNames()], schemas.PREDICTIONS), operation=operation)
        self.lake.append("results", self.spark.createDataFrame(results, schemas.RESULTS), operation=operation)
        if selected is not None:
            self.lake.append("selected_genes", self.spark.createDataFrame(
                selected.assign(run=run_id)[schemas.SELECTED_GENES.fieldNames()], schemas.SELECTED_GENES),
                operation=operation)
        if choices is not None:
            metric = self.config["training"]["tuning"]["metric"]
            self.lake.append("tuning", self.spark.createDataFrame(
                tuning.tuning_table(choices, run_id, metric), schemas.TUNING), operation=operation)

    def _tune(self, context: train_stage.TrainingContext, n_folds: int, cfg: dict) -> pd.DataFrame:
        """Nested tuning: one fan-out of every (model, outer fold, candidate, inner fold) fit;
        returns every candidate's inner scores with the chosen one per (model, outer fold)."""
        outer = [str(k) for k in range(n_folds)] + [train_stage.TEST_FOLD]
        tasks = tuning.plan_tuning_tasks(cfg["models"], outer, cfg["tuning"], cfg["params"], cfg["seed"])
        per_model = tasks.groupby("model")["params"].nunique()
        self.echo(f"tuning: {len(tasks)} fits ({', '.join(f'{m} {n}' for m, n in per_model.items())} candidates"
                  f" x {len(outer)} searches x {cfg['tuning']['inner_folds']} inner folds) as Spark tasks")
        rows, _ = train_stage.split_task_rows(train_stage.run_task_rows(self.spark, tasks, context).toPandas())
        return tuning.search_choices(rows, tasks, cfg["tuning"]["metric"])

    def _finish_bundles(self, bundle_dir: str, cfg: dict, outcome) -> None:
        """Save the calibrator and abstention band fitted on the out-of-fold probabilities in each bundle."""
        from .bundle import attach_postprocessing

        if cfg["calibration"] == "none" and self.config["predict"]["abstain_band"] == "none":
            return
        for model in cfg["models"]:
            attach_postprocessing(Path(bundle_dir) / model, calibrator=outcome.calibrators.get(model),
                                  abstain_band=outcome.bands.get(model))

    def _extra_results(self, frame: pd.DataFrame, results: pd.DataFrame, params: dict) -> pd.DataFrame:
        """Long (model, fold, metric, value[, params]) rows with the run columns of `results`."""
        first = results.iloc[0]
        out = frame.copy()
        if "params" not in out.columns:
            out["params"] = None
        out["params"] = out["params"].where(out["params"].notna(), out["model"].map(params))
        for column in ("run", "run_time", "config_hash", "code_version"):
            out[column] = first[column]
        out["value"] = out["value"].astype(float)
        return out[schemas.RESULTS.fieldNames()]

    def _marker_enrichment(self, bundle_dir: str, cfg: dict) -> pd.DataFrame:
        """Per final model: known lineage markers among its top genes (hypergeometric p), fold 'test'."""
        from .biology import model_top_genes, enrichment_rows

        rows = []
        for model in cfg["models"]:
            top = model_top_genes(Path(bundle_dir) / model)
            if top is not None:
                rows += enrichment_rows(model, top, cfg["marker_top_n"])
        return pd.DataFrame(rows, columns=["model", "fold", "metric", "value"])

    def _excluded_vectors(self, genes: list[str]) -> dict | None:
        """The excluded samples (other diseases) as gene vectors in `genes` order, read once for the
        other-disease check and the OOD scoring: {table, samples, matrix, platforms, scales}; None when
        neither wants them or the lake has none."""
        from .ood import excluded_matrix
        from .other_disease import OTHER_LINEAGE

        ood, check = self.config["training"]["ood_check"], self.config["predict"]["other_disease_check"] != "none"
        if not (ood or check) or not self.lake.exists("excluded_samples"):
            return None
        # The class the check learns: the subtype of a sample whose lineage (the labels step's own rules,
        # labels.lineage_rules) is `other`; unlabelled or unmeasured samples are no other disease.
        excluded = (self.lake.read("excluded_samples")
                    .withColumn("lineage", label_stage.lineage_column(F.col("subtype"),
                                                                      self.config["labels"]["lineage_rules"]))
                    .withColumn("other", F.when(F.col("lineage") == OTHER_LINEAGE, F.col("subtype")))
                    .toPandas())
        if not ood:   # only the check wants them: its other-disease samples, and none when too few to fit it
            excluded = excluded[excluded["other"].notna()]
            if self._too_few_other_diseases(len(excluded)):
                return None
        if excluded.empty:
            return None
        samples, matrix, platforms, scales = excluded_matrix(self.lake, excluded, genes, self.config["features"])
        return {"table": excluded, "samples": samples, "matrix": matrix, "platforms": platforms, "scales": scales}

    def _score_excluded(self, bundle_dir: str, run_id: str, excluded: dict | None, other_scores: dict):
        """Score the excluded samples (other diseases) with every final model: (prediction rows, results rows).
        A sample the other-disease check learnt from is judged by its out-of-fold P(other) (`other_scores`)."""
        from .ood import score_excluded
        from .predict import ScoringPolicy

        if excluded is None:
            return None, None
        policy = ScoringPolicy.from_config(self.config)
        frames = [score_excluded(Path(bundle_dir) / model, excluded["table"], excluded["samples"], excluded["matrix"],
                                 excluded["platforms"], excluded["scales"], policy, run_id, other_scores)
                  for model in self.config["training"]["models"]]
        predictions = pd.concat([f[0] for f in frames], ignore_index=True)
        results = pd.concat([f[1] for f in frames], ignore_index=True)
        self.echo(f"scored {len(excluded['samples'])} excluded samples with {len(frames)} final models (fold 'ood')")
        return predictions, results

    def _per_check_flag_rate(self, splits: pd.DataFrame, has_other_disease_check: bool) -> float:
        """predict.flag_rate split over the rate-controlled checks (input_check.per_check_rate); says so
        when the training set is too small for the split rate, or for any rate."""
        from .input_check import per_check_rate, rate_controlled_checks

        total = self.config["predict"]["flag_rate"]
        n_train = int((splits["set"] == "train").sum())
        rate = per_check_rate(total, has_other_disease_check, n_train)
        n_checks = rate_controlled_checks(has_other_disease_check)
        if (n_train + 1) * total < 1:
            checks = "novelty, low_blast and other_disease" if has_other_disease_check else "novelty and low_blast"
            self.echo(f"WARNING {checks} checks off: {n_train} training samples are too few for "
                      f"predict.flag_rate {total} (a threshold at that rate needs at least {int(np.ceil(1 / total)) - 1})")
        elif rate * n_checks > total + 1e-12:
            self.echo(f"note: with {n_train} training samples each scoring check flags 1 in {n_train + 1} samples like "
                      f"them, so the {n_checks} checks together up to {rate * n_checks:.1%} (predict.flag_rate {total})")
        return rate

    def _other_disease_check(self, excluded: dict | None, genes: list[str], feature_files: tuple[str, ...],
                             splits: pd.DataFrame) -> tuple[dict | None, dict]:
        """(the other-disease check fitted on the training ALL/AML rows and the lake's other-disease
        samples, each such sample's out-of-fold P(other)); (None, {}) when predict.other_disease_check
        is none or the lake holds fewer than other_disease.MIN_OTHER_SAMPLES of them."""
        from . import other_disease
        from .input_check import per_check_rate

        if self.config["predict"]["other_disease_check"] == "none" or excluded is None:
            return None, {}
        kind = excluded["table"].set_index("sample")["other"].reindex(excluded["samples"])
        rows = kind.notna().to_numpy()
        if self._too_few_other_diseases(int(rows.sum())):
            return None, {}
        samples, matrix = train_stage.load_feature_matrix(feature_files, len(genes), cache=False)
        train = splits[splits["set"] == "train"].set_index("sample")
        acute = np.isin(samples, train.index)
        check, _, other_scores = other_disease.fit_other_disease_check(
            matrix[acute], train.loc[samples[acute], "label"], train.loc[samples[acute], "fold"].to_numpy(),
            excluded["matrix"][rows], kind[rows].to_numpy(),
            per_check_rate(self.config["predict"]["flag_rate"], True, int(acute.sum())), self.config["training"]["seed"])
        self.echo(other_disease.summary(check))
        return check, dict(zip(np.asarray(excluded["samples"])[rows], other_scores))

    def _too_few_other_diseases(self, n: int) -> bool:
        """Whether n other-disease samples are too few to fit the check (said when there are some)."""
        from .other_disease import MIN_OTHER_SAMPLES

        if 0 < n < MIN_OTHER_SAMPLES:
            self.echo(f"other-disease check: not fitted, {n} other-disease sample(s) in the lake "
                      f"(fewer than {MIN_OTHER_SAMPLES})")
        return n < MIN_OTHER_SAMPLES

    def _training_inputs(self, splits: pd.DataFrame) -> dict:
        """Platforms and model-scale values of the training samples, for checks at prediction."""
        from .scale import model_scale

        train = self.spark.createDataFrame([(s,) for s in splits.loc[splits["set"] == "train", "sample"]],
                                           "sample string")
        rows = (self.lake.read("samples").join(F.broadcast(train), "sample")
                .select("platform", "value_scale").distinct().collect())
        transform = self.config["features"]["transform"]
        return {
            "platforms": sorted({r["platform"] for r in rows if r["platform"]}),
            "input_scales": sorted({r["value_scale"] or "unknown" for r in rows}),
            "model_scales": sorted({model_scale(r["value_scale"] or "unknown", transform) for r in rows}),
        }

    def _change_rows(self, results: pd.DataFrame, previous_run: str) -> pd.DataFrame:
        """Per model and metric: this run's test value (CV mean without a test set) minus the previous
        run's (fold 'change_vs_previous')."""
        fold = "test" if (results["fold"] == "test").any() else "cv_mean"
        previous = (self.lake.read("results").where((F.col("run") == previous_run) & (F.col("fold") == fold))
                    .select("model", "metric", F.col("value").alias("previous")).toPandas())
        current = results[results["fold"] == fold]
        merged = current.merge(previous, on=["model", "metric"], how="inner")
        merged = merged.assign(fold="change_vs_previous", value=merged["value"] - merged["previous"],
                               params=f"previous run {previous_run}")
        return merged[schemas.RESULTS.fieldNames()]

    def score(self, series: list[str] | None = None, *, run_id: str | None = None,
              model: str | None = None) -> int:
        """Score the lake's series (all when None) with a run's model bundle in one Spark job and
        append the rows to `scored_samples`; returns how many. `model` defaults to `predict.model`."""
        from .predict import ScoringPolicy, configured_model, score_series

        bundle_dir = self.run_log.bundle_dir(run_id, configured_model(model, self.config))
        scored = score_series(self.spark, self.lake, series, bundle_dir, ScoringPolicy.from_config(self.config))
        schemas.ensure_columns(self.lake, "scored_samples", schemas.SCORED_SAMPLES)
        commit = self.lake.append("scored_samples", scored, operation="predict")
        self.echo(f"scored {commit.rows_written} sample(s) with {bundle_dir.parent.name}/{bundle_dir.name}")
        return commit.rows_written

    def report(self, out_dir: str, run_id: str | None = None) -> Path:
        from .report import write_report

        run_id = run_id or self.latest_run()
        path = write_report(self.spark, self.lake, run_id, Path(out_dir), self.config)
        self.echo(f"report: {path}")
        if self._tracked():
            from .tracking import log_report

            log_report(self.config, self.lake.root, run_id, Path(out_dir), echo=self.echo)
        return path

    def _tracked(self) -> bool:
        """tracking.mlflow.enabled (a configuration built without the section: off)."""
        return bool(self.config.get("tracking", {}).get("mlflow", {}).get("enabled"))

    # -- runs -----------------------------------------------------------------------------
    def data_fingerprint(self) -> str:
        """Hash of what training sees: sample values, labels, split, features settings."""
        return self.fingerprint(("samples", "labels", "splits"))

    def fingerprint(self, tables: tuple[str, ...]) -> str:
        columns_of = {"samples": ["sample", "values_checksum"], "labels": ["sample", "label"],
                      "splits": ["sample", "set", "fold"]}
        parts = []
        for table in tables:
            columns = columns_of[table]
            if self.lake.exists(table):
                rows = sorted(tuple(str(v) for v in r) for r in self.lake.read(table).select(*columns).collect())
                parts.append(json.dumps(rows))
        parts.append(json.dumps(self.config["features"], sort_keys=True))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def _add_missing_columns(self, table: str, schema) -> None:
        """Migrate a table of an older lake to `schema` (columns added later, as nulls) before it is
        overwritten: the lake refuses a write whose schema differs from the stored one."""
        if self.lake.exists(table) and set(schema.fieldNames()) - set(self.lake.schema(table).fieldNames()):
            self.lake.rewrite(table, lambda frame: with_missing_columns(frame, schema), operation="migrate schema")

    def _overwrite_if_changed(self, table: str, frame: DataFrame, operation: str) -> bool:
        """Overwrite `table` with `frame` unless it already holds exactly these rows (reruns stay no-ops)."""
        if self.lake.exists(table):
            stored = self.lake.read(table)
            same_size = stored.count() == frame.count()
            if same_size and stored.exceptAll(frame).limit(1).count() == 0 and frame.exceptAll(stored).limit(1).count() == 0:
                return False
        self.lake.overwrite(table, frame, operation=operation)
        return True

    @cached_property
    def ledger(self) -> RunLedger:
        return RunLedger(self.lake, lambda message: self.echo(message))

    def discard_incomplete_runs(self) -> list[str]:
        """Delete predictions, results and bundles of runs whose process is gone (killed mid-way);
        a run that is still alive keeps them."""
        return self.ledger.discard_incomplete()

    @cached_property
    def run_log(self) -> RunLog:
        return RunLog(self.lake)

    def latest_run(self) -> str:
        return self.run_log.latest_run_id()

    def _record_run(self, live: LiveRun, splits, n_genes, best, expected_rows: dict[str, int]) -> None:
        record = {
            "config_hash": config_hash(self.config), "data_fingerprint": self.data_fingerprint(),
            "code_version": __version__, "n_train": int((splits["set"] == "train").sum()),
            "n_test": int((splits["set"] == "test").sum()), "n_genes": n_genes, "best_model": best, "trained": True,
        }
        self.ledger.succeed(live, record, expected_rows)

    # -- the whole run --------------------------------------------------------------------
    def run(self, sources: list[str], *, label_file: str | None = None, annotation: str | None = None,
            platform: str | None = None, until: str = "train", report_dir: str | None = None,
            test_fraction: float | None = None, split_file: str | None = None) -> dict:
        """ingest -> labels -> features -> split -> train -> report, stopping after `until`."""
        if until not in STAGES:
            raise ValueError(f"--until must be one of {', '.join(STAGES)}")
        check_run_arguments(test_fraction=test_fraction, label_file=label_file, split_file=split_file,
                            annotation=annotation)
        last = STAGES.index(until) if until != "train" or report_dir is None else STAGES.index("report")
        outcome: dict = {}
        steps = [
            ("ingest", lambda: self.ingest(sources, annotation=annotation, platform=platform)),
            ("labels", lambda: self.labels(label_file, sample_order=_matrix_sample_order(sources, label_file))),
            ("features", self.features),
            ("split", lambda: self.split(test_fraction=test_fraction, split_file=split_file, label_file=label_file)),
            ("train", self.train),
            ("report", lambda: self.report(report_dir, outcome["train"].run_id)),
        ]
        for index, (name, step) in enumerate(steps[: last + 1], start=1):
            self.echo(f"\n[{index}/{last + 1}] {name}")
            began = time.perf_counter()
            try:
                outcome[name] = step()
            except OSError as error:  # a full disk, a folder it may not write: say which step met it
                raise storage_error(error, f"{name} step") from error
            self.timings[name] = time.perf_counter() - began
            self.echo(f"[{index}/{last + 1}] {name} done in {self.timings[name]:.1f} s")
            if name == "labels" and last >= STAGES.index("split"):
                # The label counts are known now: a split they cannot make fails before features write.
                self.planned_split(test_fraction=test_fraction, split_file=split_file, label_file=label_file)
        return outcome


def _vector_samples(paths) -> set:
    """The samples that vector files (Parquet, column `sample`) hold: only that column is read."""
    import pyarrow.parquet as pq

    held: set = set()
    for path in paths:
        held.update(pq.read_table(str(path), columns=["sample"]).column("sample").to_pylist())
    return held


class _BuildInProgress(FeaturesReplacedError):
    """The stored tables are no finished build (yet): another writer may be between its commits."""


def new_run_id() -> str:
    return f"run-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def check_run_arguments(*, test_fraction: float | None = None, label_file: str | None = None,
                        split_file: str | None = None, annotation: str | None = None) -> None:
    """Refuse bad run arguments before any stage writes: a late failure would leave tables rewritten."""
    if test_fraction is not None and (problem := RANGES["split.test_fraction"].problem(test_fraction)):
        raise ConfigError(f"--test-fraction {problem}")
    for option, path in (("--labels", label_file), ("--split-file", split_file), ("--annotation", annotation)):
        if path is not None and not Path(path).expanduser().is_file():
            raise InputError(f"{option} {path}: no such file")
    if label_file and not label_file.lower().endswith(".cls"):
        label_stage.read_label_rows(label_file)  # a .cls needs the matrix's sample order: checked at labels
    if split_file:
        _read_split_file(split_file)


def _read_split_file(path: str) -> pd.DataFrame:
    try:
        # Sample ids are text: Golub's patients are "1".."72", and "01005" must keep its zero.
        frame = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, csv.Error, UnicodeDecodeError) as error:
        raise SplitError(f"{path}: not a readable CSV split file: {' '.join(str(error).split())}") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    if not {"sample", "set"} <= set(frame.columns):
        raise SplitError(f"{path}: a split file needs columns 'sample' and 'set' (train/test)")
    frame["set"] = frame["set"].str.strip().str.lower()
    return frame


def _matrix_sample_order(sources: list[str], label_file: str | None) -> list[str] | None:
    """The sample columns of a matrix input, which a GSEA .cls label file refers to by position."""
    if not label_file or not label_file.lower().endswith(".cls"):
        return None
    from .matrix import matrix_sample_ids

    return [s for source in sources for s in matrix_sample_ids(Path(source))]
