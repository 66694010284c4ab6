"""leukspark: a Spark pipeline that tells ALL from AML in microarray gene expression."""

__version__ = "0.1.0"

POSITIVE_CLASS = "AML"
NEGATIVE_CLASS = "ALL"

# Inside a PySpark worker only: skip re-reading unchanged zip archives before each task (why: worker_imports).
from leukspark.worker_imports import install_in_spark_worker as _install_in_spark_worker  # noqa: E402

_install_in_spark_worker()
