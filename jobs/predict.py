"""spark-submit entry point: score every sample of lake series with a run's model bundle.

Writes the scores to the `scored_samples` Delta table.

    spark-submit --py-files leukspark.zip jobs/predict.py --lake DIR [--series GSE...] [--run ID] [--model NAME]
"""

import argparse
import sys

from leukspark.config import load_config
from leukspark.errors import LeukSparkError
from leukspark.lake import Lake
from leukspark.predict import ScoringPolicy, configured_model, resolve_bundle_dir, score_series
from leukspark.spark import build_session


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Score lake series with a model bundle (Spark batch).")
    parser.add_argument("--lake", required=True)
    parser.add_argument("--config")
    parser.add_argument("--series", nargs="*", help="series ids (default: all)")
    parser.add_argument("--run", help="run id (default: latest)")
    parser.add_argument("--model", help="model name (default: predict.model in the configuration, else the run's best)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        spark = build_session(config, app_name="leukspark-predict")
        lake = Lake.from_config(spark, args.lake, config)
        bundle_dir = resolve_bundle_dir(args.lake, args.run, configured_model(args.model, config))
        scored = score_series(spark, lake, args.series, bundle_dir, ScoringPolicy.from_config(config))
        commit = lake.append("scored_samples", scored, operation="predict")
        print(f"scored {commit.rows_written} sample(s) with {bundle_dir.parent.name}/{bundle_dir.name}")
        return 0
    except LeukSparkError as error:
        print(f"leukspark predict job: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
