"""spark-submit entry point: score every sample of lake series with a run's model bundle.

Writes the scores to the `scored_samples` Delta table (`leukspark score`).

    spark-submit --py-files leukspark.zip jobs/predict.py --lake DIR [--series GSE...] [--run ID] [--model NAME]
"""

import sys

from leukspark.cli import main as cli_main


def main(argv=None) -> int:
    return cli_main(["score", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
