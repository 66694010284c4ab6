"""spark-submit entry point: ingest GEO series or matrix files into the lake.

    spark-submit --py-files leukspark.zip jobs/ingest_geo.py SOURCE... --lake DIR [--annotation FILE]
"""

import sys

from leukspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
