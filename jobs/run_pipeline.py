"""spark-submit entry point: the whole pipeline (ingest, labels, features, split, train, report).

    spark-submit --py-files leukspark.zip jobs/run_pipeline.py --input SOURCE --lake DIR [--config conf.yaml]
"""

import sys

from leukspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
