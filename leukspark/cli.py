"""`leukspark` command line: synth, ingest, run, predict, report, rerun.

Every sub-command is a thin wrapper: parse arguments, load the configuration, build the
session and the lake, call the pipeline. Errors the user can act on (LeukSparkError) are
printed as one line, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .errors import LeukSparkError, describe_os_error, task_os_error

DESCRIPTION = """\
leukspark tells acute lymphoblastic leukemia (ALL) from acute myeloid leukemia (AML) in
microarray gene expression, on Apache Spark with Delta tables.

Typical use:
  leukspark run --input GSE13159 --lake lake/ --report report/     # the whole pipeline
  leukspark predict new_samples.soft.gz --lake lake/                 # score new samples
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leukspark", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"leukspark {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_synth_command(commands)
    _add_ingest_command(commands)
    _add_run_command(commands)
    _add_predict_command(commands)
    _add_score_command(commands)
    _add_report_command(commands)
    _add_rerun_command(commands)
    return parser


def _add_synth_command(commands) -> None:
    synth = commands.add_parser(
        "synth", help="write a GSE13159-shaped series (family SOFT + series matrix)",
        description="Write a synthetic series shaped like GSE13159 (real GSM ids, MILE classes, GPL570 "
                    "probes and symbols) with realistic lineage and subtype structure. Deterministic for a seed.")
    synth.add_argument("--samples", type=int, default=2096, help="number of samples (max 2096; default 2096)")
    synth.add_argument("--probes", type=int, default=54675, help="number of probes (max 54675; default 54675)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--no-matrix", action="store_true", help="write only the family SOFT")
    synth.add_argument("--series", type=int, default=1,
                       help="number of series to write into --out, each with its own accession, GSM ids, samples, "
                            "noise and labs (default 1: GSE13159 alone; docs/synthetic.md)")
    synth.add_argument("--series-index", type=int, default=0,
                       help="index of the first series written (0: GSE13159; k > 0: GSE9000000k)")
    cohort = synth.add_argument_group(
        "real-cohort settings", "A flag given replaces the preset's value (docs/synthetic.md).")
    cohort.add_argument("--preset", choices=["default", "hard"], default="default",
                        help="default: one lab, log2, the built-in ~2%% ambiguous samples; hard: 11 labs, "
                             "strong confounded batch effects, 3%% ambiguous, weaker signal")
    cohort.add_argument("--labs", type=int, help="number of labs, each with its own batch effect (default 1: none)")
    cohort.add_argument("--batch-strength", type=float, help="scale of the lab effects (default 1.0)")
    cohort.add_argument("--lab-confounding", type=float,
                        help="0..1: how much a sample's lab depends on its lineage (default 0)")
    cohort.add_argument("--scale", choices=["log2", "linear"],
                        help="log2 (default) or linear MAS5-style values with background noise")
    cohort.add_argument("--ambiguous-fraction", type=float,
                        help="share of ALL/AML samples with a mixed-lineage profile (default: ~2%%, random)")
    cohort.add_argument("--signal", type=float, help="scale of the lineage and subtype signal (default 1.0)")
    cohort.add_argument("--subtype-overlap", type=float,
                        help="share (at most) of a sample's subtype signature taken from another class of its lineage "
                             "(default 0.0; hard 0.6)")


def _add_ingest_command(commands) -> None:
    ingest = _lake_command(
        commands, "ingest", "ingest GEO series or matrix files into the lake's Delta tables",
        "Parse GEO files (family SOFT, sample SOFT, series matrix), GEO accessions (downloaded into the cache) "
        "or expression matrices (CSV/TSV/GCT) into the tables series, samples, expression and platform_probes. "
        "Re-ingesting adds nothing.")
    ingest.add_argument("sources", nargs="+", metavar="SOURCE", help="GSE accession, GEO file or matrix file")
    _add_input_arguments(ingest)


def _add_run_command(commands) -> None:
    run = commands.add_parser(
        "run", help="run the whole pipeline: ingest, labels, features, split, train, report",
        description="Run ingest -> labels -> features -> split -> train -> report on one input and print "
                    "progress per stage, the label summary, the leaderboard and where the report is.")
    run.add_argument("--input", required=True, action="append", metavar="SOURCE",
                     help="GSE accession, GEO file or matrix file (repeatable)")
    run.add_argument("--labels", help="label file: CSV (sample,label[,subtype]) or GSEA .cls")
    run.add_argument("--split-file", help="CSV with columns sample,set (train/test) to use instead of a random split")
    _add_lake_arguments(run)
    _add_input_arguments(run)
    run.add_argument("--until", choices=["ingest", "labels", "features", "split", "train"], default="train",
                     help="stop after this stage (default: train, then report)")
    reporting = run.add_mutually_exclusive_group()
    reporting.add_argument("--report", metavar="DIR", help="report folder (default: <lake>/reports/<run>)")
    reporting.add_argument("--no-report", action="store_true", help="do not write a report")
    run.add_argument("--test-fraction", type=float,
                     help="held-out test fraction (default from config: 0.2; 0: cross-validation only, the "
                          "final models fit on every sample)")


def _add_predict_command(commands) -> None:
    predict = commands.add_parser(
        "predict", help="score new samples with a trained model bundle",
        description="Score samples from a GEO file, a matrix file, or a series already in the lake with a "
                    "run's model (the best model of the latest run by default).")
    predict.add_argument("source", metavar="SOURCE", help="GEO file, matrix file, or a series id in the lake")
    _add_lake_arguments(predict)
    predict.add_argument("--run", help="run id (default: latest successful run)")
    predict.add_argument("--model", help="model name (default: the run's best model)")
    predict.add_argument("--format", choices=["jsonl", "table"], default="jsonl")
    predict.add_argument("--platform", help="platform of a probe x sample matrix (e.g. GPL570)")
    predict.add_argument("--annotation", help="probe-to-symbol file (CSV, GPL SOFT or GEO .annot) for a probe matrix "
                                              "or a platform the lake has no annotation for; names the platform too")
    predict.add_argument("--write", action="store_true", help="also append the scores to the scored_samples table")
    predict.add_argument("--explain", action="store_true",
                         help="add each sample's top contributing genes (linear models: weight x standardized value)")
    predict.add_argument("--model-uri", metavar="URI",
                         help="score with a model logged to MLflow (models:/NAME/VERSION, runs:/ID/MODEL) instead of "
                              "--run/--model, from tracking.mlflow.tracking_uri or the lake's own store (mlflow extra)")


def _add_score_command(commands) -> None:
    score = _lake_command(
        commands, "score", "score the lake's series in a Spark job and append to scored_samples (jobs/predict.py)",
        "Collapse and score every sample of the lake's series (or of --series) with a run's model in one Spark "
        "job; the rows go to the scored_samples table. For a file, use predict.")
    score.add_argument("--series", nargs="*", help="series ids (default: all)")
    score.add_argument("--run", help="run id (default: latest successful run)")
    score.add_argument("--model", help="model name (default: predict.model in the configuration, else the run's best)")


def _add_report_command(commands) -> None:
    report = _lake_command(commands, "report", "write a run's HTML report with its plots",
                           "Write one self-contained HTML file and the PNGs for a run.")
    report.add_argument("--run", help="run id (default: latest successful run)")
    report.add_argument("--out", required=True, help="output folder")


def _add_rerun_command(commands) -> None:
    rerun = _lake_command(
        commands, "rerun", "ingest new series and retrain when the data changed (for schedulers)",
        "Ingest the series listed in the configuration (ingest.series) or on the command line that are new, "
        "re-derive labels and features, and retrain only when the data changed. Running it twice in a row "
        "changes nothing the second time.")
    rerun.add_argument("--series", nargs="*", default=None, metavar="SOURCE",
                       help="GSE accessions or files (default: ingest.series from the config)")
    rerun.add_argument("--report", metavar="DIR", help="write the report of a new run here")


def _lake_command(commands, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A command that works on a lake: --lake and --config come first in its help."""
    parser = commands.add_parser(name, help=summary, description=description)
    _add_lake_arguments(parser)
    return parser


def _add_lake_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", required=True, help="lake root folder holding the Delta tables")
    parser.add_argument("--config", help="YAML file merged over conf/default.yaml")


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotation", help="platform annotation: GPL SOFT, GEO .annot, or CSV probe_id,gene")
    parser.add_argument("--platform", help="platform id for a matrix of probes, or for a CSV annotation")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LeukSparkError as error:
        print(f"leukspark {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every step commits at its end (or discards its staged files), so an interrupted
        # command leaves the tables as they were; a rerun starts the step again.
        print(f"leukspark {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # the machine, not the data: a full disk, a folder it may not write
        print(f"leukspark {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # Spark's report of a task whose worker met such an error
        if (text := task_os_error(error)) is None:
            raise
        print(f"leukspark {args.command}: error: {text}", file=sys.stderr)
        return 2


# -- commands ----------------------------------------------------------------------------
def cmd_synth(args) -> int:
    from .synth import preset_options, write_synthetic_series

    options = preset_options(args.preset, labs=args.labs, batch_strength=args.batch_strength,
                             lab_confounding=args.lab_confounding, scale=args.scale,
                             ambiguous_fraction=args.ambiguous_fraction, signal=args.signal,
                             subtype_overlap=args.subtype_overlap)
    if args.series < 1:
        print(f"leukspark synth: error: --series must be at least 1, got {args.series}", file=sys.stderr)
        return 2
    for index in range(args.series_index, args.series_index + args.series):
        began = time.perf_counter()
        try:
            result = write_synthetic_series(Path(args.out), n_samples=args.samples, n_probes=args.probes,
                                            seed=args.seed, series_index=index, write_matrix=not args.no_matrix,
                                            **options)
        except ValueError as error:
            print(f"leukspark synth: error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {result.accession}: {len(result.sample_ids)} samples x {len(result.probe_ids)} probes in "
              f"{time.perf_counter() - began:.1f} s:")
        for path in (result.family_soft, result.series_matrix, result.annotation_csv):
            if path is not None:
                print(f"  {path}")
    if args.preset != "default" or options != preset_options("default"):
        print(f"settings: {options}; {len(result.ambiguous_ids)} ambiguous ALL/AML samples")
    return 0


def _pipeline(args):
    from .config import load_config
    from .lake import Lake
    from .pipeline import Pipeline
    from .spark import build_session

    config = load_config(args.config)
    spark = build_session(config)
    lake = Lake.from_config(spark, args.lake, config)
    return Pipeline(spark, lake, config)


def cmd_ingest(args) -> int:
    pipeline = _pipeline(args)
    pipeline.ingest(args.sources, annotation=args.annotation, platform=args.platform)
    return 0


def cmd_run(args) -> int:
    from .pipeline import check_run_arguments

    # Before a session starts or the lake is touched: a late refusal would leave tables rewritten.
    check_run_arguments(test_fraction=args.test_fraction, label_file=args.labels, split_file=args.split_file,
                        annotation=args.annotation)
    pipeline = _pipeline(args)
    report_dir = None if args.no_report or args.until != "train" else args.report
    if report_dir is None and not args.no_report and args.until == "train":
        report_dir = "__default__"
    outcome = pipeline.run(
        args.input, label_file=args.labels, annotation=args.annotation, platform=args.platform,
        until=args.until, report_dir=None if report_dir == "__default__" else report_dir,
        test_fraction=args.test_fraction, split_file=args.split_file,
    )
    if report_dir == "__default__" and "train" in outcome:
        pipeline.report(str(Path(pipeline.lake.path("reports")) / outcome["train"].run_id), outcome["train"].run_id)
    if "train" in outcome:
        print(f"\nrun {outcome['train'].run_id}: best model {outcome['train'].best_model}; "
              f"bundles in {outcome['train'].bundle_dir}")
    return 0


def cmd_predict(args) -> int:
    from .config import load_config
    from .predict import (
        ScoringPolicy, configured_model, format_records, predict_file, predict_series_from_lake, write_scores,
    )

    from .lake import LakeReader

    _check_model_argument(args.model)
    config = load_config(args.config)
    lake = LakeReader.of(args.lake, config)
    # Each scored sample carries the bundle that scored it, which is what its stored row names.
    options = {"policy": ScoringPolicy.from_config(config), "explain": args.explain, "run_id": args.run,
               "model": configured_model(args.model, config)}
    if args.model_uri:  # a model logged to MLflow: its bundle, downloaded and verified, replaces --run/--model
        from .errors import ConfigError
        from .tracking import bundle_from_model_uri

        if args.run or args.model:
            raise ConfigError("--model-uri names the model to score with: leave out --run and --model")
        options["bundle_dir"] = bundle_from_model_uri(args.model_uri, config, args.lake)
    source = Path(args.source).expanduser()
    if source.exists():
        scored = predict_file(source, lake, platform=args.platform, annotation=args.annotation, **options)
    else:
        scored = predict_series_from_lake(lake, args.source, **options)
    if args.explain and all(s.explanation is None for s in scored if s.error is None):
        print("--explain: this model has no per-gene weights (linear models only); no top_genes given",
              file=sys.stderr)
    print(format_records(scored, args.format))
    if args.write:
        count = write_scores(args.lake, config, scored, str(args.source))
        print(f"appended {count} row(s) to scored_samples", file=sys.stderr)
    return 0 if all(s.error is None for s in scored) else 3


def _check_model_argument(model: str | None) -> None:
    """--model names a model of the registry (or best): a path would load a bundle from outside the lake."""
    from .config import model_choice_problem
    from .errors import ConfigError

    if model is not None and (problem := model_choice_problem(model)) is not None:
        raise ConfigError(f"--model {problem}")


def cmd_score(args) -> int:
    _check_model_argument(args.model)
    pipeline = _pipeline(args)
    pipeline.score(args.series, run_id=args.run, model=args.model)
    return 0


def cmd_report(args) -> int:
    pipeline = _pipeline(args)
    pipeline.report(args.out, args.run)
    return 0


def cmd_rerun(args) -> int:
    from .rerun import rerun

    pipeline = _pipeline(args)
    sources = args.series if args.series is not None else list(pipeline.config["ingest"]["series"])
    outcome = rerun(pipeline, sources, report_dir=args.report)
    print(f"rerun: new run {outcome.trained.run_id} ({outcome.reason})" if outcome.trained
          else f"rerun: {outcome.reason}")
    return 0


COMMANDS = {
    "synth": cmd_synth, "ingest": cmd_ingest, "run": cmd_run, "predict": cmd_predict,
    "score": cmd_score, "report": cmd_report, "rerun": cmd_rerun,
}


if __name__ == "__main__":
    sys.exit(main())
