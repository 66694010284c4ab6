"""spark-submit entry point for schedulers: ingest new series, retrain when the data changed.

    spark-submit --py-files leukspark.zip jobs/rerun.py --lake DIR [--series GSE...] [--config conf.yaml]
"""

import sys

from leukspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["rerun", *sys.argv[1:]]))
