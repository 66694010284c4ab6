"""spark-submit entry point: write a run's HTML report.

    spark-submit --py-files leukspark.zip jobs/report.py --lake DIR --out DIR [--run ID]
"""

import sys

from leukspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
